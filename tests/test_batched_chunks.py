"""Batched chunks (model/runtime/stream.py `next_chunks`, model/nets/cache_batch.py) are identical, bit
for bit on the CPU in fp32, to generating each stream's chunks alone: for the teacher, uniform and
diagonal samplers, with streams at different chunk indices, different prompt lengths, a prompt switch
and a reset in the middle, a clean context start, the copy path and action tokens."""

import numpy as np
import pytest
import torch

from model.runtime.stream import batch_key, next_chunks
from model.runtime.world_model import load_world_model, make_random_world

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ("green hills at noon", "a snowy valley at dusk with heavy fog and drifting snow", "desert")


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """Two tiny worlds: the plain network, and one with the copy path and action tokens."""
    root = tmp_path_factory.mktemp("batched")
    with torch.random.fork_rng():  # leave the global RNG as later modules expect it (test_eval_suite's nets)
        plain = make_random_world(root / "plain", preset="tiny", text_encoder="hash", seed=3)
        extras = make_random_world(root / "extras", preset="tiny", text_encoder="hash", seed=4,
                                   dit_options={"copy_path": True, "action_tokens": True})  # fmt: skip
        return {"plain": load_world_model(plain), "extras": load_world_model(extras)}


def script(model, sampler, batched: bool) -> list[list[torch.Tensor]]:
    """Three streams joining at different rounds; stream 0 switches prompt at round 4, stream 1 is
    reset at round 5; every round the started streams each get a chunk (batched or one by one).
    Returns each stream's chunk latents in order."""
    streams = [model.stream(sampler) for _ in PROMPTS]
    started: list[int] = []
    gen = torch.Generator().manual_seed(7)
    clean = torch.randn(model.dit.config.latent_shape, generator=gen)
    outs: list[list[torch.Tensor]] = [[] for _ in streams]
    C, A = model.dit.config.chunk_frames, model.dit.config.action_dim
    for r in range(8):
        if r < len(streams):  # stream r joins now (stream 2 from a clean context chunk)
            streams[r].reset(10 + r, PROMPTS[r], clean if r == 2 else None)
            started.append(r)
        if r == 4:
            streams[0].set_prompt("volcanic ash under a red night sky")
        if r == 5:
            streams[1].reset(99, PROMPTS[1])
        actions = [torch.rand(C, A, generator=gen) for _ in started]
        due = [streams[i] for i in started]
        chunks = next_chunks(due, actions) if batched else [s.next_chunk(a) for s, a in zip(due, actions)]
        for i, out in zip(started, chunks):
            outs[i].append(out.latents)
    return outs


@pytest.mark.parametrize("world", ["plain", "extras"])
@pytest.mark.parametrize(
    "sampler",
    [
        {"name": "teacher", "steps": 3},  # Euler + guidance (2 rows per stream) + refresh pass
        {"name": "teacher", "steps": 3, "guide": "actions"},  # uncond rows keep the prompt, null actions
        {"name": "uniform"},  # re-noising + refresh
        {"name": "diagonal", "schedule": [4, 3, 2]},  # streams at different step counts share forwards
        {"name": "diagonal", "schedule": [4, 3, 2], "rewarm": True},  # a switch restarts one stream's schedule
    ],
    ids=["teacher", "teacher-guide-actions", "uniform", "diagonal", "diagonal-rewarm"],
)
def test_batched_equals_sequential(worlds, world, sampler):
    model = worlds[world]
    sampler = model.sampler(**sampler)
    batched, alone = script(model, sampler, True), script(model, sampler, False)
    assert [len(o) for o in batched] == [8, 7, 6]
    for b_chunks, a_chunks in zip(batched, alone):
        for b, a in zip(b_chunks, a_chunks):
            assert torch.equal(b, a)
    assert not torch.equal(batched[0][-1], batched[1][-1])  # the streams really are different worlds


def test_decoded_frames_equal(worlds):
    """Frames too (the decoder runs per stream on identical latents)."""
    model = worlds["plain"]
    sampler = model.sampler("diagonal")
    a, b = model.stream(sampler), model.stream(sampler)
    a.reset(1, PROMPTS[0])
    b.reset(2, PROMPTS[1])
    acts = [np.zeros((3, 12), np.float32), np.ones((3, 12), np.float32)]
    outs = next_chunks([a, b], acts)
    ref_a, ref_b = model.stream(sampler), model.stream(sampler)
    ref_a.reset(1, PROMPTS[0])
    ref_b.reset(2, PROMPTS[1])
    assert np.array_equal(a.decode(outs[0].latents), ref_a.decode(ref_a.next_chunk(acts[0]).latents))
    assert np.array_equal(b.decode(outs[1].latents), ref_b.decode(ref_b.next_chunk(acts[1]).latents))


def test_bad_input_touches_no_stream(worlds):
    """One stream's malformed actions fail the call before any cache or noise state moves, so the
    caller can drop that stream and run the others (the worker does)."""
    model = worlds["plain"]
    sampler = model.sampler("diagonal")
    streams = [model.stream(sampler) for _ in range(2)]
    for i, s in enumerate(streams):
        s.reset(i, PROMPTS[i])
    before = [(s.cache.next_frame, s.generator.get_state().clone()) for s in streams]
    with pytest.raises(ValueError, match="actions must be"):
        next_chunks(streams, [np.zeros((3, 12), np.float32), np.zeros((2, 12), np.float32)])
    for s, (frame, state) in zip(streams, before):
        assert s.cache.next_frame == frame and torch.equal(s.generator.get_state(), state)


def test_batch_key_and_mixing(worlds):
    plain, extras = worlds["plain"], worlds["extras"]
    diag = plain.sampler("diagonal")
    a, b = plain.stream(diag), plain.stream(diag)
    assert batch_key(a) == batch_key(b)
    assert batch_key(a) != batch_key(plain.stream(plain.sampler("uniform")))
    assert batch_key(a) != batch_key(extras.stream(extras.sampler("diagonal")))
    other = extras.stream(extras.sampler("diagonal"))
    a.reset(0, PROMPTS[0])
    other.reset(0, PROMPTS[0])
    with pytest.raises(ValueError, match="one network"):
        next_chunks([a, other], [np.zeros((3, 12), np.float32)] * 2)


def test_streams_of_other_guides_have_other_keys_and_stay_exact_if_batched(worlds):
    """The batch key is the whole sampler, so sessions guided on other conditionings are not grouped;
    each job carries its own rows anyway, so even a batch mixing guides is exact per stream."""
    model = worlds["plain"]
    samplers = [model.sampler("teacher", steps=2, guide=g) for g in ("all", "actions", "text")]
    streams = [model.stream(s) for s in samplers]
    assert len({batch_key(s) for s in streams}) == 3
    acts = [torch.rand(3, 12, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for i, s in enumerate(streams):
        s.reset(i, PROMPTS[0])
    outs = next_chunks(streams, acts)
    for i, sampler in enumerate(samplers):
        alone = model.stream(sampler)
        alone.reset(i, PROMPTS[0])
        assert torch.equal(outs[i].latents, alone.next_chunk(acts[i]).latents)
    assert not torch.equal(outs[0].latents, outs[1].latents)
