"""The latent cache: build, contents, resume, damage handling, and clips that respect episodes."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model.common.checkpoint import save_checkpoint
from model.common.images import frames_to_tensor
from model.nets.text_encoder import HashTextEncoder
from model.training.autoencoder import load_autoencoder
from model.training.encode_latents import (
    LatentCacheError,
    LatentCacheWarning,
    LatentClips,
    encode_dataset,
    load_prompts,
    main,
    text_table,
)
from tests.helpers import synthetic_frames, tiny_ae, write_dataset
from world.data.dataset import open_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


PROMPTS = ("green hills at noon", "desert dunes at dusk", "snowy peaks at night")


@pytest.fixture()
def built(tmp_path) -> tuple[Path, Path, Path]:
    """(data, autoencoder checkpoint, cache): episodes of 9, 10 and 12 frames, chunk 3."""
    data = tmp_path / "data"
    write_dataset(data, episodes=1, frames=9, prompts=PROMPTS)
    write_dataset(tmp_path / "more", episodes=3, frames=10, prompts=PROMPTS)
    (tmp_path / "more" / "ep01").rename(data / "ep01")
    write_dataset(tmp_path / "more2", episodes=3, frames=12, prompts=PROMPTS)
    (tmp_path / "more2" / "ep02").rename(data / "ep02")
    ae = tiny_ae()
    with torch.no_grad():
        ae.set_latent_stats(ae.encode_raw(frames_to_tensor(synthetic_frames(8))))
    ck = save_checkpoint(tmp_path / "ae", kind="autoencoder", modules={"autoencoder": ae},
                         configs={"autoencoder": ae.config}, step=5)
    cache = tmp_path / "cache"
    encode_dataset(data, ck, cache, text_encoder_name="hash", device="cpu", batch=4)
    return data, ck, cache


def test_cache_contents(built):
    data, ck, cache = built
    meta = json.loads((cache / "cache.json").read_text())
    assert meta["complete"] and meta["counts"] == {"episodes": 3, "frames": 31, "prompts": 3}
    assert meta["autoencoder"]["step"] == 5 and meta["chunk_frames"] == 3 and meta["latent_shape"] == [4, 16, 16]
    prompts = load_prompts(cache)
    assert sorted(prompts) == sorted(PROMPTS)

    ae = load_autoencoder(ck)
    for index, reader in enumerate(open_dataset(data)):
        shard = load_file(str(cache / f"latents_{index:04d}.safetensors"))
        n = len(reader)
        assert shard["latents"].shape == (n, 4, 16, 16) and shard["latents"].dtype == torch.float16
        assert shard["actions"].dtype == torch.float32 and np.array_equal(shard["actions"].numpy(), reader.actions())
        assert shard["episode"].tolist() == [index] * n and shard["frame"].tolist() == list(range(n))
        assert [prompts[i] for i in shard["prompt_ids"].tolist()] == reader.prompts()
        with torch.no_grad():
            expected = ae.encode(frames_to_tensor(np.asarray(reader.frames)))
        assert torch.allclose(shard["latents"].float(), expected, atol=2e-2, rtol=1e-2)

    tokens, mask = text_table(cache)
    assert tokens.shape == (3, 32, 384) and tokens.dtype == torch.float32 and mask.dtype == torch.bool
    ref_tokens, ref_mask = HashTextEncoder().encode(prompts)
    assert torch.equal(mask, ref_mask) and torch.allclose(tokens, ref_tokens, atol=1e-2)


def test_clips_stay_in_one_episode_and_start_on_chunks(built):
    _, _, cache = built
    clips = LatentClips(cache, clip_chunks=2, chunk_frames=3)
    # 9 frames: starts 0, 3; 10 frames: 0, 3; 12 frames: 0, 3, 6.
    assert len(clips) == 7
    for i in range(len(clips)):
        s = int(clips.starts[i])
        assert len(set(clips.episode[s : s + 6].tolist())) == 1
        assert int(clips.frame[s]) % 3 == 0
        item = clips[i]
        assert item["latents"].shape == (6, 4, 16, 16) and item["latents"].dtype == torch.float32
        assert item["actions"].shape == (6, 12) and item["prompt_ids"].shape == (6,)
        assert item["prompt_ids"].dtype == torch.int64
    assert len(LatentClips(cache, clip_chunks=4, chunk_frames=3)) == 1  # only the 12-frame episode fits
    assert len(LatentClips(cache, clip_chunks=1, chunk_frames=3, episodes=[1])) == 3


def test_rerun_resumes_per_episode(built):
    data, ck, cache = built
    shards = sorted(cache.glob("latents_*.safetensors"))
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    shards[1].unlink()
    encode_dataset(data, ck, cache, text_encoder_name="hash", device="cpu")
    assert shards[1].exists()
    assert all(p.stat().st_mtime_ns == stamps[p] for p in (shards[0], shards[2]))  # untouched


def test_damaged_shard_is_skipped_with_a_warning_and_repaired(built):
    data, ck, cache = built
    shard = cache / "latents_0001.safetensors"
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.warns(LatentCacheWarning, match="latents_0001"):
        clips = LatentClips(cache, clip_chunks=1)
    assert clips.episodes == [0, 2] and len(clips) == 3 + 4
    encode_dataset(data, ck, cache, text_encoder_name="hash", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(LatentClips(cache, clip_chunks=1)) == 3 + 3 + 4


def test_another_autoencoder_is_refused(built, tmp_path):
    data, _, cache = built
    other = tiny_ae(seed=1)
    ck2 = save_checkpoint(tmp_path / "ae2", kind="autoencoder", modules={"autoencoder": other},
                          configs={"autoencoder": other.config}, step=9)
    with pytest.raises(LatentCacheError, match="--overwrite"):
        encode_dataset(data, ck2, cache, text_encoder_name="hash", device="cpu")
    assert main(["--data", str(data), "--autoencoder", str(ck2), "--out", str(cache), "--text-encoder", "hash",
                 "--device", "cpu", "--overwrite"]) == 0
    assert json.loads((cache / "cache.json").read_text())["autoencoder"]["step"] == 9


def test_text_from_reuses_embeddings_without_the_encoder(built, tmp_path, monkeypatch):
    data, ck, cache = built
    import model.training.encode_latents as el

    def no_encoder(*a, **k):
        raise AssertionError("the text encoder must not run with --text-from")

    monkeypatch.setattr(el, "create_text_encoder", no_encoder)
    again = tmp_path / "again"
    assert main(["--data", str(data), "--autoencoder", str(ck), "--out", str(again), "--text-encoder", "hash",
                 "--device", "cpu", "--text-from", str(cache)]) == 0
    tokens, mask = text_table(again)
    ref_tokens, ref_mask = text_table(cache)
    order = [load_prompts(cache).index(p) for p in load_prompts(again)]
    assert torch.equal(tokens, ref_tokens[order]) and torch.equal(mask, ref_mask[order])


def test_text_only_table_serves_text_from(built, tmp_path):
    data, ck, cache = built
    table = tmp_path / "table"
    assert main(["--data", str(data), "--out", str(table), "--text-encoder", "hash", "--device", "cpu",
                 "--text-only"]) == 0
    assert not list(table.glob("latents_*")) and sorted(load_prompts(table)) == sorted(load_prompts(cache))
    again = tmp_path / "again"
    encode_dataset(data, ck, again, text_encoder_name="hash", device="cpu", text_from=table)
    assert torch.equal(text_table(again)[0], text_table(cache)[0])
    assert main(["--data", str(data), "--out", str(tmp_path / "x")]) == 2  # no autoencoder, no --text-only


def test_text_from_refuses_unknown_prompts_and_other_encoders(built, tmp_path):
    data, ck, cache = built
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("cache.json", "text.safetensors"):
        (partial / name).write_bytes((cache / name).read_bytes())
    (partial / "prompts.json").write_text(json.dumps(load_prompts(cache)[:1]))
    with pytest.raises(LatentCacheError, match="no embedding for 2 prompt"):
        encode_dataset(data, ck, tmp_path / "a", text_encoder_name="hash", device="cpu", text_from=partial)
    with pytest.raises(LatentCacheError, match="encoded with 'hash'"):
        encode_dataset(data, ck, tmp_path / "b", text_encoder_name="minilm", device="cpu", text_from=cache)


def test_missing_cache_is_a_clear_error(tmp_path):
    with pytest.raises(LatentCacheError, match="cache.json"):
        LatentClips(tmp_path, clip_chunks=1)
    with pytest.raises(LatentCacheError, match="text.safetensors"):
        text_table(tmp_path)
    assert not os.listdir(tmp_path)


def test_encode_latents_is_a_command(built, tmp_path):
    from run_world import main as world_main

    data, ck, _ = built
    out = tmp_path / "encoded"
    assert world_main(["encode-latents", "--data", str(data), "--autoencoder", str(ck), "--out", str(out),
                       "--text-encoder", "hash", "--device", "cpu"]) == 0
    assert json.loads((out / "cache.json").read_text())["complete"]


def test_train_cli_dispatches_lazily(built, tmp_path, capsys):
    from run_world import main as world_main

    data, ck, _ = built
    out = tmp_path / "via_cli"
    assert world_main(["train", "latents", "--data", str(data), "--autoencoder", str(ck), "--out", str(out),
                       "--text-encoder", "hash", "--device", "cpu"]) == 0
    assert json.loads((out / "cache.json").read_text())["complete"]
    assert "alias of `run_world.py encode-latents`" in capsys.readouterr().err
