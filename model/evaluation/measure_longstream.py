"""Long-stream image statistics against the engine: does the world keep its look for 5 minutes?

Each scenario (a held turn, held forward, a mixed key script) starts the world and the engine
from the same engine view (reset view + idle frames, as `eval --start engine`; always, whatever
--start says, so both streams show the same place) and streams both under the same keys for
`longstream_seconds` (5 minutes; --quick: 20 s). Per frame four statistics are measured:

- saturation: mean HSV saturation; contrast: RMS contrast of luma (metrics.py, as `drift`);
- sharpness: mean luma gradient magnitude (blur lowers it);
- colourfulness: Hasler-Suesstrunk (reported and plotted, not judged).

They are averaged over windows of `longstream_window_s` (1 s) and only the window means are
kept, so memory does not grow with the stream. The ratio world/engine per window is the result.

Verdict per scenario: "holds" when, in every window of the last 4/5 of the stream (the first
fifth lets a world settle from its start), saturation and contrast are within +-15% of the
engine's and sharpness is at least 0.6x the engine's. The worst window is the one furthest
outside (margin: the largest of |ratio - 1| / 0.15 for saturation and contrast and
(1 - ratio) / 0.4 for sharpness; inside when <= 1).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from model.common.rollout import stream
from model.common.runlog import progress
from model.evaluation.eval_config import EvalConfig
from model.evaluation.measure_drift import DRIFT_PROMPT
from model.evaluation.metrics import colourfulness, gradient_sharpness, hsv_saturation, rms_contrast
from model.evaluation.worlds import Worlds
from world.actions import Action

LONGSTREAM_PROMPT = DRIFT_PROMPT  # colourful daytime: saturation far from 0, so ratios are stable
SEED_OFFSET = 950
STATS = ("saturation", "contrast", "sharpness", "colourfulness")
BAND = 0.15  # saturation and contrast: within +-15% of the engine's
MIN_SHARPNESS = 0.6  # sharpness: at least 0.6x the engine's
SETTLE_SHARE = 0.2  # the first fifth of the stream is not judged
EPS = 1e-9  # ratio of two zero statistics (a flat frame's contrast) is 1

# The mixed script: (keys, frames, mouse dx, mouse dy), one 10.5 s cycle repeated. It looks up
# and down by equal amounts (keys and mouse), so the camera stays level over minutes.
MIXED_CYCLE: tuple[tuple[tuple[str, ...], int, float, float], ...] = (
    (("turn_left",), 45, 0.0, 0.0),
    (("forward",), 90, 0.0, 0.0),
    (("look_up",), 15, 0.0, 0.0),
    ((), 30, 0.0, 0.0),  # idle
    (("look_down",), 15, 0.0, 0.0),
    (("forward", "turn_right"), 60, 0.0, 0.0),
    ((), 30, 0.5, 0.0),  # mouse yaw step
    ((), 15, 0.0, 0.5),  # mouse pitch step up ...
    ((), 15, 0.0, -0.5),  # ... and back
)
SCENARIOS = ("turn", "forward", "mixed")


def scenario_actions(name: str, n: int) -> list[Action]:
    """The n per-frame actions of a scenario; deterministic (no seed)."""
    if name == "turn":
        return [Action(("turn_left",))] * n
    if name == "forward":
        return [Action(("forward",))] * n
    if name == "mixed":
        cycle = [Action(keys, dx, dy) for keys, frames, dx, dy in MIXED_CYCLE for _ in range(frames)]
        return (cycle * (n // len(cycle) + 1))[:n]
    raise ValueError(f"unknown longstream scenario {name!r}; one of {', '.join(SCENARIOS)}")


def frame_stats(frames: np.ndarray) -> np.ndarray:
    """[F, H, W, 3] uint8 -> [F, len(STATS)] per-frame statistics in STATS order."""
    fns = (hsv_saturation, rms_contrast, gradient_sharpness, colourfulness)
    return np.stack([fn(frames) for fn in fns], axis=-1)


class WindowMeans:
    """Means of frame_stats over consecutive windows of `size` frames, fed chunk by chunk; keeps
    the finished windows' means and the rows of the one window in progress."""

    def __init__(self, size: int):
        self.size = size
        self.done: list[np.ndarray] = []
        self.partial = np.zeros((0, len(STATS)))

    def add(self, frames: np.ndarray) -> None:
        rows = np.concatenate([self.partial, frame_stats(frames)])
        whole = len(rows) // self.size * self.size
        self.done += list(rows[:whole].reshape(-1, self.size, len(STATS)).mean(axis=1))
        self.partial = rows[whole:]

    def means(self) -> np.ndarray:
        """[K, len(STATS)] means of the finished windows (a partial last window is dropped)."""
        return np.array(self.done).reshape(-1, len(STATS))


def window_ratios(world: np.ndarray, engine: np.ndarray) -> np.ndarray:
    """[K, S] world / engine window means (both [K, S]); 1 where both are 0."""
    return (world + EPS) / (engine + EPS)


def window_margin(ratios: np.ndarray) -> np.ndarray:
    """[K] how far each window is from the verdict's limits: <= 1 inside, > 1 outside."""
    sat, con, sharp = (ratios[:, STATS.index(s)] for s in ("saturation", "contrast", "sharpness"))
    return np.maximum.reduce([np.abs(sat - 1) / BAND, np.abs(con - 1) / BAND, (1 - sharp) / (1 - MIN_SHARPNESS)])


