"""The window as a player gets it: the real play window, a real worker process and keys pressed on a clock.

    python -m controls.harness.window_bench --seconds 30 [--backend generated] [--threads 2]
        [--wait-policy passive] [--hold KEY[,KEY]] [--keys-script "0:w;2.5:a,w;5:"] [--out F.json]

`bench` times the model alone; this times the whole loop a player runs: a worker process started
the way `play` starts its own (`--threads` model threads, OpenMP's `--wait-policy`), the
`PlayWindow` under SDL's dummy video driver (no display needed; drawing, the HUD and scaling to
512x512 all happen), and a key changed every `--key-every` seconds (forward, turn left, look up,
nothing, ...), posted as pygame events so the window's own input path measures key to frame.
Instead of that cycle, `--hold KEY[,KEY]` holds keys for the whole run (a held turn or walk,
measured and pictured with `--screenshot`) and `--keys-script` holds keys from given times on
(seconds into the timed part; `TIME:KEYS` entries, ";" between them or one a line in `@FILE`, an
empty KEYS releasing the script's keys). Keys are pygame key names as assets/keymap.json spells
them (w, a, left, space, left shift, ...).
The JSON: `keys` (what was held when), `keys_shown` (frames shown in the timed part per held
key set, from the frames' own records), `shown_fps` (frames the window showed per second),
`world_fps` (frames the worker delivered per second), `capacity_fps` (frames per second of the
worker's own chunk times: what the model could make with nothing waiting on it), key-to-frame
percentiles, `window_cpu` and `worker_cpu` (CPU seconds per wall second of each process in the
timed part: what the window takes from the cores the model runs on), and what ran (threads, wait
policy, CPU flags as `compute_facts` reports them). `--profile F` also writes the window
process's cProfile statistics (`pstats`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from controls.pacing import process_cpu_s

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

KEY_CYCLE = ("w", "left", "up", "", "right", "s")  # "" = no key held
WAIT_POLICIES = ("default", "passive", "active")


def worker_environment(threads: int, wait_policy: str) -> dict[str, str]:
    """The worker's environment for `threads` model threads and an OpenMP wait policy ("default":
    the library's own, which spins a while before sleeping)."""
    from controls.harness.common import worker_env

    env = worker_env(threads)
    env.pop("OMP_WAIT_POLICY", None)
    if wait_policy != "default":
        env["OMP_WAIT_POLICY"] = wait_policy.upper()
    return env


class KeysError(ValueError):
    """A --hold or --keys-script that cannot be played; the message names the option and the entry."""


@dataclass(frozen=True)
class KeyPlan:
    """The keys the bench holds: KEY_CYCLE changed every `every_s` seconds of the run, or (every_s
    None) `hold` throughout plus, from each step's time on (seconds into the timed part), its keys."""

    every_s: float | None = 0.7
    hold: frozenset[str] = frozenset()
    script: tuple[tuple[float, frozenset[str]], ...] = ()

    def keys_at(self, run_s: float, timed_s: float | None) -> frozenset[str]:
        """The keys held `run_s` into the run; `timed_s` into the timed part (None: not begun)."""
        if self.every_s is not None:
            return frozenset() if run_s < self.every_s else frozenset({KEY_CYCLE[int(run_s / self.every_s) % 6]} - {""})
        current: frozenset[str] = frozenset()
        for at, keys in self.script:
            if timed_s is not None and at <= timed_s:
                current = keys
        return self.hold | current

    def to_json(self) -> dict:
        if self.every_s is not None:
            return {"cycle": [k or "none" for k in KEY_CYCLE], "every_s": self.every_s}
        return {"hold": sorted(self.hold), "script": [[at, sorted(keys)] for at, keys in self.script]}


def movement_keys() -> dict[str, str]:
    """pygame key name -> movement binding (forward, turn_left, ...) in the keymap the window loads."""
    from controls.keymap import load_keymap
    from world.actions import KEYS

    bindings = load_keymap(None).bindings
    return {name: binding for binding in KEYS for name in bindings.get(binding, ())}


