"""`run_world.py play`: open the window (or a --headless client) on a world.

Without --connect a worker subprocess is started on a free loopback port and stopped when play
ends, however it ends (window closed, error, Ctrl-C). Exit codes: 0 done, 1 the worker failed or
went away, 2 bad usage (bad option, keymap, script or prompt; no display without --headless),
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from world.interrupts import sigterm_as_keyboard_interrupt
from world.launcher import command

# pygame greets on stdout when imported; stdout carries play's JSON summary line.
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

def default_backend() -> str:
    """The default backend: "generated" once the bundled default world (assets/default_world/) exists,
    else the engine (the bundled teacher alone is too slow to open by default)."""
    from world.bundled import bundled_checkpoint  # torch-free

    return "generated" if bundled_checkpoint(teacher_fallback=False) is not None else "engine"


# A sampler's own guidance where a release records none (model/diffusion/samplers.py, which imports
# torch; --help must not): the teacher sampler's 3, every other 0. tests/test_start.py checks both.
OWN_GUIDANCE = {"teacher": 3.0}


def recorded_defaults() -> str:
    """The sampler each bundled release records (its config.json, read with json), for --help."""
    from world.bundled import DEFAULT_CHECKPOINT, TEACHER_CHECKPOINT, ReleaseError, recorded_sampler

    described = []
    for directory in (DEFAULT_CHECKPOINT, TEACHER_CHECKPOINT):
        try:
            recorded = recorded_sampler(directory)
        except ReleaseError:
            continue  # not bundled in this checkout
        described.append(f"{directory.parent.name}/{directory.name}: {describe_sampler(recorded)}")
    return "; ".join(described) or "no world release is bundled here"


def describe_sampler(recorded: dict) -> str:
    """"sampler teacher, steps 8, guidance 0" from a release's recorded sampler fields; guidance
    it does not record is the sampler's own, said as such."""
    labels = {"sampler": "sampler", "steps": "steps", "schedule": "schedule", "context_noise": "context noise",
              "guidance": "guidance", "guide": "guide"}  # fmt: skip
    words = [f"{label} {_setting(recorded[name])}" for name, label in labels.items() if recorded.get(name) is not None]
    if recorded.get("guidance") is None:
        sampler = recorded.get("sampler") or "teacher"
        words.append(f"guidance not recorded (the {sampler} sampler's own {OWN_GUIDANCE.get(sampler, 0.0):g})")
    return ", ".join(words)


