"""The network families by name: presets, building a network from its config, reading saved configs.

    build_net(config) -> WorldNet          the family's network for a NetConfig
    net_config(preset) -> NetConfig        a copy of a preset ("tiny", "default", "unet", "tiny-unet")
    net_config_from_dict(data, source)     a saved config (checkpoint JSON) -> its family's NetConfig

A family is one module defining a NetConfig subclass (its `FAMILY` name), a WorldNet subclass and
its PRESETS (model/nets/world_net.py says what a family implements); adding one is that file and its
line in FAMILIES. Preset names are unique across families, so `train teacher --preset NAME` names a
network without naming its family.

Saved configs: every config written since the families were split records `family`; one written
before has no such key and holds the U-Net's options on the DiT's config (`conv_width` > 0: the
U-Net), which the family's `legacy` translates, so every checkpoint ever released still loads.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

from model.nets import dit, unet
from model.nets.world_net import NetConfig, WorldNet


class Family(NamedTuple):
    config: type[NetConfig]
    net: type[WorldNet]
    presets: dict[str, NetConfig]


FAMILIES: dict[str, Family] = {
    "dit": Family(dit.DiTConfig, dit.CausalDiT, dit.PRESETS),
    "unet": Family(unet.UNetConfig, unet.CausalUNet, unet.PRESETS),
}

PRESETS: dict[str, NetConfig] = {name: cfg for family in FAMILIES.values() for name, cfg in family.presets.items()}
assert len(PRESETS) == sum(len(f.presets) for f in FAMILIES.values()), "preset names must be unique across families"


def net_config(preset: str) -> NetConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown network preset {preset!r}; known: {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[preset])


def build_net(config: NetConfig) -> WorldNet:
    """The network of `config`'s family (fresh weights: load a checkpoint's with load_module)."""
    return FAMILIES[config.family].net(config)


def family_of(data: dict[str, Any]) -> str:
    """The family a saved config names; configs from before the split: the U-Net when conv_width > 0."""
    return data.get("family") or ("unet" if data.get("conv_width", 0) else "dit")


def net_config_from_dict(data: dict[str, Any], source: str = "config") -> NetConfig:
    """A saved network config -> its family's NetConfig; unknown keys, wrong types, values the config
    refuses and families this code does not know raise ConfigError naming `source`."""
    from model.common.configs import ConfigError, config_from_dict

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected an object for a network config, got {type(data).__name__}")
    family = family_of(data)
    if family not in FAMILIES:
        raise ConfigError(f"{source}: unknown network family {family!r}; known: {sorted(FAMILIES)}")
    cls = FAMILIES[family].config
    try:
        return config_from_dict(cls, cls.legacy({**data, "family": family}), source)
    except ConfigError:
        raise
    except ValueError as e:  # the family's legacy reading or the config's own checks
        raise ConfigError(f"{source}: {e}") from None
