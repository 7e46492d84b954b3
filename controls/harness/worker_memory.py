"""Memory of the real worker process over a long stream (target: peak <= 1 GiB, flat over time).

    python -m controls.harness.worker_memory                        # default world, 10 minutes
    python -m controls.harness.worker_memory --backend engine --minutes 0.5 --prompt-switch-every 5
    python -m controls.harness.worker_memory --backend generated --checkpoint DIR --sampler diagonal \\
        --chunks 2000 --threads 1 --json

A worker subprocess is started exactly as `play` starts one (world.server.process.start_worker_process),
one session is opened through the real client (world.server.client.WorldClient) and driven by the
headless client's flow control (controls.headless.HeadlessRun) with the scripted player's
actions, as fast as the worker produces chunks. Every `--prompt-switch-every` wall-clock seconds
the prompt changes to the next of world.procedural.themes.EXAMPLE_PROMPTS: a switch rebuilds the
cross-attention caches, so a leak there shows up as steps at the switch markers.

A background thread reads the worker's VmRSS and VmHWM from /proc/<pid>/status every
`--sample-every` seconds, from just after the worker is ready (so the backend load is in the
plot) to the end of the stream. Only the worker process itself is measured, and only its host
memory (GPU memory of a CUDA device is not in RSS); Linux only.

Reported (JSON summary, plot, final lines on stdout):
- peak RSS: the worker's VmHWM at the end, the kernel's own high-water mark since the process
  started (sampled RSS can miss a short spike between samples; VmHWM cannot);
- warm-up: the first 10% of the stream or its first 30 s, whichever is shorter, measured from
  the moment the session is open (model loaded, first chunk generated);
- RSS after warm-up (the first sample at or after the end of the warm-up) and at the end of the
  stream (the last sample, taken while the session is still open);
- slope: least-squares fit of RSS against time over the post-warm-up samples, MiB per minute;
- flat: |RSS at end - RSS after warm-up| <= max(5% of RSS after warm-up, 20 MiB). An absolute
  floor because a few MiB of allocator noise on a small process is not growth; a relative bound
  because a large process legitimately wobbles more;
- peak_ok: peak <= 1024 MiB.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from controls.harness.common import worker_env
from controls.harness.memory import (
    FLAT_DEFINITION,
    MemorySampler,
    Sample,
    memory_trend,
)
from controls.headless import HeadlessConfig, HeadlessError, HeadlessRun, ScriptStep
from model.common.runlog import agg_pyplot
from world.interrupts import sigterm_as_keyboard_interrupt
from world.procedural.scripted_player import ScriptedPlayer
from world.procedural.themes import EXAMPLE_PROMPTS
from world.server.client import ChunkEvent, WorldClient, WorldConnectionError, WorldRequestError
from world.server.process import WorkerStartError, start_worker_process, stop_worker_process

MIB = 1024 * 1024
PEAK_LIMIT_MIB = 1024.0  # the target: worker peak memory <= 1 GiB
DEFAULT_MINUTES = 10.0
DEFAULT_OUT = Path("docs/reports/worker-memory.json")
DEFAULT_PNG = Path("docs/images/worker_memory.png")
# BLAS/OpenMP read these once, at load time: a thread count must be in the worker's environment.
PROC = Path("/proc")
# A chunk limit and no time limit: the frames target that stands for "until the chunks are done".
UNBOUNDED_FRAMES = 10**12


class MeasurementError(RuntimeError):
    """The measurement cannot run (no /proc, bad options or checkpoint, worker did not start)."""


# ----------------------------------------------------------------------------- configuration


@dataclass
class MemoryConfig:
    backend: str = "engine"
    checkpoint: str | None = None  # generated backend; passed on the worker's command line
    sampler: str | None = None  # generated backend; a session option
    device: str | None = None  # generated backend; None: the worker's default
    minutes: float | None = None  # stream length in wall-clock minutes ...
    chunks: int | None = None  # ... or in chunks; neither: DEFAULT_MINUTES
    prompt_switch_every_s: float | None = None  # None: one prompt for the whole stream
    sample_every_s: float = 1.0
    threads: int = 0  # OMP/MKL/OpenBLAS threads of the worker; 0: inherit our environment
    seed: int = 0
    prompts: tuple[str, ...] = EXAMPLE_PROMPTS
    out: Path | None = DEFAULT_OUT
    png: Path | None = DEFAULT_PNG
    progress_every_s: float = 10.0
    worker_start_timeout_s: float = 60.0
    # Opening a generated session loads the model and generates chunk 0 before it answers.
    open_timeout_s: float = 300.0

    def check(self) -> None:
        if self.backend not in ("engine", "generated"):
            raise MeasurementError(f"unknown backend {self.backend!r}; use engine or generated")
        if self.backend != "generated":
            given = [n for n, v in (("checkpoint", self.checkpoint), ("sampler", self.sampler),
                                    ("device", self.device)) if v is not None]  # fmt: skip
            if given:
                raise MeasurementError(f"{', '.join(given)} apply to the generated backend only")
        if self.checkpoint is not None and not Path(self.checkpoint).is_dir():
            raise MeasurementError(f"checkpoint directory {self.checkpoint} does not exist")
        if self.minutes is not None and self.chunks is not None:
            raise MeasurementError("give --minutes or --chunks, not both")
        if self.minutes is not None and not self.minutes > 0:
            raise MeasurementError(f"minutes must be > 0, got {self.minutes}")
        if self.chunks is not None and self.chunks < 1:
            raise MeasurementError(f"chunks must be >= 1, got {self.chunks}")
        if not self.sample_every_s > 0:
            raise MeasurementError(f"sample_every_s must be > 0, got {self.sample_every_s}")
        if self.prompt_switch_every_s is not None and not self.prompt_switch_every_s > 0:
            raise MeasurementError(f"prompt_switch_every_s must be > 0, got {self.prompt_switch_every_s}")
        if not self.prompts:
            raise MeasurementError("no prompts to stream")
        if self.threads < 0:
            raise MeasurementError(f"threads must be >= 0, got {self.threads}")

    @property
    def deadline_s(self) -> float | None:
        """Stream length in seconds, or None when the run is bounded by chunks."""
        if self.chunks is not None:
            return None
        return 60.0 * (self.minutes if self.minutes is not None else DEFAULT_MINUTES)

    def worker_args(self) -> list[str]:
        args = ["--log-level", "WARNING"]  # our progress lines, not the worker's per-session INFO
        for flag, value in (("--checkpoint", self.checkpoint), ("--device", self.device)):
            if value is not None:
                args += [flag, value]
        return args

    def session_options(self) -> dict:
        return {"sampler": self.sampler} if self.sampler is not None else {}


# ----------------------------------------------------------------------------- /proc sampling


def require_proc() -> None:
    """The measurement reads /proc/<pid>/status: Linux only."""
    if not (PROC / "self" / "status").is_file():
        raise MeasurementError(
            f"{PROC}/self/status not found (platform {sys.platform}): worker_memory reads the worker's "
            "VmRSS/VmHWM from /proc/<pid>/status and needs Linux with /proc mounted"
        )


# ----------------------------------------------------------------------------- the stream


@dataclass(frozen=True)
class PromptSwitch:
    t_s: float  # when the first chunk under the new prompt arrived (sampler clock)
    prompt: str


def scripted_steps(
    seed: int, fps: float, prompts: Sequence[str], switch_every_s: float | None, clock: Callable[[], float]
) -> Iterator[ScriptStep]:
    """The scripted player's actions; every `switch_every_s` of wall-clock time (read when a
    chunk's actions are drawn) the next prompt of `prompts`, cycling. Wall-clock, not world time:
    the stream runs as fast as the worker goes, and memory is plotted against wall time."""
    player = ScriptedPlayer(seed, switch_every_s=None, fps=fps)
    k, last = 0, clock()
    while True:
        prompt = None
        if switch_every_s is not None and clock() - last >= switch_every_s:
            k, last = k + 1, clock()
            prompt = prompts[k % len(prompts)]
        yield ScriptStep(player.next_action(), prompt)


class MemoryRun(HeadlessRun):
    """HeadlessRun (its flow control and prompt sequencing, unchanged) that also counts chunks,
    notes when a prompt switch reaches the frames, prints progress and stops at a deadline."""

    def __init__(
        self, client: WorldClient, info: dict, config: HeadlessConfig, memory: MemoryConfig, sampler: MemorySampler
    ) -> None:
        super().__init__(client, info, config)
        self.memory = memory
        self.sampler = sampler
        self.steps = scripted_steps(memory.seed, info["fps"], memory.prompts, memory.prompt_switch_every_s,
                                    time.monotonic)  # fmt: skip
        self.chunks = 0
        self.switches: list[PromptSwitch] = []
        self.prompt: str | None = config.prompt
        self.started_s = sampler.now()
        deadline = memory.deadline_s
        self.deadline_s = None if deadline is None else self.started_s + deadline
        self._last_progress = self.started_s

    def on_poll(self, chunks: list[ChunkEvent]) -> None:
        if self.sampler.gone:  # sooner and clearer than the client's heartbeat noticing
            raise HeadlessError("the worker process is gone")
        now = self.sampler.now()
        if now - self._last_progress >= self.memory.progress_every_s:
            self._last_progress = now
            self._progress(now)
        if self.deadline_s is not None and now >= self.deadline_s and not self.finished:
            # Ends HeadlessRun's loop; the chunks of this poll still reach the warm-up in `_prime`,
            # which waits for them and must not spin forever.
            self.finish_now()

    def on_chunk(self, chunk: ChunkEvent) -> None:
        self.chunks += 1
        prompt = chunk.records[-1].get("prompt") if chunk.records else None
        if prompt is not None and prompt != self.prompt:
            self.switches.append(PromptSwitch(round(self.sampler.now(), 3), prompt))
            self.prompt = prompt

    def _progress(self, now: float) -> None:
        s = self.sampler.latest()
        rss = f"RSS {s.rss_mib:.1f} MiB (peak {s.hwm_mib:.1f})" if s else "RSS -"
        elapsed = now - self.started_s
        total = f"/{self.deadline_s - self.started_s:.0f}" if self.deadline_s is not None else ""
        print(f"worker_memory: {elapsed:.0f}{total} s, {self.chunks} chunks, {self.done} frames, {rss}, "
              f"{len(self.switches)} prompt switches", file=sys.stderr, flush=True)  # fmt: skip


# ----------------------------------------------------------------------------- the measurement


@dataclass
class MemorySummary:
    backend: str
    checkpoint: str | None
    sampler: str | None
    threads: int
    worker_pid: int
    description: str
    chunk_frames: int
    height: int
    width: int
    stream_start_s: float  # on the samples' clock (0 = worker ready)
    duration_s: float
    chunks: int
    frames: int
    fps: float
    gen_ms_p50: float | None
    prompt_switch_every_s: float | None
    prompt_switches: int
    sample_every_s: float
    samples: int
    peak_rss_mib: float  # VmHWM: the worker's peak since it started, backend load included
    max_sampled_rss_mib: float
    rss_start_mib: float
    warmup_s: float
    rss_after_warmup_mib: float
    rss_end_mib: float
    growth_mib: float
    slope_mib_per_min: float | None
    post_warmup_samples: int
    peak_limit_mib: float
    peak_ok: bool
    flat_tolerance_mib: float
    flat: bool
    flat_definition: str = FLAT_DEFINITION
    interrupted: bool = False
    error: str | None = None  # the stream ended early (worker died, session closed)
    worker_exit_code: int | None = None
    json_path: str | None = None
    png_path: str | None = None


@dataclass
class MemoryReport:
    summary: MemorySummary
    samples: list[Sample]
    switches: list[PromptSwitch]
    config: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "summary": asdict(self.summary),
            "config": self.config,
            "prompt_switches": [asdict(s) for s in self.switches],
            "samples": [asdict(s) for s in self.samples],
        }


def measure(config: MemoryConfig) -> MemoryReport:
    """Start a worker, stream through it while sampling its memory, stop it; returns the report
    (files are written by `write_report`). Raises MeasurementError when nothing can be measured."""
    config.check()
    require_proc()
    try:
        proc, endpoint = start_worker_process(extra_args=config.worker_args(), timeout_s=config.worker_start_timeout_s,
                                              env=worker_env(config.threads))  # fmt: skip
    except WorkerStartError as exc:
        raise MeasurementError(f"the worker did not start: {exc}") from None
    run: MemoryRun | None = None
    sampler = MemorySampler(proc.pid, config.sample_every_s, lambda: run.chunks if run is not None else 0)
    sampler.start()
    client = WorldClient(endpoint, timeout_s=config.open_timeout_s)
    interrupted, error = False, None
    try:
        info = _open(client, config, proc)
        frames = config.chunks * info["chunk_frames"] if config.chunks is not None else UNBOUNDED_FRAMES
        headless = HeadlessConfig(frames=frames, seed=config.seed, prompt=config.prompts[0],
                                  options=config.session_options())  # fmt: skip
        run = MemoryRun(client, info, headless, config, sampler)
        try:
            run.run()
        except KeyboardInterrupt:
            interrupted = True  # keep what was measured: a long run's partial curve still counts
        except HeadlessError as exc:
            error = str(exc)
        ended_s = sampler.now()
        sampler.stop()  # the last sample is taken while the session is still open
    finally:
        sampler.stop()
        client.close()
        exit_code = stop_worker_process(proc)
    if error is not None and sampler.gone:
        killed = " (SIGKILL: out of memory?)" if exit_code == -signal.SIGKILL else ""
        error = f"the worker exited with code {exit_code} during the stream{killed}"
    return _report(config, run, info, sampler, ended_s, proc.pid, interrupted, error, exit_code)


def _open(client: WorldClient, config: MemoryConfig, proc) -> dict:
    try:
        return client.open(config.backend, config.prompts[0], config.seed, config.session_options())
    except WorldRequestError as exc:
        what = f" with checkpoint {config.checkpoint}" if config.checkpoint else ""
        raise MeasurementError(f"the worker could not open a {config.backend} session{what}: {exc.message}") from None
    except WorldConnectionError as exc:
        state = f"exited with code {proc.poll()}" if proc.poll() is not None else "is silent"
        raise MeasurementError(f"the worker {state}: {exc}") from None


def _report(
    config: MemoryConfig, run: MemoryRun, info: dict, sampler: MemorySampler, ended_s: float, pid: int,
    interrupted: bool, error: str | None, exit_code: int | None,
) -> MemoryReport:  # fmt: skip
    samples = list(sampler.samples)
    if not samples:
        raise MeasurementError(f"no memory sample of worker {pid} was taken (it exited with code {exit_code})")
    times = [s.t_s for s in samples]
    trend = memory_trend(times, [s.rss_mib for s in samples], run.started_s, max(ended_s, times[-1]))
    duration = ended_s - run.started_s
    peak = max(s.hwm_mib for s in samples)
    summary = MemorySummary(
        backend=config.backend, checkpoint=config.checkpoint, sampler=config.sampler, threads=config.threads,
        worker_pid=pid, description=info.get("description", ""), chunk_frames=info["chunk_frames"],
        height=info["height"], width=info["width"], stream_start_s=round(run.started_s, 3),
        duration_s=round(duration, 3), chunks=run.chunks, frames=run.done,
        fps=round(run.done / duration, 2) if duration > 0 else 0.0,
        gen_ms_p50=round(float(np.median(run.gen_ms)), 3) if run.gen_ms else None,
        prompt_switch_every_s=config.prompt_switch_every_s, prompt_switches=len(run.switches),
        sample_every_s=config.sample_every_s, samples=len(samples), peak_rss_mib=peak,
        max_sampled_rss_mib=max(s.rss_mib for s in samples), rss_start_mib=trend.rss_start_mib,
        warmup_s=trend.warmup_s, rss_after_warmup_mib=trend.rss_after_warmup_mib, rss_end_mib=trend.rss_end_mib,
        growth_mib=trend.growth_mib, slope_mib_per_min=trend.slope_mib_per_min,
        post_warmup_samples=trend.post_warmup_samples, peak_limit_mib=PEAK_LIMIT_MIB,
        peak_ok=peak <= PEAK_LIMIT_MIB, flat_tolerance_mib=trend.flat_tolerance_mib, flat=trend.flat,
        interrupted=interrupted, error=error, worker_exit_code=exit_code,
    )  # fmt: skip
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    return MemoryReport(summary, samples, list(run.switches), cfg)


# ----------------------------------------------------------------------------- output


def write_report(report: MemoryReport, out: Path | None, png: Path | None) -> None:
    """JSON (summary, config, switches, every sample) and the plot; records their paths."""
    if png is not None:
        plot(report, png)
        report.summary.png_path = str(png)
    if out is not None:
        report.summary.json_path = str(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.to_json(), indent=1) + "\n")


def plot(report: MemoryReport, path: Path) -> Path:
    plt = agg_pyplot()

    s = report.summary
    t = [x.t_s for x in report.samples]
    rss, hwm = [x.rss_mib for x in report.samples], [x.hwm_mib for x in report.samples]
    # Top: against the 1 GiB budget. Bottom: the same curve on its own scale, where a slow leak of
    # a few MiB per minute is visible, with the band that counts as flat.
    fig, (top, zoom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=(1, 1.4))
    for ax in (top, zoom):
        ax.plot(t, rss, lw=1.2, label="VmRSS")
        ax.plot(t, hwm, lw=0.8, ls="--", label="VmHWM (peak so far)")
        ax.axvspan(s.stream_start_s, s.stream_start_s + s.warmup_s, color="grey", alpha=0.15, label="warm-up")
        for k, sw in enumerate(report.switches):
            ax.axvline(sw.t_s, color="purple", lw=0.6, ls=":", label="prompt switch" if k == 0 else None)
        ax.set_ylabel("MiB")
    top.axhline(PEAK_LIMIT_MIB, color="red", lw=1, label=f"limit {PEAK_LIMIT_MIB:.0f} MiB")
    top.set_ylim(0, max(PEAK_LIMIT_MIB, s.peak_rss_mib) * 1.08)
    top.legend(fontsize=7, loc="center right")
    lo, hi = s.rss_after_warmup_mib - s.flat_tolerance_mib, s.rss_after_warmup_mib + s.flat_tolerance_mib
    zoom.axhspan(lo, hi, color="green", alpha=0.08, label="flat band (after warm-up +- tolerance)")
    zoom.set_ylim(min(lo, *rss) - 5, max(hi, *hwm) + 5)
    zoom.set_xlabel("seconds since the worker was ready")
    zoom.legend(fontsize=7, loc="lower right")
    verdict = f"peak {s.peak_rss_mib:.0f} MiB ({'ok' if s.peak_ok else 'OVER'}), {'flat' if s.flat else 'NOT flat'}"
    slope = "" if s.slope_mib_per_min is None else f", {s.slope_mib_per_min:+.2f} MiB/min"
    top.set_title(f"worker memory: {s.backend}, {s.chunks} chunks at {s.fps:.1f} FPS; {verdict}{slope}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def human_summary(s: MemorySummary) -> str:
    slope = "-" if s.slope_mib_per_min is None else f"{s.slope_mib_per_min:+.2f} MiB/min"
    lines = [
        f"worker memory: {s.backend} ({s.description}), {s.duration_s:.1f} s, {s.chunks} chunks, "
        f"{s.frames} frames, {s.fps:.1f} FPS, {s.prompt_switches} prompt switches, {s.samples} samples",
        f"  peak RSS (VmHWM) {s.peak_rss_mib:.1f} MiB <= {s.peak_limit_mib:.0f} MiB: {'yes' if s.peak_ok else 'NO'}",
        f"  RSS at stream start {s.rss_start_mib:.1f} MiB, after warm-up ({s.warmup_s:.1f} s) "
        f"{s.rss_after_warmup_mib:.1f} MiB, at end {s.rss_end_mib:.1f} MiB ({s.growth_mib:+.1f} MiB, "
        f"tolerance {s.flat_tolerance_mib:.1f}); slope {slope} over {s.post_warmup_samples} samples: "
        f"{'flat' if s.flat else 'NOT flat'}",
    ]
    if s.interrupted:
        lines.append("  interrupted: the numbers cover the stream up to Ctrl-C")
    if s.error:
        lines.append(f"  stream ended early: {s.error}")
    if s.json_path or s.png_path:
        lines.append(f"  wrote {', '.join(p for p in (s.json_path, s.png_path) if p)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("engine", "generated"), default=None,
                        help="world backend (default: the default world: generated once assets/default_world/ "
                        "exists or with --checkpoint, else engine)")  # fmt: skip
    parser.add_argument("--checkpoint", metavar="DIR", help="generated backend: world checkpoint (worker option)")
    parser.add_argument("--sampler", help="generated backend: sampler (teacher, uniform, diagonal)")
    parser.add_argument("--device", help="generated backend: device of the worker (cpu, cuda, auto)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help=f"stream this long (default {DEFAULT_MINUTES:g})")
    length.add_argument("--chunks", type=int, help="stream this many chunks")
    parser.add_argument("--prompt-switch-every", type=float, metavar="S", dest="prompt_switch_every",
                        help="switch to the next example prompt every S seconds (default: never)")  # fmt: skip
    parser.add_argument("--sample-every", type=float, default=1.0, metavar="S", help="seconds between samples")
    parser.add_argument("--seed", type=int, default=0, help="world and scripted-player seed")
    parser.add_argument("--threads", type=int, default=0,
                        help="OMP/MKL/OpenBLAS threads of the worker (0: inherit the environment)")  # fmt: skip
    parser.add_argument("--progress-every", type=float, default=10.0, metavar="S", help="seconds between progress")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON report ('' for none; default %(default)s)")
    parser.add_argument("--png", default=str(DEFAULT_PNG), help="plot ('' for none; default %(default)s)")
    parser.add_argument("--json", action="store_true", help="last stdout line: the summary as one JSON object")


def config_from_args(args: argparse.Namespace) -> MemoryConfig:
    backend = args.backend
    if backend is None:
        from controls.play import default_backend  # the same default world that `play` opens

        backend = "generated" if args.checkpoint else default_backend()
    return MemoryConfig(
        backend=backend, checkpoint=args.checkpoint, sampler=args.sampler, device=args.device,
        minutes=args.minutes, chunks=args.chunks, prompt_switch_every_s=args.prompt_switch_every,
        sample_every_s=args.sample_every, threads=args.threads, seed=args.seed,
        out=Path(args.out) if args.out else None, png=Path(args.png) if args.png else None,
        progress_every_s=args.progress_every,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Exit codes: 0 measured, 1 the stream ended early, 130 interrupted (in both cases the
    report of what was measured is still written), 2 nothing could be measured."""
    try:
        with sigterm_as_keyboard_interrupt():  # the worker is stopped and the partial report written
            config = config_from_args(args)
            report = measure(config)
            write_report(report, config.out, config.png)
    except MeasurementError as exc:
        print(f"worker_memory: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("worker_memory: interrupted", file=sys.stderr)
        return 130
    print(human_summary(report.summary), flush=True)
    if args.json:
        print(json.dumps(_finite(asdict(report.summary))), flush=True)
    return 130 if report.summary.interrupted else 1 if report.summary.error else 0


def _finite(summary: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controls.harness.worker_memory",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
