"""Teacher-forced PSNR per action class: one chunk of prediction from real frames, vs copy-last.

For each context (the engine's first `context_chunks` = 2 chunks, 6 frames, of scripted play at a
seed and prompt, handed to the world through `reset_with_context`) and each action class of the
action space (TEACHER_FORCED_CLASSES: idle, every key alone), the world generates the next chunk
under that action held; PSNR (per frame, capped at 100 dB, averaged) against the engine's next
chunk from the same state. The `copy-last` baseline (world/backends/baselines.py: the last
context frame repeated) is scored on the same contexts in the same run.

- teacher_forced_psnr: class -> dB (mean over contexts); teacher_forced_psnr_mean over classes.
- teacher_forced_psnr_copy_last (and _mean): the same for copy-last.
- teacher_forced_gain: class -> world - copy-last (dB).
- teacher_forced_psnr_autoencoder (and _mean): the engine's next chunk encoded and decoded by the
  world's autoencoder (model/evaluation/ceiling.py): what a perfect latent prediction scores;
  teacher_forced_gain_ceiling: class -> that minus copy-last, the most any world with this
  autoencoder can gain over copy-last. None for worlds without an autoencoder.
- teacher_forced_gain_min: the smallest gain over the classes that move the camera, i.e. every
  class but idle (its class in teacher_forced_gain_min_class). Under idle the engine's next frames
  *are* the last context frame, up to falling rain/snow and the camera settling onto the ground,
  so copy-last is bit-exact (100 dB) there in clear weather and no model can beat it: idle is
  reported in teacher_forced_gain but left out of the min, which would otherwise always be idle's.

The engine as world re-simulates exactly: 100 dB in every class.
"""

from __future__ import annotations

import numpy as np

from model.evaluation.ceiling import autoencoder_roundtrip
from model.evaluation.eval_config import EvalConfig
from model.evaluation.measure_counterfactual import context_start, outcomes
from model.evaluation.metrics import psnr_per_frame
from model.evaluation.worlds import Worlds
from world.actions import IDLE, Action
from world.backends.registry import create_backend
from world.procedural.themes import EXAMPLE_PROMPTS

TEACHER_FORCED_CLASSES: dict[str, Action] = {
    "idle": IDLE,
    "forward": Action(("forward",)),
    "back": Action(("back",)),
    "strafe_left": Action(("left",)),
    "strafe_right": Action(("right",)),
    "turn_left": Action(("turn_left",)),
    "turn_right": Action(("turn_right",)),
    "look_up": Action(("look_up",)),
    "look_down": Action(("look_down",)),
    "rise": Action(("rise",)),
    "sink": Action(("sink",)),
}


def teacher_forced_context(c: int, cfg: EvalConfig) -> tuple[int, str]:
    """(seed, prompt) of teacher-forced context c."""
    return cfg.seed + 1500 + c, EXAMPLE_PROMPTS[c % len(EXAMPLE_PROMPTS)]


def _psnr(gen: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """[A] mean per-frame PSNR of outcomes [A, F, H, W, 3]."""
    return np.array([psnr_per_frame(g, r).mean() for g, r in zip(gen, ref)])


def measure_teacher_forced(worlds: Worlds, cfg: EvalConfig) -> dict:
    info = worlds.world.info
    f = info.chunk_frames
    copy = Worlds(create_backend("copy-last", height=info.height, width=info.width, chunk_frames=f), worlds.engine)
    names = list(TEACHER_FORCED_CLASSES)
    world_db, copy_db, ae_db = [], [], []
    for c in range(cfg.teacher_forced_contexts):
        seed, prompt = teacher_forced_context(c, cfg)
        ctx = context_start(worlds, cfg, seed, prompt)
        ref = outcomes(worlds, seed, prompt, ctx, TEACHER_FORCED_CLASSES, f, engine=True)
        gen = ref if worlds.same else outcomes(worlds, seed, prompt, ctx, TEACHER_FORCED_CLASSES, f, engine=False)
        world_db.append(_psnr(gen, ref))
        copy_db.append(_psnr(outcomes(copy, seed, prompt, ctx, TEACHER_FORCED_CLASSES, f, engine=False), ref))
        roundtrip = autoencoder_roundtrip(worlds.world, ref)
        if roundtrip is not None:
            ae_db.append(_psnr(roundtrip, ref))
    w, k = np.mean(world_db, 0), np.mean(copy_db, 0)
    gain = {n: float(a - b) for n, a, b in zip(names, w, k)}
    moving = {n: g for n, g in gain.items() if n != "idle"}
    worst = min(moving, key=moving.get)
    ae = np.mean(ae_db, 0) if ae_db else None
    return {
        "teacher_forced_psnr": {n: float(x) for n, x in zip(names, w)},
        "teacher_forced_psnr_mean": float(w.mean()),
        "teacher_forced_psnr_copy_last": {n: float(x) for n, x in zip(names, k)},
        "teacher_forced_psnr_copy_last_mean": float(k.mean()),
        "teacher_forced_gain": gain,
        "teacher_forced_gain_min": moving[worst],
        "teacher_forced_gain_min_class": worst,
        "teacher_forced_psnr_autoencoder": None if ae is None else {n: float(x) for n, x in zip(names, ae)},
        "teacher_forced_psnr_autoencoder_mean": None if ae is None else float(ae.mean()),
        "teacher_forced_gain_ceiling": None if ae is None else {n: float(a - b) for n, a, b in zip(names, ae, k)},
        "teacher_forced_contexts": cfg.teacher_forced_contexts,
    }
