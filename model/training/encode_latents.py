"""Encode a dataset to a latent cache once, then train the transformer from it without pixels.

    python -m model.training.encode_latents --data DIR --autoencoder DIR --out DIR
    python run_world.py encode-latents --data DIR  (alias: train latents) --autoencoder DIR --out DIR

Layout of a cache directory (one shard per episode, in open_dataset order):

    latents_XXXX.safetensors  "latents" [N, C, h, w] fp16 (normalised: ~unit variance),
                              "actions" [N, 12] float32, "prompt_ids" [N] int64,
                              "episode" [N] int64 (XXXX), "frame" [N] int64 (index in the episode);
                              metadata: episode id (directory name) and frame count
    prompts.json              unique prompt strings; list index = prompt id
    text.safetensors          "tokens" [P, L, 384] fp16, "mask" [P, L] bool: every prompt, encoded
    cache.json                autoencoder (path, step, sha256), text encoder, chunk_frames, shards,
                              counts; "complete" once every episode is encoded

Every file is written to a temporary name and renamed. A rerun skips episodes whose shard is
already there and intact, so a killed run resumes per episode. A cache made with a different
autoencoder is refused (latents from two autoencoders must never mix).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch.utils.data import Dataset

from model.common.checkpoint import checkpoint_dir, module_sha256, read_checkpoint_config
from model.common.device import autocast, resolve_device
from model.common.images import frames_to_tensor
from model.common.runlog import progress
from model.common.tensor_files import atomic_save_safetensors, atomic_write_json
from model.nets.text_encoder import DEFAULT_MAX_TOKENS, TEXT_ENCODERS, create_text_encoder
from model.training.autoencoder import load_autoencoder

FORMAT = "gworld-latent-cache"
VERSION = 1
CACHE_FILE = "cache.json"
PROMPTS_FILE = "prompts.json"
TEXT_FILE = "text.safetensors"
SHARD_PATTERN = "latents_{:04d}.safetensors"
SHARD_KEYS = ("latents", "actions", "prompt_ids", "episode", "frame")


class LatentCacheError(RuntimeError):
    """A latent cache that is missing, damaged or was made with another autoencoder."""


class LatentCacheWarning(UserWarning):
    """Something in a latent cache was skipped (a damaged shard)."""


# ----------------------------------------------------------------------------- small files


def read_cache_meta(cache_dir: str | os.PathLike) -> dict:
    """cache.json, validated; raises LatentCacheError naming the file."""
    path = Path(cache_dir) / CACHE_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise LatentCacheError(f"{path}: missing (not a latent cache; build one with `encode-latents`)") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LatentCacheError(f"{path}: unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise LatentCacheError(f"{path}: not a {FORMAT} v{VERSION} file")
    return meta


def load_prompts(cache_dir: str | os.PathLike) -> list[str]:
    """The cache's unique prompts; index = prompt id."""
    path = Path(cache_dir) / PROMPTS_FILE
    if not path.exists():
        return []
    try:
        prompts = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LatentCacheError(f"{path}: unreadable ({e})") from None
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise LatentCacheError(f"{path}: must be a JSON list of strings")
    return prompts


