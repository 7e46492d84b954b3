"""World-model evaluation measures: `run_world.py eval` (suite.py) and `run_world.py bench` (bench.py).

Measures (docs/evaluation.md): action accuracy read back by an inverse-dynamics model, prompt
adherence and switch latency read by a theme classifier (both in model/readers/), fidelity to the
engine (PSNR/SSIM), distribution distance and colour drift over a long stream, and speed.
"""
