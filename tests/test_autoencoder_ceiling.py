"""The autoencoder ceiling comparison: an exact autoencoder scores 100 dB, a lossy one less."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from model.common.checkpoint import save_checkpoint
from model.evaluation.autoencoder_ceiling import ceiling_report, engine_references, main, markdown, roundtrip
from model.evaluation.eval_config import EVAL_PRESETS
from tests.helpers import tiny_ae


@dataclass
class _Shape:
    latent_shape: tuple = (3, 64, 64)


class ExactAutoencoder(torch.nn.Module):
    """Pixels in, pixels out: what a perfect latent prediction would decode to."""

    config = _Shape()

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def encode(self, x):
        return x

    def decode(self, z):
        return z * self.scale


@pytest.fixture(scope="module")
def refs():
    cfg = replace(EVAL_PRESETS["quick"], teacher_forced_contexts=1, fidelity_episodes=1, fidelity_chunks=2)
    return engine_references(cfg)


def test_exact_autoencoder_reaches_100_db_and_the_ceiling_is_its_margin_over_copy_last(refs):
    r = ceiling_report(ExactAutoencoder(), refs)
    assert all(v == pytest.approx(100.0) for v in r["teacher_forced_psnr_autoencoder"].values())
    for name, gain in r["teacher_forced_gain_ceiling"].items():
        assert gain == pytest.approx(100.0 - r["teacher_forced_psnr_copy_last"][name])
    assert r["psnr_autoencoder_1chunk"] == pytest.approx(100.0) and r["psnr_still_1chunk"] < 100.0
    assert r["teacher_forced_psnr_copy_last"]["turn_left"] < 60.0  # the view moved: copy-last is not exact


def test_a_lossy_autoencoder_lies_below_and_the_cli_writes_both(refs, tmp_path):
    ae = tiny_ae().eval()
    frames = refs["episodes"][0, :3]
    assert roundtrip(ae, frames).shape == frames.shape
    lossy = ceiling_report(ae, refs)
    assert max(lossy["teacher_forced_psnr_autoencoder"].values()) < 60.0
    assert "forward" in markdown({"exact": ceiling_report(ExactAutoencoder(), refs), "tiny": lossy})
    ck = save_checkpoint(tmp_path / "ae", kind="autoencoder", modules={"autoencoder": ae},
                         configs={"autoencoder": ae.config})
    out = tmp_path / "ceiling.json"
    assert main(["--autoencoder", str(ck), "--contexts", "1", "--episodes", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())["reports"][str(ck)]
    assert np.isfinite(report["teacher_forced_gain_ceiling"]["forward"])
