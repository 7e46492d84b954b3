"""Wire format: every message round-trips, every kind of bad input gets its error code."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from world.actions import Action
from world.server import protocol as P
from world.server import wire

SID = "0123456789abcdef"
WALK = Action(("forward", "turn_left"), 0.25, -0.5)

REQUESTS = [
    P.Open(backend="engine", prompt="green hills at noon", seed=7, options={"height": 32}, ref=1),
    P.Open(backend="engine", prompt="green hills at noon", lookahead=1, ref=2),
    P.Input(session=SID, action=WALK, ref="input-1"),
    P.Actions(session=SID, actions=(WALK, Action(), Action(("rise",))), ref=3),
    P.Prompt(session=SID, prompt="snowy mountains at dusk in fog", ref=4),
    P.Reset(session=SID, seed=None, ref=5),
    P.Reset(session=SID, seed=2**63 - 1, ref=6),
    P.Ack(session=SID, seq=12, ref=None),
    P.Close(session=SID, ref=8),
    P.Ping(session=None, ref=9),
    P.Status(session=SID, ref=10),
]


def header(**fields) -> list[bytes]:
    return [json.dumps({"v": 1, **fields}).encode()]


def code_of(frames: list[bytes]) -> str:
    with pytest.raises(P.ProtocolError) as info:
        wire.decode_request(frames)
    return info.value.code


@pytest.mark.parametrize("message", REQUESTS, ids=lambda m: m.TYPE)
def test_requests_round_trip(message):
    frames = wire.encode(message)
    assert len(frames) == 1 and json.loads(frames[0])["v"] == P.PROTOCOL_VERSION
    assert wire.decode_request(frames) == message


def test_every_request_type_is_covered():
    assert {m.TYPE for m in REQUESTS} == set(P.REQUEST_TYPES)
    assert "shutdown" not in P.REQUEST_TYPES  # clients must never stop a shared worker


def _chunk() -> tuple[P.Chunk, np.ndarray]:
    frames = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    records = tuple(P.frame_record(i, 0, WALK, "desert", 2, 2, i / 30) for i in range(2))
    msg = P.Chunk(session=SID, seq=3, epoch=1, chunk=0, records=records, gen_ms=1.5, steps=2, nfe=2, shape=(2, 4, 5, 3))
    return msg, frames


REPLIES = [
    P.Opened(
        session=SID,
        backend="engine",
        height=64,
        width=64,
        chunk_frames=3,
        fps=30.0,
        description="d",
        prompt="p",
        seed=1,
        window=2,
        worker="abc",
        ref=1,
    ),
    P.Ok(request="reset", session=SID, seq=4, epoch=1, ref=2),
    P.Closed(session=SID, reason="timeout"),
    P.Pong(worker="abc", ref=None),
    P.StatusReply(worker={"sessions": 1}, session={"session": SID}, ref=3),
    P.Error(code=P.BAD_VERSION, message="m", ref=4, request="open", supported=1),
]


@pytest.mark.parametrize("message", REPLIES, ids=lambda m: m.TYPE)
def test_replies_round_trip(message):
    reply, pixels = wire.decode_reply(wire.encode(message))
    assert reply == message and pixels is None


def test_chunk_round_trip_and_payload_layout():
    msg, frames = _chunk()
    sent = wire.encode_chunk(msg, frames)
    assert len(sent) == 2 and sent[1] == frames.tobytes()  # raw C-order [F, H, W, 3] bytes
    reply, pixels = wire.decode_reply(sent)
    assert np.array_equal(pixels, frames) and pixels.flags.writeable
    assert reply.seq == 3 and list(reply.shape) == [2, 4, 5, 3] and reply.records[1]["i"] == 1
    assert set(reply.records[0]) == {"i", "chunk", "action", "prompt", "steps", "nfe", "t"}
    assert Action.from_json(reply.records[0]["action"]) == WALK


def test_chunk_with_wrong_payload_is_rejected_by_the_client():
    msg, frames = _chunk()
    header_frame, payload = wire.encode_chunk(msg, frames)
    for bad in ([header_frame], [header_frame, payload[:-1]], [header_frame, payload, b""]):
        with pytest.raises(P.ProtocolError) as info:
            wire.decode_reply(bad)
        assert info.value.code == P.BAD_FRAME
    with pytest.raises(ValueError):
        wire.encode_chunk(msg, frames[:1])  # header and array disagree


@pytest.mark.parametrize(
    "frames, code",
    [
        ([], P.BAD_FRAME),
        ([b"", b"{}"], P.BAD_FRAME),  # REQ-style empty delimiter: DEALER framing only
        (header(type="ping") + [b"payload"], P.BAD_FRAME),
        ([b"x" * (P.MAX_HEADER_BYTES + 1)], P.TOO_LARGE),
        (header(type="ping") + [b"x" * (P.MAX_HEADER_BYTES + 1)], P.TOO_LARGE),
        ([b"\xff\xfe\x00garbage"], P.BAD_JSON),
        ([b""], P.BAD_JSON),
        ([b'{"v": 1, "type": "ping"'], P.BAD_JSON),
        ([b'{"v": 1, "type": "ping", "ref": NaN}'], P.BAD_JSON),
        ([b"[" * 5000 + b"]" * 5000], P.BAD_JSON),  # deep nesting inside the size limit
        ([b"[1, 2]"], P.BAD_MESSAGE),
        ([b'"ping"'], P.BAD_MESSAGE),
        ([b'{"type": "ping"}'], P.BAD_VERSION),
        (header(v=2, type="ping"), P.BAD_VERSION),
        ([b'{"v": "1", "type": "ping"}'], P.BAD_VERSION),
        ([b'{"v": true, "type": "ping"}'], P.BAD_VERSION),
        (header(type="shutdown"), P.UNKNOWN_TYPE),
        (header(type=["ping"]), P.UNKNOWN_TYPE),
        (header(), P.UNKNOWN_TYPE),
        (header(type="ping", extra=1), P.BAD_MESSAGE),
        (header(type="ping", ref=[1]), P.BAD_MESSAGE),
        (header(type="ping", ref="r" * 65), P.BAD_MESSAGE),
        (header(type="ack", session=SID), P.BAD_MESSAGE),
        (header(type="ack", session="", seq=1), P.BAD_MESSAGE),
        (header(type="ack", session=5, seq=1), P.BAD_MESSAGE),
        (header(type="ack", session=SID, seq=-1), P.BAD_ACK),
        (header(type="ack", session=SID, seq=1.0), P.BAD_ACK),
        (header(type="input", session=SID, action={"keys": ["jump"]}), P.BAD_ACTION),
        (header(type="input", session=SID, action={"keys": [], "mouse": [1.5, 0]}), P.BAD_ACTION),
        (header(type="input", session=SID, action={"keys": [], "mouse": ["a", 0]}), P.BAD_ACTION),
        (header(type="input", session=SID, action=[1, 2]), P.BAD_ACTION),
        (header(type="actions", session=SID, actions=[]), P.BAD_ACTION),
        (header(type="actions", session=SID, actions=[{}] * (P.MAX_QUEUED_ACTIONS + 1)), P.QUEUE_FULL),
        (header(type="prompt", session=SID, prompt=""), P.BAD_PROMPT),
        (header(type="prompt", session=SID, prompt="   "), P.BAD_PROMPT),
        (header(type="prompt", session=SID, prompt="x" * (P.MAX_PROMPT_CHARS + 1)), P.BAD_PROMPT),
        (header(type="prompt", session=SID, prompt=42), P.BAD_PROMPT),
        (header(type="open", backend="engine", prompt="hills", seed=-1), P.BAD_SEED),
        (header(type="open", backend="engine", prompt="hills", seed=2**63), P.BAD_SEED),
        (header(type="open", backend="engine", prompt="hills", seed=2**64 + 5), P.BAD_SEED),
        (header(type="open", backend="engine", prompt="hills", seed=1.5), P.BAD_SEED),
        (header(type="open", backend="engine", prompt="hills", seed="7"), P.BAD_SEED),
        (header(type="open", backend="engine", prompt="hills", seed=True), P.BAD_SEED),
        (header(type="reset", session=SID, seed=-3), P.BAD_SEED),
        (header(type="open", backend="engine", prompt="hills", options=[]), P.BAD_OPTION),
        (header(type="open", backend="engine", prompt="hills", options={"a": [1]}), P.BAD_OPTION),
        (header(type="open", backend="engine", prompt="hills", options={"": 1}), P.BAD_OPTION),
        (header(type="open", backend="engine", prompt="hills", options={str(i): i for i in range(17)}), P.BAD_OPTION),
        (header(type="open", backend="engine", prompt="hills", lookahead=0), P.BAD_LOOKAHEAD),
        (header(type="open", backend="engine", prompt="hills", lookahead=-1), P.BAD_LOOKAHEAD),
        (header(type="open", backend="engine", prompt="hills", lookahead=1.5), P.BAD_LOOKAHEAD),
        (header(type="open", backend="engine", prompt="hills", lookahead=1.0), P.BAD_LOOKAHEAD),
        (header(type="open", backend="engine", prompt="hills", lookahead="2"), P.BAD_LOOKAHEAD),
        (header(type="open", backend="engine", prompt="hills", lookahead=True), P.BAD_LOOKAHEAD),
        (header(type="open", backend="engine", prompt="hills", lookahead=2**60), P.BAD_LOOKAHEAD),
        (header(type="open", backend=None, prompt="hills"), P.BAD_MESSAGE),
        (header(type="open", prompt="hills"), P.BAD_MESSAGE),
        # start images: the byte count in the header, the bytes in the one frame after it
        (header(type="open", backend="generated", prompt="hills", start_image=0) + [b""], P.BAD_MESSAGE),
        (header(type="open", backend="generated", prompt="hills", start_image="5") + [b"12345"], P.BAD_MESSAGE),
        (header(type="open", backend="generated", prompt="hills", start_image=5), P.BAD_FRAME),
        (header(type="open", backend="generated", prompt="hills", start_image=5) + [b"1234"], P.BAD_FRAME),
        (header(type="open", backend="generated", prompt="hills", start_image=5) + [b"12345", b""], P.BAD_FRAME),
        (header(type="open", backend="generated", prompt="hills", start_image=P.MAX_START_IMAGE_BYTES + 1) + [b"1"],
         P.TOO_LARGE),
        (header(type="open", backend="generated", prompt="hills", start_image=1)
         + [b"x" * (P.MAX_START_IMAGE_BYTES + 1)], P.TOO_LARGE),
        (header(type="open", backend="generated", prompt="hills") + [b"12345"], P.BAD_FRAME),
        (header(type="ping", start_image=5) + [b"12345"], P.BAD_FRAME),
    ],
)
def test_bad_requests_get_their_code(frames, code):
    assert code_of(frames) == code


def test_an_open_with_a_start_image_is_two_frames_and_round_trips():
    image = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10
    message = P.Open(backend="generated", prompt="hills", options={"start": "image"}, start_image=image, ref=3)
    frames = wire.encode(message)
    assert len(frames) == 2 and frames[1] == image
    assert json.loads(frames[0])["start_image"] == len(image)  # the header holds the byte count only
    assert wire.decode_request(frames) == message
    assert "start_image" not in json.loads(wire.encode(P.Open(backend="engine", prompt="hills"))[0])
    assert "\\x89" not in repr(message)  # megabytes of image never end up in a log line


def test_opened_reports_the_start_only_when_the_backend_says():
    reply, _ = wire.decode_reply(wire.encode(P.Opened(session=SID, start="text", start_notice="start: text (...)")))
    assert (reply.start, reply.start_notice) == ("text", "start: text (...)")
    header_json = json.loads(wire.encode(P.Opened(session=SID))[0])
    assert "start" not in header_json and "start_notice" not in header_json


def test_lookahead_is_optional_and_omitted_from_the_wire_when_unset():
    frames = wire.encode(P.Open(backend="engine", prompt="hills"))
    assert "lookahead" not in json.loads(frames[0])  # a worker without the field accepts this open
    assert wire.decode_request(frames).lookahead is None
    assert wire.decode_request(header(type="open", backend="engine", prompt="hills", lookahead=None)).lookahead is None
    assert wire.decode_request(header(type="open", backend="engine", prompt="hills", lookahead=3)).lookahead == 3
    with pytest.raises(P.ProtocolError) as info:
        wire.decode_request(header(type="open", backend="engine", prompt="hills", lookahead=0, ref=5))
    error = wire.error_for(info.value)
    assert (error.code, error.ref, error.request) == (P.BAD_LOOKAHEAD, 5, "open")
    assert "lookahead" in error.message


def test_errors_carry_ref_request_and_supported_version():
    with pytest.raises(P.ProtocolError) as info:
        wire.decode_request(header(type="prompt", session=SID, prompt="", ref=77))
    error = wire.error_for(info.value)
    assert (error.code, error.ref, error.request) == (P.BAD_PROMPT, 77, "prompt")
    with pytest.raises(P.ProtocolError) as info:
        wire.decode_request(header(v=9, type="ping", ref="r1"))
    reply, _ = wire.decode_reply(wire.encode(wire.error_for(info.value)))
    assert (reply.code, reply.ref, reply.supported) == (P.BAD_VERSION, "r1", P.PROTOCOL_VERSION)


def test_error_codes_are_documented():
    text = (Path(__file__).parents[1] / "docs" / "protocol.md").read_text()
    for code in P.ERROR_CODES:
        assert f"`{code}`" in text, code


def test_random_input_only_ever_raises_protocol_errors():
    rng = random.Random(7)
    valid = [wire.encode(m)[0] for m in REQUESTS]
    for i in range(5000):  # bounded fuzz of the decoder itself (the worker's first line of defence)
        data = bytearray(rng.choice(valid))
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(len(data))
            data[pos : pos + rng.randrange(1, 4)] = rng.randbytes(rng.randrange(0, 3))
        frames = [bytes(data)] if i % 7 else [bytes(data), b""]
        try:
            wire.decode_request(frames)
        except P.ProtocolError as exc:
            assert exc.code in P.ERROR_CODES
