"""Protocol messages to bytes and back (docs/protocol.md): `encode` turns a message into the
multipart frames to send, `decode_request` and `decode_reply` turn received frames back into a
message (world/server/protocol.py) or raise `ProtocolError` carrying the error code the peer should
hear, and `error_for` makes that error's reply. Nothing here touches a socket.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import fields, replace

import numpy as np

from world.actions import Action
from world.server.protocol import (
    BAD_FRAME,
    BAD_JSON,
    BAD_MESSAGE,
    BAD_VERSION,
    MAX_HEADER_BYTES,
    MAX_START_IMAGE_BYTES,
    PROTOCOL_VERSION,
    REPLY_TYPES,
    REQUEST_TYPES,
    TOO_LARGE,
    UNKNOWN_TYPE,
    Chunk,
    Error,
    Message,
    Open,
    ProtocolError,
    Ref,
    Reply,
    Request,
    image_too_large,
    is_int,
    parse_ref,
)

# ---------------------------------------------------------------------------------------------
# Encoding.


def _jsonable(value: object) -> object:
    if isinstance(value, Action):
        return value.to_json()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def encode(message: Message, payload: bytes | memoryview | np.ndarray | None = None) -> list[bytes]:
    """Message -> multipart frames: [header] or, for a Chunk, [header, payload]."""
    header = {"v": PROTOCOL_VERSION, "type": message.TYPE}
    image = message.start_image if isinstance(message, Open) else None
    for f in fields(message):
        value = getattr(message, f.name)
        if value is not None or f.name == "ref":
            header[f.name] = len(value) if f.name == "start_image" and isinstance(message, Open) else _jsonable(value)
    frames = [json.dumps(header, separators=(",", ":"), allow_nan=False).encode()]
    if image is not None:
        if payload is not None:
            raise ValueError("an open carries its start image, no other payload")
        frames.append(bytes(image))
    elif isinstance(message, Chunk):
        if payload is None:
            raise ValueError("a chunk needs its payload")
        frames.append(payload.tobytes() if isinstance(payload, np.ndarray) else bytes(payload))
    elif payload is not None:
        raise ValueError(f"{message.TYPE} carries no payload")
    return frames


def encode_chunk(message: Chunk, frames: np.ndarray) -> list[bytes]:
    """[F, H, W, 3] uint8 frames -> [header, payload]; checks the header matches the array."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"chunk frames must be [F, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    if tuple(frames.shape) != tuple(message.shape) or len(message.records) != frames.shape[0]:
        raise ValueError("chunk header shape/records do not match the frames")
    return encode(message, np.ascontiguousarray(frames))


# ---------------------------------------------------------------------------------------------
# Decoding.


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_header(data: bytes) -> dict:
    """Header bytes -> JSON object, checking size, encoding, JSON syntax and the version."""
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError(TOO_LARGE, f"header has {len(data)} bytes; the limit is {MAX_HEADER_BYTES}")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # RecursionError: deeply nested arrays inside 64 KiB are valid JSON but not a message.
        raise ProtocolError(BAD_JSON, f"header is not UTF-8 JSON: {str(exc)[:120]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_MESSAGE, f"header must be a JSON object, got {type(obj).__name__}")
    ref = _safe_ref(obj.get("ref"))
    version = obj.get("v")
    if not is_int(version) or version != PROTOCOL_VERSION:
        raise ProtocolError(
            BAD_VERSION,
            f"protocol version {version!r:.20} not supported; this worker speaks version {PROTOCOL_VERSION}",
            ref,
            supported=PROTOCOL_VERSION,
        )
    return obj


def _safe_ref(value: object) -> Ref:
    try:
        return parse_ref(value)
    except ProtocolError:
        return None


def decode_request(frames: list[bytes]) -> Request:
    """Frames received from a client (identity already stripped) -> a validated request.

    A request is one header frame; only an `open` whose header declares `start_image` (the byte
    count) is followed by a second frame, the image file's bytes."""
    if not frames:
        raise ProtocolError(BAD_FRAME, "empty message")
    if len(frames[0]) > MAX_HEADER_BYTES:
        raise ProtocolError(TOO_LARGE, f"a frame has {len(frames[0])} bytes; the limit is {MAX_HEADER_BYTES}")
    obj = _image_open_header(frames) if len(frames) == 2 else None
    if obj is None:
        for f in frames:
            if len(f) > MAX_HEADER_BYTES:
                raise ProtocolError(TOO_LARGE, f"a frame has {len(f)} bytes; the limit is {MAX_HEADER_BYTES}")
        if len(frames) != 1:
            raise ProtocolError(BAD_FRAME, f"a request is exactly one header frame (an open with a start image: "
                                f"two), got {len(frames)} frames")  # fmt: skip
        obj = parse_header(frames[0])
    ref = _safe_ref(obj.get("ref"))
    kind = obj.get("type")
    cls = REQUEST_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        known = ", ".join(REQUEST_TYPES)
        raise ProtocolError(UNKNOWN_TYPE, f"unknown request type {kind!r:.40}; known: {known}", ref)
    try:
        message = cls(**_parse_fields(cls, obj))
        if isinstance(message, Open):
            message = _attach_start_image(message, frames)
        return message
    except ProtocolError as exc:
        exc.ref, exc.extra["request"] = ref, kind
        raise


def _image_open_header(frames: list[bytes]) -> dict | None:
    """The parsed header of a two-frame request that is an open declaring a start image, else None
    (the request is then refused like any request with too many frames)."""
    try:
        obj = parse_header(frames[0])
    except ProtocolError:
        return None
    return obj if obj.get("type") == "open" and "start_image" in obj else None


def _attach_start_image(message: Open, frames: list[bytes]) -> Open:
    """An open declaring `start_image` (its byte count) gets the image frame's bytes."""
    if message.start_image is None:
        return message
    image = frames[1] if len(frames) == 2 else None
    if image is None:
        raise ProtocolError(BAD_FRAME, f"open declares a start image of {message.start_image} bytes but has no "
                            "image frame after the header")  # fmt: skip
    if len(image) > MAX_START_IMAGE_BYTES:
        raise ProtocolError(TOO_LARGE, image_too_large(len(image)))
    if len(image) != message.start_image:
        raise ProtocolError(BAD_FRAME, f"open declares a start image of {message.start_image} bytes, the image "
                            f"frame has {len(image)}")  # fmt: skip
    return replace(message, start_image=bytes(image))


def _parse_fields(cls: type[Message], obj: Mapping) -> dict:
    unknown = set(obj) - set(cls.PARSERS) - {"v", "type"}
    if unknown:
        raise ProtocolError(BAD_MESSAGE, f"unknown fields for {cls.TYPE}: {sorted(unknown)[:5]}")
    missing = [name for name in cls.REQUIRED if name not in obj]
    if missing:
        raise ProtocolError(BAD_MESSAGE, f"{cls.TYPE} needs fields {missing}")
    return {name: parse(obj[name]) for name, parse in cls.PARSERS.items() if name in obj}


def decode_reply(frames: list[bytes]) -> tuple[Reply, np.ndarray | None]:
    """Frames received from the worker -> (reply, frames array for a Chunk else None)."""
    if not frames or len(frames[0]) > MAX_HEADER_BYTES:
        raise ProtocolError(BAD_FRAME, "reply without a header of acceptable size")
    obj = parse_header(frames[0])
    kind = obj.get("type")
    cls = REPLY_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(UNKNOWN_TYPE, f"unknown reply type {kind!r:.40}")
    known = {f.name for f in fields(cls)}
    try:
        message = cls(**{k: v for k, v in obj.items() if k in known})
    except TypeError as exc:  # pragma: no cover - dataclass init only fails on odd kwargs
        raise ProtocolError(BAD_MESSAGE, str(exc)) from None
    if isinstance(message, Chunk):
        return message, _chunk_frames(message, frames)
    if len(frames) != 1:
        raise ProtocolError(BAD_FRAME, f"{cls.TYPE} reply must be one frame, got {len(frames)}")
    return message, None


def _chunk_frames(message: Chunk, frames: list[bytes]) -> np.ndarray:
    """Validate a chunk's payload against its header; returns a writable [F, H, W, 3] array."""
    shape = message.shape
    ok_shape = (
        isinstance(shape, (list, tuple))
        and len(shape) == 4
        and all(is_int(s) and s > 0 for s in shape)
        and shape[3] == 3
    )
    if len(frames) != 2 or message.dtype != "uint8" or not ok_shape:
        raise ProtocolError(BAD_FRAME, "chunk must be [header, payload] with a [F, H, W, 3] uint8 shape")
    if len(frames[1]) != math.prod(shape) or len(message.records) != shape[0]:
        raise ProtocolError(BAD_FRAME, f"chunk payload has {len(frames[1])} bytes, shape says {list(shape)}")
    return np.frombuffer(frames[1], dtype=np.uint8).reshape(shape).copy()


def error_for(exc: ProtocolError, session: str | None = None) -> Error:
    """The Error reply for a ProtocolError raised while handling a request."""
    return Error(
        code=exc.code,
        message=exc.message,
        ref=exc.ref,
        session=session,
        request=exc.extra.get("request"),
        supported=exc.extra.get("supported"),
        retry_after_s=exc.extra.get("retry_after_s"),
    )
