"""Steady-state time per chunk of a world's own sampler (a diagonal student: 2 NFE + decode) under
one speed knob, 2 threads, batch 1: what `bench` would give, without the worker around it.

    .venv/bin/python scripts/speed_knobs.py CHECKPOINT default|channels_last|compile
    ATEN_CPU_CAPABILITY=avx2 .venv/bin/python scripts/speed_knobs.py ...   # an AVX2-only CPU's kernels

Prints one JSON line: the first chunk's seconds (compile time included), the median of chunks
11-40, the FPS that gives.
"""

import json
import os
import sys
import time

import torch

from model.runtime.stream import Conditioning, generate_chunk
from model.runtime.world_model import load_world_model

ckpt, knob = sys.argv[1], sys.argv[2]
torch.set_num_threads(2)
w = load_world_model(ckpt, "cpu", with_text_encoder=False)
dit, ae = w.dit.eval(), w.autoencoder.eval()
if knob == "channels_last":
    dit = dit.to(memory_format=torch.channels_last)
    ae = ae.to(memory_format=torch.channels_last)
if knob == "compile":
    dit.forward = torch.compile(dit.forward, dynamic=True)
sampler = w.sampler()
cfg = dit.config
text, mask = torch.randn(1, 8, cfg.text_dim), torch.ones(1, 8, dtype=torch.bool)
cond = Conditioning.build(text, mask, False)
gen = torch.Generator().manual_seed(0)


def noise(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=gen)


actions = torch.zeros(1, cfg.chunk_frames, cfg.action_dim)
cache = dit.new_cache()
times = []
t_start = time.perf_counter()
with torch.inference_mode():
    for i in range(40):
        t0 = time.perf_counter()
        out = generate_chunk(dit, cache, sampler, cond, actions, noise)
        ae.decode(out.latents[0].float())
        times.append(time.perf_counter() - t0)
        if i == 0:
            first = time.perf_counter() - t_start
steady = sorted(times[10:])[len(times[10:]) // 2]
capability = os.environ.get("ATEN_CPU_CAPABILITY", "default")
print(json.dumps({"knob": knob, "first_chunk_s": round(first, 2), "ms_per_chunk_p50": round(steady * 1e3, 1),
                  "fps": round(cfg.chunk_frames / steady, 1), "capability": capability}))
