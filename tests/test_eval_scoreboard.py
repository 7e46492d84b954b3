"""The scoreboard: baseline worlds, counterfactual accuracy, teacher-forced PSNR, engine starts.

The engine must sit at the ceiling (counterfactual 1.0, teacher-forced 100 dB), the `still`
baseline at chance (0.2 with 5 actions, spread 0) and every baseline row must run through eval.
"""

import json
from dataclasses import replace

import numpy as np
import pytest

import run_world
from model.common.rollout import begin, engine_context, rollout
from model.evaluation import scoreboard
from model.evaluation import suite as cli
from model.evaluation.eval_config import EvalConfig
from model.evaluation.measure_counterfactual import COUNTERFACTUAL_ACTIONS, credit, measure_counterfactual
from model.evaluation.measure_fidelity import measure_fidelity
from model.evaluation.measure_teacher_forced import TEACHER_FORCED_CLASSES, measure_teacher_forced
from model.evaluation.metrics import PSNR_CAP_DB
from model.evaluation.worlds import Worlds
from world.actions import IDLE, Action
from world.backend import BackendError, PromptError
from world.backends.registry import create_backend

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

SMALL = EvalConfig(
    fidelity_episodes=1, fidelity_chunks=2, counterfactual_contexts=2, counterfactual_chunks=1,
    teacher_forced_contexts=1,
)  # fmt: skip


def _worlds(name: str, start: str = "engine") -> Worlds:
    engine = create_backend("engine")
    if name == "engine":
        return Worlds(engine, engine, same=True, start=start)
    return Worlds(create_backend(name), engine, start=start)


# ----------------------------------------------------------------------------- baseline worlds


def test_baselines_hold_the_start_frame():
    engine = create_backend("engine")
    first = engine.reset(5, "green hills at noon")
    for name in ("still", "copy-last"):
        world = create_backend(name)
        assert world.info.name == name and (world.info.height, world.info.chunk_frames) == (64, 3)
        with pytest.raises(BackendError, match="before reset"):
            world.step_chunk([IDLE] * 3)
        assert np.array_equal(world.reset(5, "green hills at noon"), first)  # the engine's first view
        for _ in range(2):
            chunk = world.step_chunk([Action(("forward",))] * 3)
            assert chunk.frames.shape == (3, 64, 64, 3) and (chunk.frames == first).all()
        world.set_prompt("desert dunes at dusk")  # accepted, ignored
        assert (world.step_chunk([IDLE] * 3).frames == first).all()
        ctx = np.arange(6 * 64 * 64 * 3, dtype=np.uint64).astype(np.uint8).reshape(6, 64, 64, 3)
        world.reset_with_context(ctx, [IDLE] * 6, "anything")
        assert (world.step_chunk([IDLE] * 3).frames == ctx[-1]).all()
        with pytest.raises(BackendError, match="uint8"):
            world.reset_with_context(ctx.astype(np.float32), [IDLE] * 6, "x")
        with pytest.raises(BackendError, match="one action per"):
            world.reset_with_context(ctx, [IDLE] * 5, "x")
        with pytest.raises(PromptError):
            world.reset(0, "")
    with pytest.raises(BackendError, match="unknown still options"):
        create_backend("still", sampler="uniform")
    with pytest.raises(BackendError):
        create_backend("copy-last", height=0)


def test_engine_start_resimulates_the_engine_and_uses_the_hook():
    engine = create_backend("engine")
    ctx = engine_context(engine, 3, "green hills at noon", [Action(("forward",))] * 2)
    assert len(ctx.frames) == 3 and ctx.actions[0] == IDLE
    other = create_backend("engine")
    assert np.array_equal(begin(other, 3, "green hills at noon", ctx), ctx.frames[-1])  # re-simulated
    with pytest.raises(ValueError, match="--start text"):
        begin(other, 4, "green hills at noon", ctx)  # another seed does not reproduce the context
    r = rollout(create_backend("still"), 3, "green hills at noon", [IDLE] * 3, start=ctx)
    assert (r.frames == ctx.frames[-1]).all()
    with pytest.raises(ValueError, match="start"):
        Worlds(engine, engine, start="image")


# ----------------------------------------------------------------------------- counterfactual


def test_counterfactual_tie_rule():
    d = np.array([[0.0, 1.0, 2.0], [1.0, 1.0, 3.0], [5.0, 5.0, 5.0]])
    c = credit(d)
    assert c[0].tolist() == [1.0, 0.0, 0.0]
    assert c[1].tolist() == [0.5, 0.5, 0.0]  # a tie of two: half a credit each
    assert c[2] == pytest.approx([1 / 3] * 3)
    assert np.diag(c).mean() == pytest.approx((1 + 0.5 + 1 / 3) / 3)
    # identical world outcomes: every row is the same, so exactly one credit per context in total
    same = np.tile([[3.0, 1.0, 1.0, 4.0]], (4, 1))
    assert np.trace(credit(same)) == pytest.approx(1.0)


