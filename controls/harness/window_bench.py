"""The window as a player gets it: the real play window, a real worker process and keys pressed on a clock.

    python -m controls.harness.window_bench --seconds 30 [--backend generated] [--threads 2]
        [--wait-policy passive] [--out F.json]

`bench` times the model alone; this times the whole loop a player runs: a worker process started
the way `play` starts its own (`--threads` model threads, OpenMP's `--wait-policy`), the
`PlayWindow` under SDL's dummy video driver (no display needed; drawing, the HUD and scaling to
512x512 all happen), and a key changed every `--key-every` seconds (forward, turn left, look up,
nothing, ...), posted as pygame events so the window's own input path measures key to frame.
The JSON: `shown_fps` (frames the window showed per second), `world_fps` (frames the worker
delivered per second), `capacity_fps` (frames per second of the worker's own chunk times: what the
model could make with nothing waiting on it), key-to-frame percentiles, `window_cpu` and
`worker_cpu` (CPU seconds per wall second of each process in the timed part: what the window takes
from the cores the model runs on), and what ran (threads, wait policy, CPU flags as `compute_facts`
reports them). `--profile F` also writes the window process's cProfile statistics (`pstats`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

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


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (Linux /proc), or None where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def measure(seconds: float, backend: str, threads: int, wait_policy: str, key_every_s: float = 0.7,
            warmup_s: float = 5.0, checkpoint: str | None = None, switch: str | None = None,
            screenshot: str | None = None, lookahead: int | None = None,
            profile: str | None = None) -> dict:  # fmt: skip
    """Run the window for warmup_s + seconds against a fresh local worker; the numbers of the timed part.
    `switch`: a prompt applied (as the prompt box applies it) halfway through the timed part;
    `screenshot`: a PNG of the window as it is at the end, HUD included; `lookahead`: chunks the
    worker may run ahead of the screen (None: play's default, 2 for the generated world, 1 for the engine)."""
    import numpy as np
    import pygame

    from controls.keymap import load_keymap
    from controls.link import WorldLink
    from controls.pacing import monotonic, percentiles_ms
    from controls.window import PlayWindow, WindowConfig
    from world.server.client import WorldClient
    from world.server.process import start_worker_process, stop_worker_process

    args = ["--log-level", "WARNING"] + (["--checkpoint", checkpoint] if checkpoint else [])
    proc, endpoint = start_worker_process(extra_args=args, env=worker_environment(threads, wait_policy))
    pygame.display.init()
    pygame.font.init()
    client = WorldClient(endpoint, timeout_s=120)
    link = None
    try:
        if lookahead is None:
            lookahead = 2 if backend == "generated" else 1
        client.open(backend, "green hills at noon", seed=1, lookahead=lookahead)
        link = WorldLink(client)
        window = PlayWindow(link, load_keymap(None), WindowConfig(sound=False, endpoint=endpoint))
        began = monotonic()
        held = ""
        timed_from = None
        next_key = began + key_every_s
        profiler = None
        while True:
            now = monotonic()
            if timed_from is None and now - began >= warmup_s:  # the model is warm, the buffers full
                timed_from = (now, window.frames_shown, len(window.latency.all_samples_ms), len(window.gen_ms))
                cpu_from = (time.process_time(), process_cpu_s(proc.pid))
                if profile:
                    import cProfile

                    profiler = cProfile.Profile()
                    profiler.enable()
            if timed_from is not None and now - timed_from[0] >= seconds:
                break
            if switch and timed_from is not None and now - timed_from[0] >= seconds / 2:
                window._switch_prompt(switch)
                switch = None
            if now >= next_key:
                k = KEY_CYCLE[int((now - began) / key_every_s) % len(KEY_CYCLE)]
                for key, kind in ((held, pygame.KEYUP), (k, pygame.KEYDOWN)):
                    if key:
                        pygame.event.post(pygame.event.Event(kind, key=pygame.key.key_code(key), mod=0,
                                                             unicode="", scancode=0))  # fmt: skip
                held, next_key = k, next_key + key_every_s
            if not window.step():
                raise RuntimeError("the window closed during the measurement")
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        t0, shown0, lat0, gen0 = timed_from
        elapsed = monotonic() - t0
        worker_now = process_cpu_s(proc.pid)
        latency = window.latency.all_samples_ms[lat0:]
        gen_ms = window.gen_ms[gen0:]
        chunk_frames = link.info["chunk_frames"]
        result = {
            "backend": backend, "threads": threads, "wait_policy": wait_policy, "seconds": round(elapsed, 2),
            "shown_fps": round((window.frames_shown - shown0) / elapsed, 2),
            "world_fps": round(len(gen_ms) * chunk_frames / elapsed, 2),
            "capacity_fps": round(chunk_frames * 1000.0 / float(np.median(gen_ms)), 2) if gen_ms else None,
            "gen_ms_p50": round(float(np.median(gen_ms)), 2) if gen_ms else None,
            "key_to_frame_ms": percentiles_ms(latency), "key_changes": len(latency),
            "chunk_ms": round(1000.0 * chunk_frames / link.info["fps"], 1), "lookahead": lookahead,
            "window_cpu": round((time.process_time() - cpu_from[0]) / elapsed, 3),
            "worker_cpu": None if worker_now is None or cpu_from[1] is None
            else round((worker_now - cpu_from[1]) / elapsed, 3),
        }
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m controls.harness.window_bench", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=30.0, help="timed seconds (after --warmup)")
    p.add_argument("--warmup", type=float, default=5.0, help="untimed seconds first")
    p.add_argument("--backend", default="generated", choices=("generated", "engine"))
    p.add_argument("--checkpoint", help="generated world (default: the bundled one)")
    p.add_argument("--threads", type=int, default=1, help="the worker's model threads (OMP_NUM_THREADS)")
    p.add_argument("--wait-policy", default="default", choices=WAIT_POLICIES,
                   help="OpenMP's wait policy in the worker (OMP_WAIT_POLICY; default: the library's own)")
    p.add_argument("--key-every", type=float, default=0.7, help="seconds between key changes")
    p.add_argument("--lookahead", type=int, choices=(1, 2), help="chunks ahead of the screen (default: play's)")
    p.add_argument("--switch", metavar="PROMPT", help="apply this prompt halfway through the timed part")
    p.add_argument("--screenshot", metavar="PNG", help="save the window (HUD included) at the end")
    p.add_argument("--profile", metavar="PSTATS", help="write the window process's cProfile statistics here")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.threads < 1 or args.key_every <= 0:
        p.error("--seconds, --threads and --key-every must be positive")
    result = measure(args.seconds, args.backend, args.threads, args.wait_policy, args.key_every, args.warmup,
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
