"""docs/reliability.md, rows 1 and 3: what one client asks for must not stall or starve the others.

Real `serve` subprocesses on loopback with the fake backend, whose `reset_delay_s` / `delay_s`
options make a world as slow to open or to step as a 1024x1024 engine (docs/reliability.md).
Nothing here asserts a duration: it counts chunks a normal session received while another
client's slow work was in flight (before the fix: none, the loop was blocked).
"""

from __future__ import annotations

import time

import pytest

import tests.fakes  # noqa: F401  (registers the "fake" backend in this process)
from tests.helpers import FAKE_MODULE, collect
from world.server import protocol as P
from world.server import wire
from world.server.client import ChunkEvent, ErrorEvent, WorldClient, WorldRequestError
from world.server.core import WorkerCore
from world.server.process import start_worker_process, stop_worker_process
from world.server.worker_config import Inbound, WorkerConfig


@pytest.fixture(scope="module")
def worker():
    proc, endpoint = start_worker_process(extra_args=[*FAKE_MODULE, "--chunk-budget", "1.0", "--max-sessions", "4"])
    yield endpoint
    assert stop_worker_process(proc) == 0


def stream_while(client: WorldClient, busy: WorldClient | None, seconds: float) -> tuple[int, list]:
    """Chunks the normal `client` received (acking each) while `busy`'s events are gathered."""
    chunks, events = 0, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for event in client.poll(20):
            assert not isinstance(event, ErrorEvent), event
            if isinstance(event, ChunkEvent):
                chunks += 1
                client.ack(event.seq)
        events += busy.poll(0) if busy is not None else []
    return chunks, events


def playing(endpoint: str, seed: int, **options) -> WorldClient:
    """A client whose fake session has streamed its first chunks."""
    client = WorldClient(endpoint, timeout_s=10)
    client.open("fake", "hills", seed=seed, options=options)
    collect(client, 2)
    return client


def test_a_slow_open_runs_off_the_loop_while_others_play(worker):
    normal = playing(worker, 1)
    slow = WorldClient(worker, timeout_s=10)
    slow._send(P.Open(backend="fake", prompt="hills", options={"reset_delay_s": 3.0}, ref=7), required=True)
    opening = [normal.status().worker["opening"] for _ in range(20)]  # the open may not have arrived yet
    assert 1 in opening  # the slow session is "opening" until it is built
    chunks, events = stream_while(normal, slow, 2.0)
    assert chunks > 20  # the normal session kept streaming (the old loop: none in 3 s)
    info = slow._wait_for(7, 10)
    assert isinstance(info, P.Opened)
    slow.session = info.session
    normal.close(), slow.close()


def test_a_session_over_its_chunk_budget_is_told_and_closed_alone(worker):
    normal = playing(worker, 2)
    slow = WorldClient(worker, timeout_s=10)
    slow.open("fake", "hills", options={"delay_s": 2.0})  # each chunk 2 s against a budget of 1 s
    chunks, events = stream_while(normal, slow, 3.5)
    assert chunks > 20  # its first chunk was timed off the loop: the normal session did not wait
    codes = [e.code for e in events if isinstance(e, ErrorEvent)]
    assert P.OVER_BUDGET in codes and "session_closed" in codes, events
    assert next(e for e in events if isinstance(e, ErrorEvent) and e.code == P.OVER_BUDGET).message.count("s per chunk")
    collect(normal, 2)  # and it plays on
    normal.close(), slow.close()


def test_a_slow_reset_runs_off_the_loop_and_later_requests_wait_for_it(worker):
    normal = playing(worker, 3)
    other = playing(worker, 4, reset_delay_s=0.5)
    other._send(P.Reset(session=other.session, seed=9, ref=5))
    other._send(P.Prompt(session=other.session, prompt="desert", ref=6))  # waits for the reset
    chunks, _ = stream_while(normal, None, 1.0)
    assert chunks > 10
    ok = other._wait_for(6, 10)
    assert isinstance(ok, P.Ok) and ok.epoch == 1  # answered after the reset it came after
    normal.close(), other.close()


