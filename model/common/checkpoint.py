"""Checkpoints: safetensors weights plus a JSON config, never pickle.

Layout of a checkpoint directory:

    config.json               {"format", "version", "kind", "step", "configs", "modules", "extra"}
    <module>.safetensors      release weights per module (fp16 by default: small enough to commit)
    train_state.safetensors   optional: fp32 weights + optimiser tensors, for exact resume
    train_state.json          optional: optimiser param groups and scalar state

Everything is written into a temporary sibling directory first and swapped in by rename, so a
kill at any moment leaves either the previous checkpoint or the new one, never half of one.
Loading checks the format, the module list, every tensor name and shape, and fails with a
`CheckpointError` that names the file and what is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.common import configs as schema
from model.common.configs import config_to_dict
from world.files import sha256_file

FORMAT = "gworld-checkpoint"
VERSION = 1
CONFIG_FILE = "config.json"
TRAIN_STATE_FILE = "train_state.safetensors"
TRAIN_STATE_JSON = "train_state.json"
CHECKPOINT_SUBDIR = "checkpoint"  # where a training run keeps its checkpoint inside its --out directory


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, or does not match the model asked of it."""


# ----------------------------------------------------------------------------- configs


def config_from_dict(cls: type, data: dict, source: str = "config") -> Any:
    """Build dataclass `cls` from a checkpoint's `data` (model/common/configs.py: unknown keys and
    values of the wrong type refused), as a CheckpointError naming `source`."""
    try:
        return schema.config_from_dict(cls, data, source)
    except schema.ConfigError as e:
        raise CheckpointError(str(e)) from None


