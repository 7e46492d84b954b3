"""Side-by-side pictures of world models playing next to the engine, for the docs.

    python -m model.tools.showcase --checkpoint DIR --out docs/images/teacher [--sampler teacher] [--chunks 8]
    python -m model.tools.showcase --out docs/images/distillation --chunks 8 \\
        --world teacher=assets/teacher@teacher --world uniform=assets/default_world@uniform \\
        --world diagonal=assets/default_world@diagonal --switch "snowy mountains at dusk in fog"

Each row is one scenario: a prompt and a held key (and, with --switch, one row that holds
"forward" and switches the prompt halfway). In every row the engine and each world start from the
same seed and prompt and receive the same actions. Columns: the engine, then each --world
(LABEL=CHECKPOINT[@SAMPLER]), and with --baseline still|copy-last those baseline worlds.

Start (--start): `engine` (default) writes the engine's first chunk (its reset view and the next
frames under idle, at the row's seed) into every world as its context, so all columns begin from
the same real view and the frames after it are each world's own; `text` resets every world from
the prompt alone (the generated world invents its first chunk).

Writes `<out>.gif` (all rows playing at once) and `<out>.png` (a strip: every `--every`-th frame,
one line per column). Honest by construction: nothing is picked, every scenario is shown.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from world.actions import Action
from world.backend import Backend, BackendError
from world.backends.registry import create_backend

DEFAULT_PROMPTS = ("green grassland hills at noon", "snowy mountains at dusk in fog")
DEFAULT_KEYS = (("forward",), ("turn_left",), ("turn_right",))
LABEL_H = 14
NAME_W = 70  # left margin of the strip for the column names
COLORS = ((160, 200, 255), (255, 200, 140), (180, 255, 170), (255, 160, 200), (230, 230, 140))


@dataclass(frozen=True)
class Scenario:
    prompt: str
    held: tuple[str, ...]
    switch_to: str | None = None  # prompt set halfway through the rollout

    @property
    def label(self) -> str:
        keys = "+".join(self.held) or "idle"
        return f"{keys} | {self.prompt}" + (f" -> {self.switch_to}" if self.switch_to else "")


@dataclass
class Row:
    label: str
    columns: dict[str, np.ndarray]  # column name -> [T, H, W, 3] uint8 (engine first)


def engine_start(engine: Backend, seed: int, prompt: str) -> np.ndarray:
    """The engine's first chunk [F, H, W, 3]: its reset view, then F - 1 frames under idle."""
    first = engine.reset(seed, prompt)
    rest = engine.step_chunk([Action()] * (engine.info.chunk_frames - 1)).frames
    return np.concatenate([first[None], rest])


def rollout(backend: Backend, seed: int, scenario: Scenario, chunks: int, start: str = "text") -> np.ndarray:
    """Start view(s) plus `chunks` chunks under one held action: [S + chunks*F, H, W, 3] uint8, S = 1 for
    a text start (the reset view), F for an engine start (the engine's first chunk, as context)."""
    per_chunk = backend.info.chunk_frames
    if start == "engine":
        if backend.info.name == "engine":
            frames = [engine_start(backend, seed, scenario.prompt)]
        else:
            engine = create_backend("engine", height=backend.info.height, width=backend.info.width,
                                    chunk_frames=per_chunk)
            context = engine_start(engine, seed, scenario.prompt)
            backend.reset_with_context(context, [Action()] * per_chunk, scenario.prompt, seed)
            frames = [context]
    else:
        frames = [backend.reset(seed, scenario.prompt)[None]]
    action = Action(tuple(scenario.held))
    for k in range(chunks):
        if scenario.switch_to and k == chunks // 2:
            backend.set_prompt(scenario.switch_to)
        frames.append(backend.step_chunk([action] * per_chunk).frames)
    return np.concatenate(frames)


def collect(worlds: dict[str, Backend], scenarios: list[Scenario], seed: int, chunks: int,
            start: str = "text") -> list[Row]:
    rows = []
    for scenario in scenarios:
        print(f"showcase: {scenario.label} ({start} start)", file=sys.stderr, flush=True)
        rows.append(Row(f"{scenario.label} [{start} start]",
                        {name: rollout(b, seed, scenario, chunks, start) for name, b in worlds.items()}))
    return rows


def _tile(frame: np.ndarray, scale: int) -> Image.Image:
    return Image.fromarray(frame).resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)


def _steps(rows: list[Row]) -> int:
    return min(len(frames) for row in rows for frames in row.columns.values())


