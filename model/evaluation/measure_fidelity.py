"""Fidelity: how close are the world's frames to the engine's under the same actions?

Two modes, by the run's start (`eval --start`), reported in the JSON as `fidelity_mode`:

- "context" (`--start engine`, the default): the engine's first K = `fidelity_context` frames of
  the episode (its reset view and K - 1 frames of the episode's actions) are handed to the world
  through its `reset_with_context(frames, actions, prompt, seed)` hook; the world generates the
  next chunks under the episode's next actions and they are compared with the engine's: next-
  frame prediction proper. The engine itself re-simulates the context (bit-identical).
- "reset" (`--start text`): the world is reset with the episode's seed and prompt and stepped with
  the same actions; chunks 1 and 1..10 after the reset view are compared with the engine's. A
  generated world does not know the engine's terrain for a seed, so this measures how close its
  imagined world is, not prediction.

Beside every curve the `still` baseline (the start frame forever, world/backends/baselines.py)
is scored on the same episodes with the same start: `psnr_still_per_chunk` etc. A world that
does not beat it has learned nothing about motion. `psnr_autoencoder_per_chunk` (and _10chunk) is
the engine's frames encoded and decoded by the world's autoencoder (model/evaluation/ceiling.py):
the most a latent world can score; None for worlds without an autoencoder.
"""

from __future__ import annotations

import numpy as np

from model.evaluation.ceiling import autoencoder_roundtrip
from model.evaluation.eval_config import EvalConfig
from model.evaluation.measure_prompts import walk_actions
from model.evaluation.metrics import psnr_per_frame, ssim_per_frame
from model.evaluation.worlds import Worlds
from world.backends.registry import create_backend
from world.procedural.themes import EXAMPLE_PROMPTS


def fidelity_episode(seed_offset: int, cfg: EvalConfig) -> tuple[int, str]:
    """(seed, prompt) of fidelity episode e."""
    return cfg.seed + 100 + seed_offset, EXAMPLE_PROMPTS[seed_offset % len(EXAMPLE_PROMPTS)]


def episode_frames(worlds: Worlds, cfg: EvalConfig, e: int) -> tuple[np.ndarray, np.ndarray]:
    """(world frames, engine frames), both [chunks * F, H, W, 3], after the start."""
    f, k = worlds.world.info.chunk_frames, cfg.fidelity_context
    seed, prompt = fidelity_episode(e, cfg)
    n = cfg.fidelity_chunks * f
    if worlds.start == "engine":
        actions = walk_actions(seed, n + k - 1)  # the first k - 1 make the context
        gen, ref = worlds.both(seed, prompt, actions[k - 1 :], prefix=actions[: k - 1])
    else:
        gen, ref = worlds.both(seed, prompt, walk_actions(seed, n))
    return gen.frames[1 : 1 + n], ref.frames[1 : 1 + n]


def _per_chunk(gen: np.ndarray, ref: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    return psnr_per_frame(gen, ref).reshape(-1, f).mean(1), ssim_per_frame(gen, ref).reshape(-1, f).mean(1)


def measure_fidelity(worlds: Worlds, cfg: EvalConfig) -> dict:
    info = worlds.world.info
    f = info.chunk_frames
    still = create_backend("still", height=info.height, width=info.width, chunk_frames=f)
    baseline = Worlds(still, worlds.engine, start=worlds.start)
    psnr, ssim, psnr_still, ssim_still, psnr_ae, strips = [], [], [], [], [], None
    for e in range(cfg.fidelity_episodes):
        gen, ref = episode_frames(worlds, cfg, e)
        p, s = _per_chunk(gen, ref, f)  # [chunks]
        psnr.append(p)
        ssim.append(s)
        roundtrip = autoencoder_roundtrip(worlds.world, ref)
        if roundtrip is not None:
            psnr_ae.append(_per_chunk(roundtrip, ref, f)[0])
        base, _ = episode_frames(baseline, cfg, e)
        p, s = _per_chunk(base, ref, f)
        psnr_still.append(p)
        ssim_still.append(s)
        strips = strips or (gen, ref)
    psnr_c, ssim_c = np.mean(psnr, 0), np.mean(ssim, 0)  # per chunk, over episodes
    psnr_s, ssim_s = np.mean(psnr_still, 0), np.mean(ssim_still, 0)
    psnr_a = np.mean(psnr_ae, 0) if psnr_ae else None
    return {
        "fidelity_mode": "context" if worlds.start == "engine" else "reset",
        "fidelity_start": worlds.start,
        "fidelity_episodes": cfg.fidelity_episodes,
        "psnr_1chunk": float(psnr_c[0]),
        "ssim_1chunk": float(ssim_c[0]),
        "psnr_10chunk": float(psnr_c[:10].mean()),
        "ssim_10chunk": float(ssim_c[:10].mean()),
        "psnr_per_chunk": [float(x) for x in psnr_c],
        "ssim_per_chunk": [float(x) for x in ssim_c],
        "psnr_still_1chunk": float(psnr_s[0]),
        "ssim_still_1chunk": float(ssim_s[0]),
        "psnr_still_10chunk": float(psnr_s[:10].mean()),
        "ssim_still_10chunk": float(ssim_s[:10].mean()),
        "psnr_still_per_chunk": [float(x) for x in psnr_s],
        "ssim_still_per_chunk": [float(x) for x in ssim_s],
        "psnr_autoencoder_10chunk": None if psnr_a is None else float(psnr_a[:10].mean()),
        "psnr_autoencoder_per_chunk": None if psnr_a is None else [float(x) for x in psnr_a],
        "_strip": strips,  # (world, engine) frames of the first episode, for the report's PNG
    }
