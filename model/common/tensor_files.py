"""Tensor files written atomically (the one atomic write: world/files.py, fsynced) and file hashes."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from world.files import atomic_write, atomic_write_json, sha256_file

__all__ = ["atomic_save_safetensors", "atomic_write", "atomic_write_json", "sha256_file"]


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                            metadata: dict[str, str] | None = None) -> Path:
    """A safetensors file written whole or not at all (tensors made contiguous first)."""
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))
