"""The frame autoencoder: shapes, learning, checkpoints, and the resumable training command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.common.checkpoint import CheckpointError, checkpoint_dir, load_train_state, save_checkpoint
from model.common.images import frames_to_tensor, tensor_to_frames
from model.nets.autoencoder import Autoencoder, AutoencoderConfig
from model.training.autoencoder import LossWeights, autoencoder_loss, load_autoencoder
from run_world import main
from tests.helpers import synthetic_frames, tiny_ae, write_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py



# ----------------------------------------------------------------------------- the network


def test_shapes_and_range():
    ae = tiny_ae().eval()
    x = frames_to_tensor(synthetic_frames(2))
    assert x.shape == (2, 3, 64, 64) and x.min() >= -1 and x.max() <= 1
    z = ae.encode(x)
    assert z.shape == (2, 4, 16, 16) and ae.config.latent_shape == (4, 16, 16)
    y = ae.decode(z * 50)  # even wild latents decode into the valid range
    assert y.shape == (2, 3, 64, 64) and y.min() >= -1 and y.max() <= 1


def test_frame_conversion_round_trip_is_exact():
    frames = synthetic_frames(3)
    assert np.array_equal(tensor_to_frames(frames_to_tensor(frames)), frames)
    assert tensor_to_frames(torch.full((1, 3, 4, 4), 7.0)).max() == 255  # clamped, not wrapped


def test_config_rejects_inconsistent_sizes():
    with pytest.raises(ValueError, match="enc_channels"):
        AutoencoderConfig(enc_channels=(8, 16, 32))
    with pytest.raises(ValueError, match="power of two"):
        AutoencoderConfig(downsample=3)


def test_latent_stats_normalise_and_invert():
    ae = tiny_ae().eval()
    x = frames_to_tensor(synthetic_frames(8))
    with torch.no_grad():
        ae.set_latent_stats(ae.encode_raw(x))
        z = ae.encode(x)
        per_channel = z.transpose(0, 1).reshape(4, -1)
        assert torch.allclose(per_channel.mean(1), torch.zeros(4), atol=1e-4)
        assert torch.allclose(per_channel.std(1), torch.ones(4), atol=1e-3)
        assert torch.allclose(ae.decode(z), ae.decode_raw(ae.encode_raw(x)).clamp(-1, 1), atol=1e-5)


def test_thirty_steps_of_training_improve_reconstruction():
    ae = tiny_ae()
    x = frames_to_tensor(synthetic_frames(16))
    opt = torch.optim.AdamW(ae.parameters(), lr=3e-3)

    def recon_error() -> float:
        with torch.no_grad():
            return (ae.decode_raw(ae.encode_raw(x)) - x).pow(2).mean().item()

    before = recon_error()
    for step in range(30):
        loss, terms = autoencoder_loss(ae, x[step % 2 :: 2], LossWeights(), torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(terms) >= {"l1", "mse", "edge", "latent_rms"}
    assert recon_error() < 0.5 * before


# ----------------------------------------------------------------------------- checkpoints


def _save(ae: Autoencoder, directory: Path) -> Path:
    return save_checkpoint(directory, kind="autoencoder", modules={"autoencoder": ae},
                           configs={"autoencoder": ae.config}, step=3)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    ae = tiny_ae().eval()
    with torch.no_grad():
        ae.set_latent_stats(ae.encode_raw(frames_to_tensor(synthetic_frames(4))) * 3 + 1)
    _save(ae, tmp_path / "run" / "checkpoint")
    # Release weights are fp16: the reference is the same network with fp16-rounded parameters.
    reference = tiny_ae().eval()
    reference.load_state_dict({k: v.half().float() for k, v in ae.state_dict().items()})
    loaded = load_autoencoder(tmp_path / "run" / "checkpoint")
    also = load_autoencoder(tmp_path / "run")  # a training --out directory works too
    x = frames_to_tensor(synthetic_frames(2, seed=5))
    with torch.no_grad():
        z = reference.encode(x)
        assert torch.equal(loaded.encode(x), z) and torch.equal(also.encode(x), z)
        assert torch.equal(loaded.decode(z), reference.decode(z))
    assert not loaded.training and loaded.config == ae.config
    assert checkpoint_dir(tmp_path / "run") == tmp_path / "run" / "checkpoint"


def test_truncated_weights_fail_naming_the_file(tmp_path):
    ck = _save(tiny_ae(), tmp_path / "ck")
    weights = ck / "autoencoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="autoencoder.safetensors"):
        load_autoencoder(ck)


def test_mismatched_config_fails_naming_the_file(tmp_path):
    ck = _save(tiny_ae(), tmp_path / "ck")
    meta = json.loads((ck / "config.json").read_text())
    meta["configs"]["autoencoder"]["dec_channels"] = [32, 8]  # weights no longer fit the network
    (ck / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="autoencoder.safetensors"):
        load_autoencoder(ck)
    meta["configs"]["autoencoder"]["dec_channels"] = [32]  # not even a valid config
    (ck / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="config.json"):
        load_autoencoder(ck)


def test_wrong_kind_is_refused(tmp_path):
    ae = tiny_ae()
    save_checkpoint(tmp_path / "ck", kind="teacher", modules={"autoencoder": ae}, configs={"autoencoder": ae.config})
    with pytest.raises(CheckpointError, match="expected 'autoencoder'"):
        load_autoencoder(tmp_path / "ck")


# ----------------------------------------------------------------------------- the training command


def _train(data: Path, out: Path, steps: int, *extra: str) -> int:
    return main(["train", "autoencoder", "--data", str(data), "--out", str(out), "--preset", "tiny", "--device",
                 "cpu", "--steps", str(steps), "--ckpt-every", "2", "--eval-every", "2", "--threads", "1", *extra])


def _csv_steps(path: Path) -> list[int]:
    with path.open() as f:
        return [int(float(r["step"])) for r in csv.DictReader(f)]


def _train_state(out: Path) -> dict[str, torch.Tensor]:
    ae = tiny_ae()
    opt = torch.optim.AdamW(ae.parameters())
    load_train_state(out / "checkpoint", {"autoencoder": ae}, {"autoencoder": opt})
    return {k: v for k, v in ae.state_dict().items() if not k.startswith("latent_")}


def test_training_resumes_exactly(tmp_path):
    data = write_dataset(tmp_path / "data")
    assert _train(data, tmp_path / "run", 6, "--stop-after", "4") == 0  # as if killed after step 4
    meta = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())
    assert meta["step"] == 4 and meta["configs"]["train"]["steps"] == 6
    assert _csv_steps(tmp_path / "run" / "metrics.csv") == [1, 2, 3, 4]
    with pytest.raises(CheckpointError, match="--resume"):  # never silently overwrite a run
        _train(data, tmp_path / "run", 6)

    assert _train(data, tmp_path / "run", 6, "--resume") == 0
    meta = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())
    assert meta["step"] == 6 and {"val_psnr", "decode_ms_per_frame"} <= set(meta["extra"])
    assert meta["extra"]["val_episodes"] == ["ep02"]
    assert _csv_steps(tmp_path / "run" / "metrics.csv") == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "run" / "recon.png").is_file() and (tmp_path / "run" / "metrics.png").is_file()

    assert _train(data, tmp_path / "straight", 6) == 0  # the same 6 steps without a break
    resumed, straight = _train_state(tmp_path / "run"), _train_state(tmp_path / "straight")
    for key in straight:
        assert torch.allclose(resumed[key], straight[key], atol=1e-6), key

    assert _train(data, tmp_path / "run", 8, "--resume") == 0  # a finished run can be extended
    assert json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())["step"] == 8
    assert _csv_steps(tmp_path / "run" / "metrics.csv") == [1, 2, 3, 4, 5, 6, 7, 8]