def text_table(cache_dir: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached prompt embeddings: tokens [P, L, 384] float32, mask [P, L] bool (row = prompt id)."""
    path = Path(cache_dir) / TEXT_FILE
    try:
        data = load_file(str(path))
    except (FileNotFoundError, SafetensorError, OSError) as e:
        raise LatentCacheError(f"{path}: missing or unreadable ({e}); rebuild it with `encode-latents`") from None
    tokens, mask = data["tokens"].float(), data["mask"].bool()
    assert tokens.ndim == 3 and mask.shape == tokens.shape[:2], f"{path}: bad shapes"
    return tokens, mask


# ----------------------------------------------------------------------------- building


class _PromptTable:
    """Prompt string -> stable id; persisted before any shard refers to a new id."""

    def __init__(self, cache_dir: Path):
        self.path = cache_dir / PROMPTS_FILE
        self.prompts = load_prompts(cache_dir)
        self.ids = {p: i for i, p in enumerate(self.prompts)}

    def lookup(self, prompts: Sequence[str]) -> np.ndarray:
        """[N] int64 ids, adding new prompts (and saving the table) as needed."""
        before = len(self.prompts)
        for p in prompts:
            if p not in self.ids:
                self.ids[p] = len(self.prompts)
                self.prompts.append(p)
        if len(self.prompts) != before:
            atomic_write_json(self.path, self.prompts)
        return np.array([self.ids[p] for p in prompts], dtype=np.int64)


def _autoencoder_identity(autoencoder_dir: str | os.PathLike) -> dict:
    directory = checkpoint_dir(autoencoder_dir).resolve()
    meta = read_checkpoint_config(directory, kind="autoencoder")
    return {"path": str(directory), "step": meta["step"], "sha256": module_sha256(directory, "autoencoder", meta),
            "config": meta["configs"]["autoencoder"]}


def _check_compatible(out: Path, identity: dict, overwrite: bool) -> None:
    """Refuse to add latents from another autoencoder to an existing cache (unless overwriting)."""
    if not (out / CACHE_FILE).exists():
        return
    try:
        old = read_cache_meta(out)["autoencoder"]
    except LatentCacheError:
        if not overwrite:
            raise
        old = {"sha256": None}
    if old["sha256"] == identity["sha256"]:
        return
    if not overwrite:
        raise LatentCacheError(
            f"{out / CACHE_FILE}: cache was built with autoencoder {old['path']} (step {old['step']}); "
            f"this run uses {identity['path']} (step {identity['step']}). Use another --out or --overwrite."
        )
    for f in [*out.glob("latents_*.safetensors"), out / PROMPTS_FILE, out / TEXT_FILE, out / CACHE_FILE]:
        f.unlink(missing_ok=True)


def _shard_intact(path: Path, episode_id: str, frames: int) -> bool:
    """True when `path` is a complete shard of this episode with this many frames."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            n = f.get_slice("latents").get_shape()[0]
    except (FileNotFoundError, SafetensorError, OSError):
        return False
    return meta.get("episode_id") == episode_id and n == frames == int(meta.get("frames", -1))


@torch.inference_mode()
def encode_frames(ae: torch.nn.Module, frames: np.ndarray, device: torch.device, batch: int = 256) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> normalised latents [N, C, h, w] fp16 on the CPU."""
    out = []
    for start in range(0, len(frames), batch):
        x = frames_to_tensor(np.asarray(frames[start : start + batch])).to(device)
        with autocast(device):
            out.append(ae.encode(x).float().cpu().half())
    return torch.cat(out)


def _encode_episode(ae, reader, index: int, prompts: _PromptTable, device, batch: int, path: Path) -> None:
    n = len(reader)
    tensors = {
        "latents": encode_frames(ae, reader.frames, device, batch),  # [N, C, h, w] fp16
        "actions": torch.from_numpy(np.array(reader.actions(), dtype=np.float32)),  # [N, 12]
        "prompt_ids": torch.from_numpy(prompts.lookup(reader.prompts())),  # [N]
        "episode": torch.full((n,), index, dtype=torch.int64),
        "frame": torch.arange(n, dtype=torch.int64),
    }
    atomic_save_safetensors(path, tensors, {"episode_id": reader.id, "frames": str(n)})


def _write_text(out: Path, prompts: list[str], encoder_name: str, max_tokens: int, device,
                text_from: Path | None = None) -> None:
    if text_from is not None:
        tokens, mask = _reused_text(text_from, prompts, encoder_name, max_tokens)
        atomic_save_safetensors(out / TEXT_FILE, {"tokens": tokens.half(), "mask": mask})
        return
    encoder = create_text_encoder(encoder_name, device, max_tokens)
    tokens, mask = encoder.encode(prompts) if prompts else (torch.zeros(0, max_tokens, encoder.dim),
                                                            torch.zeros(0, max_tokens, dtype=torch.bool))
    atomic_save_safetensors(out / TEXT_FILE, {"tokens": tokens.cpu().half(), "mask": mask.cpu()})


def _reused_text(source: Path, prompts: list[str], encoder_name: str,
                 max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of another cache's text table for `prompts`: re-encoding episodes then needs no text encoder
    (a machine without the encoder's package, or many caches of the same prompt set)."""
    meta = read_cache_meta(source)
    if (meta.get("text_encoder"), meta.get("max_tokens")) != (encoder_name, max_tokens):
        raise LatentCacheError(f"{source}: its prompts were encoded with {meta.get('text_encoder')!r} at "
                               f"{meta.get('max_tokens')} tokens, not {encoder_name!r} at {max_tokens}")
    known = {p: i for i, p in enumerate(load_prompts(source))}
    missing = [p for p in prompts if p not in known]
    if missing:
        raise LatentCacheError(f"{source}: has no embedding for {len(missing)} prompt(s) of this dataset, e.g. "
                               f"{missing[0]!r}; encode without --text-from")
    tokens, mask = text_table(source)
    rows = torch.tensor([known[p] for p in prompts], dtype=torch.long)
    return tokens[rows], mask[rows]


def encode_dataset(
    data_dir: str | os.PathLike,
    autoencoder_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    text_encoder_name: str = "minilm",
    device: str | torch.device = "auto",
    batch: int = 256,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    overwrite: bool = False,
    text_from: str | os.PathLike | None = None,
) -> dict:
    """Build (or finish) the latent cache of `data_dir` in `out_dir`; returns cache.json's contents."""
    from world.data.dataset import open_dataset  # the dataset module pulls in world.*; keep model imports light

    device = resolve_device(str(device))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    identity = _autoencoder_identity(autoencoder_dir)
    _check_compatible(out, identity, overwrite)
    readers = open_dataset(data_dir)
    ae = load_autoencoder(autoencoder_dir, device)
    prompts = _PromptTable(out)
    meta = _cache_meta(identity, text_encoder_name, max_tokens, readers, complete=False)
    atomic_write_json(out / CACHE_FILE, meta)
    bar = progress(len(readers), desc="latents", unit="episode")
    for index, reader in enumerate(readers):
        path = out / SHARD_PATTERN.format(index)
        if len(reader) and not _shard_intact(path, reader.id, len(reader)):
            _encode_episode(ae, reader, index, prompts, device, batch, path)
        bar.update(1)
    bar.close()
    _write_text(out, prompts.prompts, text_encoder_name, max_tokens, device,
                Path(text_from) if text_from is not None else None)
    meta = _cache_meta(identity, text_encoder_name, max_tokens, readers, complete=True, prompts=len(prompts.prompts))
    atomic_write_json(out / CACHE_FILE, meta)
    return meta


def encode_text_only(data_dir: str | os.PathLike, out_dir: str | os.PathLike, text_encoder_name: str = "minilm",
                     device: str | torch.device = "auto", max_tokens: int = DEFAULT_MAX_TOKENS) -> dict:
    """Only the prompt table of `data_dir` (no latents): the --text-from source for encoding the same
    episodes on a machine without the text encoder (episodes are deterministic in --seed, so datagen
    run there makes the same prompts)."""
    from world.data.dataset import open_dataset

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = _PromptTable(out)
    for reader in open_dataset(data_dir):
        prompts.lookup(reader.prompts())
    _write_text(out, prompts.prompts, text_encoder_name, max_tokens, resolve_device(str(device)))
    meta = {"format": FORMAT, "version": VERSION, "complete": False, "text_only": True,
            "text_encoder": text_encoder_name, "max_tokens": max_tokens, "shards": [],
            "counts": {"episodes": 0, "frames": 0, "prompts": len(prompts.prompts)}}
    atomic_write_json(out / CACHE_FILE, meta)
    return meta


def _cache_meta(identity: dict, text_encoder: str, max_tokens: int, readers: list, *, complete: bool,
                prompts: int | None = None) -> dict:
    shards = [
        {"file": SHARD_PATTERN.format(i), "episode": i, "episode_id": r.id, "frames": len(r),
         "chunk_frames": r.meta["chunk_frames"]}
        for i, r in enumerate(readers) if len(r)
    ]
    chunk_frames = sorted({s["chunk_frames"] for s in shards})
    return {
        "format": FORMAT,
        "version": VERSION,
        "complete": complete,
        "autoencoder": identity,
        "latent_shape": _latent_shape(identity["config"]),
        "normalised": True,  # latents are (z - latent_mean) / latent_std: ~unit variance per channel
        "text_encoder": text_encoder,
        "max_tokens": max_tokens,
        "chunk_frames": chunk_frames[0] if len(chunk_frames) == 1 else chunk_frames,
        "shards": shards,
        "counts": {"episodes": len(shards), "frames": sum(s["frames"] for s in shards), "prompts": prompts},
    }


def _latent_shape(ae_config: dict) -> list[int]:
    size = ae_config["image_size"] // ae_config["downsample"]
    return [ae_config["latent_channels"], size, size]


# ----------------------------------------------------------------------------- training data


class LatentClips(Dataset):
    """Clips of clip_chunks * chunk_frames consecutive latent frames from ONE episode.

    A clip starts on a chunk boundary (frame % chunk_frames == 0), as the generator's chunks do;
    every such start with a full clip after it is one item. Item:
    {"latents": [T, C, h, w] float32, "actions": [T, 12] float32, "prompt_ids": [T] int64}.
    `episodes` restricts the clips to those episode indices (e.g. a held-out split).
    Damaged shards are skipped with a LatentCacheWarning; all shards are held in RAM (fp16).
    """

    def __init__(self, cache_dir: str | os.PathLike, clip_chunks: int, chunk_frames: int = 3,
                 episodes: Iterable[int] | None = None):
        if clip_chunks < 1 or chunk_frames < 1:
            raise ValueError(f"clip_chunks and chunk_frames must be >= 1, got {clip_chunks}, {chunk_frames}")
        self.cache_dir = Path(cache_dir)
        self.meta = read_cache_meta(cache_dir)
        self.clip_frames = clip_chunks * chunk_frames
        self.chunk_frames = chunk_frames
        wanted = None if episodes is None else set(episodes)
        shards = [s for s in self.meta["shards"] if wanted is None or s["episode"] in wanted]
        self._warn_chunk_mismatch(shards)
        parts = [p for p in (self._load_shard(s) for s in shards) if p is not None]
        self.episodes = [int(p["episode"][0]) for p in parts]
        self._concat(parts)
        self.starts = self._clip_starts(parts)

    def _warn_chunk_mismatch(self, shards: list[dict]) -> None:
        recorded = sorted({s["chunk_frames"] for s in shards})
        if recorded and recorded != [self.chunk_frames]:
            warnings.warn(f"{self.cache_dir}: episodes were recorded with chunk_frames {recorded}, clips use "
                          f"{self.chunk_frames}", LatentCacheWarning, stacklevel=3)

    def _load_shard(self, shard: dict) -> dict[str, torch.Tensor] | None:
        path = self.cache_dir / shard["file"]
        try:
            data = load_file(str(path))
            lengths = {len(data[k]) for k in SHARD_KEYS}
        except (FileNotFoundError, SafetensorError, OSError, KeyError):
            lengths = set()
        if lengths != {shard["frames"]}:
            warnings.warn(f"{path}: damaged or incomplete latent shard, skipped (rerun `encode-latents` to repair)",
                          LatentCacheWarning, stacklevel=3)
            return None
        return data

    def _concat(self, parts: list[dict]) -> None:
        if not parts:  # an empty dataset still has well-formed (empty) tables
            C, h, w = self.meta["latent_shape"]
            parts = [{"latents": torch.zeros(0, C, h, w, dtype=torch.float16), "actions": torch.zeros(0, 12),
                      **{k: torch.zeros(0, dtype=torch.int64) for k in ("prompt_ids", "episode", "frame")}}]
        self.latents = torch.cat([p["latents"] for p in parts])  # [N, C, h, w] fp16
        self.actions = torch.cat([p["actions"] for p in parts])  # [N, 12]
        self.prompt_ids = torch.cat([p["prompt_ids"] for p in parts])  # [N]
        self.episode = torch.cat([p["episode"] for p in parts])  # [N]
        self.frame = torch.cat([p["frame"] for p in parts])  # [N]

    def _clip_starts(self, parts: list[dict]) -> torch.Tensor:
        """Global row indices where a clip may start: chunk boundary, clip inside one episode."""
        starts, offset, T = [], 0, self.clip_frames
        for p in parts:
            frame = p["frame"]
            n = len(frame)
            if n >= T:
                first = torch.arange(n - T + 1)
                # Within one shard rows are consecutive frames; check it rather than trust it.
                ok = (frame[first] % self.chunk_frames == 0) & (frame[first + T - 1] - frame[first] == T - 1)
                starts.append(first[ok] + offset)
            offset += n
        return torch.cat(starts) if starts else torch.zeros(0, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = int(self.starts[index])
        rows = slice(s, s + self.clip_frames)
        return {
            "latents": self.latents[rows].float(),  # [T, C, h, w]
            "actions": self.actions[rows].float(),  # [T, 12]
            "prompt_ids": self.prompt_ids[rows].long(),  # [T]
        }


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset directory (episodes)")
    parser.add_argument("--autoencoder", help="autoencoder checkpoint (or its training --out dir); required "
                        "unless --text-only")
    parser.add_argument("--out", required=True, help="latent cache directory (created; resumed if it exists)")
    parser.add_argument("--text-encoder", default="minilm", choices=TEXT_ENCODERS)
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help="text token slots per prompt")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--batch", type=int, default=256, help="frames per encoder batch")
    parser.add_argument("--overwrite", action="store_true", help="replace a cache made with another autoencoder")
    parser.add_argument("--text-from", default=None, metavar="CACHE",
                        help="take the prompt embeddings from this latent cache instead of running the text encoder "
                        "(every prompt of the dataset must be in it)")
    parser.add_argument("--text-only", action="store_true",
                        help="write only the prompt embeddings of the dataset (a --text-from source), no latents")


def run(args: argparse.Namespace) -> int:
    if args.text_only:
        meta = encode_text_only(args.data, args.out, args.text_encoder, args.device, args.max_tokens)
        print(f"prompt embeddings: {meta['counts']['prompts']} prompts -> {args.out}")
        return 0
    if not args.autoencoder:
        print("encode-latents: --autoencoder is required (unless --text-only)", file=sys.stderr)
        return 2
    meta = encode_dataset(args.data, args.autoencoder, args.out, args.text_encoder, args.device, args.batch,
                          args.max_tokens, args.overwrite, args.text_from)
    c = meta["counts"]
    print(f"latents: {c['episodes']} episodes, {c['frames']} frames, {c['prompts']} prompts -> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.training.encode_latents", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