def gif_frames(rows: list[Row], scale: int) -> list[Image.Image]:
    """One image per time step: a line per scenario, its columns side by side, a label above."""
    names = list(rows[0].columns)
    h, w = next(iter(rows[0].columns.values())).shape[1:3]
    cell_w, cell_h = w * scale, h * scale
    out = []
    for t in range(_steps(rows)):
        canvas = Image.new("RGB", (len(names) * (cell_w + 6), len(rows) * (cell_h + LABEL_H)), (16, 16, 20))
        draw = ImageDraw.Draw(canvas)
        for r, row in enumerate(rows):
            y = r * (cell_h + LABEL_H)
            draw.text((2, y + 1), f"{row.label}   [{' | '.join(names)}]  t={t}", fill=(220, 220, 220))
            for c, name in enumerate(names):
                canvas.paste(_tile(row.columns[name][t], scale), (c * (cell_w + 6), y + LABEL_H))
        out.append(canvas)
    return out


def strip(rows: list[Row], every: int) -> Image.Image:
    """Static PNG: per scenario, one line of frames per column (every `every`-th frame)."""
    names = list(rows[0].columns)
    h, w = next(iter(rows[0].columns.values())).shape[1:3]
    idx = list(range(0, _steps(rows), every))
    row_h = len(names) * (h + 2) + LABEL_H + 2
    canvas = Image.new("RGB", (len(idx) * (w + 2) + NAME_W, len(rows) * row_h), (16, 16, 20))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = r * row_h
        draw.text((2, y + 1), row.label, fill=(220, 220, 220))
        for c, name in enumerate(names):
            top = y + LABEL_H + c * (h + 2)
            draw.text((2, top + h // 2 - 5), name[:11], fill=COLORS[c % len(COLORS)])
            for k, t in enumerate(idx):
                canvas.paste(Image.fromarray(row.columns[name][t]), (NAME_W + k * (w + 2), top))
    return canvas


def parse_world(text: str) -> tuple[str, dict]:
    """LABEL=CHECKPOINT[@SAMPLER] -> (label, generated-backend options)."""
    label, sep, rest = text.partition("=")
    checkpoint, _, sampler = rest.partition("@")
    if not sep or not label or not checkpoint:
        raise ValueError(f"--world takes LABEL=CHECKPOINT[@SAMPLER], e.g. diagonal=assets/default_world@diagonal; "
                         f"got {text!r}")
    return label, {"checkpoint": checkpoint, **({"sampler": sampler} if sampler else {})}


def scenarios_for(prompts, keys, switch_to: str | None) -> list[Scenario]:
    out = [Scenario(prompt, tuple(held)) for prompt in prompts for held in keys]
    if switch_to:
        out.append(Scenario(prompts[0], ("forward",), switch_to))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="one world checkpoint (its column is named after --sampler)")
    p.add_argument("--sampler", default=None, help="teacher | uniform | diagonal for --checkpoint")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps for teacher/uniform (--checkpoint and every --world)")
    p.add_argument("--guidance", type=float, default=None,
                   help="guidance g for --checkpoint and every --world (default: the sampler's)")
    p.add_argument("--world", action="append", default=[], help="LABEL=CHECKPOINT[@SAMPLER], repeatable: columns")
    p.add_argument("--switch", help="add a row that holds forward and switches to this prompt halfway")
    p.add_argument("--start", choices=("engine", "text"), default="engine",
                   help="engine: every world starts from the engine's first chunk; text: from the prompt alone")
    p.add_argument("--baseline", action="append", default=[], choices=("still", "copy-last"),
                   help="add a baseline world column (what a model that learned nothing shows); repeatable")
    p.add_argument("--out", required=True, help="output path without extension (.gif and .png are written)")
    p.add_argument("--device", default="auto")
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--every", type=int, default=3)
    args = p.parse_args(argv)
    try:
        given = {k: v for k, v in (("steps", args.steps), ("guidance", args.guidance)) if v is not None}
        specs = [(label, {**options, **given}) for label, options in map(parse_world, args.world)]
        if args.checkpoint:
            options = {"checkpoint": args.checkpoint, **({"sampler": args.sampler} if args.sampler else {}), **given}
            specs.insert(0, (args.sampler or "model", options))
        if not specs:
            raise ValueError("name at least one world: --checkpoint DIR or --world LABEL=CHECKPOINT[@SAMPLER]")
        worlds: dict[str, Backend] = {"engine": create_backend("engine")}
        for label, options in specs:
            if label in worlds:
                raise ValueError(f"two columns named {label!r}")
            worlds[label] = create_backend("generated", device=args.device, **options)
        for name in args.baseline:
            worlds[name] = create_backend(name)
    except (ValueError, BackendError) as e:
        print(f"showcase: {e}", file=sys.stderr)
        return 2
    rows = collect(worlds, scenarios_for(DEFAULT_PROMPTS, DEFAULT_KEYS, args.switch), args.seed, args.chunks,
                   args.start)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frames = gif_frames(rows, args.scale)
    frames[0].save(out.with_suffix(".gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)
    strip(rows, args.every).save(out.with_suffix(".png"))
    print(f"showcase: wrote {out.with_suffix('.gif')} and {out.with_suffix('.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