def _setting(value: object) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from world.server.client import DEFAULT_PROMPT

    # Everyday options first (argparse's own group); the remote worker's and the experts' below.
    parser.usage = "%(prog)s [options]"
    remote = parser.add_argument_group("a worker elsewhere")
    expert = parser.add_argument_group("experiments (sampler, memory, guidance)",
                                       f"Defaults are what the world's release records: {recorded_defaults()}; "
                                       "with --checkpoint DIR, what DIR records.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the local worker's log (default: "
                        "warnings and errors only)")
    remote.add_argument("--connect", metavar="tcp://HOST:PORT", help="use a running worker (default: start one)")
    remote.add_argument("--client-key", metavar="FILE", help="with --connect to a worker that authenticates: your "
                        f"secret key (NAME.key_secret from `{command('keys --name NAME')}`)")
    remote.add_argument("--server-key", metavar="FILE|KEY", help="with --client-key: the worker's public key (its "
                        ".key file or the 40 characters), needed the first time only: it is remembered in "
                        "--known-servers and a different key for the same address is refused")
    remote.add_argument("--known-servers", metavar="FILE", help="worker keys remembered per address (default "
                        "~/.gworld/known_servers)")
    parser.add_argument(
        "--backend", choices=("engine", "generated"), default=None,
        help=f"world backend (default: {default_backend()})",
    )  # fmt: skip
    expert.add_argument("--checkpoint", metavar="DIR", help="a world release for the generated backend (a "
                        "directory with config.json of kind \"world\", or a training run's --out holding checkpoint/; "
                        "local worker)")
    expert.add_argument("--device", help="device for the generated backend: cpu, cuda, auto (local worker)")
    expert.add_argument("--sampler", choices=("teacher", "uniform", "diagonal"),
                        help="generated backend: sampler for this session (default: the release's, above)")
    expert.add_argument("--steps", type=_positive_int, help="generated backend: denoising steps (teacher, uniform; "
                        "default: the release's, above)")
    expert.add_argument("--schedule", metavar="4,3,2",
                        help="generated backend, diagonal sampler: steps per chunk (the last one repeats; default: "
                        "the release's, above)")
    expert.add_argument("--context-noise", type=float, metavar="T",
                        help="generated backend, diagonal sampler: how much noise the model's memory of past frames "
                        "keeps (default: the value the world was trained with, above; others are experiments)")
    expert.add_argument("--rewarm", action="store_const", const=True, default=None,
                        help="generated backend, diagonal sampler: restart the schedule after each prompt switch")
    expert.add_argument("--guidance", type=float, metavar="G",
                        help="generated backend: classifier-free guidance g in c + g (c - u), 0 off (default: the "
                        "release's, above)")
    expert.add_argument("--guide", choices=("all", "actions", "text"),
                        help="generated backend, with guidance: what it amplifies: all (prompt and actions, the "
                        "default), actions (the response to keys and mouse), text (the prompt)")
    parser.add_argument("--start", choices=("engine", "text", "image"),
                        help="generated backend: what the world's first chunk is (default engine: the engine's view "
                        "of the prompt at the seed, or text when the engine cannot parse the prompt; text: generated "
                        "from the prompt alone; image: --start-image)")
    parser.add_argument("--start-image", metavar="FILE",
                        help="generated backend: start from this PNG or JPEG (implies --start image; read here and "
                        "sent to the worker, at most 4 MiB)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="starting prompt (default: %(default)r)")
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="world seed (default: %(default)s)")
    parser.add_argument("--scale", type=_positive_int, default=8,
                        help="window size as a multiple of the 64x64 world (default: %(default)s = 512x512; the "
                        "window can also be resized, F11 for full screen)")
    parser.add_argument("--keymap", metavar="FILE", help="key bindings overriding assets/keymap.json")
    parser.add_argument("--mouse-sensitivity", type=float, default=1.0, help="mouse look sensitivity (default: 1)")
    parser.add_argument("--headless", action="store_true", help="no window: scripted actions, JSON summary")
    parser.add_argument("--frames", type=_positive_int, help="stop after N frames (headless default: 300)")
    parser.add_argument("--record", metavar="DIR", help="record from the start into DIR (F5 toggles in the window)")
    parser.add_argument("--realtime", action="store_true", help="headless: consume frames at the world's fps")
    parser.add_argument("--script", metavar="FILE", help="headless: JSON list of per-frame actions")
    parser.add_argument("--json", action="store_true", help="print the one-line JSON summary (always headless)")
    parser.add_argument("--replay", metavar="DIR",
                        help="play a recording (an episode folder) back in the window: P pause, , and . step, [ and ] "
                        "speed, 0-9 jump, L take over live from the frame on screen")
    parser.add_argument("--prompts", metavar="FILE",
                        help="a prompt timeline: lines of TIME<TAB>PROMPT (seconds or m:ss) switch the prompt then")
    parser.add_argument("--no-sound", action="store_true", help="window: no sound (M mutes while playing)")
    expert.add_argument(
        "--lookahead", choices=("auto", "1", "2"), default="auto",
        help="chunks the worker generates ahead of the screen: 1 = lowest key-to-frame latency, 2 = slack "
        "against slow chunks (default auto: 1 for engine, 2 for generated; headless: the worker's window)",
    )  # fmt: skip


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


# The window's automatic lookahead per backend. The engine makes a 100 ms chunk in a few ms, so
# one chunk ahead never starves the screen and keeps key-to-frame at 1-2 chunks; a generated
# chunk takes about as long to make as to show, so a second chunk of slack absorbs its jitter.
AUTO_LOOKAHEAD = {"engine": 1, "generated": 2}


def choose_lookahead(requested: str, backend: str, headless: bool) -> int | None:
    """The `open` request's lookahead; None leaves the worker's window (headless's default)."""
    if requested != "auto":
        return int(requested)
    return None if headless else AUTO_LOOKAHEAD.get(backend)


class UsageError(Exception):
    """Bad combination of options or input files: exit status 2 with the message."""


@dataclass(frozen=True)
class Plan:
    backend: str
    worker_args: tuple[str, ...]
    lookahead: int | None = None  # None: the worker's window
    lookahead_is_auto: bool = False  # an automatic choice may fall back to the worker's window
    options: dict = field(default_factory=dict)  # session options sent with `open` (sampler, steps, start)
    start_image: bytes | None = field(default=None, repr=False)  # --start-image's bytes, sent with `open`


