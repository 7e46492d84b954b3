"""eval --measures longstream: image statistics, scenario scripts, the verdict, the command end to end.

The verdict must hold for a world identical to the engine and fail, naming the statistic, for
one that fades to grey; the statistics must move the right way on frames whose answer is known.
"""

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import run_world
from model.evaluation import suite as cli
from model.evaluation.eval_config import EvalConfig
from model.evaluation.measure_longstream import (
    MIXED_CYCLE,
    SCENARIOS,
    STATS,
    WindowMeans,
    frame_stats,
    judge,
    measure_longstream,
    scenario_actions,
    summarise,
    verdict_text,
)
from model.evaluation.metrics import colourfulness, gradient_sharpness, hsv_saturation
from model.evaluation.worlds import Worlds
from world.backend import ChunkResult
from world.backends.registry import create_backend

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

SHORT = replace(EvalConfig(), longstream_seconds=4.0, longstream_window_s=0.5, longstream_scenarios=("turn",))


def _scene(seed=0, h=32, w=32):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _grey(frames, amount):
    """frames blended toward mid-grey by `amount` in [0, 1]."""
    return np.round(frames * (1.0 - amount) + 128.0 * amount).astype(np.uint8)


# ----------------------------------------------------------------------------- statistics


def test_saturated_frames_score_higher_saturation_and_colourfulness():
    scene = _scene()
    washed = _grey(scene, 0.6)
    assert hsv_saturation(scene) > hsv_saturation(washed)
    assert colourfulness(scene) > colourfulness(washed)
    assert colourfulness(_grey(scene, 1.0)) == 0.0  # grey has no colour
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255  # rg = 255, yb = 127.5, no spread: 0.3 * |(255, 127.5)|
    assert colourfulness(red) == pytest.approx(0.3 * np.hypot(255.0, 127.5))


def test_blur_lowers_sharpness():
    scene = _scene()
    blurred = gaussian_filter(scene, sigma=(1.5, 1.5, 0))
    assert gradient_sharpness(blurred) < 0.5 * gradient_sharpness(scene)
    assert gradient_sharpness(np.full((8, 8, 3), 90, np.uint8)) == 0.0
    ramp = np.repeat(np.repeat((10 * np.arange(8, dtype=np.uint8))[None, :, None], 8, 0), 3, 2)
    assert gradient_sharpness(ramp) == pytest.approx(10 / 255)  # one step of 10 grey levels per column


def test_window_means_do_not_depend_on_chunking():
    frames = np.stack([_scene(i, 8, 8) for i in range(20)])
    whole = frame_stats(frames)[:20].reshape(4, 5, len(STATS)).mean(1)
    acc = WindowMeans(5)
    for start in range(0, 21, 3):  # chunks of 3 frames, windows of 5; the last chunk is short
        acc.add(frames[start : start + 3])
        assert len(acc.partial) < 5  # only the window in progress is kept
    assert np.allclose(acc.means(), whole)


# ----------------------------------------------------------------------------- verdict


def test_identical_streams_have_ratio_one_and_hold():
    means = np.abs(np.random.default_rng(0).normal(1.0, 0.3, (10, len(STATS))))
    s = summarise(means, means, 1.0)
    assert all(r == [1.0] * 10 for r in s["windows"]["ratio"].values())
    assert s["verdict"] == "holds" and s["failed_on"] == [] and s["share_inside"] == 1.0
    assert s["judged_from_s"] == 2.0  # the first fifth is not judged


def test_verdict_limits_and_the_unjudged_start():
    ratios = np.ones((10, len(STATS)))
    ratios[0, 0] = 3.0  # the first fifth may do anything
    assert judge(ratios, 1.0)["verdict"] == "holds"
    ratios[5, 1] = 1.14  # contrast inside +-15%
    ratios[6, 2] = 0.61  # sharpness above 0.6x
    ratios[7, 3] = 0.2  # colourfulness is reported, not judged
    assert judge(ratios, 1.0)["verdict"] == "holds"
    ratios[8, 2] = 0.59
    v = judge(ratios, 1.0)
    assert v["failed_on"] == ["sharpness"] and v["share_inside"] == pytest.approx(7 / 8)
    assert v["worst_window"]["t_s"] == 8.0 and v["worst_window"]["sharpness"] == pytest.approx(0.59)
    ratios[9, 0] = 1.5
    v = judge(ratios, 1.0)
    assert v["failed_on"] == ["saturation", "sharpness"] and v["worst_window"]["t_s"] == 9.0
    assert verdict_text(v).startswith("fails on saturation, sharpness (inside 75% of windows; worst at 9 s")


class GreyingWorld:
    """The engine, faded linearly to grey over `frames` frames after an engine start."""

    def __init__(self, frames: int):
        self.inner, self.frames, self.k = create_backend("engine"), frames, 0

    @property
    def info(self):
        return self.inner.info

    def reset_with_context(self, frames, actions, prompt, seed=0):
        self.inner.reset(seed, prompt)
        self.inner.step_chunk(list(actions[1:]))
        self.k = 0

    def step_chunk(self, actions):
        out = []
        for frame in self.inner.step_chunk(actions).frames:
            self.k += 1
            out.append(_grey(frame, min(1.0, self.k / self.frames)))
        return ChunkResult(np.stack(out))


