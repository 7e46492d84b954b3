"""Every released network in assets/ still computes what it computed when its reference was recorded.

tests/data/release_outputs.safetensors holds, per released world, a fixed-seed forward's output
(full sequence and streamed chunk by chunk through a KV cache) as a strided sample of 1024 values
plus the whole tensor's sum and absolute sum. The references were written by the code before the
network families were split into modules (model/nets/unet.py, model/nets/dit.py), so a refactor
that changes what a checkpoint computes fails here. Each reference names the sha256 of the weights
it was made with; the test finds the world in assets/ by that hash, so renaming a release directory
does not lose it. A release deleted from assets/ since (the DiT family's teacher-v1 and teacher-dit,
the 4-channel teacher-unet) is read from RECORDED_AT, the commit whose tree holds every world the
references were recorded from, so the families no release ships any more keep being checked; where
git or that commit is not there (an archive, a shallow clone) those are skipped, saying so.

Regenerate (only when weights change on purpose): `.venv/bin/python tests/test_release_outputs.py`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script to regenerate the references
    sys.path.insert(0, str(ROOT))

from model.common.checkpoint import module_sha256, read_checkpoint_config  # noqa: E402
from model.runtime.world_model import load_world_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

REFERENCES = ROOT / "tests" / "data" / "release_outputs.safetensors"
SAMPLES = 1024
# The commit that added the references: its assets/ holds every world they were recorded from.
RECORDED_AT = "ef41ec6"
# Same code on the same CPU gives the same bits; the tolerance leaves room for a reordered sum only.
ATOL = 1e-4


def network_module(meta: dict) -> str:
    """The network's module name in a world checkpoint: "dit" in every release."""
    return next(name for name in meta["modules"] if name != "autoencoder" and not name.endswith("_online"))


def world_assets() -> dict[str, Path]:
    """sha256 of the network weights -> the assets/ world directory holding them."""
    found: dict[str, Path] = {}
    for config in sorted((ROOT / "assets").glob("*/config.json")):
        meta = json.loads(config.read_text())
        if meta.get("kind") == "world":
            found[module_sha256(config.parent, network_module(meta), meta)] = config.parent
    return found


def from_history(name: str, into: Path) -> Path | None:
    """assets/NAME as RECORDED_AT held it, written under `into`; None without git or that commit."""
    if shutil.which("git") is None:
        return None
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", RECORDED_AT, f"assets/{name}"],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        return None
    archive_path = into / f"{name}.tar"
    archive_path.write_bytes(archive.stdout)
    with tarfile.open(archive_path) as tar:
        tar.extractall(into, filter="data")
    return into / "assets" / name


def fixed_inputs(cfg, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Two rows, two chunks: row 0 with a 4-token prompt and its actions, row 1 with no prompt and
    the null action (the uncond row of guidance); chunk times differ per row and chunk."""
    g = torch.Generator().manual_seed(seed)
    frames = 2 * cfg.chunk_frames
    x = torch.randn(2, frames, *cfg.latent_shape, generator=g)
    t = torch.tensor([[100.0, 700.0], [0.0, 400.0]]).repeat_interleave(cfg.chunk_frames, 1)
    actions = (torch.rand(2, frames, cfg.action_dim, generator=g) > 0.6).float()
    text = torch.randn(2, 5, cfg.text_dim, generator=g)
    mask = torch.tensor([[True, True, True, True, False], [False] * 5])
    drop = torch.tensor([False, True])
    return x, t, actions, text, mask, drop


@torch.no_grad()
def outputs(directory: Path) -> dict[str, torch.Tensor]:
    """The released network's fixed-seed outputs: {"full", "stream"} -> samples, sum, abs sum."""
    net = load_world_model(directory, with_text_encoder=False).dit
    cfg = net.config
    x, t, actions, text, mask, drop = fixed_inputs(cfg)
    full = net(x, t, actions, text, mask, drop_actions=drop)
    cache, chunks = net.new_cache(), []
    for i in range(2):
        s = slice(i * cfg.chunk_frames, (i + 1) * cfg.chunk_frames)
        chunks.append(net(x[:, s], t[:, s], actions[:, s], text, mask, cache, drop))
        cache.commit_chunk()
    result = {}
    for mode, v in (("full", full), ("stream", torch.cat(chunks, 1))):
        flat = v.float().flatten()
        result[f"{mode}.samples"] = flat[:: max(1, flat.numel() // SAMPLES)][:SAMPLES].clone()
        result[f"{mode}.sums"] = torch.stack([flat.double().sum(), flat.double().abs().sum()])
    return result


def record() -> None:
    """Write the references of every world in assets/ (run before a change that must not alter them)."""
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for sha, directory in world_assets().items():
        for key, value in outputs(directory).items():
            tensors[f"{sha}.{key}"] = value
        metadata[sha] = directory.name
    REFERENCES.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, REFERENCES, metadata=metadata)
    print(f"wrote {REFERENCES} ({REFERENCES.stat().st_size} bytes): {sorted(metadata.values())}")


def references() -> dict[str, str]:
    """sha256 -> the directory name it was recorded from."""
    if not REFERENCES.is_file():  # only while record() writes them for the first time
        return {}
    with safe_open(REFERENCES, "pt") as f:
        return dict(f.metadata())


RECORDED = references()


@pytest.mark.parametrize("sha", sorted(RECORDED), ids=lambda sha: RECORDED[sha])
def test_a_released_network_computes_its_recorded_outputs(sha, tmp_path):
    directory = world_assets().get(sha) or from_history(RECORDED[sha], tmp_path)
    if directory is None:
        pytest.skip(f"{RECORDED[sha]!r} left assets/ and git cannot give it back from {RECORDED_AT}")
    meta = read_checkpoint_config(directory)
    assert module_sha256(directory, network_module(meta), meta) == sha, f"{directory}: other weights than recorded"
    got = outputs(directory)
    with safe_open(REFERENCES, "pt") as f:
        for key, value in got.items():
            want = f.get_tensor(f"{sha}.{key}")
            tol = ATOL * (1 + want.abs().max().item()) if key.endswith("sums") else ATOL
            torch.testing.assert_close(value, want, atol=tol, rtol=1e-5, msg=lambda m, k=key: f"{directory}: {k}: {m}")


@pytest.mark.parametrize("name", ["teacher", "default_world"])
def test_the_teacher_and_the_default_world_have_references(name):
    """The two releases the project plays and distils from are covered (by their weights' hash)."""
    directory = ROOT / "assets" / name
    if not (directory / "config.json").is_file():
        pytest.skip(f"assets/{name} was renamed; its weights are still looked up by hash above")
    meta = read_checkpoint_config(directory)
    assert module_sha256(directory, network_module(meta), meta) in RECORDED, (
        f"assets/{name} holds weights with no recorded outputs: if they changed on purpose, "
        "record them again (module docstring)")


if __name__ == "__main__":
    torch.set_num_threads(1)
    record()
