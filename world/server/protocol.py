"""Wire messages between clients and the worker: typed dataclasses, their fields' parsers and limits.

docs/protocol.md is the specification; this module and world/server/wire.py are its executable form.
Nothing here touches a socket: the messages, the error codes and `ProtocolError` (carrying the
error code the peer should hear) are defined here; world/server/wire.py turns messages into
multipart frames and back.

Framing (frames after the ROUTER identity): every message is one UTF-8 JSON header frame; a
`Chunk` is followed by one raw payload frame holding `[F, H, W, 3]` uint8 pixels, and an `Open`
that carries a start image (`start_image`, its byte count in the header) by one frame holding the
PNG or JPEG file's bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from world.actions import Action, ActionError
from world.errors import MAX_PROMPT_CHARS
from world.start import MAX_START_IMAGE_BYTES  # the start image's own limit (world/start.py)

PROTOCOL_VERSION = 1

# Size limits. A request is one header frame of at most MAX_HEADER_BYTES (an open with a start
# image: plus one image frame of at most MAX_START_IMAGE_BYTES); the worker also sets ZeroMQ's
# MAXMSGSIZE to MAX_TRANSPORT_FRAME_BYTES so a larger frame never reaches Python (the peer's
# connection is dropped instead of answered). It is twice the image limit, so an image somewhat
# over the limit is still answered with a `too_large` error that says so.
MAX_HEADER_BYTES = 64 * 1024
MAX_TRANSPORT_FRAME_BYTES = 2 * MAX_START_IMAGE_BYTES
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024  # the largest chunk payload a worker may send
MAX_QUEUED_ACTIONS = 256  # per session, across "actions" messages
MAX_ID_CHARS = 64  # session ids, backend names, string refs, option keys
MAX_OPTIONS = 16
MAX_OPTION_STR_CHARS = 256
SEED_LIMIT = 2**63  # seeds are ints in [0, SEED_LIMIT): they fit a signed 64-bit integer
MAX_SEQ = 2**63 - 1
_MAX_SAFE_INT = 2**53  # JSON numbers beyond this lose precision in other languages
# Option numbers beyond these are refused on decode, before any arithmetic (a 400-digit integer
# would overflow float() in a backend; 1e300 would overflow a product).
MAX_OPTION_INT = _MAX_SAFE_INT
MAX_OPTION_FLOAT = 1e15

Ref = int | str | None


class ProtocolError(ValueError):
    """A message that cannot be accepted; `code` is the error code sent back (docs/protocol.md)."""

    def __init__(self, code: str, message: str, ref: Ref = None, **extra: Any):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.ref = ref
        self.extra = extra


# Error codes (the table in docs/protocol.md). Kept as constants so a typo is a NameError.
BAD_FRAME = "bad_frame"
TOO_LARGE = "too_large"
BAD_JSON = "bad_json"
BAD_MESSAGE = "bad_message"
BAD_VERSION = "bad_version"
UNKNOWN_TYPE = "unknown_type"
UNKNOWN_SESSION = "unknown_session"
BAD_ACTION = "bad_action"
BAD_PROMPT = "bad_prompt"
BAD_SEED = "bad_seed"
BAD_ACK = "bad_ack"
BAD_LOOKAHEAD = "bad_lookahead"
UNKNOWN_BACKEND = "unknown_backend"
BAD_OPTION = "bad_option"
BAD_IMAGE = "bad_image"
BACKEND_ERROR = "backend_error"
QUEUE_FULL = "queue_full"
TOO_MANY_SESSIONS = "too_many_sessions"
BUSY = "busy"
OVER_BUDGET = "over_budget"
INTERNAL = "internal"
ERROR_CODES = (
    BAD_FRAME,
    TOO_LARGE,
    BAD_JSON,
    BAD_MESSAGE,
    BAD_VERSION,
    UNKNOWN_TYPE,
    UNKNOWN_SESSION,
    BAD_ACTION,
    BAD_PROMPT,
    BAD_SEED,
    BAD_ACK,
    BAD_LOOKAHEAD,
    UNKNOWN_BACKEND,
    BAD_OPTION,
    BAD_IMAGE,
    BACKEND_ERROR,
    QUEUE_FULL,
    TOO_MANY_SESSIONS,
    BUSY,
    OVER_BUDGET,
    INTERNAL,
)


# ---------------------------------------------------------------------------------------------
# Field parsers: (value) -> parsed value, raising ProtocolError with the field's error code.


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_ref(value: object) -> Ref:
    if value is None or (is_int(value) and abs(value) <= _MAX_SAFE_INT):
        return value
    if isinstance(value, str) and len(value) <= MAX_ID_CHARS:
        return value
    raise ProtocolError(BAD_MESSAGE, f"ref must be an integer or a string of <= {MAX_ID_CHARS} chars")


def _parse_id(name: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
            raise ProtocolError(BAD_MESSAGE, f"{name} must be a string of 1..{MAX_ID_CHARS} chars")
        return value

    return parse


def _parse_optional_session(value: object) -> str | None:
    return None if value is None else _parse_id("session")(value)


def parse_prompt(value: object) -> str:
    """A prompt is non-blank text of at most MAX_PROMPT_CHARS characters."""
    if not isinstance(value, str):
        raise ProtocolError(BAD_PROMPT, f"prompt must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ProtocolError(BAD_PROMPT, "prompt is empty")
    if len(value) > MAX_PROMPT_CHARS:
        raise ProtocolError(BAD_PROMPT, f"prompt has {len(value)} chars; the limit is {MAX_PROMPT_CHARS}")
    return value


def parse_seed(value: object) -> int:
    if not is_int(value) or not 0 <= value < SEED_LIMIT:
        raise ProtocolError(BAD_SEED, f"seed must be an integer in [0, 2**63), got {value!r:.40}")
    return value


def _parse_optional_seed(value: object) -> int | None:
    return None if value is None else parse_seed(value)


def _parse_action(value: object) -> Action:
    try:
        return Action.from_json(value)
    except ActionError as exc:
        raise ProtocolError(BAD_ACTION, str(exc)) from None


def _parse_actions(value: object) -> tuple[Action, ...]:
    if not isinstance(value, list) or not value:
        raise ProtocolError(BAD_ACTION, "actions must be a non-empty list of actions")
    if len(value) > MAX_QUEUED_ACTIONS:
        raise ProtocolError(QUEUE_FULL, f"{len(value)} actions exceed the queue of {MAX_QUEUED_ACTIONS}")
    return tuple(_parse_action(a) for a in value)


def _parse_options(value: object) -> dict:
    if not isinstance(value, dict) or len(value) > MAX_OPTIONS:
        raise ProtocolError(BAD_OPTION, f"options must be an object with at most {MAX_OPTIONS} keys")
    for key, item in value.items():
        if not 0 < len(key) <= MAX_ID_CHARS:
            raise ProtocolError(BAD_OPTION, f"option key must have 1..{MAX_ID_CHARS} chars")
        scalar = item is None or isinstance(item, (bool, int, str)) or (isinstance(item, float) and math.isfinite(item))
        if not scalar or (isinstance(item, str) and len(item) > MAX_OPTION_STR_CHARS):
            raise ProtocolError(BAD_OPTION, f"option {key!r:.70} must be a number, bool, null or short string")
        if not option_number_in_range(item):
            raise ProtocolError(BAD_OPTION, f"option {key!r:.70}: number out of range (integers within +-2**53, "
                                f"other numbers within +-{MAX_OPTION_FLOAT:g})")  # fmt: skip
    return dict(value)


def option_number_in_range(value: object) -> bool:
    """True for non-numbers and for numbers small enough for any arithmetic a backend does."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    limit = MAX_OPTION_INT if isinstance(value, int) else MAX_OPTION_FLOAT
    return abs(value) <= limit


