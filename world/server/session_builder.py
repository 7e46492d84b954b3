"""Building a session: everything about an open request that is cheap to check (lookahead, backend
name, start, options), its estimated memory and predicted chunk time for admission, and, off the
compute loop, the backend built and reset as a `Session`. The cost model is calibrated here too:
one chunk of a small engine session timed before the worker serves.
"""

from __future__ import annotations

import logging
import secrets
import time

from world.actions import IDLE
from world.backends.registry import SESSION_DEFAULTS, backend_names, create_backend
from world.bundled import bundled_checkpoint
from world.errors import BackendError, PromptError
from world.server import protocol as P
from world.server.admission import CostModel, Holder, chunk_work, directory_bytes, estimate_bytes, evaluations
from world.server.session import Session
from world.server.worker_config import (
    CALIBRATION_PROMPT,
    DEFAULT_CALIBRATION,
    Inbound,
    WorkerConfig,
    check_client_options,
)
from world.start import StartImageError, decode_start_image

log = logging.getLogger("world.worker")


class SessionBuilder:
    """Checks, estimates and builds sessions for one worker (its config and its cost model)."""

    def __init__(self, config: WorkerConfig, costs: CostModel):
        self.config = config
        self.costs = costs
        self._weights: dict[str, int] = {}  # checkpoint path -> bytes on disk (memory estimates)

    def calibrate(self, backend: str = "engine", options: dict | None = None) -> None:
        """Time one chunk of a small session before serving, so the cost model can refuse a session
        far over budget from the first client on (about 0.2 s for the engine at 64x64)."""
        options = dict(DEFAULT_CALIBRATION if options is None else options)
        try:
            world = self.create_backend(backend, {}, options)
            try:
                world.reset(0, CALIBRATION_PROMPT)
                info = world.info
                start = time.perf_counter()
                result = world.step_chunk([IDLE] * info.chunk_frames)
                seconds = time.perf_counter() - start
            finally:
                world.close()
        except Exception as exc:  # a worker without that backend simply has no calibration
            log.info("calibrating %s failed: %s: %.200s", backend, type(exc).__name__, exc)
            return
        self.costs.learn(backend, chunk_work(info.height, info.width, info.chunk_frames, result.nfe), seconds)

    def lookahead(self, requested: int | None) -> int:
        """The session's lookahead: the client's, at most the operator's --max-unacked (which bounds
        every session's memory and the worker's run-ahead work)."""
        most = self.config.max_unacked
        if requested is None:
            return most
        if requested > most:
            raise P.ProtocolError(P.BAD_LOOKAHEAD, f"lookahead {requested} is above this worker's window of {most}")
        return requested

    def estimate(self, backend: str, options: dict, lookahead: int) -> tuple[int, tuple[str, int] | None]:
        """(the session's own bytes, (checkpoint, weight bytes) that its checkpoint's sessions share)."""
        own = estimate_bytes(backend, options, lookahead)
        if backend == "generated":
            checkpoint = self.config.backend_options.get("generated", {}).get("checkpoint")
            if checkpoint is None:
                checkpoint = bundled_checkpoint()
            key = str(checkpoint)
            if key not in self._weights:
                self._weights[key] = directory_bytes(checkpoint)
            return own, (key, self._weights[key])
        return own, None

    def check_predicted_cost(self, req: P.Open) -> None:
        """Refuse, before building it, a session whose chunks would take over twice the chunk budget
        (world/server/admission.py CostModel), whatever fps it claims. Also on an empty worker:
        others may come, and building such a session alone costs CPU; sessions nearer the budget are
        timed instead."""
        budget = self.config.chunk_budget_s
        predicted = self.costs.too_costly(req.backend, req.options, budget)
        if predicted is not None:
            raise P.ProtocolError(P.OVER_BUDGET, f"a chunk of this session would take about {predicted:.1f} s (from "
                                  f"what this worker's {req.backend} sessions took); this worker allows "
                                  f"{budget:.2f} s per chunk (serve --chunk-budget), whatever the fps: open a "
                                  "smaller session")  # fmt: skip

    def build(self, item: Inbound, lookahead: int, holder: Holder) -> Session:
        """Off the loop: the backend, reset with the seed and prompt, as a Session."""
        req: P.Open = item.request
        began = time.perf_counter()
        options, worker_set = start_options(req)
        backend = self.create_backend(req.backend, options, worker_set)
        try:
            check_info(backend.info)
            start = time.perf_counter()
            backend.reset(req.seed, req.prompt)
            reset_ms = (time.perf_counter() - start) * 1000.0  # the reset view's gen_ms, if it has one
            if req.resume is not None:
                backend.resume(req.resume["state"])
        except PromptError as exc:
            backend.close()
            raise P.ProtocolError(P.BAD_PROMPT, str(exc)) from None
        except BackendError as exc:  # a resume state this backend cannot take
            backend.close()
            raise P.ProtocolError(P.BACKEND_ERROR, str(exc)) from None
        except BaseException:
            backend.close()
            raise
        session = Session(secrets.token_hex(8), item.identity, req.backend, backend, req.prompt, req.seed,
                          self.config.max_queued_actions, item.received, lookahead, reset_ms=reset_ms)  # fmt: skip
        if req.resume is not None:
            session.resume_at(*(req.resume[k] for k in P.RESUME_COUNTERS))
        session.budget_s = self.config.chunk_budget_s  # whatever fps the world claims
        session.evaluations = evaluations(req.options)  # until its first chunk says
        session.client = holder.user or item.identity
        session.holder = holder
        session.build_s = time.perf_counter() - began
        return session

    def opened(self, session: Session, req: P.Open, instance: str) -> P.Opened:
        """The reply to the open that built `session`: its geometry, lookahead, start and security."""
        info = session.info
        return P.Opened(
            session=session.sid,
            backend=req.backend,
            height=info.height,
            width=info.width,
            chunk_frames=info.chunk_frames,
            fps=info.fps,
            description=info.description,
            prompt=req.prompt,
            seed=req.seed,
            window=session.lookahead,
            worker=instance,
            ref=req.ref,
            start=session.start,
            start_notice=session.start_notice,
            security=self.config.security,
            notice=self.config.notice,
            resumed=None if req.resume is None else {k: req.resume[k] for k in P.RESUME_COUNTERS},
        )

    def create_backend(self, name: str, options: dict, worker_set: dict | None = None):
        """Build the backend: session defaults (world.backends.registry.SESSION_DEFAULTS), then the operator's
        defaults, then the client's options, then what the worker sets itself (a start image)."""
        check_backend_name(name)
        check_client_options(options)
        merged = {**SESSION_DEFAULTS.get(name, {}), **self.config.backend_options.get(name, {}), **options,
                  **(worker_set or {})}  # fmt: skip
        try:
            return create_backend(name, **merged)
        except TypeError as exc:  # unexpected keyword: an option this backend does not have
            raise P.ProtocolError(P.BAD_OPTION, f"backend {name!r} rejected the options: {exc}") from None
        except BackendError as exc:
            # A backend refusing the client's options says so with BackendError; without client
            # options the failure is the backend's own (missing checkpoint, bad device, ...).
            raise P.ProtocolError(P.BAD_OPTION if options else P.BACKEND_ERROR, str(exc)) from None
        except ValueError as exc:
            raise P.ProtocolError(P.BAD_OPTION, f"backend {name!r} rejected the options: {exc}") from None