def test_counterfactual_engine_is_one_still_is_chance():
    r = measure_counterfactual(_worlds("engine"), SMALL)
    assert r["counterfactual_accuracy"] == 1.0 and r["counterfactual_spread_ratio"] == 1.0
    assert r["counterfactual_chance"] == 0.2 == 1 / len(COUNTERFACTUAL_ACTIONS)
    assert r["counterfactual_contexts"] == 2
    # the engine's own idle future has no error, and the skipped contexts leave no action without effect
    assert set(r["counterfactual_resolvable_per_action"]) == set(COUNTERFACTUAL_ACTIONS) - {"idle"}
    assert all(v == 1.0 for v in r["counterfactual_resolvable_per_action"].values())
    assert r["counterfactual_effect_world_per_action"] == r["counterfactual_effect_engine_per_action"]
    assert all(v > 0 for v in r["counterfactual_effect_engine_per_action"].values())
    for name in ("still", "copy-last"):
        r = measure_counterfactual(_worlds(name), SMALL)
        assert r["counterfactual_accuracy"] == pytest.approx(0.2)
        assert r["counterfactual_spread_ratio"] == 0.0 and r["counterfactual_spread_world"] == 0.0
        assert all(v == 0.0 for v in r["counterfactual_effect_world_per_action"].values())  # the keys move nothing
        assert sum(sum(row.values()) for row in r["counterfactual_confusion"].values()) == pytest.approx(5.0)


# ----------------------------------------------------------------------------- teacher-forced, fidelity


def test_teacher_forced_engine_is_capped_and_copy_last_is_lower():
    r = measure_teacher_forced(_worlds("engine"), SMALL)
    assert set(r["teacher_forced_psnr"]) == set(TEACHER_FORCED_CLASSES)
    assert {"idle", "forward", "turn_left", "turn_right", "look_up"} <= set(r["teacher_forced_psnr"])
    assert all(v == PSNR_CAP_DB for v in r["teacher_forced_psnr"].values())
    assert r["teacher_forced_psnr_mean"] == PSNR_CAP_DB
    copy = r["teacher_forced_psnr_copy_last"]
    assert all(copy[c] < 60 for c in ("forward", "turn_left", "turn_right", "look_up"))  # the camera moves
    assert r["teacher_forced_psnr_copy_last_mean"] < PSNR_CAP_DB
    assert r["teacher_forced_gain_min"] > 40 and r["teacher_forced_gain_min_class"] != "idle"
    base = measure_teacher_forced(_worlds("copy-last"), SMALL)
    assert base["teacher_forced_psnr"] == copy and base["teacher_forced_gain_min"] == 0.0


def test_fidelity_reports_the_still_baseline_per_chunk():
    r = measure_fidelity(_worlds("engine"), SMALL)
    assert r["fidelity_mode"] == "context" and r["psnr_per_chunk"] == [PSNR_CAP_DB] * 2
    assert len(r["psnr_still_per_chunk"]) == len(r["ssim_still_per_chunk"]) == 2
    assert r["psnr_still_1chunk"] < PSNR_CAP_DB
    s = measure_fidelity(_worlds("still"), SMALL)
    assert s["psnr_per_chunk"] == s["psnr_still_per_chunk"] == r["psnr_still_per_chunk"]
    t = measure_fidelity(_worlds("still", start="text"), SMALL)
    assert t["fidelity_mode"] == "reset" and t["psnr_per_chunk"] == t["psnr_still_per_chunk"]


# ----------------------------------------------------------------------------- through the CLIs


@pytest.fixture
def tiny_presets(monkeypatch):
    tiny = replace(
        SMALL, probe_worlds=1, probe_hold=3, settle_frames=0, train_prompts=2, heldout_prompts=2, prompt_frames=3,
        switches=1, switch_before=3, switch_after=6, switch_stable=2, drift_seconds=2.0, drift_reference_s=1.0,
        fd_segment_s=1.0, strip_frames=4,
    )  # fmt: skip
    monkeypatch.setitem(cli.EVAL_PRESETS, "quick", tiny)
    monkeypatch.setitem(scoreboard.EVAL_PRESETS, "scoreboard", SMALL)


NAMED = (
    "start", "action_f1", "action_ratio_to_ceiling", "psnr_per_chunk", "ssim_per_chunk", "psnr_still_per_chunk",
    "ssim_still_per_chunk", "teacher_forced_psnr", "teacher_forced_psnr_mean", "teacher_forced_psnr_copy_last",
    "teacher_forced_gain_min", "counterfactual_accuracy", "counterfactual_spread_ratio", "counterfactual_chance",
    "switch_chunks", "switch_success", "drift_saturation_pct", "drift_contrast_pct",
)  # fmt: skip