def failed_stats(ratios: np.ndarray) -> list[str]:
    """The judged statistics that leave their limits in any window of `ratios` [K, S]."""
    out = [s for s in ("saturation", "contrast") if (np.abs(ratios[:, STATS.index(s)] - 1) > BAND).any()]
    return out + (["sharpness"] if (ratios[:, STATS.index("sharpness")] < MIN_SHARPNESS).any() else [])


def judge(ratios: np.ndarray, window_s: float) -> dict:
    """The verdict on one scenario's [K, S] ratios (K >= 1 windows of `window_s` seconds)."""
    first = int(len(ratios) * SETTLE_SHARE)
    margin = window_margin(ratios[first:])
    worst = first + int(np.argmax(margin))
    failed = failed_stats(ratios[first:])
    return {
        "verdict": "fails" if failed else "holds",
        "failed_on": failed,
        "share_inside": float(np.mean(margin <= 1)),
        "judged_from_s": first * window_s,
        "worst_window": {"t_s": worst * window_s, "margin": float(margin.max()),
                         **{s: float(ratios[worst, i]) for i, s in enumerate(STATS)}},
    }  # fmt: skip


def verdict_text(summary: dict) -> str:
    """One line, e.g. 'fails on saturation (inside 40% of windows; worst at 12 s: saturation 0.62x ...)'."""
    w = summary["worst_window"]
    ratios = ", ".join(f"{s} {w[s]:.2f}x" for s in STATS)
    head = "holds" if summary["verdict"] == "holds" else f"fails on {', '.join(summary['failed_on'])}"
    return f"{head} (inside {100 * summary['share_inside']:.0f}% of windows; worst at {w['t_s']:.0f} s: {ratios})"


def summarise(world: np.ndarray, engine: np.ndarray, window_s: float) -> dict:
    """Verdict and every per-window number of one scenario from its [K, S] window means."""
    ratios = window_ratios(world, engine)
    columns = lambda a: {s: a[:, i].tolist() for i, s in enumerate(STATS)}  # noqa: E731
    windows = {"t_s": (np.arange(len(ratios)) * window_s).tolist(), "ratio": columns(ratios),
               "world": columns(world), "engine": columns(engine)}  # fmt: skip
    return {**judge(ratios, window_s), "windows": windows}


def side_by_side(worlds: Worlds, actions: Sequence[Action]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(world frames, engine frames) per chunk under the same actions; one stream when the world
    is the engine."""
    world_chunks = stream(worlds.world, actions, LONGSTREAM_PROMPT)
    if worlds.same:
        yield from ((c.frames, c.frames) for c in world_chunks)
        return
    engine_chunks = stream(worlds.engine, actions, LONGSTREAM_PROMPT)
    yield from ((w.frames, e.frames) for w, e in zip(world_chunks, engine_chunks))


def run_scenario(worlds: Worlds, name: str, n: int, size: int, seed: int, show: bool) -> dict:
    """Stream one scenario of n frames; returns summarise()'s dict plus its wall time."""
    t0, fps = time.perf_counter(), worlds.world.info.fps
    worlds.begin(seed, LONGSTREAM_PROMPT, start="engine")
    gen = WindowMeans(size)
    ref = gen if worlds.same else WindowMeans(size)
    bar = progress(n, desc=f"longstream {name}", unit="frame") if show else None
    for world_frames, engine_frames in side_by_side(worlds, scenario_actions(name, n)):
        finished = len(gen.done)
        gen.add(world_frames)
        if ref is not gen:
            ref.add(engine_frames)
        if bar is not None:
            if len(gen.done) > finished:  # the latest window's ratios, to watch a long run drift
                r = window_ratios(gen.done[-1], ref.done[-1])
                bar.set_postfix_str(" ".join(f"{s[:5]} {v:.2f}" for s, v in zip(STATS, r)), refresh=False)
            bar.update(len(world_frames))
    if bar is not None:
        bar.close()
    summary = summarise(gen.means(), ref.means(), size / fps)
    return {**summary, "wall_s": round(time.perf_counter() - t0, 2)}


def measure_longstream(
    worlds: Worlds,
    cfg: EvalConfig,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    show: bool = True,
) -> dict:
    fps, f = worlds.world.info.fps, worlds.world.info.chunk_frames
    n = int(round(cfg.longstream_seconds * fps)) // f * f
    size = max(1, int(round(cfg.longstream_window_s * fps)))
    if n < size:
        raise ValueError(f"longstream: {cfg.longstream_seconds} s is shorter than one window "
                         f"({cfg.longstream_window_s} s)")  # fmt: skip
    unknown = [s for s in cfg.longstream_scenarios if s not in SCENARIOS]
    if unknown or not cfg.longstream_scenarios:
        raise ValueError(f"longstream: unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    scenarios = {}
    for name in cfg.longstream_scenarios:
        scenarios[name] = run_scenario(worlds, name, n, size, cfg.seed + SEED_OFFSET, show)
        log(f"longstream {name}: {verdict_text(scenarios[name])}, {scenarios[name]['wall_s']:.0f} s")
    return {
        "longstream": scenarios,
        "longstream_verdicts": {k: v["verdict"] for k, v in scenarios.items()},
        "longstream_holds": all(v["verdict"] == "holds" for v in scenarios.values()),
        "longstream_seconds": n / fps,
        "longstream_window_s": size / fps,
        "longstream_rule": {"band": BAND, "min_sharpness": MIN_SHARPNESS, "settle_share": SETTLE_SHARE},
    }