def check_start(req: P.Open) -> None:
    """The start option against the image frame (cheap, before admission)."""
    start = req.options.get("start")
    if req.start_image is None and start == "image":
        raise P.ProtocolError(P.BAD_OPTION, "start 'image' needs the image: send the PNG or JPEG file's bytes "
                              "as the open request's second frame (header field start_image)")  # fmt: skip
    if req.start_image is not None and start not in (None, "image"):
        raise P.ProtocolError(P.BAD_OPTION, f"the open carries a start image but asks for start {start!r:.40}; "
                              "an image comes with start 'image'")  # fmt: skip


def start_options(req: P.Open) -> tuple[dict, dict]:
    """(client options, worker-set backend arguments) for the world's start. An open with an
    image frame starts from that image (options.start is "image" or absent); its bytes are
    decoded here, untrusted, so a bad image is a `bad_image` error and never reaches a backend."""
    options = dict(req.options)
    if req.start_image is None:
        return options, {}
    options.setdefault("start", "image")
    try:
        image = decode_start_image(req.start_image)
    except StartImageError as exc:
        raise P.ProtocolError(P.BAD_IMAGE, str(exc)) from None
    return options, {"start_image": image}


def check_backend_name(name: str) -> None:
    if name not in backend_names():
        raise P.ProtocolError(
            P.UNKNOWN_BACKEND, f"unknown backend {name!r}; available: {', '.join(backend_names())}"
        )


def check_info(info) -> None:
    dims = (info.chunk_frames, info.height, info.width)
    fps_ok = isinstance(info.fps, (int, float)) and not isinstance(info.fps, bool) and 0 < info.fps <= 1000
    if not (all(P.is_int(d) and 0 < d <= 1 << 20 for d in dims) and fps_ok):
        raise P.ProtocolError(P.BACKEND_ERROR, f"backend reports an unusable geometry: {info}")
    size = info.chunk_frames * info.height * info.width * 3
    if not (info.chunk_frames > 0 and info.height > 0 and info.width > 0 and info.fps > 0):
        raise P.ProtocolError(P.BACKEND_ERROR, f"backend reports an unusable geometry: {info}")
    if size > P.MAX_PAYLOAD_BYTES:
        raise P.ProtocolError(P.TOO_LARGE, f"a chunk would be {size} bytes; the limit is {P.MAX_PAYLOAD_BYTES}")
