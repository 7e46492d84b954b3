"""Fidelity: how close are the world's frames to the engine's under the same actions?

Two modes, reported in the JSON as `fidelity_mode`:

- "context": the world exposes `reset_with_context(frames, actions, prompt)` (frames [K, H, W, 3]
  uint8 from an engine episode, actions[i] produced frames[i], actions[0] is ignored). It is
  primed with the episode's first K frames and generates the next 1 and 10 chunks under the
  episode's next actions; those are compared with the engine's frames.
- "reset": no such hook. The world is reset with the episode's seed and prompt and stepped with
  the same actions; chunks 1 and 1..10 after the reset view are compared with the engine's.
  A generated world does not know the engine's terrain for a seed, so this measures how close
  its imagined world is, not next-frame prediction; the engine itself re-simulates bit for bit
  (PSNR capped at 100 dB, SSIM 1).
"""

from __future__ import annotations

import numpy as np

from model.evaluation.config import EvalConfig
from model.evaluation.measure_prompts import walk_actions
from model.evaluation.metrics import psnr_per_frame, ssim_per_frame
from model.evaluation.rollout import Worlds, rollout, stream
from world.themes import EXAMPLE_PROMPTS

HOOK = "reset_with_context"


def _generate_from_context(worlds: Worlds, ref_frames, actions, prompt: str, k: int) -> np.ndarray:
    """[N, H, W, 3] frames the world generates after K context frames (engine convention)."""
    getattr(worlds.world, HOOK)(ref_frames[:k], [actions[0], *actions[: k - 1]], prompt)
    return np.concatenate([c.frames for c in stream(worlds.world, actions[k - 1 :], prompt)])


def _episode(worlds: Worlds, cfg: EvalConfig, e: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(world frames, engine frames) both [chunks * F, H, W, 3] after the start, and the mode."""
    f, k = worlds.world.info.chunk_frames, cfg.fidelity_context
    seed, prompt = cfg.seed + 100 + e, EXAMPLE_PROMPTS[e % len(EXAMPLE_PROMPTS)]
    n = cfg.fidelity_chunks * f
    use_context = hasattr(worlds.world, HOOK) and not worlds.same
    actions = walk_actions(seed, n + (k - 1 if use_context else 0))
    ref = rollout(worlds.engine, seed, prompt, actions)  # ref.frames[j] made by actions[j - 1]
    if use_context:
        gen = _generate_from_context(worlds, ref.frames, actions, prompt, k)
        return gen[:n], ref.frames[k : k + n], "context"
    gen = ref if worlds.same else rollout(worlds.world, seed, prompt, actions)
    return gen.frames[1 : 1 + n], ref.frames[1 : 1 + n], "reset"


def measure_fidelity(worlds: Worlds, cfg: EvalConfig) -> dict:
    f = worlds.world.info.chunk_frames
    psnr, ssim, strips = [], [], None
    for e in range(cfg.fidelity_episodes):
        gen, ref, mode = _episode(worlds, cfg, e)
        psnr.append(psnr_per_frame(gen, ref).reshape(-1, f).mean(1))  # [chunks]
        ssim.append(ssim_per_frame(gen, ref).reshape(-1, f).mean(1))
        strips = strips or (gen, ref)
    psnr_c, ssim_c = np.mean(psnr, 0), np.mean(ssim, 0)  # per chunk, over episodes
    return {
        "fidelity_mode": mode,
        "psnr_1chunk": float(psnr_c[0]),
        "ssim_1chunk": float(ssim_c[0]),
        "psnr_10chunk": float(psnr_c[:10].mean()),
        "ssim_10chunk": float(ssim_c[:10].mean()),
        "psnr_per_chunk": [float(x) for x in psnr_c],
        "ssim_per_chunk": [float(x) for x in ssim_c],
        "_strip": strips,  # (world, engine) frames of the first episode, for the report's PNG
    }
