"""Device selection and mixed precision: the same code runs on CPU (fp32) and CUDA (bf16)."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> CUDA when present, else CPU. Asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; plain fp32 on CPU (CPU bf16 autocast is slower for small models)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX-BF16 or AVX512-BF16, /proc/cpuinfo flags).

    With AMX a bf16 matmul runs ~8x an fp32 one on 2 threads (docs/design.md, compute plan); without
    it CPU bf16 autocast is slower than fp32, so the fp32 path stays the fallback."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def training_precision(device: torch.device, precision: str = "auto") -> str:
    """"fp32" or "bf16" for training on `device`: auto = bf16 on CUDA and on CPUs with fast bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or cpu_has_fast_bf16() else "fp32"


def training_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for a training step: bf16 autocast with fp32 master weights, or plain fp32."""
    if training_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_threads(n: int | None) -> int:
    """Use `n` intra-op threads from now on (None or 0: leave torch's choice); returns the previous count."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    return previous


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run with `n` intra-op threads (None or 0: leave torch's choice), restoring the previous
    count afterwards so in-process callers (tests, notebooks) get theirs back."""
    previous = set_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
