"""Worker processes: a parent starts one and reads its endpoint (`start_worker_process`), stops it
(`stop_worker_process`); the worker stops when its parent is gone (`watch_parent`, `serve
--exit-with-parent`). `play`, the load harnesses and the tests start their workers this way.
"""

from __future__ import annotations

import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger("world.worker")


def watch_parent(stop: threading.Event, grace_s: float = 1.0) -> None:
    """Stop when stdin reaches end of file, and exit `grace_s` later whatever is still running.

    The parent that started this worker (`play`, world.server.process.start_worker_process) holds the
    other end of stdin: when it dies, by any signal including SIGKILL, the kernel closes it and
    this read returns. A pipe, not PR_SET_PDEATHSIG: that fires when the parent *thread* that
    forked ends, and `play` restarts its worker from a short-lived reconnect thread."""

    def watch() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        log.info("the parent process is gone: stopping")
        stop.set()
        time.sleep(grace_s)
        os._exit(0)  # a chunk or a build that outlives the grace does not keep an orphan alive

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class WorkerStartError(RuntimeError):
    """The worker subprocess exited or stayed silent before printing READY."""


REPO_ROOT = Path(__file__).resolve().parents[2]


def start_worker_process(
    bind: str = "tcp://127.0.0.1:0",
    extra_args: Sequence[str] = (),
    timeout_s: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """Launch `python run_world.py serve --bind BIND --exit-with-parent ...` and wait (bounded) for
    its READY line.

    Returns (process, endpoint). stderr is inherited so the worker's log shows up with ours; `env`
    replaces the environment it starts with (default: ours). The worker's stdin is a pipe only
    this process holds: however this process dies, the worker sees end of file and exits.
    """
    cmd = [sys.executable, str(REPO_ROOT / "run_world.py"), "serve", "--bind", bind, "--exit-with-parent",
           *extra_args]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        endpoint = _wait_ready(proc, timeout_s)
    except BaseException:
        stop_worker_process(proc)
        raise
    # Keep draining stdout so a chatty worker can never block on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, endpoint


def _wait_ready(proc: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(timeout=min(left, 0.5)):
                continue
            line = proc.stdout.readline()
            if line.startswith("READY "):
                return line.split(None, 1)[1].strip()
            if not line and proc.poll() is not None:
                raise WorkerStartError(f"worker exited with code {proc.returncode} before READY")
    raise WorkerStartError(f"worker printed no READY line within {timeout_s} s")


def stop_worker_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """SIGTERM, wait up to timeout_s, then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
    return proc.returncode
