"""`run_world.py bench --sessions 1,2,4,8`: one worker, several players, measured as players see it.

    python run_world.py bench --sessions 1,2,4,8 --json                  # a worker started here
    python run_world.py bench --sessions 1,2,4,8 --max-batch 1           # the same, one chunk at a time
    python run_world.py bench --sessions 1,4 --connect tcp://HOST:PORT   # an already running worker

For each count n a real worker process (the `serve` command on loopback) gets n clients that open
generated sessions (the sampler of `--samplers`, default the checkpoint's own), hold `forward`, and
acknowledge every chunk at once; after `--warmup` chunks each, chunks are counted for `--seconds`.
One worker serves every row (sessions closed between rows, the model stays loaded), so the rows are
comparable. Per row:

    n                 sessions
    per_session_fps   frames per second one player gets (mean over sessions)
    aggregate_fps     frames per second of all sessions together
    p95_chunk_ms      95th percentile of the time between consecutive chunks of one session (what a
                      player waits for the next chunk; pooled over sessions)
    p95_gen_ms        95th percentile of the worker's own time per chunk (the batch's wall time)
    worker_rss_mib    the worker's resident memory at the end of the row (its status reply)
    open_ms           time of each session's open (request to reply), in opening order: the first
                      row's first open loads the model, later opens share it; an open also resets the
                      world (the engine's start view, encoded and written as context) and waits for a
                      batch the worker is making
    batch_sizes       how many chunks came from batches of each size

`backend_build_ms` times building two generated backends in the bench process as the worker does at
open (first: loading the model, second: sharing it), the part of an open that shared weights remove.
The JSON is `{"sessions": [rows], "backend_build_ms": [..], ...}`; the table goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from model.evaluation import bench
from model.evaluation.report import write_report
from world.actions import Action
from world.server.client import ChunkEvent, ErrorEvent, WorldClient

HOLD = Action(("forward",))


@dataclass
class SessionsRow:
    n: int
    per_session_fps: float
    aggregate_fps: float
    p95_chunk_ms: float
    p95_gen_ms: float
    worker_rss_mib: float | None
    open_ms: list[float]
    chunks: int
    seconds: float
    batch_sizes: dict[str, int] = field(default_factory=dict)


def parse_counts(text: str) -> list[int]:
    counts = [int(x) for x in text.split(",") if x.strip()]
    if not counts or min(counts) < 1:
        raise ValueError(f"--sessions wants positive counts such as 1,2,4,8, got {text!r}")
    return counts


def open_sessions(endpoint: str, n: int, args: argparse.Namespace) -> tuple[list[WorldClient], list[float]]:
    clients, open_ms = [], []
    options = {"sampler": args.samplers} if args.samplers else {}
    for k in range(n):
        client = WorldClient(endpoint, timeout_s=120.0)
        t0 = time.perf_counter()
        client.open(backend="generated", prompt=args.prompt, seed=args.seed + k, options=options)
        open_ms.append(1000 * (time.perf_counter() - t0))
        client.send_input(HOLD)
        clients.append(client)
    return clients, open_ms


def pump(clients: list[WorldClient], until, arrivals: list[list[float]] | None = None,
         events: list[ChunkEvent] | None = None) -> None:
    """Poll every client, acknowledging each chunk, until until() is true; record arrival times."""
    while not until():
        for k, client in enumerate(clients):
            for event in client.poll(1):
                if isinstance(event, ErrorEvent):
                    raise RuntimeError(f"session {k}: {event.code}: {event.message}")
                if isinstance(event, ChunkEvent):
                    client.ack(event.seq)
                    if arrivals is not None:
                        arrivals[k].append(time.perf_counter())
                        events.append(event)


def measure(endpoint: str, n: int, args: argparse.Namespace) -> SessionsRow:
    clients, open_ms = open_sessions(endpoint, n, args)
    try:
        warm = [[] for _ in clients]
        pump(clients, lambda: min(len(w) for w in warm) >= args.warmup, warm, [])
        arrivals: list[list[float]] = [[] for _ in clients]
        events: list[ChunkEvent] = []
        start = time.perf_counter()
        pump(clients, lambda: time.perf_counter() - start >= args.seconds, arrivals, events)
        elapsed = time.perf_counter() - start
        rss = clients[0].status().worker.get("rss_bytes")
    finally:
        for client in clients:
            client.close()
    frames = events[0].frames.shape[0] if events else 0
    gaps = [1000 * g for a in arrivals for g in np.diff(a)]
    sizes: dict[str, int] = {}
    for e in events:
        size = str(e.extra.get("batch", {}).get("size", 1))
        sizes[size] = sizes.get(size, 0) + 1
    aggregate = frames * len(events) / elapsed
    return SessionsRow(
        n=n, per_session_fps=aggregate / n, aggregate_fps=aggregate,
        p95_chunk_ms=float(np.percentile(gaps, 95)) if gaps else float("nan"),
        p95_gen_ms=float(np.percentile([e.gen_ms for e in events], 95)) if events else float("nan"),
        worker_rss_mib=rss / 2**20 if rss else None, open_ms=[round(x, 1) for x in open_ms],
        chunks=len(events), seconds=elapsed, batch_sizes=dict(sorted(sizes.items(), key=lambda kv: int(kv[0]))),
    )  # fmt: skip


def build_ms(args: argparse.Namespace) -> list[float]:
    """Times of building two generated backends in this process, as the worker does at open: the first
    loads the model, the second shares it (world/backends/model_cache.py). Reset not included."""
    from world.backends.registry import create_backend

    options = {"device": args.device, **({"checkpoint": args.checkpoint} if args.checkpoint else {})}
    times, backends = [], []
    for _ in range(2):
        t0 = time.perf_counter()
        backends.append(create_backend("generated", **options))
        times.append(round(1000 * (time.perf_counter() - t0), 2))
    for b in backends:
        b.close()
    return times


def worker_args(args: argparse.Namespace, most: int) -> list[str]:
    extra = ["--max-sessions", str(most), "--max-batch", str(args.max_batch), "--device", args.device,
             "--log-level", "WARNING"]  # fmt: skip
    return extra + (["--checkpoint", args.checkpoint] if args.checkpoint else [])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`run_world.py bench`: the sampler benchmark's options (model/evaluation/bench.py), --sessions included."""
    bench.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """`run_world.py bench`: with --sessions the players' view measured here, else the sampler benchmark."""
    return run_sessions(args) if args.sessions else bench.run(args)