def parse_keys(text: str, where: str, movement: dict[str, str]) -> frozenset[str]:
    """"a,w" -> {"a", "w"}: pygame key names bound to movement; "" holds none. KeysError."""
    names = [name.strip().lower() for name in text.split(",")] if text.strip() else []
    for name in names:
        if name not in movement:
            raise KeysError(f"{where}: {name!r} is not a movement key of the keymap (movement keys: "
                            f"{', '.join(movement)})")  # fmt: skip
    return frozenset(names)


def parse_key_script(text: str, movement: dict[str, str]) -> tuple[tuple[float, frozenset[str]], ...]:
    """--keys-script "0:w;2.5:a,w;5:" (or "@FILE", one TIME:KEYS a line, # comments): times in
    seconds into the timed part, rising; KEYS as parse_keys. KeysError naming the entry."""
    entries = _script_entries(text)
    if not entries:
        raise KeysError("--keys-script: no TIME:KEYS entries (e.g. \"0:w;2.5:a,w;5:\")")
    steps: list[tuple[float, frozenset[str]]] = []
    for n, entry in enumerate(entries, 1):
        at, keys = _script_entry(n, entry, movement)
        if steps and at <= steps[-1][0]:
            raise KeysError(f"--keys-script entry {n} {entry!r}: {at:g} s is not after the entry before "
                            f"({steps[-1][0]:g} s)")  # fmt: skip
        steps.append((at, keys))
    return tuple(steps)


def _script_entries(text: str) -> list[str]:
    if text.startswith("@"):
        try:
            lines = Path(text[1:]).read_text().splitlines()
        except OSError as exc:
            raise KeysError(f"--keys-script: cannot read {text[1:]}: {exc.strerror or exc}") from None
        return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [entry.strip() for entry in text.split(";") if entry.strip()]


def _script_entry(n: int, entry: str, movement: dict[str, str]) -> tuple[float, frozenset[str]]:
    when, colon, keys = entry.partition(":")
    where = f"--keys-script entry {n} {entry!r}"
    if not colon:
        raise KeysError(f"{where}: expected TIME:KEYS, e.g. 2.5:a,w (or 5: to release the keys)")
    try:
        at = float(when)
    except ValueError:
        raise KeysError(f"{where}: the time {when.strip()!r} is not a number of seconds") from None
    if not math.isfinite(at) or at < 0:
        raise KeysError(f"{where}: the time must be 0 or more seconds into the timed part, got {when.strip()}")
    return at, parse_keys(keys, where, movement)


def key_plan(args: argparse.Namespace) -> KeyPlan:
    """The KeyPlan of the command line. KeysError."""
    if args.hold is None and args.keys_script is None:
        return KeyPlan(every_s=args.key_every if args.key_every is not None else 0.7)
    if args.key_every is not None:
        raise KeysError("--key-every cycles keys; --hold and --keys-script choose them instead: give one or the other")
    movement = movement_keys()
    hold = parse_keys(args.hold, "--hold", movement) if args.hold is not None else frozenset()
    script = parse_key_script(args.keys_script, movement) if args.keys_script is not None else ()
    for at, keys in script:
        if keys & hold:
            raise KeysError(f"--keys-script at {at:g} s: {', '.join(sorted(keys & hold))} held by --hold already")
    if script and script[-1][0] >= args.seconds:
        raise KeysError(f"--keys-script: its last entry ({script[-1][0]:g} s) is not within the timed part "
                        f"(--seconds {args.seconds:g})")  # fmt: skip
    return KeyPlan(every_s=None, hold=hold, script=script)


def post_keys(held: frozenset[str], wanted: frozenset[str]) -> None:
    """Release what is held but not wanted, then press what is wanted but not held (pygame events)."""
    import pygame

    for names, kind in ((held - wanted, pygame.KEYUP), (wanted - held, pygame.KEYDOWN)):
        for name in sorted(names):
            pygame.event.post(pygame.event.Event(kind, key=pygame.key.key_code(name), mod=0, unicode="", scancode=0))


