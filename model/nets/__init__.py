"""The networks: pure nn.Modules (no files, no command line), one file each with its config."""

from torch import nn


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