def test_a_world_fading_to_grey_fails_and_the_engine_against_itself_holds():
    lines = []
    r = measure_longstream(Worlds(GreyingWorld(60), create_backend("engine")), SHORT, lines.append, show=False)
    turn = r["longstream"]["turn"]
    assert r["longstream_verdicts"] == {"turn": "fails"} and r["longstream_holds"] is False
    assert {"saturation", "contrast"} <= set(turn["failed_on"]) and turn["share_inside"] < 0.5
    assert turn["windows"]["ratio"]["saturation"][-1] < 0.1  # grey by the end
    assert len(turn["windows"]["t_s"]) == 8 and lines[0].startswith("longstream turn: fails on saturation")
    # two engines (the world re-simulates the engine's start): bit-identical streams
    same = measure_longstream(Worlds(create_backend("engine"), create_backend("engine")), SHORT, show=False)
    assert same["longstream_holds"] is True and set(same["longstream"]["turn"]["windows"]["ratio"]["contrast"]) == {1.0}


# ----------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_scripts_are_deterministic_and_of_the_right_length(name):
    for n in (0, 1, 300, 9000):
        actions = scenario_actions(name, n)
        assert len(actions) == n and actions == scenario_actions(name, n)
    assert len({a for a in scenario_actions(name, 400)}) == (1 if name != "mixed" else len(MIXED_CYCLE))


def test_mixed_script_uses_every_kind_of_action_and_stays_level():
    cycle = scenario_actions("mixed", sum(frames for _, frames, _, _ in MIXED_CYCLE))
    keys = {k for a in cycle for k in a.keys}
    assert {"turn_left", "turn_right", "forward", "look_up", "look_down"} <= keys
    assert any(not a.keys and a.mouse_dx == a.mouse_dy == 0 for a in cycle)  # idle
    assert any(a.mouse_dx for a in cycle) and any(a.mouse_dy for a in cycle)
    assert sum(a.held("look_up") for a in cycle) == sum(a.held("look_down") for a in cycle)
    assert sum(a.mouse_dy for a in cycle) == 0.0
    with pytest.raises(ValueError, match="unknown longstream scenario"):
        scenario_actions("spin", 3)


# ----------------------------------------------------------------------------- eval command


def test_eval_longstream_on_a_tiny_world(world_dir, tmp_path, monkeypatch, capsys):
    quick = replace(cli.EVAL_PRESETS["quick"], longstream_seconds=0.4, longstream_window_s=0.1)
    monkeypatch.setitem(cli.EVAL_PRESETS, "quick", quick)
    out = tmp_path / "eval"
    args = ["eval", "--checkpoint", str(world_dir), "--device", "cpu", "--sampler", "uniform", "--steps", "1",
            "--measures", "longstream", "--quick", "--threads", "1", "--out", str(out), "--json"]  # fmt: skip
    assert run_world.main(args) == 0
    captured = capsys.readouterr()
    last = json.loads(captured.out.strip().splitlines()[-1])
    assert set(last["longstream_verdicts"]) == set(SCENARIOS) and isinstance(last["longstream_holds"], bool)
    data = json.loads((out / "results.json").read_text())
    for name in SCENARIOS:
        s = data["longstream"][name]
        assert s["verdict"] in ("holds", "fails") and 0 <= s["share_inside"] <= 1
        assert len(s["windows"]["t_s"]) == 4 and set(s["windows"]["ratio"]) == set(STATS)
        assert all(len(v) == 4 for v in s["windows"]["engine"].values())
        assert f"longstream {name}: " in captured.err
    assert data["longstream_seconds"] == pytest.approx(0.4) and "longstream" in data["timings_s"]
    assert (out / "eval_longstream.png").stat().st_size > 1000
    assert "| scenario | verdict | windows inside |" in (out / "report.md").read_text()


def test_eval_longstream_baseline_and_option_checks(tmp_path, capsys):
    out = tmp_path / "still"
    args = ["eval", "--backend", "still", "--measures", "longstream", "--quick", "--longstream-seconds", "2"]
    assert run_world.main([*args, "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["backend"] == "still" and data["longstream_seconds"] == 2.0
    assert all(len(s["windows"]["t_s"]) == 2 for s in data["longstream"].values())
    assert run_world.main([*args, "--longstream-window-s", "0.5", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["longstream_window_s"] == 0.5 and len(data["longstream"]["turn"]["windows"]["t_s"]) == 4
    assert run_world.main([*args[:-1], "0", "--out", str(tmp_path / "never")]) == 2
    assert "--longstream-seconds 0.0 and --longstream-window-s 1.0: need" in capsys.readouterr().err
    assert run_world.main([*args, "--longstream-window-s", "nan", "--out", str(tmp_path / "never")]) == 2
    assert not (tmp_path / "never").exists()
    assert run_world.main([*args, "--longstream-scenarios", "turn,mixed", "--out", str(out)]) == 0
    assert set(json.loads((out / "results.json").read_text())["longstream"]) == {"turn", "mixed"}
    assert run_world.main([*args, "--longstream-scenarios", "turn,spin", "--out", str(tmp_path / "never")]) == 2
    assert "unknown scenarios ['spin']" in capsys.readouterr().err and not (tmp_path / "never").exists()
    assert "longstream" in cli.MEASURES and "longstream" not in cli.DEFAULT_MEASURES  # opt-in: 15 minutes
