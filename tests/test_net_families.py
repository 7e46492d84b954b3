"""The network families (model/nets/families.py): presets build their family's network, saved
configs name their family, and configs saved before the families were split still load."""

from __future__ import annotations

import json

import pytest
import torch

from model.common.checkpoint import CheckpointError
from model.common.configs import ConfigError, config_to_dict
from model.nets.dit import CausalDiT, DiTConfig
from model.nets.families import FAMILIES, PRESETS, build_net, net_config, net_config_from_dict
from model.nets.unet import CausalUNet, UNetConfig
from model.runtime.world_model import load_world_model, make_random_world
from tests.helpers import inputs

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_its_familys_network(preset):
    cfg = net_config(preset)
    assert type(build_net(cfg)) is FAMILIES[cfg.family].net
    assert net_config_from_dict(config_to_dict(cfg)) == cfg  # what a checkpoint writes reads back


def test_the_families_are_the_dit_and_the_unet():
    assert isinstance(build_net(net_config("tiny")), CausalDiT)
    assert isinstance(build_net(net_config("tiny-unet")), CausalUNet)
    assert config_to_dict(net_config("unet"))["family"] == "unet"
    with pytest.raises(ValueError, match="family"):
        DiTConfig(family="unet")


def legacy_dict(cfg, **legacy) -> dict:
    """A config as the single DiT class wrote it, before the families: no family key, conv options."""
    data = config_to_dict(cfg)
    del data["family"]
    return {**data, **legacy}


def test_configs_from_before_the_split_name_their_family_by_their_conv_width():
    dit = legacy_dict(net_config("tiny"), conv_width=0, conv_blocks=2, conv_levels=1)
    assert net_config_from_dict(dit) == net_config("tiny")
    unet = legacy_dict(net_config("tiny-unet"), conv_levels=2)
    assert net_config_from_dict(unet) == net_config("tiny-unet")
    # A U-Net written before the prompt's FiLM existed has no text_film key: it is off.
    no_film = legacy_dict(net_config("unet"), conv_levels=2)
    del no_film["text_film"]
    assert net_config_from_dict(no_film) == UNetConfig(**{**config_to_dict(net_config("unet")), "text_film": False})


@pytest.mark.parametrize("data, match", [
    ({"conv_width": 64, "conv_levels": 1}, "hybrid"),  # the removed one-level hybrid
    ({"family": "unet", "conv_width": 0}, "conv_width"),
    ({"family": "dit", "conv_width": 8}, "family 'unet'"),
    ({"family": "mamba"}, "unknown network family"),
    ({"family": "dit", "wings": 2}, "unknown"),
])
def test_configs_no_family_reads_are_refused_with_the_reason(data, match):
    with pytest.raises(ConfigError, match=match):
        net_config_from_dict(data)


def test_a_world_saved_before_the_split_loads_and_computes_the_same(tmp_path):
    """A U-Net world checkpoint whose config is in the old form ("dit" module, no family, conv_levels)
    loads as the U-Net with the same outputs; a new save writes the family."""
    path = make_random_world(tmp_path / "w", preset="tiny-unet", dit_options={"text_film": True})
    meta = json.loads((path / "config.json").read_text())
    assert meta["configs"]["dit"]["family"] == "unet" and set(meta["modules"]) == {"dit", "autoencoder"}
    new = load_world_model(path, with_text_encoder=False).dit
    meta["configs"]["dit"] = legacy_dict(new.config, conv_levels=2)
    (path / "config.json").write_text(json.dumps(meta))
    old = load_world_model(path, with_text_encoder=False).dit
    assert isinstance(old, CausalUNet) and old.config == new.config
    x, t, a, text, mask = inputs(new.config, 1, 2)
    with torch.no_grad():
        assert torch.equal(old(x, t, a, text, mask), new(x, t, a, text, mask))


def test_a_checkpoint_of_the_removed_hybrid_is_refused_naming_the_file(tmp_path):
    path = make_random_world(tmp_path / "w", preset="tiny-unet")
    meta = json.loads((path / "config.json").read_text())
    meta["configs"]["dit"] = legacy_dict(load_world_model(path, with_text_encoder=False).dit.config, conv_levels=1)
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="config.json.*hybrid"):
        load_world_model(path, with_text_encoder=False)
