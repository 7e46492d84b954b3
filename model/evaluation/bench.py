"""`run_world.py bench`: how fast each sampler of one checkpoint generates, in one run.

    python run_world.py bench                                  # bundled world, every sampler
    python run_world.py bench --samplers uniform,diagonal --chunks 100 --json
    python run_world.py bench --samplers diagonal,diagonal:4-3-1,uniform:1   # schedules side by side
    python run_world.py bench --backend engine --json          # the engine's own row
    python run_world.py bench --sessions 1,2,4,8 --json        # several players on one worker

Per sampler: sustained FPS after warm-up (step_chunk returns decoded uint8 frames, so decoding
is included), first-frames latency (what a user waits for after open/reset, warm and cold),
per-chunk latency p50/p95, NFE per chunk, peak memory, and the generator's achieved GFLOP/s
against this machine's measured fp32 matmul GFLOP/s. FLOPs per chunk are counted, not estimated:
one extra chunk runs under torch's FlopCounterMode, which adds up the FLOPs of every matmul,
convolution and attention op dispatched (decoder included; elementwise ops are not counted, so
the fraction is a lower bound).

First frames: the worker's first chunk after open/reset is the backend's reset view when it has
one (`Backend.take_reset_chunk`: the generated world's chunk 0, which its reset already made), else
the first `step_chunk`. So `first_frames_ms` = reset alone for the generated world and reset + one
step_chunk for the engine; `reset_plus_step_ms` is always reset + one step_chunk (the old
definition: when the first action-driven chunk exists). `first_chunk_ms` and `cold_first_chunk_ms`
are kept for older readers and now hold the user-visible time (`first_frames_ms` and its cold
twin); before the reset view existed they were reset + step, i.e. today's `reset_plus_step_ms`.
`nfe_first_chunks` lists the first three chunks a user sees (reset view first, if any).
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from model.evaluation.report import write_report
from world.actions import Action
from world.backend import Backend, BackendError
from world.backends.registry import create_backend
from world.procedural.scripted_player import ScriptedPlayer

DEFAULT_PROMPT = "green hills at noon"


@dataclass
class SamplerRow:
    fps: float
    first_chunk_ms: float  # = first_frames_ms (kept for older readers; was reset + step, see the docstring)
    cold_first_chunk_ms: float  # the same on a freshly loaded backend (its very first reset)
    first_frames_ms: float  # reset until the user's first frames exist, after a warm-up run
    reset_plus_step_ms: float  # reset + one step_chunk (the first action-driven chunk), warm
    chunk_ms_p50: float
    chunk_ms_p95: float
    nfe_per_chunk: float  # mean over the timed (steady-state) chunks
    nfe_first_chunks: list[int]  # the first 3 chunks a user sees after reset (reset view first: diagonal 4, 3, 2)
    peak_mem_mb: float
    chunks: int
    gflop_per_chunk: float | None = None
    achieved_gflops: float | None = None
    matmul_fraction: float | None = None


# ----------------------------------------------------------------------------- machine


def matmul_gflops(device: str = "cpu", seconds: float = 1.0) -> float:
    """Measured fp32 torch matmul throughput: n x n products, best of a few timed batches."""
    import torch

    dev = torch.device(device)
    n = 4096 if dev.type == "cuda" else 512
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(8):
            a @ b
        _sync(dev)
        best = max(best, 8 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def _sync(device) -> None:
    import torch

    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- memory


def reset_peak_memory(device: str) -> None:
    """Start a new peak-memory window: VmHWM via /proc (Linux >= 4.0), CUDA peak stats."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere ru_maxrss is a whole-process peak; the first sampler's row is exact
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def read_status(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of process `pid` in MiB from /proc/<pid>/status; None once the process is gone
    (or without /proc)."""
    try:
        text = (Path("/proc") / str(pid) / "status").read_text()
    except OSError:  # FileNotFoundError, ProcessLookupError
        return None
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024.0  # kB
    if len(fields) < 2:
        return None  # a zombie has no memory lines: it is gone for our purposes
    return fields["VmRSS"], fields["VmHWM"]


def peak_memory_mb(device: str) -> float:
    """Peak host RSS since reset_peak_memory (or process start); CUDA: peak allocated."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    status = read_status(os.getpid())
    if status is not None:
        return status[1]
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


# ----------------------------------------------------------------------------- timing


def bench_actions(n_frames: int, seed: int = 0) -> list[Action]:
    player = ScriptedPlayer(seed, switch_every_s=None)
    return [player.next_action() for _ in range(n_frames)]


def chunk_actions(actions: list[Action], k: int, f: int) -> list[Action]:
    """The actions of chunk k (cycling through `actions`, whose length is a multiple of f)."""
    start = (k % (len(actions) // f)) * f
    return actions[start : start + f]


def time_chunks(backend: Backend, actions: list[Action], n: int, device: str, budget_s: float) -> tuple[list, list]:
    """Step n chunks (or until budget_s runs out, at least 3); (seconds per chunk, nfe per chunk)."""
    f = backend.info.chunk_frames
    secs, nfe = [], []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        result = backend.step_chunk(chunk_actions(actions, i, f))
        _sync(device)
        secs.append(time.perf_counter() - t0)
        nfe.append(result.nfe)
        if i >= 2 and time.perf_counter() - start > budget_s:
            break
    return secs, nfe


@dataclass(frozen=True)
class FirstChunk:
    first_frames_ms: float  # reset (+ the first step_chunk only when the backend has no reset view)
    reset_plus_step_ms: float  # reset + the first step_chunk
    nfe_first_chunks: list[int]  # the first 3 chunks a user sees: reset view (if any), then steps


def first_chunk_ms(backend: Backend, actions: list[Action], seed: int, prompt: str, device: str) -> FirstChunk:
    """Time one reset as the worker serves it: the user's first frames are the reset view when the
    backend has one (Backend.take_reset_chunk), else the first step_chunk; the step is timed in
    both cases (reset_plus_step_ms)."""
    f = backend.info.chunk_frames
    t0 = time.perf_counter()
    backend.reset(seed, prompt)
    view = backend.take_reset_chunk()
    _sync(device)
    t_reset = time.perf_counter()
    first = backend.step_chunk(actions[:f])
    _sync(device)
    t_step = time.perf_counter()
    shown = [view.nfe] if view is not None else []
    shown.append(first.nfe)
    k = 1
    while len(shown) < 3:
        shown.append(backend.step_chunk(chunk_actions(actions, k, f)).nfe)
        k += 1
    return FirstChunk(first_frames_ms=1000 * ((t_reset if view is not None else t_step) - t0),
                      reset_plus_step_ms=1000 * (t_step - t0), nfe_first_chunks=shown)  # fmt: skip


def count_flops(backend: Backend, actions: list[Action]) -> float | None:
    """FLOPs of one chunk (matmul/conv/attention ops) via torch's FlopCounterMode; None for numpy."""
    if backend.info.name == "engine":
        return None
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        backend.step_chunk(actions[: backend.info.chunk_frames])
    return float(counter.get_total_flops())


def bench_backend(backend: Backend, args: argparse.Namespace, device: str, gflops: float | None) -> SamplerRow:
    f = backend.info.chunk_frames
    actions = bench_actions(max(3, args.chunks + args.warmup) * f, args.seed)
    reset_peak_memory(device)
    cold = first_chunk_ms(backend, actions, args.seed, args.prompt, device)
    warm = first_chunk_ms(backend, actions, args.seed, args.prompt, device)
    time_chunks(backend, actions, args.warmup, device, budget_s=args.max_seconds)  # warm-up: cache full
    secs, nfe = time_chunks(backend, actions, args.chunks, device, budget_s=args.max_seconds)
    peak = peak_memory_mb(device)
    flops = count_flops(backend, actions)
    mean_s = float(np.mean(secs))
    row = SamplerRow(
        fps=f * len(secs) / float(np.sum(secs)), first_chunk_ms=warm.first_frames_ms,
        cold_first_chunk_ms=cold.first_frames_ms, first_frames_ms=warm.first_frames_ms,
        reset_plus_step_ms=warm.reset_plus_step_ms,
        chunk_ms_p50=1000 * float(np.percentile(secs, 50)), chunk_ms_p95=1000 * float(np.percentile(secs, 95)),
        nfe_per_chunk=float(np.mean(nfe)), nfe_first_chunks=warm.nfe_first_chunks, peak_mem_mb=peak,
        chunks=len(secs),
    )  # fmt: skip
    if flops is not None:
        row.gflop_per_chunk = flops / 1e9
        row.achieved_gflops = flops / mean_s / 1e9
        row.matmul_fraction = row.achieved_gflops / gflops if gflops else None
    return row


# ----------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="generated", choices=("generated", "engine"))
    parser.add_argument("--checkpoint", help="world checkpoint directory (default: the bundled one)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--samplers", help="comma-separated sampler names (default: every registered sampler); "
                        "NAME:STEPS picks a schedule or step count, e.g. diagonal:4-3-1,uniform:1")
    parser.add_argument("--chunks", type=int, default=60, help="timed chunks per sampler")
    parser.add_argument("--warmup", type=int, default=5, help="untimed chunks before timing (fills the cache)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=30.0,
        help="stop timing a sampler after this long (slow teachers), keeping >= 3 chunks",
    )
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--matmul-seconds", type=float, default=1.0, help="time spent measuring matmul GFLOP/s")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--sessions", metavar="N,N,...",
                        help="several players on one worker instead: rows for these session counts "
                        "(controls/harness/bench_sessions.py; --samplers then names one sampler)")
    parser.add_argument("--seconds", type=float, default=20.0, help="with --sessions: timed seconds per row")
    parser.add_argument("--max-batch", type=int, default=8, help="with --sessions: the worker's --max-batch")
    parser.add_argument("--connect", metavar="ENDPOINT", help="with --sessions: measure this running worker")
    parser.add_argument("--plot", metavar="PNG", help="with --sessions: plot this run (and --compare runs)")
    parser.add_argument("--label", help="with --plot: this run's name in the legend")
    parser.add_argument("--compare", action="append", metavar="LABEL=JSON",
                        help="with --plot: also draw an earlier --sessions run's JSON (repeatable)")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--json", action="store_true", help="last stdout line: one JSON object")


def sampler_names(args: argparse.Namespace) -> list[str]:
    if args.backend == "engine":
        return ["engine"]
    if args.samplers:
        return [s.strip() for s in args.samplers.split(",") if s.strip()]
    from model.diffusion.samplers import SAMPLERS

    return list(SAMPLERS)


def sampler_options(spec: str) -> dict:
    """A --samplers entry -> backend options: "diagonal" (the checkpoint's schedule), "diagonal:4-3-1"
    (that schedule), "uniform:1" or "teacher:8" (that many steps). ValueError for a malformed one."""
    name, _, variant = spec.partition(":")
    if not variant:
        return {"sampler": name}
    counts = variant.split("-")
    if not all(c.isdigit() for c in counts):
        raise ValueError(f"bench: sampler {spec!r}: after ':' give step counts such as diagonal:4-3-1 or uniform:1")
    if name == "diagonal":
        return {"sampler": name, "schedule": [int(c) for c in counts]}
    if len(counts) != 1:
        raise ValueError(f"bench: sampler {spec!r}: only the diagonal sampler takes a schedule; give one step count")
    return {"sampler": name, "steps": int(counts[0])}


def open_backend(args: argparse.Namespace, name: str) -> Backend:
    if args.backend == "engine":
        return create_backend("engine")
    options = {"device": args.device, **sampler_options(name)}
    if args.checkpoint:
        options["checkpoint"] = args.checkpoint
    return create_backend("generated", **options)


def ratios(rows: dict[str, SamplerRow]) -> dict[str, float]:
    """Throughput ratios fps(A) / fps(B) for every ordered pair of samplers."""
    return {f"{a}/{b}": rows[a].fps / rows[b].fps for a, b in itertools.permutations(rows, 2)}


def run(args: argparse.Namespace) -> int:
    from model.common.device import resolve_device, set_threads

    set_threads(args.threads)
    try:
        device = str(resolve_device(args.device))
    except RuntimeError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    gflops = matmul_gflops(device, args.matmul_seconds)
    rows: dict[str, SamplerRow] = {}
    for name in sampler_names(args):
        try:
            backend = open_backend(args, name)
        except (BackendError, ValueError) as e:
            print(f"bench: {e}", file=sys.stderr)
            return 2
        rows[name] = bench_backend(backend, args, device, gflops)
        backend.close()
        print(f"bench: {name}: {rows[name].fps:.1f} FPS, p50 {rows[name].chunk_ms_p50:.1f} ms/chunk", file=sys.stderr)
    report = {
        "device": device, "backend": args.backend, "checkpoint": args.checkpoint, "matmul_gflops": gflops,
        "threads": _threads(),
        "samplers": {k: asdict(v) for k, v in rows.items()}, "ratios": ratios(rows),
    }  # fmt: skip
    return write_report(report, table(report), args)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def table(report: dict) -> str:
    lines = [
        f"device {report['device']} ({report['threads']} threads), fp32 matmul {report['matmul_gflops']:.1f} GFLOP/s",
        "| sampler | FPS | first frames ms | reset+step ms | chunk ms p50 | p95 | NFE/chunk | peak MB | GFLOP/s "
        "| of matmul |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report["samplers"].items():
        ach = f"{r['achieved_gflops']:.1f}" if r["achieved_gflops"] is not None else "-"
        frac = f"{100 * r['matmul_fraction']:.0f}%" if r["matmul_fraction"] is not None else "-"
        lines.append(
            f"| {name} | {r['fps']:.1f} | {r['first_frames_ms']:.0f} | {r['reset_plus_step_ms']:.0f} | "
            f"{r['chunk_ms_p50']:.1f} | "
            f"{r['chunk_ms_p95']:.1f} | {r['nfe_per_chunk']:.2f} | {r['peak_mem_mb']:.0f} | {ach} | {frac} |"
        )
    lines += [f"ratio {k}: {v:.2f}x" for k, v in report["ratios"].items()]
    return "\n".join(lines)
