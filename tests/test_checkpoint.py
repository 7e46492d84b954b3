import dataclasses
import json

import pytest
import torch

from model.common.checkpoint import (
    CheckpointError,
    config_from_dict,
    load_module,
    load_train_state,
    read_checkpoint_config,
    save_checkpoint,
)
from model.common.runlog import RunLog


@dataclasses.dataclass
class TinyConfig:
    dim: int = 4
    name: str = "tiny"
    rate: float = 0.5
    sizes: tuple[int, ...] = (1, 2)


def _trained_linear():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    return net, opt


def test_round_trip_release_and_train_state(tmp_path):
    net, opt = _trained_linear()
    save_checkpoint(tmp_path / "ck", kind="test", modules={"net": net}, configs={"net": TinyConfig()},
                    step=7, optimizers={"net": opt}, extra={"psnr": 31.0})
    meta = read_checkpoint_config(tmp_path / "ck", kind="test")
    assert meta["step"] == 7 and meta["extra"]["psnr"] == 31.0
    assert config_from_dict(TinyConfig, meta["configs"]["net"]) == TinyConfig()

    release = torch.nn.Linear(4, 3)
    load_module(tmp_path / "ck", "net", release)  # fp16 release weights, cast back to fp32
    assert torch.allclose(release.weight, net.weight, atol=1e-3)

    resumed = torch.nn.Linear(4, 3)
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    assert load_train_state(tmp_path / "ck", {"net": resumed}, {"net": resumed_opt}) == 7
    assert torch.equal(resumed.weight, net.weight)  # fp32 exact for resume
    assert resumed_opt.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])


def test_saving_twice_replaces_atomically(tmp_path):
    net, _ = _trained_linear()
    for step in (1, 2):
        save_checkpoint(tmp_path / "ck", kind="test", modules={"net": net}, configs={}, step=step)
    assert read_checkpoint_config(tmp_path / "ck")["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_errors_name_the_file_and_the_problem(tmp_path):
    net, _ = _trained_linear()
    ck = tmp_path / "ck"
    save_checkpoint(ck, kind="test", modules={"net": net}, configs={"net": TinyConfig()})
    with pytest.raises(CheckpointError, match="expected 'teacher'"):
        read_checkpoint_config(ck, kind="teacher")
    with pytest.raises(CheckpointError, match=r"net\.safetensors.*shape"):
        load_module(ck, "net", torch.nn.Linear(5, 3))
    with pytest.raises(CheckpointError, match="no module 'dit'"):
        load_module(ck, "dit", net)
    with pytest.raises(CheckpointError, match="unknown TinyConfig keys"):
        config_from_dict(TinyConfig, {"dim": 4, "depth": 2})
    with pytest.raises(CheckpointError, match="expected int"):
        config_from_dict(TinyConfig, {"dim": "4"})
    meta = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**meta, "stpe": 3}))  # a typo must not be silently accepted
    with pytest.raises(CheckpointError, match=r"unknown top-level keys \['stpe'\]"):
        read_checkpoint_config(ck)
    meta["modules"]["net"]["sha"] = "x"
    (ck / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"unknown keys \['sha'\] in modules.net"):
        read_checkpoint_config(ck)
    del meta["modules"]["net"]["sha"]
    (ck / "config.json").write_text(json.dumps(meta))
    (ck / "net.safetensors").write_bytes((ck / "net.safetensors").read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated"):
        load_module(ck, "net", net)
    (ck / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="not a gworld-checkpoint"):
        read_checkpoint_config(ck)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint_config(tmp_path / "nowhere")


def test_runlog_resume_drops_rows_after_the_resume_step(tmp_path):
    log = RunLog(tmp_path)
    for step in range(5):
        log.log(step, loss=1.0 / (step + 1))
    resumed = RunLog(tmp_path, resume_step=3)
    resumed.log(3, loss=0.2, lr=1e-3)
    steps = [r["step"] for r in RunLog(tmp_path, resume_step=99).rows]
    assert steps == [0, 1, 2, 3]
    assert resumed.plot() is not None and resumed.png_path.stat().st_size > 0