def run_sessions(args: argparse.Namespace) -> int:
    from world.server.process import start_worker_process, stop_worker_process

    counts = parse_counts(args.sessions)
    proc = None
    endpoint = args.connect
    if endpoint is None:
        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        proc, endpoint = start_worker_process(extra_args=worker_args(args, max(counts)), timeout_s=120.0, env=env)
    rows = []
    try:
        for n in counts:
            rows.append(measure(endpoint, n, args))
            r = rows[-1]
            print(f"bench: {n} sessions: {r.aggregate_fps:.1f} FPS in all, p95 {r.p95_chunk_ms:.0f} ms/chunk",
                  file=sys.stderr)  # fmt: skip
    finally:
        if proc is not None:
            stop_worker_process(proc)
    report = {
        "worker": args.connect or "started here", "max_batch": None if args.connect else args.max_batch,
        "checkpoint": args.checkpoint, "sampler": args.samplers, "device": args.device, "threads": args.threads,
        "seconds": args.seconds, "sessions": [asdict(r) for r in rows],
        "backend_build_ms": build_ms(args),  # [first (loads the model), second (shares it)]
    }  # fmt: skip
    if args.plot:
        plot(compared(args, report), args.plot)
    build = report["backend_build_ms"]
    text = (f"{table(report)}\nbuilding a generated backend: {build[0]:.0f} ms loading the model, "
            f"{build[1]:.1f} ms sharing it")
    return write_report(report, text, args)


def plot(reports: dict[str, dict], path: str) -> None:
    """Aggregate FPS, p95 chunk interval and worker RSS against the session count, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    measures = (("aggregate_fps", "aggregate FPS"), ("p95_chunk_ms", "p95 chunk interval (ms)"),
                ("worker_rss_mib", "worker RSS (MiB)"))  # fmt: skip
    for label, report in reports.items():
        rows = report["sessions"]
        for ax, (key, title) in zip(axes, measures):
            ax.plot([r["n"] for r in rows], [r[key] or float("nan") for r in rows], marker="o", label=label)
            ax.set_title(title)
            ax.set_xlabel("sessions on one worker")
            ax.set_xscale("log", base=2)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compared(args: argparse.Namespace, report: dict) -> dict[str, dict]:
    """This run ("this run", or --label) plus every --compare LABEL=JSON, for the plot."""
    runs = {}
    for spec in args.compare or []:
        label, _, path = spec.partition("=")
        runs[label] = json.loads(Path(path).read_text())
    return {args.label or "this run": report, **runs}


def table(report: dict) -> str:
    rows = report["sessions"]
    base = rows[0]
    lines = [
        "| sessions | FPS per session | aggregate FPS | vs first row | p95 chunk ms | vs first row | worker RSS MiB "
        "| open ms (each session) | batch sizes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        rss = f"{r['worker_rss_mib']:.0f}" if r["worker_rss_mib"] else "-"
        lines.append(
            f"| {r['n']} | {r['per_session_fps']:.1f} | {r['aggregate_fps']:.1f} | "
            f"{r['aggregate_fps'] / base['aggregate_fps']:.2f}x | {r['p95_chunk_ms']:.0f} | "
            f"{r['p95_chunk_ms'] / base['p95_chunk_ms']:.2f}x | {rss} | "
            f"{', '.join(f'{x:.0f}' for x in r['open_ms'])} | {r['batch_sizes']} |"
        )
    return "\n".join(lines)
