"""IDM and theme classifier: shapes, the matching-cost front end, training CLI, checkpoints, resume."""

import json

import numpy as np
import pytest
import torch

import run_world
from model.common.checkpoint import CheckpointError
from model.readers.classifier import ThemeClassifier, classifier_config
from model.readers.idm import (
    IDMConfig,
    InverseDynamicsModel,
    idm_config,
    matching_costs,
    mirror_costs,
    mirror_labels,
    mouse_to_bins,
)
from model.readers.reading import load_classifier, load_idm, sliding_windows

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py



def test_matching_costs_find_a_known_shift():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (32, 32), dtype=np.uint8).repeat(2, 0).repeat(2, 1)  # 64x64 texture
    a = np.stack([base] * 3, -1)
    b = np.roll(a, 3, axis=1)  # the view moved 3 px to the right
    config = IDMConfig(before=1, after=0)
    costs = matching_costs(torch.from_numpy(np.stack([a, b])[None]), config)  # [1, S+1, 8, 8]
    s = len(config.shifts)
    best = costs[0, :s, 2:6, 2:6].flatten(1).argmin(0)  # interior cells, away from the wrap-around
    assert all(config.shifts[i] == (0, 3) for i in best.tolist())


def test_mouse_bins():
    c = IDMConfig()
    bins = mouse_to_bins(np.array([[-1.0, -0.3], [0.0, 0.1], [0.4, 0.9]]), c)
    assert bins.tolist() == [[0, 1], [2, 2], [3, 4]]


def test_network_shapes():
    idm = InverseDynamicsModel(idm_config("tiny", 32, 32))
    keys, mouse = idm(torch.zeros(5, idm.config.window, 32, 32, 3, dtype=torch.uint8))
    assert keys.shape == (5, 10) and mouse.shape == (5, 2, 5)
    cls = ThemeClassifier(classifier_config("tiny", 32, 32))
    out = cls(torch.zeros(4, cls.config.frames_in, 32, 32, 3, dtype=torch.uint8))
    assert out.features.shape == (4, cls.config.feature_dim)
    assert out.biome.shape[1] == len(cls.config.biomes) and out.weather.shape[1] == len(cls.config.weathers)


def test_sliding_windows_index_the_centre_frame():
    frames = np.arange(6)[:, None, None, None] * np.ones((6, 2, 2, 3), np.uint8)
    windows, idx = sliding_windows(frames, before=2, after=1)
    assert idx.tolist() == [2, 3, 4]
    assert windows[0, :, 0, 0, 0].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("what", ["idm", "classifier"])
def test_train_cli_saves_loads_and_resumes(tmp_path, what):
    out, log = tmp_path / what, tmp_path / "log"
    common = [
        "--out",
        str(out),
        "--log-dir",
        str(log),
        "--episodes",
        "2",
        "--frames-per-episode",
        "45",
        "--size",
        "32",
        "--preset",
        "tiny",
        "--batch",
        "8",
        "--eval-every",
        "3",
    ]
    assert run_world.main(["train", what, *common, "--steps", "4"]) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["kind"] == what and meta["step"] == 4 and "heldout" in meta["extra"]
    assert run_world.main(["train", what, *common, "--steps", "7"]) == 0  # continues, does not restart
    meta = json.loads((out / "config.json").read_text())
    assert meta["step"] == 7
    steps = [float(line.split(",")[0]) for line in (log / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(steps) and len(steps) == len(set(steps))
    loader = load_idm if what == "idm" else load_classifier
    reader = loader(out, torch.device("cpu"))
    assert (reader.config.height, reader.config.width) == (32, 32)


def test_loading_the_wrong_kind_names_the_problem(tmp_path):
    out = tmp_path / "cls"
    args = [
        "train",
        "classifier",
        "--out",
        str(out),
        "--log-dir",
        str(tmp_path / "log"),
        "--episodes",
        "2",
        "--frames-per-episode",
        "15",
        "--size",
        "32",
        "--preset",
        "tiny",
        "--steps",
        "1",
        "--batch",
        "4",
    ]
    assert run_world.main(args) == 0
    with pytest.raises(CheckpointError, match="expected 'idm'"):
        load_idm(out, torch.device("cpu"))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_idm(tmp_path / "missing", torch.device("cpu"))


def test_mirrored_costs_equal_costs_of_mirrored_frames():
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (3, 2, 32, 32, 3), dtype=np.uint8)
    config = idm_config("tiny", 32, 32)
    costs = matching_costs(torch.from_numpy(frames), config)
    mirrored = matching_costs(torch.from_numpy(np.ascontiguousarray(frames[:, :, :, ::-1])), config)
    assert torch.allclose(mirror_costs(costs, config), mirrored, atol=1e-4)
    keys = np.zeros((1, 10), bool)
    keys[0, [2, 4]] = True  # left + turn_left
    k, b = mirror_labels(keys, np.array([[0, 3]]), config)
    assert np.flatnonzero(k[0]).tolist() == [3, 5] and b.tolist() == [[4, 3]]
