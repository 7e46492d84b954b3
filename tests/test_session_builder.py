"""Building a session (world/server/session_builder.py): the cheap checks of an open, the memory
estimate, building and resetting the backend off the loop, the `opened` reply and calibration."""

from __future__ import annotations

import pytest

import tests.fakes  # noqa: F401  (registers the "fake" backend in this process)
from world.backend import BackendInfo
from world.server import protocol as P
from world.server.admission import CostModel, Holder
from world.server.session_builder import SessionBuilder, check_backend_name, check_info, check_start, start_options
from world.server.worker_config import Inbound, WorkerConfig


def builder(**config) -> SessionBuilder:
    return SessionBuilder(WorkerConfig(**config), CostModel())


def code_of(call) -> str:
    with pytest.raises(P.ProtocolError) as caught:
        call()
    return caught.value.code


def test_lookahead_defaults_to_the_window_and_never_exceeds_it():
    b = builder(max_unacked=3)
    assert (b.lookahead(None), b.lookahead(1), b.lookahead(3)) == (3, 1, 3)
    assert code_of(lambda: b.lookahead(4)) == P.BAD_LOOKAHEAD


def test_cheap_checks_name_what_is_wrong():
    assert code_of(lambda: check_backend_name("no-such-world")) == P.UNKNOWN_BACKEND
    assert code_of(lambda: check_start(P.Open(backend="fake", prompt="hills", options={"start": "image"}))) == \
        P.BAD_OPTION  # start 'image' without the image frame
    assert code_of(lambda: check_info(BackendInfo("fake", 16, 16, 0, 30.0))) == P.BACKEND_ERROR
    assert start_options(P.Open(backend="fake", prompt="hills", options={"seed_hint": 1})) == ({"seed_hint": 1}, {})


def test_client_options_are_checked_before_a_backend_is_built():
    b = builder()
    assert code_of(lambda: b.create_backend("fake", {"checkpoint": "x"})) == P.BAD_OPTION  # the operator's
    assert code_of(lambda: b.create_backend("fake", {"height": 10**9})) == P.BAD_OPTION
    assert code_of(lambda: b.create_backend("fake", {"no_such_option": 1})) == P.BAD_OPTION


def test_estimate_counts_the_engine_own_and_shares_nothing():
    own, shared = builder().estimate("engine", {"height": 64, "width": 64, "chunk_frames": 3}, lookahead=2)
    assert own > 64 * 64 * 3 * 3 * 4 and shared is None


def test_build_resets_the_world_and_opened_says_how_it_was_built():
    b = builder(chunk_budget_s=0.5, max_unacked=2)
    request = P.Open(backend="fake", prompt="hills", seed=5, options={"height": 8, "width": 8}, ref=3)
    session = b.build(Inbound(b"\x00me", request, 1.0), lookahead=1, holder=Holder(b"\x00me", None, 1, None))
    assert (session.seed, session.prompt, session.lookahead, session.budget_s) == (5, "hills", 1, 0.5)
    opened = b.opened(session, request, "instance")
    assert (opened.session, opened.height, opened.width, opened.window, opened.worker, opened.ref) == \
        (session.sid, 8, 8, 1, "instance", 3)
    assert opened.security == "none"
    session.close()


def test_a_prompt_the_world_refuses_is_bad_prompt_and_frees_the_backend():
    b = builder()
    request = P.Open(backend="fake", prompt="unknowable land", seed=0)
    before = tests.fakes.FakeBackend.closed
    assert code_of(lambda: b.build(Inbound(b"\x00me", request, 0.0), 1, Holder(b"\x00me", None, 1, None))) == \
        P.BAD_PROMPT
    assert tests.fakes.FakeBackend.closed == before + 1


def test_calibration_teaches_the_cost_model_and_a_missing_backend_is_no_error():
    b = builder()
    assert b.costs.predict("fake", {"height": 8, "width": 8, "chunk_frames": 2}) is None
    b.calibrate("fake", {"height": 8, "width": 8, "chunk_frames": 2})
    assert b.costs.predict("fake", {"height": 8, "width": 8, "chunk_frames": 2}) is not None
    b.calibrate("no-such-world")  # logged, not raised: that worker simply has no calibration
