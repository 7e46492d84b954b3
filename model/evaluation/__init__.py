"""World-model evaluation suite: `run_world.py eval` (cli.py) and `run_world.py bench` (bench.py).

Measures (docs/evaluation.md): action accuracy read back by an inverse-dynamics model (idm.py),
prompt adherence and switch latency read by a theme classifier (classifier.py), fidelity to the
engine (PSNR/SSIM), distribution distance and colour drift over a long stream, and speed.
"""