@dataclass(frozen=True)
class TimedFrom:
    """Where the timed part began: the clock, the window's counters and both processes' CPU seconds."""

    at: float
    shown: int
    latency: int
    gen: int
    window_cpu_s: float
    worker_cpu_s: float | None


def measure(seconds: float, backend: str, threads: int, wait_policy: str, keys: KeyPlan | None = None,
            warmup_s: float = 5.0, checkpoint: str | None = None, switch: str | None = None,
            screenshot: str | None = None, lookahead: int | None = None,
            profile: str | None = None) -> dict:  # fmt: skip
    """Run the window for warmup_s + seconds against a fresh local worker; the numbers of the timed part.
    `keys`: what is held when (default: KEY_CYCLE every 0.7 s); `switch`: a prompt applied (as the
    prompt box applies it) halfway through the timed part; `screenshot`: a PNG of the window as it
    is at the end, HUD included; `lookahead`: chunks the worker may run ahead of the screen (None:
    play's default, 2 for the generated world, 1 for the engine)."""
    import pygame

    from controls.keymap import load_keymap
    from controls.link import WorldLink
    from controls.window import PlayWindow, WindowConfig
    from world.server.client import WorldClient
    from world.server.process import start_worker_process, stop_worker_process

    args = ["--log-level", "WARNING"] + (["--checkpoint", checkpoint] if checkpoint else [])
    proc, endpoint = start_worker_process(extra_args=args, env=worker_environment(threads, wait_policy))
    pygame.display.init()
    pygame.font.init()
    client = WorldClient(endpoint, timeout_s=120)
    link = None
    keys = keys or KeyPlan()
    try:
        if lookahead is None:
            lookahead = 2 if backend == "generated" else 1
        client.open(backend, "green hills at noon", seed=1, lookahead=lookahead)
        link = WorldLink(client)
        window = PlayWindow(link, load_keymap(None), WindowConfig(sound=False, endpoint=endpoint))
        timed, keys_shown = drive(window, proc.pid, keys, seconds, warmup_s, switch, profile)
        result = {"backend": backend, "threads": threads, "wait_policy": wait_policy, "lookahead": lookahead,
                  **timed_numbers(window, timed, proc.pid), "keys": keys.to_json(), "keys_shown": keys_shown}
        if screenshot:
            pygame.image.save(window.screen, screenshot)
            result["screenshot"] = screenshot
        window.close()
        return result
    finally:
        if link is not None:
            link.close()
        else:
            client.close()
        pygame.quit()
        stop_worker_process(proc)


def drive(window, worker_pid: int, keys: KeyPlan, seconds: float, warmup_s: float, switch: str | None,
          profile: str | None) -> tuple[TimedFrom, dict[str, int]]:  # fmt: skip
    """Step the window through the warm-up and the timed part, holding `keys`' keys as it says;
    (where the timed part began, frames shown in it per held key set as the frames' records say)."""
    from controls.pacing import monotonic

    began, held, timed, profiler = monotonic(), frozenset(), None, None
    shown: Counter[str] = Counter()
    while True:
        now = monotonic()
        if timed is None and now - began >= warmup_s:  # the model is warm, the buffers full
            timed = TimedFrom(now, window.frames_shown, len(window.latency.all_samples_ms), len(window.gen_ms),
                              time.process_time(), process_cpu_s(worker_pid))  # fmt: skip
            profiler = start_profile(profile)
        timed_s = None if timed is None else now - timed.at
        if timed_s is not None and timed_s >= seconds:
            break
        if switch and timed_s is not None and timed_s >= seconds / 2:
            window._switch_prompt(switch)
            switch = None
        wanted = keys.keys_at(now - began, timed_s)
        if wanted != held:
            post_keys(held, wanted)
            held = wanted
        before = window.frames_shown
        if not window.step():
            raise RuntimeError("the window closed during the measurement")
        if timed is not None and window.frames_shown > before:
            shown["+".join(window._shown.record["action"]["keys"]) or "none"] += 1
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    return timed, dict(shown)