def parse_lookahead(value: object) -> int | None:
    """Chunks a session may run ahead of its last ack: an integer >= 1, or null for the worker's
    window. The upper bound is the worker's `--max-unacked` (`--window`), which only the worker knows and checks."""
    if value is None:
        return None
    if not is_int(value) or not 1 <= value <= _MAX_SAFE_INT:
        raise ProtocolError(BAD_LOOKAHEAD, f"lookahead must be an integer >= 1, got {value!r:.40}")
    return value


def _parse_start_image_size(value: object) -> int:
    """`open.start_image`: the byte count of the image frame that follows the header."""
    if not is_int(value) or value < 1:
        raise ProtocolError(BAD_MESSAGE, f"start_image must be the image frame's byte count (>= 1), got {value!r:.40}")
    if value > MAX_START_IMAGE_BYTES:
        raise ProtocolError(TOO_LARGE, image_too_large(value))
    return value


def image_too_large(size: int) -> str:
    return (f"the start image has {size} bytes; the limit is {MAX_START_IMAGE_BYTES} "
            f"({MAX_START_IMAGE_BYTES // (1024 * 1024)} MiB): send a smaller PNG or JPEG")


RESUME_COUNTERS = ("seq", "chunk", "frame", "epoch")
MAX_RESUME_STATE_KEYS = 16


