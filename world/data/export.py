"""`run_world.py export EPISODE_DIR --out FILE.mp4`: a recorded episode as a watchable video.

Frames are upscaled nearest-neighbour (a 64x64 world stays crisp at 256x256) and piped as raw RGB
into the ffmpeg binary bundled with imageio-ffmpeg (libx264, yuv420p: plays everywhere).
`--overlay` adds a bar under the picture with the keys held (WASD, arrows, space, shift), the
mouse direction and the prompt, drawn with PIL.

The soundscape goes in as an AAC track (`--silent` leaves it out): the per-frame sound params a
window recording stores ("audio" in frames.jsonl), else the ones its actions and prompts direct
(world/procedural/soundscape.py), rendered offline at the playback rate, so the audio lasts as long as the video.

The recording is checked first as replay checks it (world/data/schema.py `check_recording`): a video
at a tampered fps, or of records no worker wrote, is refused by field, not encoded.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from world.actions import Action
from world.data.dataset import DatasetError, EpisodeReader
from world.data.schema import check_recording
from world.errors import PromptError
from world.procedural.soundscape import SAMPLE_RATE, episode_params, render_frames
from world.procedural.themes import parse_prompt


class ExportError(RuntimeError):
    """The episode cannot be exported (empty, damaged) or ffmpeg failed."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("episode", type=Path, help="episode directory (holds meta.json)")
    parser.add_argument("--out", type=Path, required=True, help="output .mp4 file")
    parser.add_argument("--scale", type=int, default=4, help="integer nearest-neighbour upscale (default 4)")
    parser.add_argument("--overlay", action="store_true", help="draw held keys, mouse and prompt")
    parser.add_argument("--fps", type=float, default=None, help="playback rate (default: the episode's fps)")
    parser.add_argument("--crf", type=int, default=18, help="x264 quality, lower is better (default 18)")
    parser.add_argument("--silent", action="store_true", help="no sound track (default: the soundscape)")
    parser.add_argument("--ignore-tail", action="store_true", help="export the complete frames of a recording whose "
                        "writer was killed mid-chunk (default: a torn tail is refused)")


def run(args: argparse.Namespace) -> int:
    try:
        summary = export_mp4(args.episode, args.out, scale=args.scale, overlay=args.overlay, fps=args.fps, crf=args.crf,
                             sound=not args.silent, ignore_tail=args.ignore_tail)  # fmt: skip
    except (DatasetError, ExportError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 1
    except MemoryError:  # a size within a worker's limits, scaled beyond what this machine holds
        print(f"export: {args.episode}: not enough memory for its frames at --scale {args.scale}", file=sys.stderr)
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
    sound: bool = True,
    ignore_tail: bool = False,
) -> dict:
    """Encode the episode to `out`; returns {"out", "frames", "width", "height", "fps", "audio_s"}."""
    reader = EpisodeReader(episode)
    check_recording(reader, allow_tail=ignore_tail)
    if len(reader) == 0:
        raise ExportError(f"{reader.path}: episode has no complete frames to export")
    if scale < 1:
        raise ExportError(f"--scale must be >= 1, got {scale}")
    fps = float(fps or reader.meta["fps"])
    painter = OverlayPainter(reader.meta["height"] * scale, reader.meta["width"] * scale) if overlay else None
    images = _images(reader, scale, painter)
    first = next(images)
    height, width = first.shape[:2]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    audio = soundtrack(reader, fps) if sound else None
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        wav = None if audio is None else write_wav(Path(tmp) / "sound.wav", audio)
        _encode(_chain(first, images), out, width, height, fps, crf, wav)
    audio_s = None if audio is None else round(len(audio) / SAMPLE_RATE, 4)
    return {"out": str(out), "frames": len(reader), "width": width, "height": height, "fps": fps, "audio_s": audio_s}


def soundtrack(reader: EpisodeReader, fps: float) -> np.ndarray:
    """The episode's soundscape, float32 mono at SAMPLE_RATE, exactly frames / fps seconds long."""

    def prompt_theme(prompt: str | None) -> dict | None:
        try:
            return parse_prompt(prompt).to_json() if prompt else None
        except PromptError:  # a generated world's free prompt: wind and steps only
            return None

    params = episode_params(reader.records, functools.lru_cache(maxsize=64)(prompt_theme))
    return render_frames(params, fps, seed=int(reader.meta.get("seed", 0)) % 2**32)


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


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


def _encode(images: Iterator[np.ndarray], out: Path, width: int, height: int, fps: float, crf: int,
            wav: Path | None = None) -> None:  # fmt: skip
    import imageio_ffmpeg

    audio = ["-i", str(wav), "-c:a", "aac", "-b:a", "96k"] if wav is not None else ["-an"]
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
        *audio,
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


def overlay_font(size: int = 11) -> ImageFont.ImageFont:
    """DejaVu Sans (bundled with matplotlib, a dependency): PIL's own default font draws spaces so
    narrow that "green hills at noon" read as "green hillsat noon"."""
    import matplotlib

    path = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size) if path.is_file() else ImageFont.load_default()


def wrap_pixels(text: str, font: ImageFont.ImageFont, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap by rendered width; the last line gets an ellipsis when text is left over."""
    lines: list[str] = []
    words = text.split()
    while words and len(lines) < max_lines:
        line = words.pop(0)
        while words and font.getlength(f"{line} {words[0]}") <= width:
            line += " " + words.pop(0)
        lines.append(line)
    if words and lines:
        last = lines[-1]
        while last and font.getlength(last + "\u2026") > width:
            last = last[:-1]
        lines[-1] = last + "\u2026"
    return lines


class OverlayPainter:
    """Adds the key/mouse/prompt bar under a picture of size [height, width]."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.canvas_width = max(width, MIN_WIDTH)
        self.font = overlay_font()

    def paint(self, image: np.ndarray, action: Action, prompt: str) -> np.ndarray:
        canvas = Image.new("RGB", (self.canvas_width, self.height + BAR_HEIGHT), (16, 16, 16))
        canvas.paste(Image.fromarray(image), ((self.canvas_width - self.width) // 2, 0))
        draw = ImageDraw.Draw(canvas)
        top = self.height + 4
        self._keys(draw, top, action)
        self._mouse(draw, top, action)
        for n, line in enumerate(wrap_pixels(prompt, self.font, self.canvas_width - 8, max_lines=2)):
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
