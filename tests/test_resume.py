"""A restarted worker resumes a session after the last acknowledged chunk (docs/protocol.md, "Resuming").

Real worker processes on loopback: the first is stopped mid-session and a second takes its port;
the client reopens with its resume point and the world goes on with its counters continuing, with
no chunk made twice for a front end that keeps what it received, and with the prompt switch the
lost worker never answered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest

from tests.helpers import collect_chunks
from world.actions import Action
from world.backends.registry import create_backend
from world.server import protocol as P
from world.server.client import WorldClient
from world.server.process import start_worker_process, stop_worker_process
from world.server.session import Session

PROMPT = "green hills at noon"
OTHER_PROMPT = "snowy mountains at dusk in fog"
WALK = Action(("forward", "turn_left"))


def restart_and_reconnect(client: WorldClient, proc, endpoint: str, extra_args=(), resume: bool = True,
                          keep_delivered: bool = False):  # fmt: skip
    """Stop the worker, start a new one on the same port, wait until the client notices; reconnect."""
    stop_worker_process(proc)
    proc, endpoint = start_worker_process(bind=endpoint, extra_args=extra_args)
    for _ in range(200):
        client.poll(timeout_ms=50)
        if not client.connected:
            break
    assert not client.connected
    return proc, client.reconnect(resume=resume, keep_delivered=keep_delivered)


class EngineWorld:
    """A real worker on loopback and a client of one engine world on it; `restart` puts a new worker
    on the port and reconnects."""

    def __init__(self, seed: int, lookahead: int) -> None:
        self.proc, self.endpoint = start_worker_process()
        self.client = WorldClient(self.endpoint, heartbeat_s=0.1, liveness_s=1.0, timeout_s=20)
        self.client.open("engine", PROMPT, seed=seed, lookahead=lookahead)

    def restart(self, **reconnect) -> dict:
        self.proc, info = restart_and_reconnect(self.client, self.proc, self.endpoint, **reconnect)
        return info


@contextlib.contextmanager
def engine_world(seed: int, lookahead: int = 1) -> Iterator[EngineWorld]:
    world = EngineWorld(seed, lookahead)
    try:
        yield world
    finally:
        world.client.close()
        stop_worker_process(world.proc)


def uninterrupted_frames(seed: int, chunks) -> list[np.ndarray]:
    """What one engine makes from the chunks' recorded actions, chunk by chunk."""
    engine = create_backend("engine")
    engine.reset(seed, PROMPT)
    try:
        return [engine.step_chunk([Action.from_json(r["action"]) for r in c.records]).frames for c in chunks]
    finally:
        engine.close()


def test_a_restarted_worker_goes_on_after_the_last_acknowledged_chunk_bit_for_bit():
    with engine_world(seed=5) as world:
        client = world.client
        client.send_input(WALK)
        before = collect_chunks(client, 4)  # acknowledged: the resume point is after the last
        assert client.resume_point is not None and client.resume_point.seq == before[-1].seq + 1
        info = world.restart()
        last = before[-1]
        assert info["resumed"] == {"seq": last.seq + 1, "chunk": last.chunk + 1,
                                   "frame": last.records[-1]["i"] + 1, "epoch": last.epoch}  # fmt: skip
        after = collect_chunks(client, 3)
    # The counters continue: no reset view, no frame index from 0.
    assert [c.seq for c in after] == list(range(last.seq + 1, last.seq + 4))
    assert after[0].records[0]["i"] == last.records[-1]["i"] + 1 and not after[0].extra.get("reset_view")
    # The same frames an uninterrupted engine makes from the same actions.
    for chunk, expected in zip(before + after, uninterrupted_frames(5, before + after)):
        assert np.array_equal(chunk.frames, expected), f"chunk {chunk.seq} differs"


def test_a_front_end_that_keeps_its_buffer_is_not_sent_a_chunk_twice():
    """Chunks received but not yet acknowledged (a buffer still to show) are not made again: the
    world goes on after the newest one handed out, bit for bit."""
    with engine_world(seed=6, lookahead=2) as world:
        world.client.send_input(WALK)
        # one list for both, so a chunk that arrives in the same poll as the third is neither lost nor acked
        received = collect_chunks(world.client, 5, ack=3)
        shown, buffered = received[:3], received[3:]  # the window is full: nothing more comes
        info = world.restart(keep_delivered=True)
        assert info["resumed"]["seq"] == buffered[-1].seq + 1
        after = collect_chunks(world.client, 3)
    chunks = shown + buffered + after
    assert [c.chunk for c in chunks] == list(range(8)) and [c.seq for c in chunks] == list(range(8))
    for chunk, expected in zip(chunks, uninterrupted_frames(6, chunks)):
        assert np.array_equal(chunk.frames, expected), f"chunk {chunk.seq} differs"