def parse_resume(value: object) -> dict | None:
    """`open.resume`: where a world lost with its worker goes on (docs/protocol.md, "Resuming"): the
    counters of the chunk after the last one the client acknowledged, and the backend's resume
    state from that chunk's `extra.resume` (numbers only: the engine's camera)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(BAD_MESSAGE, "resume must be an object with seq, chunk, frame, epoch and state")
    unknown = sorted(set(value) - {*RESUME_COUNTERS, "state"})
    if unknown:
        raise ProtocolError(BAD_MESSAGE, f"resume has unknown fields {unknown!r:.80}; known: "
                            f"{', '.join(RESUME_COUNTERS)}, state")  # fmt: skip
    out: dict = {}
    for name in RESUME_COUNTERS:
        item = value.get(name)
        if not is_int(item) or not 0 <= item <= _MAX_SAFE_INT:
            raise ProtocolError(BAD_MESSAGE, f"resume.{name} must be an integer in [0, 2**53], got {item!r:.40}")
        out[name] = item
    state = value.get("state", {})
    if not isinstance(state, dict) or len(state) > MAX_RESUME_STATE_KEYS:
        raise ProtocolError(BAD_MESSAGE, f"resume.state must be an object of at most {MAX_RESUME_STATE_KEYS} numbers")
    for key, item in state.items():
        number = isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item)
        if not (0 < len(key) <= MAX_ID_CHARS and number and option_number_in_range(item)):
            raise ProtocolError(BAD_MESSAGE, f"resume.state[{key!r:.40}] must be a finite number")
    out["state"] = dict(state)
    return out


def _parse_seq(value: object) -> int:
    if not is_int(value) or not 0 <= value <= MAX_SEQ:
        raise ProtocolError(BAD_ACK, f"seq must be an integer in [0, 2**63), got {value!r:.40}")
    return value


# ---------------------------------------------------------------------------------------------
# Messages. Each class lists its JSON fields as dataclass fields; PARSERS validates requests.


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""
    PARSERS: ClassVar[dict[str, Callable[[object], Any]]] = {}
    REQUIRED: ClassVar[tuple[str, ...]] = ()


# Requests: client -> worker.


@dataclass(frozen=True)
class Open(Message):
    """Start a session on a fresh backend. Answered by `Opened` or an `Error`."""

    TYPE: ClassVar[str] = "open"
    PARSERS: ClassVar = {
        "backend": _parse_id("backend"),
        "prompt": parse_prompt,
        "seed": parse_seed,
        "options": _parse_options,
        "lookahead": parse_lookahead,
        "start_image": _parse_start_image_size,
        "resume": parse_resume,
        "ref": parse_ref,
    }
    REQUIRED: ClassVar = ("backend", "prompt")
    backend: str = "engine"
    prompt: str = ""
    seed: int = 0
    options: dict = field(default_factory=dict)
    # Chunks generated ahead of the last ack for this session, 1..worker window; None: the
    # worker's window. Fewer means lower key-to-frame latency but less slack against stalls.
    lookahead: int | None = None
    ref: Ref = None
    # The bytes of a PNG or JPEG file to start the world from (session option start "image"). On
    # the wire: header field `start_image` = its byte count, the bytes in a second frame.
    start_image: bytes | None = field(default=None, repr=False)
    # Go on from where a world lost with its worker stopped (`parse_resume`): its counters continue
    # and the backend is restored from `state` (a generated world from the start image instead).
    resume: dict | None = None


@dataclass(frozen=True)
class Input(Message):
    """The held action: used for every frame generated from now on (after queued actions)."""

    TYPE: ClassVar[str] = "input"
    PARSERS: ClassVar = {"session": _parse_id("session"), "action": _parse_action, "ref": parse_ref}
    REQUIRED: ClassVar = ("session", "action")
    session: str = ""
    action: Action = Action()
    ref: Ref = None


@dataclass(frozen=True)
class Actions(Message):
    """Exact per-frame actions, consumed in order before the held input."""

    TYPE: ClassVar[str] = "actions"
    PARSERS: ClassVar = {"session": _parse_id("session"), "actions": _parse_actions, "ref": parse_ref}
    REQUIRED: ClassVar = ("session", "actions")
    session: str = ""
    actions: tuple[Action, ...] = ()
    ref: Ref = None


@dataclass(frozen=True)
class Prompt(Message):
    """Switch the prompt; the next generated chunk uses it. Answered by `Ok`."""

    TYPE: ClassVar[str] = "prompt"
    PARSERS: ClassVar = {"session": _parse_id("session"), "prompt": parse_prompt, "ref": parse_ref}
    REQUIRED: ClassVar = ("session", "prompt")
    session: str = ""
    prompt: str = ""
    ref: Ref = None


@dataclass(frozen=True)
class Reset(Message):
    """Restart the world (same seed when seed is null). Answered by `Ok`."""

    TYPE: ClassVar[str] = "reset"
    PARSERS: ClassVar = {"session": _parse_id("session"), "seed": _parse_optional_seed, "ref": parse_ref}
    REQUIRED: ClassVar = ("session",)
    session: str = ""
    seed: int | None = None
    ref: Ref = None


@dataclass(frozen=True)
class Ack(Message):
    """The client has consumed every chunk with sequence number <= seq."""

    TYPE: ClassVar[str] = "ack"
    PARSERS: ClassVar = {"session": _parse_id("session"), "seq": _parse_seq, "ref": parse_ref}
    REQUIRED: ClassVar = ("session", "seq")
    session: str = ""
    seq: int = 0
    ref: Ref = None


@dataclass(frozen=True)
class Close(Message):
    TYPE: ClassVar[str] = "close"
    PARSERS: ClassVar = {"session": _parse_id("session"), "ref": parse_ref}
    REQUIRED: ClassVar = ("session",)
    session: str = ""
    ref: Ref = None


@dataclass(frozen=True)
class Ping(Message):
    """Heartbeat. Answered by `Pong`; also keeps the sender's sessions alive."""

    TYPE: ClassVar[str] = "ping"
    PARSERS: ClassVar = {"session": _parse_optional_session, "ref": parse_ref}
    session: str | None = None
    ref: Ref = None


