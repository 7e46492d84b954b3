"""A procedural soundscape: what is on screen and what the player does -> audio, with numpy only.

Two halves, so that the window, recordings and `export` make the same sound:
- `SoundDirector` turns each shown frame's record (its action) and what the world shows (the
  chunk's `theme`: the engine's from its prompt, the generated world's from the theme classifier,
  docs/protocol.md section 5; the engine's `pose` gives the height) into `SoundParams`, the per-frame
  levels of each layer. Recordings store them per frame (`"audio"` in frames.jsonl, docs/dataset.md).
- `Synth` renders params into float32 mono samples block by block (state carries over, so blocks
  join without clicks): wind whose loudness follows speed and height, rain, a snow hush or an ash
  crackle by weather, birds at dawn (and a few at noon), crickets at dusk and night, footsteps while
  walking on the ground, a soft two-note cue on a prompt switch and on recording start/stop.
`render_episode` renders a whole recording offline (export; tests check the layers respond).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy.signal import lfilter

from world.procedural.themes import precipitation_kind

SAMPLE_RATE = 22050  # enough for 5 kHz crickets; a fraction of the CPU of 48 kHz
MOVE_KEYS = {"forward": 1.0, "back": 0.8, "left": 0.7, "right": 0.7}
CUES = ("prompt", "record")


@dataclass(frozen=True)
class SoundParams:
    """One frame's levels, each in [0, 1] (`cue`: a cue that starts at this frame, or "")."""

    wind: float = 0.0
    rain: float = 0.0
    snow: float = 0.0
    ash: float = 0.0
    birds: float = 0.0
    crickets: float = 0.0
    steps: float = 0.0
    cue: str = ""

    def to_json(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> SoundParams:
        """Lenient: a recording's "audio" dict; unknown or bad values fall back to silence."""
        values = {}
        for f in fields(cls):
            v = data.get(f.name)
            if f.name == "cue":
                values["cue"] = v if v in CUES else ""
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                values[f.name] = min(max(float(v), 0.0), 1.0)
        return cls(**values)


class SoundDirector:
    """Per-frame SoundParams from records and the world's theme. Keeps a little state: the height
    (the engine's pose when given, else estimated from rise/sink) and smoothed speed."""

    def __init__(self) -> None:
        self.height = 0.0  # 0 = on the ground, 1 = high up
        self.speed = 0.0
        self._cue = ""

    def cue(self, kind: str) -> None:
        """A cue (prompt switch, recording start/stop) for the next frame."""
        self._cue = kind if kind in CUES else ""

    def frame(self, record: dict, theme: dict | None, pose: dict | None = None) -> SoundParams:
        action = record.get("action") or {}
        keys = set(action.get("keys") or ())
        target = max((MOVE_KEYS[k] for k in keys if k in MOVE_KEYS), default=0.0)
        self.speed += 0.25 * (target - self.speed)  # about 4 frames to speed up or settle
        if pose is not None and isinstance(pose.get("clearance"), (int, float)):
            self.height = 1.0 - math.exp(-max(float(pose["clearance"]), 0.0) / 12.0)
        else:  # the generated world has no pose: rising and sinking move the estimate
            self.height = min(1.0, max(0.0, self.height + 0.02 * (("rise" in keys) - ("sink" in keys))))
        cue, self._cue = self._cue, ""
        return weather_params(theme or {}, self.speed, self.height, cue)


def weather_params(theme: dict, speed: float, height: float, cue: str = "") -> SoundParams:
    """The layers for a theme ({"biome", "time_of_day", "weather"}) at a speed and height in [0, 1]."""
    biome, time_of_day, weather = theme.get("biome"), theme.get("time_of_day"), theme.get("weather")
    falling = precipitation_kind(biome) if weather == "precipitation" and biome else None
    wet = 1.0 if falling == "rain" else 0.0
    wind = min(1.0, 0.12 + 0.45 * speed + 0.45 * height + (0.1 if weather == "fog" else 0.0) + 0.15 * wet)
    alive = 0.0 if biome in ("snow", "volcanic") else 1.0 - 0.7 * wet  # few birds or crickets in rain
    birds = {"dawn": 0.9, "noon": 0.25}.get(time_of_day, 0.0) * alive * (1.0 - height)
    crickets = {"dusk": 0.4, "night": 0.8}.get(time_of_day, 0.0) * alive * (1.0 - height)
    ash = 0.8 if falling == "ash" else 0.15 if biome == "volcanic" else 0.0
    steps = speed if height < 0.1 else 0.0  # footsteps only on the ground
    return SoundParams(wind=wind, rain=0.8 * wet, snow=0.8 if falling == "snow" else 0.0, ash=ash, birds=birds,
                       crickets=crickets, steps=steps, cue=cue)  # fmt: skip


class Synth:
    """SoundParams -> float32 mono samples in [-1, 1], rendered block by block."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> None:
        self.sr = sample_rate
        self.rng = np.random.default_rng(seed)
        self.t = 0  # samples rendered so far (phase of the oscillators)
        self._zi = {name: np.zeros(1) for name in ("wind", "snow", "steps", "rain")}
        self._step_phase = 0.0
        self._tail = np.zeros(0, np.float32)  # events (chirps, cues, steps) that run past a block
        self._levels = SoundParams()

    def render(self, params: SoundParams, n: int) -> np.ndarray:
        """The next n samples under `params` (levels glide from the previous block's)."""
        out = np.zeros(n + int(0.5 * self.sr), np.float32)  # room for events that outlast the block
        out[: len(self._tail)] += self._tail
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        level = {f.name: _glide(getattr(self._levels, f.name), getattr(params, f.name), ramp)
                 for f in fields(SoundParams) if f.name != "cue"}  # fmt: skip
        noise = self.rng.standard_normal(n).astype(np.float32)
        out[:n] += self._wind(noise, level["wind"]) + self._rain(noise, level["rain"])
        out[:n] += self._hush(noise, level["snow"]) + self._crackle(n, level["ash"])
        out[:n] += self._crickets(n, level["crickets"])
        self._events(out, n, params)
        self._tail = out[n:].copy()
        self._levels, self.t = params, self.t + n
        return np.clip(out[:n], -1.0, 1.0)

    def _lowpass(self, name: str, x: np.ndarray, cutoff_hz: float) -> np.ndarray:
        a = math.exp(-2 * math.pi * cutoff_hz / self.sr)  # one-pole filter; its state carries over blocks
        y, self._zi[name] = lfilter([1 - a], [1, -a], x, zi=self._zi[name] * 1.0)
        return y.astype(np.float32)

    def _wind(self, noise: np.ndarray, level: np.ndarray) -> np.ndarray:
        t = (self.t + np.arange(len(noise))) / self.sr
        gust = 0.75 + 0.25 * np.sin(2 * np.pi * 0.17 * t) * np.sin(2 * np.pi * 0.05 * t + 1.0)
        return self._lowpass("wind", noise, 400.0) * 1.6 * level * gust.astype(np.float32)

    def _rain(self, noise: np.ndarray, level: np.ndarray) -> np.ndarray:
        hiss = noise - self._lowpass("rain", noise, 1500.0)  # high-passed: the patter of many drops
        return 0.12 * hiss * level

    def _hush(self, noise: np.ndarray, level: np.ndarray) -> np.ndarray:
        return self._lowpass("snow", noise, 900.0) * 0.5 * level  # a soft, muffled hush

    def _crackle(self, n: int, level: np.ndarray) -> np.ndarray:
        clicks = (self.rng.random(n) < 40.0 / self.sr * level) * self.rng.uniform(-0.5, 0.5, n)
        return lfilter([1.0], [1.0, -0.6], clicks).astype(np.float32)  # short decaying pops

    def _crickets(self, n: int, level: np.ndarray) -> np.ndarray:
        t = (self.t + np.arange(n)) / self.sr
        pulse = (np.sin(2 * np.pi * 28 * t) > 0.3) * (np.sin(2 * np.pi * 0.8 * t) > -0.2)  # chirp trains
        return (0.05 * level * pulse * np.sin(2 * np.pi * 4600 * t)).astype(np.float32)

    def _events(self, out: np.ndarray, n: int, params: SoundParams) -> None:
        """Chirps, footsteps and cues: short sounds placed in the block, running into the next."""
        seconds = n / self.sr
        for _ in range(self.rng.poisson(2.0 * params.birds * seconds)):
            self._add(out, int(self.rng.integers(n)), _chirp(self.sr, float(self.rng.uniform(2400, 3800))), 0.12)
        if params.steps > 0.05:
            interval = 0.5 / (0.6 + 0.6 * params.steps)  # brisker steps when moving faster
            self._step_phase += seconds
            while self._step_phase >= interval:
                self._step_phase -= interval
                at = max(0, n - int(self._step_phase * self.sr) - 1)
                self._add(out, at, _thud(self.sr, self.rng), 0.35 * params.steps)
        if params.cue:
            self._add(out, 0, _cue(self.sr, params.cue), 0.25)

    @staticmethod
    def _add(out: np.ndarray, at: int, sound: np.ndarray, gain: float) -> None:
        end = min(len(out), at + len(sound))
        out[at:end] += gain * sound[: end - at]


def _glide(a: float, b: float, ramp: np.ndarray) -> np.ndarray:
    return (a + (b - a) * ramp).astype(np.float32)


def _chirp(sr: int, freq: float) -> np.ndarray:
    t = np.arange(int(0.09 * sr)) / sr
    sweep = np.sin(2 * np.pi * (freq * t + 9000 * t * t))  # a quick upward sweep
    return (sweep * np.sin(np.pi * t / t[-1]) ** 2).astype(np.float32)


def _thud(sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.07 * sr)) / sr
    body = lfilter([0.08], [1, -0.92], rng.standard_normal(len(t)))  # a low, dull noise burst
    return (body * np.exp(-t * 45)).astype(np.float32)


def _cue(sr: int, kind: str) -> np.ndarray:
    notes = (660.0, 880.0) if kind == "prompt" else (880.0, 660.0)
    t = np.arange(int(0.12 * sr)) / sr
    envelope = np.sin(np.pi * t / t[-1])
    return np.concatenate([np.sin(2 * np.pi * f * t) * envelope for f in notes]).astype(np.float32)


def render_frames(params: Iterable[SoundParams], fps: float, sample_rate: int = SAMPLE_RATE,
                  seed: int = 0) -> np.ndarray:
    """Samples for a sequence of frames: exactly round(frames * sample_rate / fps) of them, float32."""
    synth, blocks, done = Synth(sample_rate, seed), [], 0
    for k, p in enumerate(params, 1):
        upto = round(k * sample_rate / fps)  # rounded per frame, so the length never drifts from the video's
        blocks.append(synth.render(p, upto - done))
        done = upto
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def episode_params(records: Sequence[dict], prompt_theme) -> list[SoundParams]:
    """Per-frame params of a recording: stored ones ("audio"), else directed from its actions and
    `prompt_theme(prompt) -> theme dict or None` (recordings made before sound, datagen episodes)."""
    director, out, prompt = SoundDirector(), [], None
    for record in records:
        if isinstance(record.get("audio"), dict):
            out.append(SoundParams.from_json(record["audio"]))
            continue
        if record.get("prompt") != prompt and prompt is not None:
            director.cue("prompt")
        prompt = record.get("prompt")
        out.append(director.frame(record, prompt_theme(prompt)))
    return out
