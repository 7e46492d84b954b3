"""Helpers shared by the test modules (no test module imports another): tiny networks and their
inputs, synthetic data, a recording DiT wrapper, and end-to-end worker helpers. Fixtures shared by
many modules live in conftest.py."""

from __future__ import annotations

import importlib.util
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from model.nets.autoencoder import Autoencoder, autoencoder_config
from model.nets.families import build_net, net_config
from model.nets.world_net import NetConfig, WorldNet
from model.training.teacher import ClipBatches, TeacherTrainConfig, Trainer
from world.actions import KEYS, Action
from world.backends.registry import create_backend
from world.data.dataset import EpisodeWriter
from world.server.client import ChunkEvent, ErrorEvent, WorldClient

# ----------------------------------------------------------------------------- the world networks


TOL = 1e-4


def random_dit(preset: str = "tiny", seed: int = 0, **overrides) -> WorldNet:
    """A network of any family (by preset) whose zero-initialised parts are perturbed, so every input matters."""
    torch.manual_seed(seed)
    cfg = net_config(preset)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    model = build_net(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def inputs(cfg: NetConfig, batch: int, n_chunks: int, seed: int = 1, text_len: int = 5):
    g = torch.Generator().manual_seed(seed)
    F = n_chunks * cfg.chunk_frames
    x = torch.randn(batch, F, *cfg.latent_shape, generator=g)
    t = (1000 * torch.rand(batch, n_chunks, generator=g)).repeat_interleave(cfg.chunk_frames, 1)
    a = torch.randn(batch, F, cfg.action_dim, generator=g)
    text = torch.randn(batch, text_len, cfg.text_dim, generator=g)
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    mask[-1, 2:] = False  # rows with different prompt lengths
    return x, t, a, text, mask


def stream(model: WorldNet, x, t, a, text, mask, drop=None) -> tuple[torch.Tensor, list[list[int]]]:
    """Feed chunks one by one through a KVCache; returns outputs [B, F, ...] and held frame ids."""
    C = model.config.chunk_frames
    cache, outs, held = model.new_cache(), [], []
    for i in range(x.shape[1] // C):
        held.append(list(cache.frame_ids))
        s = slice(i * C, (i + 1) * C)
        outs.append(model(x[:, s], t[:, s], a[:, s], text, mask, cache, drop))
        cache.commit_chunk()
    return torch.cat(outs, 1), held


# ----------------------------------------------------------------------------- recording what a DiT is asked


class RecordingDiT(torch.nn.Module):
    """Wraps a DiT; records (first frame of the chunk being written, t) of every cached forward, and in
    `context_only` whether each was a K/V-only pass."""

    def __init__(self, dit):
        super().__init__()
        self.dit, self.config, self.calls, self.context_only = dit, dit.config, [], []

    def forward(self, x, t, actions, text, text_mask, cache=None, drop_actions=None, context_only=False):
        if cache is not None:
            self.calls.append((cache.next_frame, float(t[0, 0])))
            self.context_only.append(context_only)
        return self.dit(x, t, actions, text, text_mask, cache, drop_actions, context_only=context_only)

    def new_cache(self):
        return self.dit.new_cache()

    def per_chunk(self) -> list[list[float]]:
        """Network times of each chunk's forwards, in order (the last one wrote its K/V)."""
        chunks: dict[int, list[float]] = {}
        for frame, t in self.calls:
            chunks.setdefault(frame, []).append(t)
        return [chunks[f] for f in sorted(chunks)]


# ----------------------------------------------------------------------------- teacher training data


class SyntheticClips(Dataset):
    """LatentClips stand-in: smooth random latents drifting with the 'forward' action."""

    chunk_frames = 3

    def __init__(self, n: int = 8, frames: int = 6, prompts: int = 3, seed: int = 0, channels: int = 4):
        g = torch.Generator().manual_seed(seed)
        base = torch.randn(n, 1, channels, 16, 16, generator=g)
        self.actions = (torch.rand(n, frames, 12, generator=g) > 0.7).float()
        drift = torch.cumsum(self.actions[:, :, :1, None, None], 1) * 0.1
        self.latents = base + drift
        self.prompt_ids = torch.randint(0, prompts, (n, 1), generator=g).expand(n, frames)

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict:
        return {"latents": self.latents[i], "actions": self.actions[i], "prompt_ids": self.prompt_ids[i]}


def text_table(prompts: int = 3, length: int = 6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(prompts, length, 384, generator=g), torch.ones(prompts, length, dtype=torch.bool)


def tiny_config(**overrides) -> TeacherTrainConfig:
    base = dict(preset="tiny", steps=2, batch=4, clip_chunks=2, warmup=1, ckpt_every=1, log_every=1,
                text_encoder="hash")
    return TeacherTrainConfig(**{**base, **overrides})


def make_trainer(cfg: TeacherTrainConfig, out, resume: bool = False,
                 latent_channels: int = 4) -> tuple[Trainer, ClipBatches]:
    torch.manual_seed(0)
    ae = Autoencoder(replace(autoencoder_config("tiny"), latent_channels=latent_channels))
    trainer = Trainer.create(cfg, ae, out, torch.device("cpu"), resume=resume)
    tokens, mask = text_table()
    return trainer, ClipBatches(SyntheticClips(channels=latent_channels), tokens, mask, cfg.batch, 0, 1, cfg.seed)


class PrevRecorder(torch.nn.Module):
    """Wraps a DiT and keeps the copy-path input it is given (None: the network derives it from x)."""

    def __init__(self, dit):
        super().__init__()
        self.dit, self.prev, self.x = dit, None, None

    def forward(self, x, t, *args, prev=None, **kwargs):
        self.x, self.prev = x.clone(), None if prev is None else prev.clone()
        return self.dit(x, t, *args, prev=prev, **kwargs)


# ----------------------------------------------------------------------------- frames and datasets


def synthetic_frames(count: int, seed: int = 0, size: int = 64) -> np.ndarray:
    """Terrain-like uint8 frames [N, size, size, 3]: sky gradient over a textured, moving ground."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    texture = rng.random((size, size, 3))
    out = []
    for i in range(count):
        horizon = 0.4 + 0.1 * np.sin(6 * x + 0.3 * i + seed)
        sky = np.stack([0.3 + 0.5 * y, 0.5 + 0.3 * y, 0.9 - 0.2 * y], -1)
        ground = np.roll(texture, i, axis=1) * 0.4 + np.array([0.3, 0.5, 0.2]) * (0.6 + 0.4 * y[..., None])
        img = np.where((y > horizon)[..., None], ground, sky)
        out.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return np.stack(out)


def write_dataset(root: Path, episodes: int = 3, frames: int = 12, chunk_frames: int = 3,
                  prompts: tuple[str, ...] = ("green hills at noon",)) -> Path:
    """Episodes of synthetic frames written with the real dataset writer; prompt switches per chunk."""
    for e in range(episodes):
        args = dict(backend="engine", seed=e, height=64, width=64, chunk_frames=chunk_frames, fps=30, source="test")
        with EpisodeWriter(root / f"ep{e:02d}", **args) as writer:
            video = synthetic_frames(frames, seed=e)
            for c in range(0, frames, chunk_frames):
                n = min(chunk_frames, frames - c)
                records = [{"action": Action((KEYS[(c + j) % len(KEYS)],), mouse_dx=0.1).to_json(),
                            "prompt": prompts[(c // chunk_frames + e) % len(prompts)]} for j in range(n)]
                writer.append_chunk(video[c : c + n], records)
    return root


def tiny_ae(seed: int = 0) -> Autoencoder:
    torch.manual_seed(seed)
    return Autoencoder(autoencoder_config("tiny"))


# ----------------------------------------------------------------------------- a worker end to end


# End-to-end tests play the real engine once it exists; the fake keeps them runnable before that.
E2E_BACKEND = "engine" if importlib.util.find_spec("world.backends.engine_backend") else "fake"


E2E_PROMPTS = ("green hills at noon", "snowy mountains at dusk in fog")


FAKE_MODULE = ["--backend-module", "tests.fakes"]


def collect(client: WorldClient, count: int, ack: bool = True, polls: int = 200) -> list[ChunkEvent]:
    """Poll (bounded) until `count` chunks arrived, acknowledging each; errors fail the test."""
    chunks: list[ChunkEvent] = []
    for _ in range(polls):
        for event in client.poll(timeout_ms=100):
            assert not isinstance(event, ErrorEvent), event
            if isinstance(event, ChunkEvent):
                chunks.append(event)
                if ack:
                    client.ack(event.seq)
        if len(chunks) >= count:
            return chunks
    raise AssertionError(f"only {len(chunks)} of {count} chunks arrived")


def replay(backend: str, seed: int, chunks: list[ChunkEvent], options: dict | None = None) -> None:
    """Re-run the backend locally on the recorded actions/prompts and compare every frame."""
    world = create_backend(backend, **(options or {}))
    world.reset(seed, chunks[0].records[0]["prompt"])
    prompt = chunks[0].records[0]["prompt"]
    for event in chunks:
        if event.records[0]["prompt"] != prompt:
            prompt = event.records[0]["prompt"]
            world.set_prompt(prompt)
        expected = world.step_chunk([Action.from_json(r["action"]) for r in event.records]).frames
        assert np.array_equal(event.frames, expected), f"chunk {event.seq} differs"
    world.close()


def collect_chunks(client: WorldClient, n: int, timeout_s: float = 60.0, ack: bool | int = True) -> list[ChunkEvent]:
    """The next n chunks from a real worker within timeout_s, acknowledged unless ack=False (ack=K:
    only the first K, as a front end with the rest still to show); any error event fails the test."""
    chunks: list[ChunkEvent] = []
    deadline = time.monotonic() + timeout_s
    while len(chunks) < n and time.monotonic() < deadline:
        for event in client.poll(100):
            assert not isinstance(event, ErrorEvent), event
            if isinstance(event, ChunkEvent):
                chunks.append(event)
                if ack is True or len(chunks) <= ack:
                    client.ack(event.seq)
    assert len(chunks) >= n, f"only {len(chunks)} chunks in {timeout_s} s"
    return chunks[:n]


# ----------------------------------------------------------------------------- the entry point


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """run_world.main(argv) in this process: (exit status, stdout, stderr)."""
    import run_world

    code = run_world.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> dict:
    """The last line of a subcommand's stdout, its one-line JSON result."""
    import json

    return json.loads(out.strip().splitlines()[-1])


def assert_causal(model) -> None:
    """Changing the third chunk's frames and actions leaves the first two chunks' outputs as they were
    (to rounding) and changes the third's: a network never looks ahead of its chunk."""
    C = model.config.chunk_frames
    x, t, a, text, mask = inputs(model.config, 1, 3)
    later, later_actions = x.clone(), a.clone()
    later[:, 2 * C :] = torch.randn_like(later[:, 2 * C :])
    later_actions[:, 2 * C :] = torch.randn_like(later_actions[:, 2 * C :])
    with torch.no_grad():
        base, changed = model(x, t, a, text, mask), model(later, t, later_actions, text, mask)
    assert (base[:, : 2 * C] - changed[:, : 2 * C]).abs().max() < 1e-6
    assert not torch.allclose(base[:, 2 * C :], changed[:, 2 * C :], atol=1e-4)


def teacher_options(*argv: str) -> TeacherTrainConfig:
    """`train teacher`'s config from a command line (with placeholder --latents and --out)."""
    import argparse

    from model.training import teacher

    parser = argparse.ArgumentParser()
    teacher.add_arguments(parser)
    return teacher.config_from_args(parser.parse_args(["--latents", "L", "--out", "O", *argv]), "minilm")


def assert_release_warm_starts_silent(release: Path, flag: str, option: str) -> tuple[WorldNet, list[str]]:
    """The guided recipe with `flag` (a network option that starts silent), warm-started from `release`:
    its network is the release's with `option` on, and it computes the release's output bit for bit.
    Returns the network and the names the warm start left fresh."""
    from model.runtime.world_model import load_world_model
    from model.training import teacher

    cfg = teacher_options("--recipe", "unet-teacher-guided", flag, "--init-from", str(release))
    released = load_world_model(release, "cpu", with_text_encoder=False).dit.float().eval()
    net_cfg = teacher.fresh_dit_config(cfg, released.config.latent_channels)
    assert net_cfg == replace(released.config, **{option: True})
    torch.manual_seed(0)
    model = build_net(net_cfg).eval()
    fresh = teacher.warm_start(model, cfg.init_from)
    x, t, a, text, mask = inputs(net_cfg, 1, 2)
    with torch.no_grad():
        assert torch.equal(model(x, t, a, text, mask), released(x, t, a, text, mask))
    return model, fresh
