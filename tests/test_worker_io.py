"""The worker end to end through a real `python run_world.py serve` subprocess: its I/O loop
(world/server/io_loop.py) and process handling (world/server/process.py) as clients see them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

import tests.fakes  # noqa: F401  (registers the "fake" backend in this process)
from tests.helpers import E2E_BACKEND, E2E_PROMPTS, FAKE_MODULE, collect, replay
from world.actions import Action
from world.server import protocol as P
from world.server import wire
from world.server.client import ChunkEvent, ErrorEvent, WorldClient, WorldConnectionError, WorldRequestError
from world.server.process import start_worker_process, stop_worker_process

WALK = Action(("forward",))


@pytest.fixture(scope="module")
def worker():
    proc, endpoint = start_worker_process(extra_args=FAKE_MODULE)
    yield proc, endpoint
    assert stop_worker_process(proc) == 0  # SIGTERM is a clean shutdown


def test_end_to_end_stream_prompt_switch_reset_close(worker):
    _, endpoint = worker
    client = WorldClient(endpoint, timeout_s=10)
    info = client.open(E2E_BACKEND, E2E_PROMPTS[0], seed=11)
    assert info["backend"] == E2E_BACKEND and info["chunk_frames"] >= 1 and info["window"] == 2
    F, H, W = info["chunk_frames"], info["height"], info["width"]
    client.send_input(WALK)
    first = collect(client, 3)
    client.set_prompt(E2E_PROMPTS[1])
    client.queue_actions([Action(("turn_left",))] * F)
    later = collect(client, 4)
    chunks = first + later
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert all(c.frames.shape == (F, H, W, 3) and c.frames.dtype == np.uint8 for c in chunks)
    assert [r["i"] for c in chunks for r in c.records] == list(range(F * len(chunks)))
    prompts = [c.records[0]["prompt"] for c in chunks]
    assert prompts[0] == E2E_PROMPTS[0] and prompts[-1] == E2E_PROMPTS[1]
    assert prompts.index(E2E_PROMPTS[1]) <= 3 + 2  # takes effect within the window
    actions = [r["action"]["keys"] for c in chunks for r in c.records]
    assert ["forward"] in actions and ["turn_left"] in actions
    replay(E2E_BACKEND, 11, chunks)

    client.reset(seed=12)
    after = collect(client, 2)
    assert after[0].epoch == 1 and after[0].records[0]["i"] == 0 and after[0].chunk == 0
    replay(E2E_BACKEND, 12, after)
    client.close()
    status = WorldClient(endpoint).status()
    assert status.worker["sessions"] == 0 and status.worker["sessions_closed"] >= 1


def test_bad_requests_over_the_wire_get_errors(worker):
    _, endpoint = worker
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        cases = [
            ([b"\x00garbage\xff"], P.BAD_JSON),
            ([json.dumps({"v": 7, "type": "ping", "ref": 1}).encode()], P.BAD_VERSION),
            ([b"{}", b"extra"], P.BAD_FRAME),
            ([json.dumps({"v": 1, "type": "shutdown"}).encode()], P.UNKNOWN_TYPE),
            (wire.encode(P.Open(backend="nope", prompt="hills")), P.UNKNOWN_BACKEND),
            (wire.encode(P.Input(session="ffff", action=WALK)), P.UNKNOWN_SESSION),
            (wire.encode(P.Open(backend=E2E_BACKEND, prompt=E2E_PROMPTS[0], options={"colour": "blue"})), P.BAD_OPTION),
            (wire.encode(P.Open(backend=E2E_BACKEND, prompt="x" * 501)), P.BAD_PROMPT),
        ]
        for frames, code in cases:
            sock.send_multipart(frames)
            assert sock.poll(5000), f"no reply for {code}"
            reply, _ = wire.decode_reply(sock.recv_multipart())
            assert reply.TYPE == "error" and reply.code == code
            if code == P.BAD_VERSION:
                assert reply.supported == P.PROTOCOL_VERSION and reply.ref == 1
    finally:
        sock.close()


def test_open_refused_raises_request_error(worker):
    client = WorldClient(worker[1])
    with pytest.raises(WorldRequestError) as info:
        client.open("fake", "   ")
    assert info.value.code == P.BAD_PROMPT
    client.close()


def worker_rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_client_without_ack_stops_production_and_memory_stays_bounded(worker):
    proc, endpoint = worker
    watcher = WorldClient(endpoint)
    base = watcher.status().worker["chunks_produced"]
    greedy = WorldClient(endpoint)
    greedy.open("fake", "hills", options={"height": 256, "width": 256})  # 590 KB per chunk
    received, produced, rss = 0, [], []
    for rounds in range(400):  # bounded: at least 40 rounds, and until the window has arrived
        greedy.send_input(WALK)  # keeps the session alive without acknowledging anything
        received += sum(isinstance(e, ChunkEvent) for e in greedy.poll(timeout_ms=25))
        produced.append(watcher.status().worker["chunks_produced"] - base)
        rss.append(worker_rss(proc.pid))
        if rounds >= 40 and received == 2:
            break
    assert received == 2 and max(produced) == 2  # production stopped at the window of 2 chunks
    session = greedy.status().session
    assert (session["chunks_produced"], session["in_flight"], session["acked"]) == (2, 2, -1)
    assert max(rss) - rss[0] < 16 * 2**20  # unbounded production would add 590 KB per chunk
    greedy.close()
    watcher.close()


def test_silent_session_times_out_and_is_freed():
    proc, endpoint = start_worker_process(extra_args=[*FAKE_MODULE, "--session-timeout", "0.5"])
    try:
        client = WorldClient(endpoint, heartbeat_s=60)  # no heartbeats: the session goes silent
        client.open("fake", "hills")
        watcher = WorldClient(endpoint)
        for _ in range(100):  # bounded wait for the expiry
            status = watcher.status().worker
            if status["sessions_expired"]:
                break
            time.sleep(0.05)
        assert status["sessions"] == 0 and status["sessions_expired"] == 1 and status["sessions_closed"] == 1
        events = []
        for _ in range(20):  # bounded: the two chunks sent before the expiry come first
            events += client.poll(timeout_ms=100)
            if any(isinstance(e, ErrorEvent) for e in events):
                break
        assert [e.code for e in events if isinstance(e, ErrorEvent)] == ["session_closed"]
        assert not client.connected
        client.reconnect()  # same worker, new session
        assert client.connected and collect(client, 1)
        client.close()
        watcher.close()
    finally:
        assert stop_worker_process(proc) == 0


def test_client_notices_a_restarted_worker_and_reconnects():
    proc, endpoint = start_worker_process(extra_args=FAKE_MODULE)
    client = WorldClient(endpoint, heartbeat_s=0.1, liveness_s=1.0, timeout_s=10)
    try:
        assert client.open("fake", "hills", seed=4, lookahead=1)["window"] == 1
        collect(client, 2)
        assert client.connected
        stop_worker_process(proc)
        proc, endpoint = start_worker_process(bind=endpoint, extra_args=FAKE_MODULE)  # same port
        for _ in range(100):  # bounded: the old session is gone, the client must notice
            client.poll(timeout_ms=50)
            if not client.connected:
                break
        assert not client.connected
        info = client.reconnect()
        assert info["seed"] == 4 and info["window"] == 1 and client.connected  # the lookahead is kept
        chunks = collect(client, 2)  # the world goes on after the two acknowledged chunks
        assert info["resumed"]["seq"] == 2 and chunks[0].seq == 2
        assert chunks[0].records[0]["i"] == info["resumed"]["frame"] > 0
    finally:
        client.close()
        stop_worker_process(proc)


def test_open_times_out_when_no_worker_listens():
    ctx = zmq.Context.instance()
    probe = ctx.socket(zmq.ROUTER)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)  # a port nobody listens on any more
    client = WorldClient(f"tcp://127.0.0.1:{port}", timeout_s=0.3)
    with pytest.raises(WorldConnectionError):
        client.open("fake", "hills")
    client.close()


@pytest.mark.parametrize("bind", ["tcp://127.0.0.1:0", "tcp://127.0.0.1:*"])
def test_random_port_binds_report_the_endpoint_and_sigint_stops_cleanly(bind):
    proc, endpoint = start_worker_process(bind=bind, extra_args=FAKE_MODULE)
    try:
        assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith((":0", ":*"))
        client = WorldClient(endpoint)
        assert client.status().worker["version"] == P.PROTOCOL_VERSION
        client.close()
        proc.send_signal(2)  # SIGINT
        assert proc.wait(timeout=10) == 0
    finally:
        stop_worker_process(proc)


def test_minimal_client_from_the_docs_runs(worker):
    text = (Path(__file__).parents[1] / "docs" / "protocol.md").read_text()
    code = text.split("## 12. Minimal client", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    code = code.replace("tcp://127.0.0.1:5555", worker[1]).replace('backend="engine"', f'backend="{E2E_BACKEND}"')
    before = WorldClient(worker[1]).status().worker
    exec(compile(code, "docs/protocol.md", "exec"), {})
    after = WorldClient(worker[1]).status().worker
    assert after["sessions_opened"] == before["sessions_opened"] + 1
    assert after["sessions_closed"] == before["sessions_closed"] + 1
