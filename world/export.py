"""`run_world.py export EPISODE_DIR --out FILE.mp4`: a recorded episode as a watchable video.

Frames are upscaled nearest-neighbour (a 64x64 world stays crisp at 256x256) and piped as raw RGB
into the ffmpeg binary bundled with imageio-ffmpeg (libx264, yuv420p: plays everywhere).
`--overlay` adds a bar under the picture with the keys held (WASD, arrows, space, shift), the
mouse direction and the prompt, drawn with PIL.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from world.actions import Action
from world.dataset import DatasetError, EpisodeReader


class ExportError(RuntimeError):
    """The episode cannot be exported (empty, damaged) or ffmpeg failed."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("episode", type=Path, help="episode directory (holds meta.json)")
    parser.add_argument("--out", type=Path, required=True, help="output .mp4 file")
    parser.add_argument("--scale", type=int, default=4, help="integer nearest-neighbour upscale (default 4)")
    parser.add_argument("--overlay", action="store_true", help="draw held keys, mouse and prompt")
    parser.add_argument("--fps", type=float, default=None, help="playback rate (default: the episode's fps)")
    parser.add_argument("--crf", type=int, default=18, help="x264 quality, lower is better (default 18)")


def run(args: argparse.Namespace) -> int:
    try:
        summary = export_mp4(args.episode, args.out, scale=args.scale, overlay=args.overlay, fps=args.fps, crf=args.crf)
    except (DatasetError, ExportError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


def export_mp4(
    episode: str | Path,
    out: str | Path,
    *,
    scale: int = 4,
    overlay: bool = False,
    fps: float | None = None,
    crf: int = 18,
) -> dict:
    """Encode the episode to `out`; returns {"out", "frames", "width", "height", "fps"}."""
    reader = EpisodeReader(episode)
    if len(reader) == 0:
        raise ExportError(f"{reader.path}: episode has no complete frames to export")
    if scale < 1:
        raise ExportError(f"--scale must be >= 1, got {scale}")
    fps = float(fps or reader.meta["fps"])
    painter = OverlayPainter(reader.meta["height"] * scale, reader.meta["width"] * scale) if overlay else None
    images = _images(reader, scale, painter)
    first = next(images)
    height, width = first.shape[:2]
    _encode(_chain(first, images), Path(out), width, height, fps, crf)
    return {"out": str(out), "frames": len(reader), "width": width, "height": height, "fps": fps}


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _images(reader: EpisodeReader, scale: int, painter: OverlayPainter | None) -> Iterator[np.ndarray]:
    actions = reader.action_list() if painter else []
    prompts = reader.prompts()
    for k in range(len(reader)):
        image = upscale(np.asarray(reader.frames[k]), scale)
        if painter:
            image = painter.paint(image, actions[k], prompts[k])
        yield pad_even(image)


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    """[H, W, 3] -> [H*scale, W*scale, 3], nearest neighbour (pixels stay square and sharp)."""
    return frame.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else frame


def pad_even(image: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height; pad one black row/column where needed."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)))


def _encode(images: Iterator[np.ndarray], out: Path, width: int, height: int, fps: float, crf: int) -> None:
    import imageio_ffmpeg

    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-y",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-r",
        f"{fps:g}",
        "-i",
        "-",
        "-an",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-crf",
        str(crf),
        "-movflags",
        "+faststart",
        str(out),
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for image in images:
            proc.stdin.write(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
        proc.stdin.close()
    except BrokenPipeError:
        pass  # ffmpeg died; its stderr below says why
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise ExportError(f"ffmpeg failed (exit {proc.returncode}) writing {out}: {err.strip()}")


# ---- overlay -------------------------------------------------------------------------------------
BAR_HEIGHT = 66  # pixels under the picture: two rows of keys, then two lines of prompt
MIN_WIDTH = 256  # the key diagram needs this much even when --scale 1
BOX = 14
GAP = 2
LIT = (255, 210, 60)
DIM = (70, 70, 70)
TEXT = (235, 235, 235)


@dataclass(frozen=True)
class KeyBox:
    key: str  # a name from world.actions.KEYS
    label: str
    col: float  # position in box units inside its cluster
    row: int
    cells: float = 1.0  # width in box units


# WASD moves; arrows turn and look; space rises; shift sinks (assets/keymap.json).
KEY_BOXES: tuple[tuple[int, tuple[KeyBox, ...]], ...] = (
    (
        4,
        (
            KeyBox("forward", "W", 1, 0),
            KeyBox("left", "A", 0, 1),
            KeyBox("back", "S", 1, 1),
            KeyBox("right", "D", 2, 1),
        ),
    ),
    (
        60,
        (
            KeyBox("look_up", "^", 1, 0),
            KeyBox("turn_left", "<", 0, 1),
            KeyBox("look_down", "v", 1, 1),
            KeyBox("turn_right", ">", 2, 1),
        ),
    ),
    (116, (KeyBox("rise", "space", 0, 0, 2.8), KeyBox("sink", "shift", 0, 1, 2.8))),
)
MOUSE_CENTER_X = 186
MOUSE_RADIUS = 13


class OverlayPainter:
    """Adds the key/mouse/prompt bar under a picture of size [height, width]."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.canvas_width = max(width, MIN_WIDTH)
        self.font = ImageFont.load_default()
        # ~6 px per character in PIL's default bitmap font.
        self.wrap = max(10, (self.canvas_width - 8) // 6)

    def paint(self, image: np.ndarray, action: Action, prompt: str) -> np.ndarray:
        canvas = Image.new("RGB", (self.canvas_width, self.height + BAR_HEIGHT), (16, 16, 16))
        canvas.paste(Image.fromarray(image), ((self.canvas_width - self.width) // 2, 0))
        draw = ImageDraw.Draw(canvas)
        top = self.height + 4
        self._keys(draw, top, action)
        self._mouse(draw, top, action)
        for n, line in enumerate(textwrap.wrap(prompt, self.wrap)[:2]):
            draw.text((4, top + 2 * (BOX + GAP) + 2 + 12 * n), line, fill=TEXT, font=self.font)
        return np.asarray(canvas)

    def _keys(self, draw: ImageDraw.ImageDraw, top: int, action: Action) -> None:
        for x0, boxes in KEY_BOXES:
            for box in boxes:
                x = x0 + box.col * (BOX + GAP)
                y = top + box.row * (BOX + GAP)
                w = box.cells * BOX
                lit = action.held(box.key)
                draw.rectangle((x, y, x + w, y + BOX), fill=LIT if lit else DIM)
                tx = x + (w - draw.textlength(box.label, font=self.font)) / 2
                draw.text((tx, y + 1), box.label, fill=(0, 0, 0) if lit else TEXT, font=self.font)

    def _mouse(self, draw: ImageDraw.ImageDraw, top: int, action: Action) -> None:
        cx, cy, r = MOUSE_CENTER_X, top + BOX + GAP // 2, MOUSE_RADIUS
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=DIM, width=2)
        # Positive dy looks up, so it points up on screen (image y grows downwards).
        tip = (cx + action.mouse_dx * r, cy - action.mouse_dy * r)
        if abs(action.mouse_dx) + abs(action.mouse_dy) > 1e-3:
            draw.line((cx, cy, *tip), fill=LIT, width=3)
        draw.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=TEXT)
