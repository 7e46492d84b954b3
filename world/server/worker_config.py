"""What a worker is configured with and passes between its parts: `WorkerConfig` (the operator's
settings, `serve` options), the limits on what clients may ask for (`check_client_options`), the
typed messages between the I/O thread and the compute loop (`Inbound`, `Outgoing`) and their counters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from world.server import protocol as P
from world.server import wire
from world.server.admission import MAX_CHUNK_WORK, ROUND_WORK
from world.server.auth import ServerKeys

DEFAULT_BIND = "tcp://127.0.0.1:5555"
# Options only the operator sets (command line): a client must not pick files or devices. A start
# image reaches the backend from the open request's image frame, never as an option.
WORKER_ONLY_OPTIONS = frozenset({"device", "checkpoint", "start_image"})
# Opens carrying a start image (up to 4 MiB each) that may wait for the compute loop at once; more
# are answered `busy`, so queued images never hold more than this many times the image limit.
MAX_PENDING_IMAGES = 4
# Numeric options range-checked before a backend ever sees them: (low, high, integers only).
# The sizes bound buffers; steps and fps bound the work one chunk may ask for.
NUMBER_OPTIONS = {
    "height": (8, 1024, True), "width": (8, 1024, True), "chunk_frames": (1, 16, True), "fps": (1, 240, False),
    "steps": (1, 1000, True), "guidance": (0, 100, False), "context_noise": (0, 1000, False),
}  # fmt: skip
GEOMETRY_OPTIONS = ("height", "width", "chunk_frames", "fps")  # never null: they size every buffer
# Requests for a session whose job (first chunk, reset) runs off the loop wait for it, in order;
# at most this many, then `busy`.
MAX_DEFERRED = 64
# A worker times one chunk of this engine session before it serves (world/server/admission.py CostModel).
DEFAULT_CALIBRATION = {"height": 64, "width": 64, "chunk_frames": 3}
CALIBRATION_PROMPT = "green hills at noon"
# Consecutive chunks over budget before a session is closed (one slow chunk may be the machine's).
BUDGET_STRIKES = 2


@dataclass
class WorkerConfig:
    bind: str = DEFAULT_BIND
    session_timeout_s: float = 30.0
    max_sessions: int = 8
    # Flow control: the most chunks a session may have generated and not yet acknowledged; the largest
    # lookahead granted (`serve --max-unacked`, also spelled `--window`; `window` in status replies).
    max_unacked: int = 2
    max_batch: int = 8  # sessions of one model and sampler whose chunks run as one batch (1: one at a time)
    max_queued_actions: int = P.MAX_QUEUED_ACTIONS
    inbound_queue: int = 1024  # decoded requests waiting for the compute loop
    hwm: int = 1000  # ZeroMQ send/receive high-water marks (messages)
    backend_options: dict[str, dict] = field(default_factory=dict)  # operator defaults per backend
    per_client: int = 2  # sessions one client (routing identity, or client key) may hold
    memory_budget_mb: int = 0  # estimated memory of all sessions; 0: half the machine's (world/server/admission.py)
    # The longest one chunk of a session may hold the compute loop (every other session waits that
    # long), whatever fps the session claims. Enforced while other clients' sessions share the worker.
    chunk_budget_s: float = 1.0
    # Work, not time (world/server/admission.py chunk_work): the pixel-frame evaluations one chunk may
    # take (more: over_budget at open), and the most a chunk made on the compute loop may take (it
    # costs one scheduling round; a larger one is made off the loop, world/server/core.py).
    max_chunk_work: int = MAX_CHUNK_WORK
    round_work: int = ROUND_WORK
    keys: ServerKeys | None = None  # CURVE keys: clients authenticate and frames are encrypted (world/server/auth.py)
    notice: str | None = None  # told to every client in `opened` (an --insecure remote worker)

    @property
    def security(self) -> str:
        return "curve" if self.keys is not None else "none"


@dataclass(frozen=True)
class Inbound:
    identity: bytes
    request: P.Message
    received: float
    user: str | None = None  # the client's public key (z85) on an authenticated worker


@dataclass(frozen=True)
class Outgoing:
    identity: bytes
    frames: list[bytes]


def outgoing(identity: bytes, message: P.Message) -> Outgoing:
    return Outgoing(identity, wire.encode(message))


@dataclass
class IOStats:
    """Counters written by the I/O thread, read (racily, which is fine for ints) by status."""

    received: int = 0
    rejected: int = 0
    sent: int = 0
    dropped: int = 0


@dataclass
class CoreStats:
    sessions_opened: int = 0
    sessions_closed: int = 0
    sessions_expired: int = 0
    chunks_produced: int = 0
    errors: int = 0


def rss_bytes() -> int | None:
    """Resident set size of this process (Linux /proc), None where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


# -------------------------------------------------------------------------------------------
# Compute side: sessions, requests, production. No sockets in here.



def check_client_options(options: dict) -> None:
    """Refuse options clients may not set and sizes that would exhaust memory."""
    for key, value in options.items():
        if key == "start_image":
            raise P.ProtocolError(P.BAD_OPTION, "a start image is not an option: send the file's bytes as the open "
                                  "request's second frame (header field start_image)")  # fmt: skip
        if key in WORKER_ONLY_OPTIONS:
            raise P.ProtocolError(P.BAD_OPTION, f"option {key!r} is set by the worker operator, not clients")
        if key in NUMBER_OPTIONS and (value is not None or key in GEOMETRY_OPTIONS):
            lo, hi, whole = NUMBER_OPTIONS[key]
            number = P.is_int(value) or (not whole and isinstance(value, float))
            if not number or not lo <= value <= hi:
                kind = "an integer" if whole else "a number"
                raise P.ProtocolError(P.BAD_OPTION, f"option {key!r} must be {kind} in [{lo}, {hi}]")