@dataclass(frozen=True)
class Status(Message):
    """Ask for worker counters (and one session's state when session is given)."""

    TYPE: ClassVar[str] = "status"
    PARSERS: ClassVar = {"session": _parse_optional_session, "ref": parse_ref}
    session: str | None = None
    ref: Ref = None


# Replies: worker -> client. Decoded leniently (unknown fields ignored) for forward compatibility.


@dataclass(frozen=True)
class Opened(Message):
    TYPE: ClassVar[str] = "opened"
    session: str = ""
    backend: str = ""
    height: int = 0
    width: int = 0
    chunk_frames: int = 0
    fps: float = 0.0
    description: str = ""
    prompt: str = ""
    seed: int = 0
    # The session's effective lookahead: chunks the worker runs ahead of the last ack (the open's
    # `lookahead`, else the worker's max_unacked). The wire name is kept: clients read `window`.
    window: int = 0
    worker: str = ""  # worker instance id; a different one in a Pong means the worker restarted
    ref: Ref = None
    # What the world's first chunk starts from ("engine", "text", "image"), for backends that say
    # (the generated one); start_notice: why it is not what was asked for (e.g. a fallback to text).
    start: str | None = None
    start_notice: str | None = None
    # "curve" (authenticated and encrypted, docs/protocol.md "Authentication") or "none"; a worker
    # bound beyond loopback with --insecure says so in `notice` to every client.
    security: str | None = None
    notice: str | None = None
    # An open with `resume`: the counters the world goes on from ({seq, chunk, frame, epoch}).
    resumed: dict | None = None