def test_one_socket_cannot_take_every_session(worker):
    """Finding 3: one socket opened all free sessions; now it holds its cap and others get in."""
    greedy = WorldClient(worker, timeout_s=10)
    greedy.open("fake", "hills")
    second = greedy._next_ref()
    greedy._send(P.Open(backend="fake", prompt="hills", ref=second), required=True)
    extra = greedy._wait_for(second, 10)
    assert isinstance(extra, P.Opened)
    third = greedy._next_ref()
    greedy._send(P.Open(backend="fake", prompt="hills", ref=third), required=True)
    refused = greedy._wait_for(third, 10)
    assert refused.code == P.TOO_MANY_SESSIONS
    others = [WorldClient(worker, timeout_s=10) for _ in range(2)]
    for client in others:
        assert client.open("fake", "hills")["session"]  # 2 of the worker's 4 sessions are still free
    with pytest.raises(WorldRequestError) as full:
        WorldClient(worker, timeout_s=10).open("fake", "hills")
    assert full.value.code == P.BUSY and full.value.retry_after_s > 0  # full: busy, with a hint
    greedy._send(P.Close(session=extra.session))
    for client in [greedy, *others]:
        client.close()


def test_liveness_counts_receipt_on_the_io_thread_not_the_loop():
    """A client whose pings were received while the loop was busy is not silent (finding 1)."""
    heard: dict[bytes, float] = {}
    core = WorkerCore(WorkerConfig(session_timeout_s=1.0), "test", heard=heard)
    core.handle(Inbound(b"\x00a", P.Open(backend="fake", prompt="hills"), 0.0))
    heard[b"\x00a"] = 5.0  # the I/O thread got a ping at t=5 that the loop has not handled yet
    assert core.expire(now=5.5) == [] and len(core.sessions) == 1
    assert len(core.expire(now=6.5)) == 1  # silent since t=5: closed


def test_the_budget_protects_other_clients_and_spares_a_session_alone():
    core = WorkerCore(WorkerConfig(chunk_budget_s=0.05), "test")

    def replies(out) -> list[P.Message]:
        return [wire.decode_reply(o.frames)[0] for o in out]

    def open_as(identity: bytes, **options) -> str:
        (opened,) = replies(core.handle(Inbound(identity, P.Open(backend="fake", prompt="hills", options=options),
                                                0.0)))  # fmt: skip
        return opened.session

    slow = open_as(b"\x00slow", delay_s=0.1)
    alone = [r for _ in range(3) for r in replies(core.produce_next())]
    assert [r.TYPE for r in alone] == ["chunk"] * 2  # over budget, but nobody waits for it (window: 2)
    core.handle(Inbound(b"\x00slow", P.Ack(session=slow, seq=1), 0.0))
    open_as(b"\x00normal")
    shared = [r for _ in range(6) for r in replies(core.produce_next())]
    assert [r.code for r in shared if r.TYPE == "error"] == [P.OVER_BUDGET]
    assert slow not in core.sessions and len(core.sessions) == 1


def test_a_session_predicted_far_over_budget_is_refused_before_it_is_built():
    """The 1024x1024, 16-frame engine took 80 s of CPU to build before its first chunk could be
    timed; once the worker has seen what its backend costs, an open predicted far over the budget is
    refused at once (here one within the work limit: 256x256x16 pixel-frames of a world that took
    0.1 s for 16x16x3)."""
    core = WorkerCore(WorkerConfig(chunk_budget_s=1.0), "test")
    first = core.handle(Inbound(b"\x00a", P.Open(backend="fake", prompt="hills", options={"delay_s": 0.1}), 0.0))
    assert wire.decode_reply(first[0].frames)[0].TYPE == "opened"
    core.produce_next()  # its first chunk, timed: 0.1 s for 16x16x3 pixels
    built = tests.fakes.FakeBackend.built
    big = {"height": 256, "width": 256, "chunk_frames": 16}
    (refused,) = core.handle(Inbound(b"\x00b", P.Open(backend="fake", prompt="hills", options=big), 0.0))
    error = wire.decode_reply(refused.frames)[0]
    assert error.code == P.OVER_BUDGET and "would take about" in error.message
    assert tests.fakes.FakeBackend.built == built  # nothing was built for it
