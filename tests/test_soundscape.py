"""The soundscape rendered offline (no audio device): its layers follow speed, height, weather and
time of day; an exported mp4 carries it as an audio stream as long as the video."""

from __future__ import annotations

import subprocess

import imageio_ffmpeg
import numpy as np
import pytest

from tests.helpers import last_json, run_cli
from world.actions import Action
from world.data.dataset import EpisodeWriter
from world.procedural.soundscape import SAMPLE_RATE, SoundDirector, SoundParams, Synth, render_frames, weather_params

SECONDS = 2.0


def render(params: SoundParams, seconds: float = SECONDS) -> np.ndarray:
    return render_frames([params] * int(30 * seconds), fps=30.0)


def band(samples: np.ndarray, low: float, high: float) -> float:
    """Energy of the samples between low and high Hz."""
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / SAMPLE_RATE)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum())


def theme(biome: str = "grassland", time_of_day: str = "noon", weather: str = "clear") -> dict:
    return {"biome": biome, "time_of_day": time_of_day, "weather": weather}


def test_wind_follows_speed_and_height_and_footsteps_need_the_ground():
    still, running = weather_params(theme(), 0.0, 0.0), weather_params(theme(), 1.0, 0.0)
    high = weather_params(theme(), 0.0, 1.0)
    assert still.wind < running.wind and still.wind < high.wind
    assert running.steps == 1.0 and weather_params(theme(), 1.0, 0.9).steps == 0.0
    low = lambda p: band(render(SoundParams(wind=p.wind)), 20, 400)  # noqa: E731
    assert low(running) > 4 * low(still)
    walking = render(SoundParams(steps=1.0))
    assert np.abs(walking).max() > 0.01 and np.abs(render(SoundParams())).max() == 0.0


def test_weather_picks_rain_snow_hush_or_ash_crackle():
    rain = weather_params(theme(weather="precipitation"), 0, 0)
    snow = weather_params(theme("snow", weather="precipitation"), 0, 0)
    ash = weather_params(theme("volcanic", weather="precipitation"), 0, 0)
    assert (rain.rain, rain.snow, rain.ash) == (0.8, 0.0, 0.0) and snow.snow == 0.8 and snow.rain == 0.0
    assert ash.ash == 0.8 and ash.rain == 0.0
    clear = render(weather_params(theme(), 0, 0))
    assert band(render(rain), 3000, 10000) > 20 * band(clear, 3000, 10000)  # the hiss of rain
    crackle = render(SoundParams(ash=0.8))
    assert (np.abs(crackle) > 0.1).sum() > 10  # pops


def test_birds_at_dawn_and_crickets_at_night():
    dawn, night = weather_params(theme(time_of_day="dawn"), 0, 0), weather_params(theme(time_of_day="night"), 0, 0)
    assert dawn.birds > 0.5 and dawn.crickets == 0 and night.crickets > 0.5 and night.birds == 0
    birds = lambda p: band(render(SoundParams(birds=p.birds), 4.0), 2300, 4200)  # noqa: E731
    crickets = lambda p: band(render(SoundParams(crickets=p.crickets)), 4500, 4700)  # noqa: E731
    assert birds(dawn) > 10 * birds(night) and crickets(night) > 10 * crickets(dawn)


def test_the_director_reads_actions_and_cues_and_blocks_join():
    director = SoundDirector()
    walk = {"action": Action(("forward",)).to_json()}
    levels = [director.frame(walk, theme()).steps for _ in range(10)]
    assert levels[0] < levels[-1] and levels[-1] > 0.9  # speeds up over a few frames
    director.cue("prompt")
    assert director.frame(walk, theme()).cue == "prompt" and director.frame(walk, theme()).cue == ""
    for _ in range(200):
        high = director.frame({"action": Action(("rise",)).to_json()}, theme())
    standing = SoundDirector().frame({"action": Action(()).to_json()}, theme())
    assert high.steps == 0.0 and high.wind > standing.wind + 0.3  # up in the air: wind, no footsteps
    assert SoundParams.from_json({"wind": 2, "rain": float("nan"), "cue": "boom"}) == SoundParams(wind=1.0)
    synth = Synth()
    blocks = np.concatenate([synth.render(SoundParams(wind=0.5), 512) for _ in range(8)])
    steps = np.abs(np.diff(blocks))
    joins = steps[511::512]
    assert joins.max() <= np.delete(steps, np.s_[511::512]).max()  # no clicks where blocks meet
    assert len(render_frames([SoundParams()] * 7, fps=30)) == round(7 * SAMPLE_RATE / 30)


def test_export_writes_the_sound_into_the_mp4_as_long_as_the_video(tmp_path, capsys):
    frames = 45
    with EpisodeWriter(tmp_path / "ep", backend="engine", seed=1, height=32, width=32, chunk_frames=3, fps=30,
                       source="play") as writer:  # fmt: skip
        for c in range(frames // 3):
            prompt = "desert at dusk in the rain" if c < 8 else "snowy peaks at night"
            records = [{"action": Action(("forward",)).to_json(), "prompt": prompt}] * 3
            writer.append_chunk(np.full((3, 32, 32, 3), 40 * (c % 5), np.uint8), records)
    code, out, err = run_cli(capsys, "export", str(tmp_path / "ep"), "--out", str(tmp_path / "ep.mp4"))
    assert code == 0, err
    assert last_json(out)["audio_s"] == pytest.approx(frames / 30)
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    argv = [ffmpeg, "-v", "error", "-i", str(tmp_path / "ep.mp4"), "-map", "0:a", "-f", "s16le", "-ac", "1",
            "-ar", str(SAMPLE_RATE), "-"]  # fmt: skip
    decoded = subprocess.run(argv, capture_output=True, check=True).stdout
    audio_s = len(decoded) / 2 / SAMPLE_RATE
    video_frames = imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "ep.mp4"))[0]
    assert video_frames == frames
    assert abs(audio_s - frames / 30) < 1 / 30  # within one video frame
    assert np.abs(np.frombuffer(decoded, "<i2")).max() > 300  # not silence
    code, out, _ = run_cli(capsys, "export", str(tmp_path / "ep"), "--out", str(tmp_path / "quiet.mp4"), "--silent")
    assert code == 0 and last_json(out)["audio_s"] is None
