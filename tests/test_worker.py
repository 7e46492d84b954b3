"""The worker: request handling in-process, then end to end through a real `serve` subprocess."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

import tests.fakes  # noqa: F401  (registers the "fake" backend in this process)
from tests.fakes import FakeBackend, fake_frame
from tests.helpers import E2E_BACKEND, E2E_PROMPTS, FAKE_MODULE, collect, replay
from world.actions import Action
from world.server import protocol as P
from world.server import worker as worker_module
from world.server.client import ChunkEvent, ErrorEvent, WorldClient, WorldConnectionError, WorldRequestError
from world.server.worker import Inbound, WorkerConfig, WorkerCore, start_worker_process, stop_worker_process

WALK = Action(("forward",))

# -------------------------------------------------------------------------------------------
# In-process: WorkerCore without sockets.

ME, OTHER = b"\x00me", b"\x00other"


class Core:
    """A WorkerCore plus helpers that send it requests and decode what it answers."""

    def __init__(self, **config):
        self.core = WorkerCore(WorkerConfig(**config), instance="test")
        self.now = 0.0

    def send(self, request: P.Message, identity: bytes = ME) -> list[P.Message]:
        self.now += 0.001
        return [P.decode_reply(o.frames)[0] for o in self.core.handle(Inbound(identity, request, self.now))]

    def open(self, identity: bytes = ME, **fields) -> str:
        fields = {"backend": "fake", "prompt": "hills", "seed": 5, **fields}
        (reply,) = self.send(P.Open(**fields), identity)
        assert isinstance(reply, P.Opened), reply
        return reply.session

    def produce_all(self) -> list[tuple[P.Chunk, np.ndarray]]:
        out = []
        for _ in range(100):  # bounded: the window stops production long before this
            produced = self.core.produce_next()
            if not produced:
                return out
            out += [P.decode_reply(o.frames) for o in produced]  # a batch (or first chunks) may be several
        raise AssertionError("production did not stop at the window")


def test_open_streams_window_chunks_then_waits_for_acks():
    c = Core(max_unacked=2)
    sid = c.open()
    chunks = c.produce_all()
    assert [m.seq for m, _ in chunks] == [0, 1]
    assert c.send(P.Ack(session=sid, seq=0)) == []
    assert [m.seq for m, _ in c.produce_all()] == [2]
    m, frames = chunks[1]
    assert m.records[0]["i"] == 3 and m.records[0]["chunk"] == 1 and m.records[0]["prompt"] == "hills"
    assert np.array_equal(frames[0], fake_frame(5, 3, Action(), "hills", 16, 16))
    # No reset chunk from this backend (like the engine): chunk 0 is the first step_chunk, no reset view.
    m0, frames0 = chunks[0]
    assert m0.chunk == 0 and "reset_view" not in m0.extra and not any("reset_view" in r for r in m0.records)
    assert np.array_equal(frames0[0], fake_frame(5, 0, Action(), "hills", 16, 16))


def max_in_flight(c: Core, sid: str, chunks: int) -> int:
    """Stream `chunks` chunks, acking each only after the worker had every chance to run ahead
    (produce until it stops); returns the most unacknowledged chunks seen."""
    most, acked = 0, -1
    while acked < chunks - 1:
        produced = c.produce_all()
        (status,) = c.send(P.Status(session=sid))
        most = max(most, status.session["in_flight"])
        assert produced or status.session["in_flight"], "the session stalled"
        acked += 1
        c.send(P.Ack(session=sid, seq=acked))
    return most


@pytest.mark.parametrize("lookahead, expected", [(1, 1), (2, 2), (None, 2)])
def test_session_lookahead_bounds_the_chunks_run_ahead(lookahead, expected):
    c = Core(max_unacked=2)
    (opened,) = c.send(P.Open(backend="fake", prompt="hills", lookahead=lookahead))
    assert opened.window == expected  # the effective lookahead
    assert max_in_flight(c, opened.session, chunks=6) == expected
    (status,) = c.send(P.Status(session=opened.session))
    assert status.session["window"] == expected and status.worker["window"] == 2


def test_lookahead_above_the_worker_window_is_refused_before_a_backend_is_built(monkeypatch):
    built = []
    monkeypatch.setattr(worker_module, "create_backend", lambda name, **o: built.append(name))
    c = Core(max_unacked=2)
    (error,) = c.send(P.Open(backend="fake", prompt="hills", lookahead=3, ref=4))
    assert (error.code, error.ref, error.request) == (P.BAD_LOOKAHEAD, 4, "open")
    assert "lookahead 3" in error.message and "window of 2" in error.message
    assert not c.core.sessions and built == []


def test_queued_actions_come_first_then_held_input():
    c = Core(max_unacked=10)
    sid = c.open()
    c.send(P.Input(session=sid, action=WALK))
    queued = (Action(("rise",)), Action(("sink",)), Action(mouse_dx=0.5), Action(("left",)))
    assert c.send(P.Actions(session=sid, actions=queued)) == []
    records = [r for m, _ in c.produce_all()[:2] for r in m.records]
    assert [Action.from_json(r["action"]) for r in records] == [*queued, WALK, WALK]


def test_action_queue_is_bounded_and_all_or_nothing():
    c = Core(max_queued_actions=5)
    sid = c.open()
    c.send(P.Actions(session=sid, actions=(WALK,) * 4))
    (error,) = c.send(P.Actions(session=sid, actions=(WALK,) * 2, ref=9))
    assert (error.code, error.ref) == (P.QUEUE_FULL, 9)
    (status,) = c.send(P.Status(session=sid))
    assert status.session["queued_actions"] == 4


def test_prompt_switch_and_reset():
    c = Core(max_unacked=10)
    sid = c.open()
    c.produce_all()
    (ok,) = c.send(P.Prompt(session=sid, prompt="desert", ref=1))
    assert (ok.TYPE, ok.seq, ok.ref) == ("ok", 10, 1)
    (bad,) = c.send(P.Prompt(session=sid, prompt="the unknowable void"))  # backend PromptError
    assert bad.code == P.BAD_PROMPT
    (ok,) = c.send(P.Reset(session=sid, seed=99))
    assert (ok.epoch, ok.seq) == (1, 10)
    c.send(P.Ack(session=sid, seq=9))
    m, frames = c.produce_all()[0]
    assert (m.seq, m.epoch, m.chunk, m.records[0]["i"], m.records[0]["prompt"]) == (10, 1, 0, 0, "desert")
    assert np.array_equal(frames[0], fake_frame(99, 0, Action(), "desert", 16, 16))


def test_sessions_belong_to_their_client_and_acks_are_checked():
    c = Core()
    sid = c.open()
    (error,) = c.send(P.Input(session=sid, action=WALK), identity=OTHER)
    assert error.code == P.UNKNOWN_SESSION and error.session == sid
    (error,) = c.send(P.Ack(session=sid, seq=0))  # nothing sent yet
    assert error.code == P.BAD_ACK
    (error,) = c.send(P.Close(session="nope"))
    assert error.code == P.UNKNOWN_SESSION


@pytest.mark.parametrize(
    "fields, code",
    [
        ({"backend": "no-such-backend"}, P.UNKNOWN_BACKEND),
        ({"options": {"colour": "blue"}}, P.BAD_OPTION),  # unknown keyword for the backend
        ({"options": {"checkpoint": "/etc/passwd"}}, P.BAD_OPTION),  # operator-only option
        ({"options": {"height": 100000}}, P.BAD_OPTION),
        ({"options": {"chunk_frames": "3"}}, P.BAD_OPTION),
        ({"prompt": "unknowable things"}, P.BAD_PROMPT),
    ],
)
def test_open_refusals(fields, code):
    c = Core()
    closed = FakeBackend.closed
    (error,) = c.send(P.Open(**{"backend": "fake", "prompt": "hills", **fields, "ref": 3}))
    assert (error.code, error.ref, error.request) == (code, 3, "open")
    assert not c.core.sessions
    if code == P.BAD_PROMPT:
        assert FakeBackend.closed == closed + 1  # a backend built for a refused open is freed


def test_max_sessions_is_busy_with_a_retry_hint():
    c = Core(max_sessions=2)
    c.open(), c.open(identity=OTHER)
    (error,) = c.send(P.Open(backend="fake", prompt="hills"), identity=b"\x00third")
    assert error.code == P.BUSY and error.retry_after_s > 0


def test_one_client_holds_at_most_its_cap_and_others_are_still_admitted():
    c = Core(max_sessions=8, per_client=2)
    c.open(), c.open()
    (error,) = c.send(P.Open(backend="fake", prompt="hills"))
    assert error.code == P.TOO_MANY_SESSIONS and "2" in error.message
    assert c.open(identity=OTHER)  # the worker still has room for everybody else


def test_one_client_key_is_one_client_whatever_its_sockets():
    c = Core(per_client=1)
    key = "k" * 40
    (opened,) = c.core.handle(Inbound(ME, P.Open(backend="fake", prompt="hills"), 0.0, user=key))
    (error,) = c.core.handle(Inbound(OTHER, P.Open(backend="fake", prompt="hills"), 0.0, user=key))
    assert P.decode_reply(error.frames)[0].code == P.TOO_MANY_SESSIONS


def test_memory_budget_refuses_before_building():
    c = Core(memory_budget_mb=20)  # one 16x16 fake session fits, a 1024x1024x16 one does not
    built = FakeBackend.built
    (error,) = c.send(P.Open(backend="fake", prompt="hills", options={"height": 1024, "width": 1024,
                                                                       "chunk_frames": 16}))  # fmt: skip
    assert error.code == P.BUSY and "memory budget" in error.message and FakeBackend.built == built
    assert c.open()


def test_shared_weights_count_once_against_the_memory_budget():
    """Sessions of one checkpoint share its loaded weights (world/backends/model_cache.py): the
    budget counts them once per checkpoint, not once per session."""
    from world.server.admission import MIB, Admission, AdmissionConfig, Holder, memory_bytes

    def session(n: int, checkpoint: str = "a") -> Holder:
        return Holder(bytes([n]), None, 10 * MIB, (checkpoint, 100 * MIB))

    assert memory_bytes([session(1), session(2), session(3)]) == 130 * MIB
    assert memory_bytes([session(1), session(2, "b")]) == 220 * MIB
    admission = Admission(AdmissionConfig(max_sessions=8, per_client=8, memory_budget_bytes=125 * MIB))
    admission.check([session(1)], session(2))  # 120 MiB: the second session adds only its own 10
    with pytest.raises(P.ProtocolError) as refused:
        admission.check([session(1)], session(2, "b"))  # another checkpoint's weights do not fit
    assert refused.value.code == P.BUSY and "needs about 110 MiB" in str(refused.value)


def test_round_robin_serves_every_session():
    c = Core(max_unacked=3)
    sessions = {c.open(), c.open(identity=OTHER), c.open(identity=b"\x00third")}
    produced = [m.session for m, _ in c.produce_all()]
    assert len(produced) == 9 and all(produced.count(s) == 3 for s in sessions)
    assert set(produced[:3]) == sessions  # interleaved, not one session after the other


def test_silent_sessions_expire_and_free_their_backend():
    c = Core(session_timeout_s=1.0)
    quiet, busy = c.open(), c.open(identity=OTHER)
    closed = FakeBackend.closed
    c.now = 0.9
    c.send(P.Ping(), identity=OTHER)  # any message keeps the sender's sessions alive
    out = [P.decode_reply(o.frames)[0] for o in c.core.expire(now=1.5)]
    assert out == [P.Closed(session=quiet, reason="timeout")]
    assert set(c.core.sessions) == {busy} and FakeBackend.closed == closed + 1
    assert c.core.stats.sessions_expired == 1


def test_backend_failure_closes_only_that_session():
    c = Core()
    bad, good = c.open(options={"fail_after": 0}), c.open(identity=OTHER)
    replies = [P.decode_reply(o.frames)[0] for o in c.core.produce_next()]
    assert [r.TYPE for r in replies] == ["error", "closed"] and replies[0].code == P.BACKEND_ERROR
    assert set(c.core.sessions) == {good} and bad not in c.core.sessions
    assert c.produce_all()  # the other session keeps playing


# -------------------------------------------------------------------------------------------
# End to end through `python run_world.py serve`.


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
            (P.encode(P.Open(backend="nope", prompt="hills")), P.UNKNOWN_BACKEND),
            (P.encode(P.Input(session="ffff", action=WALK)), P.UNKNOWN_SESSION),
            (P.encode(P.Open(backend=E2E_BACKEND, prompt=E2E_PROMPTS[0], options={"colour": "blue"})), P.BAD_OPTION),
            (P.encode(P.Open(backend=E2E_BACKEND, prompt="x" * 501)), P.BAD_PROMPT),
        ]
        for frames, code in cases:
            sock.send_multipart(frames)
            assert sock.poll(5000), f"no reply for {code}"
            reply, _ = P.decode_reply(sock.recv_multipart())
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
        chunks = collect(client, 2)
        assert chunks[0].seq == 0 and chunks[0].records[0]["i"] == 0
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