def make_plan(args: argparse.Namespace) -> Plan:
    backend = args.backend or ("generated" if args.checkpoint else default_backend())
    worker_args: list[str] = []  # the worker finds the bundled world itself
    for flag, value in (("--checkpoint", args.checkpoint), ("--device", args.device)):
        if value is None:
            continue
        if args.connect:
            raise UsageError(f"{flag} is set where the worker runs (serve {flag} ...), not with --connect")
        if backend != "generated":
            raise UsageError(f"{flag} applies to --backend generated only")
        worker_args += [flag, value]
    if args.checkpoint is not None:
        check_release(args.checkpoint)
    session_options = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps), ("schedule", args.schedule),
                                         ("context_noise", args.context_noise), ("rewarm", args.rewarm),
                                         ("guidance", args.guidance), ("guide", args.guide))
                       if v is not None}
    if session_options and backend != "generated":
        raise UsageError("--sampler, --steps, --schedule, --context-noise, --rewarm, --guidance and --guide apply to "
                         "--backend generated only")
    if not args.headless and (args.script or args.realtime):
        raise UsageError("--script and --realtime apply to --headless runs")
    if args.headless and (args.replay or args.prompts):
        raise UsageError("--replay and --prompts play in the window; headless runs take a --script (whose entries "
                         "may carry a \"prompt\")")
    if args.mouse_sensitivity <= 0:
        raise UsageError("--mouse-sensitivity must be positive")
    start, start_image = start_option(args, backend)
    if start is not None:
        session_options["start"] = start
    lookahead = choose_lookahead(args.lookahead, backend, args.headless)
    return Plan(backend, tuple(worker_args), lookahead, args.lookahead == "auto", session_options, start_image)


def check_release(path: str) -> None:
    """Refuse a --checkpoint that is not a world release before any worker starts (json only: the
    worker, which loads torch and the weights, checks them again). UsageError."""
    from world.bundled import ReleaseError, world_release

    try:
        world_release(path)
    except ReleaseError as exc:
        raise UsageError(f"--checkpoint: {exc}") from None


def start_option(args: argparse.Namespace, backend: str) -> tuple[str | None, bytes | None]:
    """(the session's `start` option or None for the worker's default, the start image's bytes).

    --start-image FILE implies --start image; the file is read here, on the client, and its bytes
    travel in the open request (the worker never opens a path a client names)."""
    start = args.start
    if args.start_image is not None and start not in (None, "image"):
        raise UsageError(f"--start-image starts the world from an image; it cannot go with --start {start}")
    if args.start_image is None and start == "image":
        raise UsageError("--start image needs --start-image FILE (a PNG or JPEG)")
    if backend != "generated":
        if start not in (None, "engine"):
            raise UsageError("--start text|image and --start-image apply to --backend generated only (the engine "
                             "always starts from its own view)")
        return None, None
    if args.start_image is None:
        return start, None
    return "image", read_start_image(args.start_image)


def read_start_image(path: str) -> bytes:
    """The bytes of a start image file, checked against the protocol's size limit and decoded once
    here, so a file that is not a PNG or JPEG is refused before any worker starts (the worker
    decodes the bytes again: they are untrusted there). UsageError."""
    from world.server.protocol import image_too_large
    from world.start import MAX_START_IMAGE_BYTES, StartImageError, decode_start_image

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"--start-image: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_START_IMAGE_BYTES:
        raise UsageError(f"--start-image {path}: {image_too_large(len(data))}")
    if not data:
        raise UsageError(f"--start-image {path}: the file is empty")
    try:
        decode_start_image(data)
    except StartImageError as exc:
        raise UsageError(f"--start-image {path}: {exc}") from None
    return data


def display_problem() -> str | None:
    """Why no window can open here, or None. Checked before starting anything."""
    driver = os.environ.get("SDL_VIDEODRIVER")
    if (
        sys.platform.startswith("linux")
        and not driver
        and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    ):
        return "no display found (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    import pygame

    try:
        pygame.display.init()
    except pygame.error as exc:
        return f"cannot open a display: {exc}"
    return None


def no_display_help(problem: str) -> str:
    """What to do without a screen, in the form the person ran us (world/launcher.py)."""
    return (f"{problem}.\n"
            f"  Run without a window:      {command('play --headless --frames 300')}\n"
            f"  Or give it a virtual one:  xvfb-run -a {command('play')}")