# ----------------------------------------------------------------------------- saving


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    kind: str,
    modules: dict[str, torch.nn.Module],
    configs: dict[str, Any],
    step: int = 0,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    extra: dict | None = None,
    release_dtype: torch.dtype = torch.float16,
) -> Path:
    """Write a checkpoint directory atomically. `configs` maps names to dataclass configs."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    module_table = {}
    for name, module in modules.items():
        state = {k: _release_tensor(v, release_dtype) for k, v in _plain_state(module).items()}
        save_file(state, str(tmp / f"{name}.safetensors"))
        module_table[name] = {"file": f"{name}.safetensors", "dtype": str(release_dtype).removeprefix("torch.")}
    if optimizers is not None:
        _save_train_state(tmp, modules, optimizers)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "step": int(step),
        "configs": {name: config_to_dict(c) for name, c in configs.items()},
        "modules": module_table,
        "extra": extra or {},
    }
    (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    _swap_in(tmp, directory)
    return directory


def _plain_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Unwrap DDP / torch.compile so names never carry "module." or "_orig_mod." prefixes.
    inner = getattr(module, "module", module)
    inner = getattr(inner, "_orig_mod", inner)
    return {k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()}


def _release_tensor(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() else t


def _save_train_state(tmp: Path, modules: dict, optimizers: dict) -> None:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"optimizers": {}}
    for name, module in modules.items():
        for k, v in _plain_state(module).items():
            tensors[f"module/{name}/{k}"] = v
    for name, opt in optimizers.items():
        state = opt.state_dict()
        per_param: dict[str, dict] = {}
        for idx, slots in state["state"].items():
            for key, value in slots.items():
                if torch.is_tensor(value):
                    tensors[f"optim/{name}/{idx}/{key}"] = value.detach().cpu().contiguous()
                else:
                    per_param.setdefault(str(idx), {})[key] = value
        scalars["optimizers"][name] = {"param_groups": state["param_groups"], "scalars": per_param}
    save_file(tensors, str(tmp / TRAIN_STATE_FILE))
    (tmp / TRAIN_STATE_JSON).write_text(json.dumps(scalars) + "\n")


def _swap_in(tmp: Path, directory: Path) -> None:
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- loading


def checkpoint_dir(path: str | os.PathLike) -> Path:
    """Accept a checkpoint directory or a training --out directory that holds `checkpoint/`."""
    path = Path(path)
    nested = path / CHECKPOINT_SUBDIR
    if not (path / CONFIG_FILE).exists() and (nested / CONFIG_FILE).exists():
        return nested
    return path



def read_checkpoint_config(directory: str | os.PathLike, kind: str | None = None) -> dict:
    """The checkpoint's config.json, validated. `kind` (e.g. "teacher") must match when given."""
    directory = Path(directory)
    if not directory.is_dir():
        old = directory.with_name(directory.name + ".old")
        hint = f" (a previous save was interrupted; {old} holds the last good one)" if old.is_dir() else ""
        raise CheckpointError(f"{directory}: checkpoint directory does not exist{hint}")
    path = directory / CONFIG_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not a checkpoint directory?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path}: not a {FORMAT} file (format={found!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: version {meta.get('version')!r}, this code reads version {VERSION}")
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a {meta.get('kind')!r} checkpoint, expected {kind!r}")
    for key in ("configs", "modules"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"{path}: field {key!r} missing or not an object")
    _refuse_unknown_keys(meta, path)
    return meta


# What save_checkpoint writes; anything else in a config.json is a typo or a file from elsewhere,
# refused rather than silently ignored. Each config inside "configs" is checked by its dataclass
# (config_from_dict); "extra" is free-form by design.
CONFIG_KEYS = frozenset({"format", "version", "kind", "step", "configs", "modules", "extra"})
MODULE_KEYS = frozenset({"file", "dtype"})


def _refuse_unknown_keys(meta: dict, path: Path) -> None:
    unknown = sorted(set(meta) - CONFIG_KEYS)
    if unknown:
        raise CheckpointError(f"{path}: unknown top-level keys {unknown[:5]}; known: {', '.join(sorted(CONFIG_KEYS))}")
    for name, entry in meta["modules"].items():
        if not isinstance(entry, dict):
            raise CheckpointError(f"{path}: modules.{name} must be an object")
        unknown = sorted(set(entry) - MODULE_KEYS)
        if unknown:
            raise CheckpointError(f"{path}: unknown keys {unknown[:5]} in modules.{name}; known: file, dtype")


def load_module(directory: str | os.PathLike, name: str, module: torch.nn.Module) -> None:
    """Load module weights `name` from a checkpoint into `module` (cast to its dtype), strictly."""
    directory = Path(directory)
    meta = read_checkpoint_config(directory)
    entry = meta["modules"].get(name)
    if entry is None:
        raise CheckpointError(f"{directory / CONFIG_FILE}: no module {name!r}; has {sorted(meta['modules'])}")
    path = directory / entry["file"]
    state = _read_safetensors(path)
    _load_strict(module, state, path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({e})") from None


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not match {type(module).__name__}: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{path}: tensor {key!r} has shape {tuple(tensor.shape)}, model expects {tuple(expected[key].shape)}"
            )
    cast = {k: v.to(expected[k].dtype) for k, v in state.items()}
    module.load_state_dict(cast, strict=True)


def module_sha256(directory: str | os.PathLike, name: str, meta: dict | None = None) -> str:
    """SHA-256 of module `name`'s release weights file: what identifies the network a latent cache,
    a set of ODE pairs or a training run was made with. `meta`: the config.json already read."""
    directory = Path(directory)
    meta = read_checkpoint_config(directory) if meta is None else meta
    entry = meta["modules"].get(name)
    if entry is None:
        raise CheckpointError(f"{directory / CONFIG_FILE}: no module {name!r}; has {sorted(meta['modules'])}")
    return sha256_file(directory / entry["file"])


def has_train_state(directory: str | os.PathLike) -> bool:
    d = Path(directory)
    return (d / TRAIN_STATE_FILE).is_file() and (d / TRAIN_STATE_JSON).is_file()


def load_train_state(
    directory: str | os.PathLike,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
) -> int:
    """Restore fp32 weights and optimiser state for resuming; returns the saved step."""
    directory = Path(directory)
    meta = read_checkpoint_config(directory)
    tensors = _read_safetensors(directory / TRAIN_STATE_FILE)
    try:
        scalars = json.loads((directory / TRAIN_STATE_JSON).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{directory / TRAIN_STATE_JSON}: unreadable ({e})") from None
    for name, module in modules.items():
        prefix = f"module/{name}/"
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        _load_strict(getattr(module, "module", module), state, directory / TRAIN_STATE_FILE)
    for name, opt in optimizers.items():
        _restore_optimizer(opt, name, tensors, scalars, directory)
    return int(meta["step"])


def _restore_optimizer(opt, name: str, tensors: dict, scalars: dict, directory: Path) -> None:
    saved = scalars.get("optimizers", {}).get(name)
    if saved is None:
        raise CheckpointError(f"{directory / TRAIN_STATE_JSON}: no optimiser state for {name!r}")
    state: dict[int, dict] = {}
    prefix = f"optim/{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, slot = key[len(prefix):].split("/", 1)
            state.setdefault(int(idx), {})[slot] = value
    for idx, slots in saved["scalars"].items():
        state.setdefault(int(idx), {}).update(slots)
    try:
        opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{directory / TRAIN_STATE_FILE}: optimiser {name!r} does not match ({e})") from None