def start_profile(path: str | None):
    """A running cProfile.Profile when `path` is given (--profile), else None."""
    if not path:
        return None
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def timed_numbers(window, timed: TimedFrom, worker_pid: int) -> dict:
    """What the timed part measured: rates, chunk times, key to frame and CPU per wall second."""
    import numpy as np

    from controls.pacing import monotonic, percentiles_ms

    elapsed = monotonic() - timed.at
    worker_now = process_cpu_s(worker_pid)
    latency, gen_ms = window.latency.all_samples_ms[timed.latency:], window.gen_ms[timed.gen:]
    chunk_frames = window.link.info["chunk_frames"]
    return {
        "seconds": round(elapsed, 2),
        "shown_fps": round((window.frames_shown - timed.shown) / elapsed, 2),
        "world_fps": round(len(gen_ms) * chunk_frames / elapsed, 2),
        "capacity_fps": round(chunk_frames * 1000.0 / float(np.median(gen_ms)), 2) if gen_ms else None,
        "gen_ms_p50": round(float(np.median(gen_ms)), 2) if gen_ms else None,
        "key_to_frame_ms": percentiles_ms(latency), "key_changes": len(latency),
        "chunk_ms": round(1000.0 * chunk_frames / window.link.info["fps"], 1),
        "window_cpu": round((time.process_time() - timed.window_cpu_s) / elapsed, 3),
        "worker_cpu": None if worker_now is None or timed.worker_cpu_s is None
        else round((worker_now - timed.worker_cpu_s) / elapsed, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m controls.harness.window_bench", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=30.0, help="timed seconds (after --warmup)")
    p.add_argument("--warmup", type=float, default=5.0, help="untimed seconds first")
    p.add_argument("--backend", default="generated", choices=("generated", "engine"))
    p.add_argument("--checkpoint", help="generated world (default: the bundled one)")
    p.add_argument("--threads", type=int, default=1, help="the worker's model threads (OMP_NUM_THREADS)")
    p.add_argument("--wait-policy", default="default", choices=WAIT_POLICIES,
                   help="OpenMP's wait policy in the worker (OMP_WAIT_POLICY; default: the library's own)")
    p.add_argument("--key-every", type=float, help="seconds between key changes of the key cycle (default 0.7)")
    p.add_argument("--hold", metavar="KEY[,KEY]", help="hold these keys for the whole run instead of the key cycle "
                   "(pygame key names as in assets/keymap.json: w, a, left, space, ...)")
    p.add_argument("--keys-script", metavar="SCRIPT", help="hold keys from given times on instead of the key cycle: "
                   "TIME:KEYS entries separated by ';', times in seconds into the timed part, e.g. \"0:w;2.5:a,w;5:\" "
                   "(5: releases them); @FILE reads one entry a line")
    p.add_argument("--lookahead", type=int, choices=(1, 2), help="chunks ahead of the screen (default: play's)")
    p.add_argument("--switch", metavar="PROMPT", help="apply this prompt halfway through the timed part")
    p.add_argument("--screenshot", metavar="PNG", help="save the window (HUD included) at the end")
    p.add_argument("--profile", metavar="PSTATS", help="write the window process's cProfile statistics here")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.threads < 1 or (args.key_every is not None and args.key_every <= 0):
        p.error("--seconds, --threads and --key-every must be positive")
    try:
        keys = key_plan(args)
    except KeysError as exc:
        p.error(str(exc))
    result = measure(args.seconds, args.backend, args.threads, args.wait_policy, keys, args.warmup,
                     args.checkpoint, args.switch, args.screenshot, args.lookahead, args.profile)  # fmt: skip
    from model.runtime.generated_backend import compute_facts

    result.update({k: v for k, v in compute_facts().items() if k != "threads"})  # the worker's are above
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = json.dumps(result)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