@contextlib.contextmanager
def worker_endpoint(args: argparse.Namespace, plan: Plan) -> Iterator[tuple[str, LocalWorker | None]]:
    """The endpoint to talk to: --connect's, or a local worker's that is stopped on the way out."""
    if args.connect:
        yield args.connect, None
        return
    worker = LocalWorker(plan.worker_args, verbose=getattr(args, "verbose", False))
    try:
        yield worker.endpoint, worker
    finally:
        worker.stop()


def worker_env() -> dict[str, str]:
    """The local worker's environment: as many intra-op threads as this machine lets us use
    (unless OMP_NUM_THREADS is set). The window takes about a tenth of a core (window_bench's
    `window_cpu`); with the worker's jobs on threads that end (world/server/jobs.py), 2 model
    threads on a 2-core machine show 24-25 FPS in the window against 19 with one
    (docs/reports/window-speed.md). Set OMP_NUM_THREADS lower when another busy process shares the
    cores: a descheduled model thread holds up the others."""
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(max(1, cores))
    return env


# The worker counts a session's silence from its open request, so the model load that building a
# generated world starts with (20-30 s on a busy 2-core machine, during which a client waiting for
# `opened` cannot heartbeat) counted as silence and a fresh session expired at the 30 s default.
# play's own worker serves only this window, so a longer limit costs nothing.
LOCAL_SESSION_TIMEOUT_S = 120


class LocalWorker:
    """The worker subprocess `play` starts; revived on the same port if it dies mid-session."""

    def __init__(self, extra_args: tuple[str, ...], verbose: bool = False) -> None:
        from world.server.process import start_worker_process

        # Its per-session INFO lines are for operators; a player sees them with -v only.
        quiet = () if verbose else ("--log-level", "WARNING")
        extra_args = ("--session-timeout", str(LOCAL_SESSION_TIMEOUT_S), *quiet, *extra_args)
        self.extra_args = extra_args
        print("play: starting a local worker ...", file=sys.stderr)
        self.proc, self.endpoint = start_worker_process(extra_args=extra_args, env=worker_env())

    def revive(self) -> None:
        from world.server.process import start_worker_process

        if self.proc.poll() is not None:
            print(f"play: the local worker exited ({self.proc.returncode}); restarting it", file=sys.stderr)
            self.proc, _ = start_worker_process(bind=self.endpoint, extra_args=self.extra_args, env=worker_env())

    def stop(self) -> None:
        from world.server.process import stop_worker_process

        stop_worker_process(self.proc)