@pytest.mark.parametrize("backend", ["still", "copy-last", "engine"])
def test_eval_rows_have_the_named_fields(backend, tiny_presets, tmp_path, capsys):
    out = tmp_path / backend
    # every measure for one baseline; the scoreboard's three for the others (seconds, not tens)
    measures = [] if backend == "still" else ["--measures", "fidelity,counterfactual,teacher_forced"]
    args = ["eval", "--backend", backend, "--quick", "--threads", "1", *measures, "--out", str(out), "--json"]
    assert run_world.main(args) == 0
    data = json.loads((out / "results.json").read_text())
    for key in NAMED if backend == "still" else NAMED[3:13]:
        assert key in data, key
    assert data["start"] == "engine" and data["backend"] == backend and data["fidelity_mode"] == "context"
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("counterfactual_accuracy", "teacher_forced_gain_min", "psnr_still_1chunk", "start"):
        assert key in last
    report = (out / "report.md").read_text()
    assert "| counterfactual accuracy (5 actions) |" in report and "| class | world | copy-last | gain |" in report
    if backend == "engine":
        assert data["counterfactual_accuracy"] == 1.0 and data["teacher_forced_psnr_mean"] == PSNR_CAP_DB
    else:
        assert data["counterfactual_accuracy"] == pytest.approx(0.2) and data["counterfactual_spread_ratio"] == 0
        assert data["psnr_per_chunk"] == data["psnr_still_per_chunk"]
    if backend == "still":
        assert data["motion_world"] == 0.0 and data["drift_saturation_pct"] == 0.0
        assert data["switch_success"] == 0.0 and data["action_start"] == "engine"


def test_eval_start_text_and_option_checks(tiny_presets, tmp_path, capsys):
    out = tmp_path / "text"
    args = ["eval", "--backend", "still", "--start", "text", "--quick", "--measures", "fidelity,switch", "--out"]
    assert run_world.main([*args, str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["start"] == "text" and data["fidelity_mode"] == "reset" and data["switch_start"] == "text"
    assert run_world.main(["eval", "--backend", "still", "--sampler", "uniform", "--quick"]) == 2
    assert "options of --backend generated only, not of the still" in capsys.readouterr().err


def test_scoreboard_cli_engine_still_and_a_generated_world(tiny_presets, tmp_path, capsys):
    from model.runtime.world_model import make_random_world

    rows = {}
    for backend in ("engine", "still"):
        path = tmp_path / f"{backend}.json"
        assert scoreboard.main(["--backend", backend, "--threads", "1", "--json", "--out", str(path)]) == 0
        rows[backend] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert json.loads(path.read_text()) == rows[backend]
    assert rows["engine"]["counterfactual_accuracy"] == 1.0 and rows["engine"]["teacher_forced_psnr_mean"] == 100
    assert rows["still"]["counterfactual_accuracy"] == pytest.approx(0.2)
    assert rows["still"]["teacher_forced_gain_min"] == 0.0
    assert rows["still"]["psnr_per_chunk"] == rows["engine"]["psnr_still_per_chunk"]
    ckpt = str(make_random_world(tmp_path / "random"))
    runs = []
    for _ in range(2):  # deterministic: the same checkpoint gives the same numbers
        assert scoreboard.main(["--checkpoint", ckpt, "--sampler", "uniform", "--threads", "1", "--json"]) == 0
        runs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "timings_s")}  # noqa: E731
    assert strip(runs[0]) == strip(runs[1])
    r = runs[0]
    assert r["backend"] == "generated" and r["sampler_config"]["name"] == "uniform" and r["model_step"] is not None
    assert 0.0 <= r["counterfactual_accuracy"] <= 1.0 and r["teacher_forced_psnr_mean"] < 60
    assert len(r["psnr_per_chunk"]) == len(r["psnr_still_per_chunk"]) == SMALL.fidelity_chunks
    # The autoencoder ceiling: a generated world has one, the engine and the baselines do not.
    assert (
        rows["engine"]["teacher_forced_psnr_autoencoder"] is None and rows["still"]["psnr_autoencoder_10chunk"] is None
    )
    ceiling, copy = r["teacher_forced_psnr_autoencoder"], r["teacher_forced_psnr_copy_last"]
    assert set(ceiling) == set(TEACHER_FORCED_CLASSES) and all(0 < v < 60 for v in ceiling.values())
    assert r["teacher_forced_gain_ceiling"] == pytest.approx({k: ceiling[k] - copy[k] for k in ceiling})
    assert len(r["psnr_autoencoder_per_chunk"]) == SMALL.fidelity_chunks


def test_autoencoder_roundtrip_is_the_worlds_own_encode_then_decode(world_dir):
    from model.evaluation.ceiling import autoencoder_roundtrip

    assert autoencoder_roundtrip(create_backend("engine"), np.zeros((2, 3, 64, 64, 3), np.uint8)) is None
    world = create_backend("generated", checkpoint=str(world_dir), device="cpu")
    frames = create_backend("engine").reset(3, "green hills at noon")[None]  # [1, H, W, 3]
    out = autoencoder_roundtrip(world, frames[None])
    assert out.shape == (1, *frames.shape) and out.dtype == np.uint8
    assert np.array_equal(out[0], world.stream.decode(world.stream.encode(frames)))
