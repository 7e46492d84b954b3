"""The worker's core (world/server/core.py): request handling in-process, without sockets."""

from __future__ import annotations

import numpy as np
import pytest

import tests.fakes  # noqa: F401  (registers the "fake" backend in this process)
from tests.fakes import FakeBackend, fake_frame
from world.actions import Action
from world.server import protocol as P
from world.server import session_builder, wire
from world.server.core import WorkerCore
from world.server.worker_config import Inbound, WorkerConfig

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
        return [wire.decode_reply(o.frames)[0] for o in self.core.handle(Inbound(identity, request, self.now))]

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
            out += [wire.decode_reply(o.frames) for o in produced]  # a batch (or first chunks) may be several
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
    monkeypatch.setattr(session_builder, "create_backend", lambda name, **o: built.append(name))
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
    assert wire.decode_reply(error.frames)[0].code == P.TOO_MANY_SESSIONS


def test_memory_budget_refuses_before_building():
    c = Core(memory_budget_mb=20)  # one 16x16 fake session fits, a 512x512 one (its frames in flight) does not
    built = FakeBackend.built
    (error,) = c.send(P.Open(backend="fake", prompt="hills", options={"height": 512, "width": 512}))
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
    out = [wire.decode_reply(o.frames)[0] for o in c.core.expire(now=1.5)]
    assert out == [P.Closed(session=quiet, reason="timeout")]
    assert set(c.core.sessions) == {busy} and FakeBackend.closed == closed + 1
    assert c.core.stats.sessions_expired == 1


def test_backend_failure_closes_only_that_session():
    c = Core()
    bad, good = c.open(options={"fail_after": 0}), c.open(identity=OTHER)
    replies = [wire.decode_reply(o.frames)[0] for o in c.core.produce_next()]
    assert [r.TYPE for r in replies] == ["error", "closed"] and replies[0].code == P.BACKEND_ERROR
    assert set(c.core.sessions) == {good} and bad not in c.core.sessions
    assert c.produce_all()  # the other session keeps playing
