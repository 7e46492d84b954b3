"""The evaluation suite end to end: the engine scores at the ceiling, random weights near chance.

A tiny IDM and classifier are trained here on a few hundred engine frames (seconds), which is
enough for them to read the engine clearly better than chance; the assertions are about the
suite (engine = ceiling, identical re-simulation, random world ~ chance), not about those nets.
"""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import run_world
from model.common.rollout import rollout
from model.evaluation.action_probes import probe_segments
from model.evaluation.eval_config import EvalConfig
from model.evaluation.measure_prompts import frames_to_agree, prompt_sets, read_prompt_file
from model.evaluation.metrics import PSNR_CAP_DB
from model.evaluation.report import markdown, write_outputs
from model.evaluation.suite import evaluate
from model.evaluation.worlds import Worlds
from model.readers.episodes import Episode, split_episodes
from model.readers.idm import IDMConfig
from model.readers.train_classifier import ClassifierTask
from model.readers.train_idm import IDMTask
from model.readers.trainer import ReaderTrainConfig, Trainer
from world.backends.registry import create_backend
from world.procedural.themes import all_themes, describe, parse_prompt

TINY = EvalConfig(
    probe_worlds=1, probe_hold=6, settle_frames=0, train_prompts=3, heldout_prompts=3, prompt_frames=6,
    switches=1, switch_before=3, switch_after=9, switch_stable=2, fidelity_episodes=1, fidelity_chunks=2,
    drift_seconds=2.0, drift_reference_s=1.0, fd_segment_s=1.0, strip_frames=4,
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py




def _train(task, out, steps):
    cfg = ReaderTrainConfig(steps=steps, batch=16, lr=3e-3, warmup=10, eval_every=10**6, save_every=10**6)
    Trainer(task, out, cfg, torch.device("cpu"), {}, out.parent / f"{task.kind}-log").run()
    return out


def bout_episodes(n_episodes: int, frames: int, hold: int = 6, seed: int = 0) -> list[Episode]:
    """Engine episodes of short random bouts of every probe action, with a new random theme every
    two bouts: all keys and many themes in a few hundred frames (scripted play needs thousands)."""
    rng = np.random.default_rng(seed)
    kinds = [s.action for s in probe_segments()]
    pool = list(all_themes())
    engine = create_backend("engine")
    episodes = []
    for e in range(n_episodes):
        actions = [a for _ in range(frames // hold) for a in [kinds[rng.integers(len(kinds))]] * hold]
        switches = {j: describe(pool[rng.integers(len(pool))]) for j in range(2 * hold, len(actions), 2 * hold)}
        r = rollout(engine, seed + e, describe(pool[rng.integers(len(pool))]), actions, switches)
        episodes.append(Episode(r.frames, r.actions, r.prompts))
    return episodes


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """(IDM checkpoint dir, classifier checkpoint dir, readers), trained on the engine in seconds."""
    root = tmp_path_factory.mktemp("nets")
    # Seeded: their initialisation must not depend on how much of the global RNG earlier tests drew
    # (a loaded machine changes that: wall-time budgets), and 400 steps read the engine from any seed.
    torch.manual_seed(0)
    train, held = split_episodes(bout_episodes(6, 96), 0.2)
    idm_dir = _train(IDMTask(train, held, "tiny"), root / "idm", 400)
    cls_dir = _train(ClassifierTask(train, held, "tiny"), root / "classifier", 60)
    from model.readers.reading import load_classifier, load_idm

    cpu = torch.device("cpu")
    return idm_dir, cls_dir, load_idm(idm_dir, cpu), load_classifier(cls_dir, cpu)


@pytest.fixture(scope="module")
def engine_results(nets):
    engine = create_backend("engine")
    return evaluate(Worlds(engine, engine, same=True), nets[2], nets[3], TINY, log=lambda s: None)


def test_engine_is_the_ceiling(engine_results):
    r = engine_results
    assert r["action_ratio_to_ceiling"] == 1.0
    assert r["action_f1"] > r["action_f1_chance"] + 0.1  # the tiny IDM does read the engine
    assert r["psnr_1chunk"] == PSNR_CAP_DB and r["psnr_10chunk"] == PSNR_CAP_DB
    assert r["ssim_1chunk"] == pytest.approx(1.0)
    assert r["fd_mean"] == pytest.approx(0.0, abs=1e-6)
    assert r["prompt_accuracy"] == r["prompt_accuracy_engine"]
    # same themes, seeds and actions: the engine cannot tell training from held-out phrasings
    assert r["prompt_accuracy_heldout_engine"] == r["prompt_accuracy_engine"]
    assert r["drift_saturation_pct"] == r["drift_saturation_pct_engine"]
    assert r["fidelity_mode"] == "context"  # engine start (the default): the engine re-simulates the context
    assert r["motion_world"] == r["motion_engine"] > 0 and r["motion_ratio"] == 1.0  # the probe moves the camera
    assert r["idm_moving_world"] == r["idm_moving_engine"] > 0.5  # the probe is mostly movement


def test_random_world_scores_near_chance(nets, engine_results, tmp_path):
    from model.runtime.world_model import make_random_world

    ckpt = make_random_world(tmp_path / "random")
    world = create_backend("generated", checkpoint=str(ckpt), device="cpu", sampler="uniform")
    engine = create_backend("engine", height=world.info.height, width=world.info.width)
    cfg = replace(TINY, probe_hold=3, prompt_frames=3, train_prompts=2, heldout_prompts=2, fidelity_chunks=1)
    r = evaluate(Worlds(world, engine), nets[2], nets[3], cfg, ("actions", "prompts", "fidelity"), log=lambda s: None)
    assert r["action_f1"] < r["action_f1_chance"] + 0.15
    assert r["action_ratio_to_ceiling"] < 0.75
    assert r["action_f1_ceiling"] > r["action_f1"]
    assert r["psnr_1chunk"] < 20.0
    factors = r["prompt_factor_accuracy"]
    assert factors["biome"] < 0.7  # 8 biomes: a world that ignores the prompt cannot be read as it
    assert r["prompt_accuracy"] <= r["prompt_accuracy_engine"]
    assert r["motion_world"] > 0 and r["motion_ratio"] == pytest.approx(r["motion_world"] / r["motion_engine"])
    assert 0 <= r["idm_moving_world"] <= 1


def test_motion_measures():
    from model.evaluation.measure_actions import frame_motion, moving_share
    from model.readers.reading import ActionReading

    still = np.zeros((4, 8, 8, 3), np.uint8)
    assert frame_motion(still) == (0.0, 3) and frame_motion(still[:1]) == (0.0, 0)
    flicker = still.copy()
    flicker[1::2] = 255  # every pair differs by the full range: no uint8 wrap-around
    assert frame_motion(flicker) == (3.0, 3)

    class FakeIDM:
        config = IDMConfig()  # 5 mouse bins: bin 2 is "still"

    keys = np.zeros((4, 10), bool)
    keys[1, 0] = True  # forward
    bins = np.full((4, 2), 2)
    bins[2, 1] = 4  # looking up fast
    reading = ActionReading(keys, bins, np.array([True, True, True, False]))
    assert moving_share(reading, np.ones(4, bool), FakeIDM()) == pytest.approx(2 / 3)  # frame 3 is not valid
    assert moving_share(reading, np.array([True, False, False, False]), FakeIDM()) == 0.0


def test_outputs_are_written(engine_results, tmp_path):
    results = {**engine_results, "backend": "engine", "quick": True, "seconds": 1.0}
    paths = write_outputs(results, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["psnr_1chunk"] == PSNR_CAP_DB and "_strip_fidelity" not in data
    for key in ("drift_png", "f1_png", "strip_png"):
        assert paths[key].stat().st_size > 1000
    assert "| action F1 / engine (ceiling) | 1.000 |" in markdown(results)
    assert "| motion / engine | 1.000 |" in markdown(results)


def test_cli_engine_quick_json(nets, tmp_path, capsys):
    idm_dir, cls_dir = nets[0], nets[1]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\nsnowy mountains at dusk\tsnow,dusk,clear\ngreen hills at noon\n")
    out = tmp_path / "eval"
    rc = run_world.main(["eval", "--backend", "engine", "--idm", str(idm_dir), "--classifier", str(cls_dir),
                         "--measures", "actions,prompts,fidelity", "--quick", "--prompts", str(prompts),
                         "--out", str(out), "--json"])  # fmt: skip
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("action_f1", "action_ratio_to_ceiling", "prompt_accuracy", "prompt_accuracy_heldout",
                "prompt_accuracy_file", "psnr_1chunk"):  # fmt: skip
        assert key in last
    assert last["psnr_1chunk"] == PSNR_CAP_DB
    assert (out / "results.json").is_file() and (out / "report.md").is_file()


def test_cli_sampler_options_are_recorded(nets, tmp_path, capsys, monkeypatch):
    from model.evaluation import suite as cli
    from model.runtime.world_model import make_random_world

    monkeypatch.setitem(cli.EVAL_PRESETS, "quick", replace(TINY, probe_hold=3))
    ckpt = make_random_world(tmp_path / "random")
    out = tmp_path / "eval"
    base = ["eval", "--checkpoint", str(ckpt), "--device", "cpu", "--idm", str(nets[0]), "--classifier", str(nets[1]),
            "--measures", "actions", "--quick"]  # fmt: skip
    rc = run_world.main([*base, "--sampler", "diagonal", "--schedule", "3,2", "--context-noise", "250",
                         "--out", str(out), "--json"])  # fmt: skip
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (last["sampler"], last["schedule"], last["context_noise"]) == ("diagonal", [3, 2], 250.0)
    assert "motion_ratio" in last and "idm_moving_world" in last
    data = json.loads((out / "results.json").read_text())
    assert data["schedule"] == [3, 2] and data["context_noise"] == 250.0
    assert data["sampler_config"]["steps"] == [3, 2] and data["sampler_config"]["context_noise"] == 250.0
    assert "diagonal 3-2 context t=250" in (out / "report.md").read_text().splitlines()[0]
    for extra, message in (
        (["--sampler", "diagonal", "--schedule", "4,0"], "positive"),
        (["--sampler", "diagonal", "--schedule", "4,x"], "comma-separated"),
        (["--sampler", "diagonal", "--schedule", "40"], "more steps than the teacher's grid"),
        (["--sampler", "diagonal", "--context-noise", "0"], "context_noise"),
        (["--sampler", "uniform", "--context-noise", "250"], "option of 'diagonal'"),
    ):
        assert run_world.main([*base, *extra, "--out", str(tmp_path / "never")]) == 2, extra
        assert message in capsys.readouterr().err
    engine = ["eval", "--backend", "engine", "--idm", str(nets[0]), "--schedule", "4,3,2", "--quick"]
    assert run_world.main(engine) == 2
    assert "--schedule: options of --backend generated only" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_cli_reports_missing_checkpoints(tmp_path, capsys):
    rc = run_world.main(["eval", "--backend", "engine", "--idm", str(tmp_path / "none"), "--quick"])
    assert rc == 2
    assert "train idm" in capsys.readouterr().err


def test_prompt_sets_phrase_the_same_themes_differently():
    train, held = prompt_sets(EvalConfig(train_prompts=5, heldout_prompts=5))
    for text, theme in train + held:
        assert parse_prompt(text) == theme
    assert [t for _, t in train] == [t for _, t in held]  # same themes, other words
    assert all(a != b for (a, _), (b, _) in zip(train, held))


def test_prompt_file_format(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# header\n\ndesert at night\tdesert,night,fog\nautumn forest at dawn\n")
    items = read_prompt_file(f)
    assert [(t, th.weather) for t, th in items] == [("desert at night", "fog"), ("autumn forest at dawn", "clear")]
    f.write_text("x\tdesert,night\n")
    with pytest.raises(ValueError, match="p.txt:1"):
        read_prompt_file(f)


def test_frames_to_agree():
    target = np.array([1, 2, 0])
    labels = np.array([[0, 0, 0], [1, 2, 0], [0, 0, 0], [1, 2, 0], [1, 2, 0], [1, 2, 0]])
    assert frames_to_agree(labels, target, stable=2) == 4
    assert frames_to_agree(labels[:2], target, stable=2) is None
    assert frames_to_agree(labels, target, stable=1) == 2


def test_cli_rejects_a_bad_prompt_file_before_running(nets, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("green hills\tgrassland,noon\n")
    args = ["eval", "--backend", "engine", "--idm", str(nets[0]), "--classifier", str(nets[1]), "--quick",
            "--prompts", str(bad), "--out", str(tmp_path / "never")]  # fmt: skip
    assert run_world.main(args) == 2
    assert "bad.txt:1" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