@dataclass(frozen=True)
class Ok(Message):
    """Prompt switch or reset applied; `seq` is the first chunk generated under it."""

    TYPE: ClassVar[str] = "ok"
    request: str = ""
    session: str = ""
    seq: int = 0
    epoch: int = 0
    ref: Ref = None


@dataclass(frozen=True)
class Chunk(Message):
    """One chunk of frames; the payload frame holds `shape` uint8 pixels in C order."""

    TYPE: ClassVar[str] = "chunk"
    session: str = ""
    seq: int = 0  # per session, starts at 0, never resets, one per chunk
    epoch: int = 0  # number of resets so far
    chunk: int = 0  # chunk index since open/reset (the dataset's "chunk")
    records: tuple[dict, ...] = ()  # one dataset-form record per frame
    gen_ms: float = 0.0
    steps: int = 0
    nfe: int = 0
    shape: tuple[int, int, int, int] = (0, 0, 0, 3)
    dtype: str = "uint8"
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Closed(Message):
    TYPE: ClassVar[str] = "closed"
    session: str = ""
    reason: str = "client"  # "client" | "timeout" | "shutdown" | "error" | "over_budget"
    ref: Ref = None


@dataclass(frozen=True)
class Pong(Message):
    TYPE: ClassVar[str] = "pong"
    worker: str = ""
    ref: Ref = None


@dataclass(frozen=True)
class StatusReply(Message):
    TYPE: ClassVar[str] = "status"
    worker: dict = field(default_factory=dict)
    session: dict | None = None
    ref: Ref = None


@dataclass(frozen=True)
class Error(Message):
    TYPE: ClassVar[str] = "error"
    code: str = INTERNAL
    message: str = ""
    ref: Ref = None
    session: str | None = None
    request: str | None = None  # the type of the request that failed, when known
    supported: int | None = None  # set on bad_version: the version this worker speaks
    retry_after_s: float | None = None  # set on busy: when trying again may succeed


REQUEST_TYPES: dict[str, type[Message]] = {
    c.TYPE: c for c in (Open, Input, Actions, Prompt, Reset, Ack, Close, Ping, Status)
}
REPLY_TYPES: dict[str, type[Message]] = {c.TYPE: c for c in (Opened, Ok, Chunk, Closed, Pong, StatusReply, Error)}
Request = Open | Input | Actions | Prompt | Reset | Ack | Close | Ping | Status
Reply = Opened | Ok | Chunk | Closed | Pong | StatusReply | Error

# "shutdown" is deliberately not a request type: a client must never be able to stop a worker
# that other people's sessions run on. Stop it with SIGINT/SIGTERM.


def frame_record(i: int, chunk: int, action: Action, prompt: str, steps: int, nfe: int, t: float) -> dict:
    """The per-frame record in the dataset form (docs/dataset.md)."""
    return {"i": i, "chunk": chunk, "action": action.to_json(), "prompt": prompt, "steps": steps, "nfe": nfe, "t": t}