def run(args: argparse.Namespace) -> int:
    try:
        with sigterm_as_keyboard_interrupt():  # the recording is closed and the local worker stopped
            return _run(args)
    except UsageError as exc:
        print(f"play: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("play: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from world.server.process import WorkerStartError

    plan = make_plan(args)
    prepared = _prepare_headless(args) if args.headless else _prepare_window(args)
    if args.replay:
        return _replay(args, plan, prepared)
    try:
        with worker_endpoint(args, plan) as (endpoint, local):
            result = _session(args, plan, endpoint, local, prepared)
    except WorkerStartError as exc:
        print(f"play: the local worker did not start: {exc}", file=sys.stderr)
        return 1
    if result is None:
        return 1
    if args.headless or args.json:
        print(json.dumps(result, separators=(", ", ": ")), flush=True)
    return 0


def _prepare_headless(args: argparse.Namespace) -> object:
    from controls.headless import HeadlessError, load_script

    try:
        return load_script(args.script) if args.script else None
    except HeadlessError as exc:
        raise UsageError(str(exc)) from None


def _prepare_window(args: argparse.Namespace) -> object:
    from controls.keymap import KeymapError, load_keymap

    try:
        keymap = load_keymap(args.keymap)
    except KeymapError as exc:
        raise UsageError(f"bad keymap: {exc}") from None
    problem = display_problem()
    if problem:
        raise UsageError(no_display_help(problem))
    if args.prompts:
        from controls.timeline import TimelineError, load_timeline

        try:
            load_timeline(args.prompts)  # read again per window; checked here, before anything starts
        except TimelineError as exc:
            raise UsageError(str(exc)) from None
    return keymap


def _session(args, plan: Plan, endpoint: str, local: LocalWorker | None, prepared: object) -> dict | None:
    """Open the session and run the window or the headless client; None if the worker failed."""
    from world.server.client import WorldClient, WorldConnectionError, WorldRequestError

    # Opening a generated world may load a checkpoint: allow it time. Later blocking calls
    # (reconnects) run off the window's thread, so this timeout never freezes the window.
    client = WorldClient(endpoint, timeout_s=60.0 if plan.backend == "generated" else 10.0, keys=client_keys(args))
    if not args.headless:
        return _connect_then_window(args, plan, client, endpoint, local, prepared)
    from controls.probe import probe

    print(f"play: connecting to {endpoint} ...", file=sys.stderr)
    problem = probe(client)  # a dead address is said in 10 s, not after the open's long timeout
    if problem:
        client.close()
        print(f"play: {problem}", file=sys.stderr)
        return None
    try:
        info = _open(client, plan, args)
    except WorldRequestError as exc:
        client.close()
        raise UsageError(f"the worker refused to open the world: {exc.message}") from None
    except WorldConnectionError as exc:
        client.close()
        hint = " (a worker that authenticates drops clients whose key it does not list)" if client.keys else ""
        print(f"play: {exc}{hint}", file=sys.stderr)
        return None
    if info.get("notice"):
        print(f"play: the worker says: {info['notice']}", file=sys.stderr)
    if args.headless:
        return _headless(args, client, info, prepared, plan.options, local)
    return _window(args, client, info, prepared, endpoint, local, plan.options)


def client_keys(args: argparse.Namespace):
    """The CURVE keys for --connect, or None: --client-key / --server-key and the known-servers file,
    checked against the worker (world/server/auth.py `player_keys`). UsageError."""
    from world.server.auth import DEFAULT_KNOWN_SERVERS, AuthError, player_keys

    if not args.connect:
        if args.client_key is not None or args.server_key is not None:
            raise UsageError("--client-key and --server-key need --connect")
        return None
    try:
        keys, said = player_keys(args.connect, args.client_key, args.server_key,
                                 getattr(args, "known_servers", None) or DEFAULT_KNOWN_SERVERS)  # fmt: skip
    except AuthError as exc:
        raise UsageError(str(exc)) from None
    if said:
        print(f"play: {said}", file=sys.stderr)
    return keys


def _open(client, plan: Plan, args: argparse.Namespace) -> dict:
    """Open the session. An automatic lookahead above the window of a worker started with a
    smaller `serve --window` falls back to that window instead of refusing to play."""
    from world.server.client import WorldRequestError
    from world.server.protocol import BAD_LOOKAHEAD

    image = {"start_image": plan.start_image} if plan.start_image is not None else {}
    try:
        return client.open(plan.backend, args.prompt, args.seed, options=plan.options, lookahead=plan.lookahead,
                           **image)  # fmt: skip
    except WorldRequestError as exc:
        if exc.code != BAD_LOOKAHEAD or not plan.lookahead_is_auto:
            raise
    return client.open(plan.backend, args.prompt, args.seed, options=plan.options, **image)


def _headless(args, client, info: dict, script, options: dict, local: LocalWorker | None = None) -> dict | None:
    from controls.headless import HeadlessConfig, HeadlessError, run_headless

    frames = args.frames or (None if script else 300)  # None: the whole script (after a reset view, if any)
    config = HeadlessConfig(
        frames=frames, seed=args.seed, prompt=args.prompt, script=script, realtime=args.realtime,
        record_dir=Path(args.record) if args.record else None, options=options,
    )  # fmt: skip
    try:
        return run_headless(client, info, config, revive=local.revive if local else None)
    except HeadlessError as exc:
        print(f"play: {exc}", file=sys.stderr)
        return None
    finally:
        client.close()


def _connect_then_window(args, plan: Plan, client, endpoint: str, local: LocalWorker | None, keymap) -> dict | None:
    """The window opens at once on a "connecting to ADDRESS, attempt k" screen while the session opens
    off its thread; a worker that never answers or refuses the world is said there (and on stderr)."""
    import pygame

    from controls.connecting import ConnectScreen
    from controls.window import PlayWindow  # noqa: F401  (its imports, the soundscape's scipy among them,
    # take seconds on a busy machine: done before the session opens, as nothing heartbeats meanwhile)

    pygame.display.init()
    pygame.font.init()
    try:
        screen = ConnectScreen(endpoint, (64 * args.scale, 64 * args.scale))
        opened = screen.run(client, lambda: _open(client, plan, args))
        if opened is None:
            client.close()
            if screen.refused:
                raise UsageError(screen.error)
            if screen.error:
                print(f"play: {screen.error}", file=sys.stderr)
                return None
            return _cancelled_summary(plan)
        return _window(args, client, opened, keymap, endpoint, local, plan.options)
    finally:
        pygame.quit()


def _cancelled_summary(plan: Plan) -> dict:
    from controls.headless import summary

    return summary(frames=0, seconds=0.0, latency_ms=[], errors=0, backend=plan.backend, prompt="", record=None,
                   gen_ms=[], latency_kind="key-to-frame (shown)", start=None, start_notice=None)  # fmt: skip


def _window_config(args, endpoint: str, options: dict, **more) -> object:
    from controls.headless import DEFAULT_RECORD_DIR
    from controls.input import MouseSettings
    from controls.timeline import load_timeline
    from controls.window import WindowConfig

    return WindowConfig(
        scale=args.scale, seed=args.seed, record_dir=Path(args.record) if args.record else DEFAULT_RECORD_DIR,
        record_on_start=bool(args.record) and not args.replay, max_frames=args.frames,
        mouse=MouseSettings(sensitivity=args.mouse_sensitivity), endpoint=endpoint, options=options,
        timeline=load_timeline(args.prompts) if args.prompts else None, sound=not args.no_sound, **more,
    )  # fmt: skip


def _window(args, client, info: dict, keymap, endpoint: str, local: LocalWorker | None, options: dict) -> dict:
    from controls.link import WorldLink
    from controls.window import PlayWindow

    link = WorldLink(client, revive=local.revive if local else None)
    try:
        return PlayWindow(link, keymap, _window_config(args, endpoint, options)).run()
    finally:
        link.close()


def _replay(args, plan: Plan, keymap) -> int:
    """`play --replay DIR`: the recording in the window; L starts (or connects to) a worker and the
    world continues live from the frame on screen (controls/playback.py)."""
    import pygame

    from controls.playback import RecordingLink
    from controls.window import PlayWindow
    from world.data.dataset import DatasetError, EpisodeReader

    try:
        link = RecordingLink(EpisodeReader(args.replay))
    except (DatasetError, ValueError) as exc:
        raise UsageError(f"--replay: {exc}") from None
    live = LiveTakeover(args, plan, link.reader)
    pygame.display.init()
    pygame.font.init()
    try:
        config = _window_config(args, args.connect or "", dict(link.reader.meta.get("options") or {}),
                                go_live=live.go_live)  # fmt: skip
        result = PlayWindow(link, keymap, config).run()
    finally:
        live.close()
        pygame.quit()
    if args.json:
        print(json.dumps(result, separators=(", ", ": ")), flush=True)
    return 0


class LiveTakeover:
    """L in a replay: a worker for the recording's world (started here on first use unless
    --connect), a session on it, the recording regenerated up to the frame, then the live link."""

    def __init__(self, args: argparse.Namespace, plan: Plan, reader) -> None:
        self.args, self.plan, self.reader = args, plan, reader
        self.local: LocalWorker | None = None
        self.link = None

    def go_live(self, frame: int, progress) -> object:
        from controls.link import WorldLink
        from controls.playback import catch_up, open_live, takeover_frame

        backend = self.reader.meta["backend"]
        endpoint = self.args.connect
        if endpoint is None:
            progress("going live: starting a worker\u2026")
            if self.local is None:
                self.local = LocalWorker(self._worker_args(), verbose=getattr(self.args, "verbose", False))
            endpoint = self.local.endpoint
        progress("going live: loading the world\u2026")
        client, info = open_live(self.reader, endpoint, AUTO_LOOKAHEAD.get(backend), timeout_s=120.0,
                                 keys=client_keys(self.args))  # a remembered --connect address is checked
        end = takeover_frame(self.reader, frame)
        try:
            catch_up(client, info, self.reader, end, lambda done: progress(f"going live: frame {done} of {end}\u2026"))
        except BaseException:
            client.close()  # the replay goes on; a later L opens a new session
            raise
        self.link = WorldLink(client, revive=self.local.revive if self.local else None)
        return self.link

    def _worker_args(self) -> tuple[str, ...]:
        """The recorded checkpoint (found by its hashes, torch-free) and device for a generated world."""
        meta = self.reader.meta
        if meta["backend"] != "generated":
            return ()
        from model.runtime.regenerate import find_checkpoint

        model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
        checkpoint = self.args.checkpoint or (str(find_checkpoint(model, self.reader.path)) if model else None)
        device = self.args.device or ("cpu" if model.get("device") == "cpu" else None)
        return tuple(x for flag, v in (("--checkpoint", checkpoint), ("--device", device)) if v for x in (flag, v))

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
        if self.local is not None:
            self.local.stop()
