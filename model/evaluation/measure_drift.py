"""Distribution distance and colour drift over one long stream (5 minutes; --quick: 15 s).

The world and the engine are streamed side by side under the same actions and one fixed prompt.
Per frame only small numbers are kept (HSV saturation, RMS contrast, the classifier's
penultimate features), so a 5-minute stream never holds its frames in memory.

- drift_saturation_pct / drift_contrast_pct: the paper's oversaturation measure. Means over
  windows of `drift_reference_s` seconds (10 s) relative to the first window (the first 10 s);
  the number is the largest absolute % deviation. The per-second curves go to the plot.
- The actions ("drift_script"): "pan" (default) turns in place at the turn key's rate, so the
  engine revisits the same views every 2.4 s and its own drift is ~1%: whatever drift a world
  shows is its own. "walk" is scripted play; there the terrain itself changes the statistics
  (the engine drifts 20-45% over 5 minutes), so compare with the engine's value beside it.
- The start (`eval --start`): "engine" (default) starts the world from the engine's first chunk
  (reset view + 2 idle frames) through its reset_with_context hook, "text" from reset(seed,
  prompt); the engine stream starts the same way.
- fd_per_segment: Frechet distance between classifier features of the world's and the engine's
  frames in each minute (each `fd_segment_s`); 0 for the engine itself.
"""

from __future__ import annotations

import numpy as np

from model.common.rollout import stream
from model.common.runlog import progress
from model.evaluation.eval_config import EvalConfig
from model.evaluation.measure_prompts import walk_actions
from model.evaluation.metrics import frechet_distance, hsv_saturation, rms_contrast
from model.evaluation.worlds import Worlds
from model.readers.reading import ThemeReader
from world.actions import Action
from world.procedural.themes import EXAMPLE_PROMPTS

DRIFT_PROMPT = EXAMPLE_PROMPTS[0]  # a colourful daytime scene: saturation far from 0, % is stable
DRIFT_SCRIPTS = ("pan", "walk")


def drift_actions(script: str, seed: int, n: int) -> list[Action]:
    if script == "pan":
        return [Action(("turn_right",))] * n
    if script == "walk":
        return walk_actions(seed, n)
    raise ValueError(f"unknown drift script {script!r}; one of {', '.join(DRIFT_SCRIPTS)}")


class StreamStats:
    """Per-frame saturation, contrast and classifier features of one stream, chunk by chunk."""

    def __init__(self, cls: ThemeReader, first: np.ndarray, strip_every: int):
        self.cls, self.strip_every = cls, strip_every
        self.sat, self.con, self.feats, self.strip = [], [], [], []
        self.tail = first[None]  # frames the classifier's stack needs from before the chunk
        self.n = 0
        self.add(first[None], skip_tail=True)

    def add(self, frames: np.ndarray, skip_tail: bool = False) -> None:
        self.sat.append(hsv_saturation(frames))
        self.con.append(rms_contrast(frames))
        t = self.cls.config.frames_in - 1
        stack = frames if skip_tail or t == 0 else np.concatenate([self.tail[-t:], frames])
        self.feats.append(self.cls.read(stack).features[len(stack) - len(frames) :])
        self.tail = np.concatenate([self.tail, frames])[-max(1, t) :]
        self.strip += [f for i, f in enumerate(frames, self.n) if i % self.strip_every == 0]
        self.n += len(frames)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.concatenate(self.sat), np.concatenate(self.con), np.concatenate(self.feats)


def per_second(values: np.ndarray, fps: int) -> np.ndarray:
    """[N] per-frame values -> [N // fps] means over whole seconds."""
    n = len(values) // fps * fps
    return values[:n].reshape(-1, fps).mean(1)


def drift_curve(values: np.ndarray, fps: int, window_s: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(per-second % deviation from the first window's mean [S], the same per window [K],
    max |% deviation| of the windows after the first; nan when the stream has < 2 windows).

    values: [N] per-frame values. Windows of `window_s` seconds; a stream shorter than two
    windows compares its second half with its first.
    """
    secs = per_second(values, fps)
    win = max(1, int(round(window_s)))
    if len(secs) < 2 * win:
        win = max(1, len(secs) // 2)
    ref = max(float(secs[:win].mean()), 1e-6)
    windows = 100.0 * (secs[: len(secs) // win * win].reshape(-1, win).mean(1) / ref - 1.0)
    worst = float(np.abs(windows[1:]).max()) if len(windows) > 1 else float("nan")
    return 100.0 * (secs / ref - 1.0), windows, worst


def _fd_segments(gen: np.ndarray, ref: np.ndarray, seg: int) -> list[float]:
    return [frechet_distance(gen[s : s + seg], ref[s : s + seg]) for s in range(0, len(gen) - seg + 1, seg)]


def measure_drift(worlds: Worlds, cls: ThemeReader, cfg: EvalConfig, show: bool = True) -> dict:
    fps = int(round(worlds.world.info.fps))
    f = worlds.world.info.chunk_frames
    n = int(cfg.drift_seconds * fps) // f * f
    actions = drift_actions(cfg.drift_script, cfg.seed + 900, n)
    every = max(1, n // cfg.strip_frames)
    first_gen, first_ref = worlds.begin(cfg.seed + 900, DRIFT_PROMPT)  # engine or text start (eval --start)
    gen = StreamStats(cls, first_gen, every)
    ref = gen if worlds.same else StreamStats(cls, first_ref, every)
    bar = progress(n, desc="drift stream", unit="frame") if show else None
    engine_chunks = None if worlds.same else stream(worlds.engine, actions, DRIFT_PROMPT)
    for chunk in stream(worlds.world, actions, DRIFT_PROMPT):
        gen.add(chunk.frames)
        if engine_chunks is not None:
            ref.add(next(engine_chunks).frames)
        if bar is not None:
            bar.update(len(chunk.frames))
    if bar is not None:
        bar.close()
    return {**_summarise(gen, ref, fps, cfg), "drift_start": worlds.start}


def _summarise(gen: StreamStats, ref: StreamStats, fps: int, cfg: EvalConfig) -> dict:
    g_sat, g_con, g_feat = gen.arrays()
    r_sat, r_con, r_feat = ref.arrays()
    curves, worst = {}, {}
    for name, values in (("saturation", g_sat), ("contrast", g_con), ("saturation_engine", r_sat),
                         ("contrast_engine", r_con)):  # fmt: skip
        per_s, per_window, worst[name] = drift_curve(values, fps, cfg.drift_reference_s)
        curves[f"{name}_pct"], curves[f"{name}_window_pct"] = per_s.tolist(), per_window.tolist()
    curves["saturation"], curves["contrast"] = per_second(g_sat, fps).tolist(), per_second(g_con, fps).tolist()
    fd = _fd_segments(g_feat, r_feat, int(cfg.fd_segment_s * fps))
    return {
        "drift_saturation_pct": worst["saturation"],
        "drift_contrast_pct": worst["contrast"],
        "drift_saturation_pct_engine": worst["saturation_engine"],
        "drift_contrast_pct_engine": worst["contrast_engine"],
        "drift_seconds": len(g_sat) / fps,
        "drift_script": cfg.drift_script,
        "saturation_first_s": float(per_second(g_sat, fps)[0]),
        "contrast_first_s": float(per_second(g_con, fps)[0]),
        "fd_per_segment": fd,
        "fd_segment_s": cfg.fd_segment_s,
        "fd_mean": float(np.mean(fd)) if fd else float("nan"),
        "fd_whole": frechet_distance(g_feat, r_feat),
        "curves": curves,
        "_strip": (np.stack(gen.strip), np.stack(ref.strip)),
    }
