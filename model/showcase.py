"""Side-by-side pictures of a world model playing next to the engine, for the docs.

    python -m model.showcase --checkpoint DIR --out docs/images/teacher [--sampler teacher] [--chunks 8]

For each prompt and each held key, the engine and the model start from the same seed and prompt
and receive the same actions. Writes `<out>.gif` (all pairs playing at once) and `<out>.png`
(a strip: every `--every`-th frame of each pair, engine above model). Honest by construction:
nothing is picked, every pair is shown.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from world.actions import Action
from world.backend import Backend, create_backend

DEFAULT_PROMPTS = ("green grassland hills at noon", "snowy mountains at dusk in fog")
DEFAULT_KEYS = (("forward",), ("turn_left",), ("turn_right",))


@dataclass
class Pair:
    label: str
    engine: np.ndarray  # [T, H, W, 3] uint8
    model: np.ndarray  # [T, H, W, 3] uint8


def rollout(backend: Backend, seed: int, prompt: str, action: Action, chunks: int) -> np.ndarray:
    """First view plus `chunks` chunks under one held action: [1 + chunks*F, H, W, 3] uint8."""
    frames = [backend.reset(seed, prompt)[None]]
    per_chunk = backend.info.chunk_frames
    for _ in range(chunks):
        frames.append(backend.step_chunk([action] * per_chunk).frames)
    return np.concatenate(frames)


def collect(model: Backend, engine: Backend, prompts, keys, seed: int, chunks: int) -> list[Pair]:
    pairs = []
    for prompt in prompts:
        for held in keys:
            action = Action(tuple(held))
            label = f"{'+'.join(held) or 'idle'} | {prompt}"
            print(f"showcase: {label}", file=sys.stderr, flush=True)
            pairs.append(Pair(label, rollout(engine, seed, prompt, action, chunks),
                              rollout(model, seed, prompt, action, chunks)))
    return pairs


def _tile(frame: np.ndarray, scale: int) -> Image.Image:
    return Image.fromarray(frame).resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)


def gif_frames(pairs: list[Pair], scale: int, model_name: str) -> list[Image.Image]:
    """One image per time step: a row per pair, engine left, model right, label above."""
    h, w = pairs[0].engine.shape[1:3]
    cell_w, cell_h, label_h = w * scale, h * scale, 14
    steps = min(len(p.engine) for p in pairs)
    out = []
    for t in range(steps):
        canvas = Image.new("RGB", (2 * cell_w + 6, len(pairs) * (cell_h + label_h)), (16, 16, 20))
        draw = ImageDraw.Draw(canvas)
        for row, pair in enumerate(pairs):
            y = row * (cell_h + label_h)
            draw.text((2, y + 1), f"{pair.label}   [engine | {model_name}]  t={t}", fill=(220, 220, 220))
            canvas.paste(_tile(pair.engine[t], scale), (0, y + label_h))
            canvas.paste(_tile(pair.model[t], scale), (cell_w + 6, y + label_h))
        out.append(canvas)
    return out


def strip(pairs: list[Pair], every: int, model_name: str) -> Image.Image:
    """Static PNG: for each pair, engine frames on one row and model frames below, every `every`."""
    h, w = pairs[0].engine.shape[1:3]
    idx = list(range(0, min(len(p.engine) for p in pairs), every))
    label_h = 14
    row_h = 2 * h + label_h + 4
    canvas = Image.new("RGB", (len(idx) * (w + 2) + 70, len(pairs) * row_h), (16, 16, 20))
    draw = ImageDraw.Draw(canvas)
    for r, pair in enumerate(pairs):
        y = r * row_h
        draw.text((2, y + 1), pair.label, fill=(220, 220, 220))
        draw.text((2, y + label_h + h // 2 - 5), "engine", fill=(160, 200, 255))
        draw.text((2, y + label_h + h + h // 2 - 5), model_name[:10], fill=(255, 200, 140))
        for c, t in enumerate(idx):
            x = 70 + c * (w + 2)
            canvas.paste(Image.fromarray(pair.engine[t]), (x, y + label_h))
            canvas.paste(Image.fromarray(pair.model[t]), (x, y + label_h + h + 2))
    return canvas


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="world checkpoint directory")
    p.add_argument("--out", required=True, help="output path without extension (.gif and .png are written)")
    p.add_argument("--sampler", default=None, help="teacher | uniform | diagonal (default: the checkpoint's)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps for teacher/uniform")
    p.add_argument("--device", default="auto")
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--every", type=int, default=3)
    args = p.parse_args(argv)
    options = {"checkpoint": args.checkpoint, "device": args.device, "sampler": args.sampler, "steps": args.steps}
    model = create_backend("generated", **{k: v for k, v in options.items() if v is not None})
    engine = create_backend("engine")
    name = args.sampler or "model"
    pairs = collect(model, engine, DEFAULT_PROMPTS, DEFAULT_KEYS, args.seed, args.chunks)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frames = gif_frames(pairs, args.scale, name)
    frames[0].save(out.with_suffix(".gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)
    strip(pairs, args.every, name).save(out.with_suffix(".png"))
    print(f"showcase: wrote {out.with_suffix('.gif')} and {out.with_suffix('.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
