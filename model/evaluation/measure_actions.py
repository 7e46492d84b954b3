"""Action accuracy: roll the probe script out and read the actions back with the IDM.

The ceiling is the same IDM reading the engine under the same probe, so the ratio isolates the
world: an IDM that confuses two motions on the engine is not held against the model. Both start
as the run says (`eval --start`): by default from the engine's first chunk at the probe world's
seed and prompt (reset view + 2 idle frames), handed to the world as context.

Motion magnitude (Diagonal Distillation's flow loss exists to keep it; docs/design.md §3): a world can
score a poor F1 by moving the wrong way or by barely moving at all, and these tell the two apart.
  - motion_world / motion_engine: mean |frame j - frame j-1| over every consecutive pair of the
    probe rollouts, frames as floats in [0, 1]; motion_ratio = world / engine (1: as lively as
    the engine under the same actions; << 1: a frozen world).
  - idm_moving_world / idm_moving_engine: share of scored frames whose IDM reading is not idle
    (some key held, or a mouse axis outside the "still" bin).
"""

from __future__ import annotations

import numpy as np

from model.evaluation.action_probes import probe_actions, probe_segments
from model.evaluation.eval_config import EvalConfig
from model.evaluation.worlds import Worlds
from model.readers.idm import mouse_to_bins
from model.readers.reading import ActionReading, IDMReader
from model.readers.scores import score_actions
from world.procedural.themes import EXAMPLE_PROMPTS


def _concat(readings: list[ActionReading]) -> ActionReading:
    return ActionReading(*(np.concatenate([getattr(r, f) for r in readings]) for f in ("keys", "mouse_bins", "valid")))


def _segment_match(
    reading: ActionReading, actions: np.ndarray, mask: np.ndarray, names: list[str], idm: IDMReader
) -> dict:
    """Per probe segment: fraction of scored frames whose whole reading equals the command."""
    n_keys = reading.keys.shape[1]
    exact = (reading.keys == (actions[:, :n_keys] > 0.5)).all(1) & (
        reading.mouse_bins == mouse_to_bins(actions[:, n_keys:], idm.config)
    ).all(1)
    use = mask & reading.valid
    out = {}
    for name in dict.fromkeys(names):
        sel = use & (np.array(names) == name)
        out[name] = float(exact[sel].mean()) if sel.any() else float("nan")
    return out


def frame_motion(frames: np.ndarray) -> tuple[float, int]:
    """(sum of per-pair mean |difference| in [0, 1], number of pairs) of frames [N, H, W, 3] uint8;
    sums, so rollouts of different lengths weigh every pair equally."""
    if len(frames) < 2:
        return 0.0, 0
    diff = np.abs(np.diff(frames.astype(np.int16), axis=0))  # int16: no uint8 wrap-around, 1/4 of float64
    return float(diff.reshape(len(diff), -1).mean(1).sum()) / 255.0, len(diff)


def _mean_motion(rollouts: list[np.ndarray]) -> float:
    parts = [frame_motion(f) for f in rollouts]
    pairs = sum(n for _, n in parts)
    return sum(t for t, _ in parts) / pairs if pairs else float("nan")


def moving_share(reading: ActionReading, mask: np.ndarray, idm: IDMReader) -> float:
    """Share of scored frames the IDM reads as anything but idle: a key, or a mouse axis off "still"."""
    still = mouse_to_bins(np.zeros(2, np.float32), idm.config)  # the bin of a zero mouse delta, per axis
    moving = reading.keys.any(1) | (reading.mouse_bins != still).any(1)
    use = mask & reading.valid
    return float(moving[use].mean()) if use.any() else float("nan")


def measure_actions(worlds: Worlds, idm: IDMReader, cfg: EvalConfig) -> dict:
    segments = probe_segments(cfg.probe_hold)
    actions, scored, seg_names = probe_actions(segments, cfg.settle_frames, idm.config.after)
    gen_r, ref_r, acts, masks, names, gen_frames, ref_frames = [], [], [], [], [], [], []
    for w in range(cfg.probe_worlds):
        gen, ref = worlds.both(cfg.seed + w, EXAMPLE_PROMPTS[w % len(EXAMPLE_PROMPTS)], actions)
        gen_frames.append(gen.frames)
        ref_frames.append(ref.frames)
        gen_r.append(idm.read(gen.frames))
        ref_r.append(gen_r[-1] if worlds.same else idm.read(ref.frames))
        acts.append(gen.actions)
        masks.append(np.concatenate([[False], scored]))  # frame 0 is the reset view: no action
        names += ["reset", *seg_names]
    acts_all, mask_all = np.concatenate(acts), np.concatenate(masks)
    world = score_actions(_concat(gen_r), acts_all, mask_all, idm.config)
    engine = score_actions(_concat(ref_r), acts_all, mask_all, idm.config)
    ratio = world["macro_f1"] / engine["macro_f1"] if engine["macro_f1"] > 0 else float("nan")
    motion_world, motion_engine = _mean_motion(gen_frames), _mean_motion(ref_frames)
    return {
        "action_f1": world["macro_f1"],
        "action_f1_ceiling": engine["macro_f1"],
        "action_ratio_to_ceiling": ratio,
        "action_f1_chance": world["chance_macro_f1"],
        "action_f1_idm_heldout": idm.meta.get("extra", {}).get("heldout", {}).get("macro_f1", float("nan")),
        "action_frames_scored": world["frames"],
        "action_per_action_f1": world["per_action"],
        "action_per_action_f1_ceiling": engine["per_action"],
        "action_segment_exact": _segment_match(_concat(gen_r), acts_all, mask_all, names, idm),
        "action_segment_exact_ceiling": _segment_match(_concat(ref_r), acts_all, mask_all, names, idm),
        "motion_world": motion_world,
        "motion_engine": motion_engine,
        "motion_ratio": motion_world / motion_engine if motion_engine > 0 else float("nan"),
        "idm_moving_world": moving_share(_concat(gen_r), mask_all, idm),
        "idm_moving_engine": moving_share(_concat(ref_r), mask_all, idm),
        "action_start": worlds.start,
    }