def test_a_prompt_switch_the_lost_worker_never_answered_is_sent_again():
    with engine_world(seed=2) as world:
        collect_chunks(world.client, 2)
        world.proc.kill()  # the switch below goes out as the worker dies: it is never answered
        world.proc.wait()
        world.client.set_prompt(OTHER_PROMPT)
        info = world.restart()
        assert info["resumed"] is not None and info["prompt"] == PROMPT  # reopened as acknowledged, then switched
        after = collect_chunks(world.client, 3)
    assert after[-1].records[0]["prompt"] == OTHER_PROMPT
    assert world.client._spec.prompt == OTHER_PROMPT  # acknowledged by the new worker


def test_reconnect_without_resume_and_after_a_reset_starts_the_world_again():
    with engine_world(seed=2) as world:
        collect_chunks(world.client, 2)
        info = world.restart(resume=False)
        assert info["resumed"] is None
        first = collect_chunks(world.client, 2)
        assert first[0].seq == 0 and first[0].records[0]["i"] == 0
        world.client.reset()  # the reset world has no acknowledged chunk yet: nothing to resume from
        assert world.client.resume_point is None


def test_a_generated_world_resumes_from_its_last_frame(world_dir):
    args = ("--checkpoint", str(world_dir), "--device", "cpu")
    proc, endpoint = start_worker_process(extra_args=args)
    client = WorldClient(endpoint, heartbeat_s=0.1, liveness_s=1.5, timeout_s=60)
    try:
        client.open("generated", PROMPT, seed=3, lookahead=1, options={"start": "engine", "steps": 2})
        before = collect_chunks(client, 3)
        proc, info = restart_and_reconnect(client, proc, endpoint, extra_args=args)
        assert info["start"] == "image" and info["resumed"]["frame"] == before[-1].records[-1]["i"] + 1
        after = collect_chunks(client, 2)
        assert after[0].seq == before[-1].seq + 1 and after[0].records[0]["i"] == info["resumed"]["frame"]
        assert not after[0].extra.get("reset_view")
        # The client asked for an image start this once; its own options are unchanged for later.
        assert client._spec.options == {"start": "engine", "steps": 2} and client._spec.start_image is None
    finally:
        client.close()
        stop_worker_process(proc)


@pytest.mark.parametrize("resume, message", [
    ("x", "must be an object"),
    ({"seq": 1, "chunk": 1, "frame": 3}, "resume.epoch"),
    ({"seq": -1, "chunk": 0, "frame": 0, "epoch": 0}, "resume.seq"),
    ({"seq": 1, "chunk": 1, "frame": 3, "epoch": 0, "extra": 1}, "unknown fields"),
    ({"seq": 1, "chunk": 1, "frame": 3, "epoch": 0, "state": {"x": "far"}}, "finite number"),
    ({"seq": 1, "chunk": 1, "frame": 3, "epoch": 0, "state": {"x": float("nan")}}, "finite number"),
    ({"seq": 1, "chunk": 1, "frame": 3, "epoch": 0, "state": {"x": True}}, "finite number"),
])
def test_a_malformed_resume_is_refused_with_its_field(resume, message):
    with pytest.raises(P.ProtocolError, match=message) as info:
        P.parse_resume(resume)
    assert info.value.code == P.BAD_MESSAGE


def test_a_resume_state_the_backend_cannot_take_is_refused_and_the_worker_lives():
    proc, endpoint = start_worker_process()
    client = WorldClient(endpoint, timeout_s=20)
    try:
        bad = {"seq": 4, "chunk": 4, "frame": 12, "epoch": 0, "state": {"x": 1.0}}  # no camera height, yaw, ...
        request = P.Open(backend="engine", prompt=PROMPT, seed=1, resume=bad, ref=1)
        client._send(request, required=True)
        reply = client._wait_for(1, 20)
        assert isinstance(reply, P.Error) and reply.code == P.BACKEND_ERROR and "resume" in reply.message
        assert client.open("engine", PROMPT, seed=1)["resumed"] is None  # the worker still serves
    finally:
        client.close()
        stop_worker_process(proc)


def test_session_resume_at_continues_the_counters_and_drops_the_reset_view():
    backend = create_backend("engine")
    backend.reset(1, PROMPT)
    session = Session("s", b"id", "engine", backend, PROMPT, 1, max_queued=8, now=0.0, lookahead=2)
    session.resume_at(seq=7, chunk=5, frame=15, epoch=2)
    header, frames = session.produce()
    assert (header.seq, header.chunk, header.epoch, header.records[0]["i"]) == (7, 5, 2, 15)
    assert session.acked == 6 and set(header.extra["resume"]) == set(backend.world.POSE_FIELDS)
    backend.close()
