"""Making a generated recording again: the backend its meta.json `model` asks for.

A generated recording names the checkpoint by its weight hashes (meta `model`, written from the
chunks' `extra.model`, model/runtime/generated_backend.py `regeneration_facts`), so `find_checkpoint` looks
for those weights (`--checkpoint DIR`, the recorded path, the bundled worlds) without torch: the
window calls it too, to start a worker for L's take-over. `regenerating_backend` builds the backend
with the recorded sampler options on the recorded device when this machine has it (world/data/replay.py).
Recordings older than a sampler option lack it: the backend's default is what made them (a missing
`guide` is "all").
"""

from __future__ import annotations

import json
from pathlib import Path

from model.runtime.generated_backend import GeneratedBackend
from world.backend import BackendError
from world.bundled import ASSETS
from world.data.replay import kernel_differences
from world.files import sha256_file

SAMPLER_OPTIONS = ("sampler", "steps", "schedule", "context_noise", "rewarm", "guidance", "guide")


def regenerating_backend(meta: dict, where: Path, checkpoint: str | None = None,
                         device: str | None = None) -> tuple[GeneratedBackend, bool]:
    """A backend that makes a generated recording (its meta.json `meta`) again, and whether it runs
    with the recorded settings (device, dtype, sampler), where frames must come out bit-identical.
    The checkpoint is the one whose weights the recording names (`--checkpoint` or the recorded
    path or a bundled world); BackendError names the one it needs when none has those weights."""
    facts = meta.get("model")
    if isinstance(facts, dict):
        found = find_checkpoint(facts, where, checkpoint)
        options = {k: v for k, v in facts.get("sampler_options", {}).items() if k in SAMPLER_OPTIONS and v is not None}
    elif checkpoint is None:
        raise BackendError(f"{where}: the recording does not say which checkpoint made it (it predates recordings "
                           "that carry `model`); pass --checkpoint DIR to regenerate it with one")  # fmt: skip
    else:
        found = Path(checkpoint)
        options = {k: v for k, v in meta.get("options", {}).items() if k in SAMPLER_OPTIONS}
    recorded_device = facts.get("device") if isinstance(facts, dict) else None
    use_threads(facts.get("threads") if isinstance(facts, dict) else None)
    backend = GeneratedBackend(checkpoint=str(found), device=device or _usable(recorded_device), **options)
    same = isinstance(facts, dict) and all(backend._facts[k] == facts.get(k) for k in ("device", "dtype")) and \
        _same_sampler(backend._facts["sampler"], facts.get("sampler")) and not kernel_differences(facts, backend._facts)
    return backend, same


def use_threads(threads: object) -> None:
    """Replay with the recorded intra-op thread count: a GEMM splits its sums by it, so another count
    moves the last bit of some frames (recordings older than the fact replay with the caller's)."""
    if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
        import torch

        torch.set_num_threads(threads)


def _same_sampler(now: dict, recorded: object) -> bool:
    """Whether the rebuilt sampler is the recorded one. Recordings made before the `guide` option have
    no "guide": their sampler guided on everything, "all" (model/diffusion/samplers.py)."""
    if not isinstance(recorded, dict):
        return False
    return now == {"guide": "all", **recorded}


def _usable(device: str | None) -> str:
    """The recorded device when this machine has it, else the CPU."""
    if device is None or device == "cpu":
        return "cpu"
    import torch

    return device if device.startswith("cuda") and torch.cuda.is_available() else "cpu"


def find_checkpoint(facts: dict, where: Path, override: str | None = None) -> Path:
    """The checkpoint directory whose dit and autoencoder weights have the recorded hashes."""
    wanted = facts.get("sha256") or {}
    name = f"{facts.get('checkpoint_name', '?')} (step {facts.get('step', '?')}, dit sha256 " \
           f"{str(wanted.get('dit', '?'))[:12]})"
    if override is not None:
        if _weights_match(Path(override), wanted):
            return Path(override)
        raise BackendError(f"{where}: --checkpoint {override} does not hold the weights this recording was made "
                           f"with; it needs {name}")  # fmt: skip
    bundled = sorted(p for p in ASSETS.iterdir() if (p / "config.json").is_file())
    for candidate in (Path(str(facts.get("checkpoint", ""))), *bundled):
        if _weights_match(candidate, wanted):
            return candidate
    raise BackendError(f"{where}: regenerating this recording needs the world checkpoint {name}, recorded at "
                       f"{facts.get('checkpoint')}; it is not there and no bundled world has those weights. "
                       "Pass --checkpoint DIR with them")  # fmt: skip


def _weights_match(directory: Path, wanted: dict) -> bool:
    """Whether a checkpoint directory (or a training run holding one in checkpoint/) has the wanted
    weight files' hashes. Reads config.json and hashes files, without torch, so the window can call it."""
    if not wanted or not str(directory):
        return False
    if not (directory / "config.json").is_file():
        directory = directory / "checkpoint"  # model.common.checkpoint.checkpoint_dir's convention
    try:
        modules = json.loads((directory / "config.json").read_text())["modules"]
        return all(sha256_file(directory / modules[name]["file"]) == digest for name, digest in wanted.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False
