"""The cheap scoreboard: the eval signals that need no reading networks, each beside its baseline.

    python -m model.evaluation.scoreboard --checkpoint runs/x/checkpoint --sampler uniform --threads 1 --json
    python -m model.evaluation.scoreboard --backend engine --json        # the ceiling row
    python -m model.evaluation.scoreboard --backend still --json         # the floor row
    python -m model.evaluation.scoreboard --checkpoint assets/teacher --sampler uniform --guidance 2 --guide actions

Runs only (docs/evaluation.md):
  - counterfactual accuracy and spread (4 contexts x 5 actions x 2 chunks), chance beside it;
  - teacher-forced PSNR per action class vs copy-last (2 contexts x 11 classes x 1 chunk);
  - fidelity per chunk (2 episodes x 10 chunks from an engine start) vs still.
About 1.5 minutes on one (shared) CPU thread for the bundled 8M-parameter world with the uniform
sampler, so it can compare training runs (ablations) and run periodically during a long training
run.

Deterministic: fixed seeds and actions, every world started from engine frames; on one device
with one thread count the same checkpoint gives the same numbers (only `seconds` and `timings_s`
vary). `--device` defaults to cpu for that reason (and to keep a training GPU free).
With --json the last stdout line is the whole result; --out FILE also writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from model.evaluation.eval_config import EVAL_PRESETS, EvalConfig
from model.evaluation.measure_counterfactual import measure_counterfactual
from model.evaluation.measure_fidelity import measure_fidelity
from model.evaluation.measure_teacher_forced import measure_teacher_forced
from model.evaluation.report import clean
from model.evaluation.worlds import Worlds

# The fields a scoreboard writes (besides run facts), in the order it prints them.
FIELDS = (
    "counterfactual_accuracy", "counterfactual_chance", "counterfactual_spread_ratio",
    "counterfactual_accuracy_per_action",
    "teacher_forced_psnr_mean", "teacher_forced_psnr_copy_last_mean", "teacher_forced_gain_min",
    "teacher_forced_gain_min_class", "teacher_forced_psnr", "teacher_forced_psnr_copy_last", "teacher_forced_gain",
    "teacher_forced_psnr_autoencoder", "teacher_forced_psnr_autoencoder_mean", "teacher_forced_gain_ceiling",
    "psnr_1chunk", "psnr_still_1chunk", "psnr_10chunk", "psnr_still_10chunk", "ssim_1chunk", "ssim_still_1chunk",
    "ssim_10chunk", "ssim_still_10chunk", "psnr_per_chunk", "psnr_still_per_chunk", "ssim_per_chunk",
    "ssim_still_per_chunk", "psnr_autoencoder_10chunk", "psnr_autoencoder_per_chunk",
)  # fmt: skip


def scoreboard(worlds: Worlds, cfg: EvalConfig = EVAL_PRESETS["scoreboard"],
               log: Callable[[str], None] = lambda s: None) -> dict:
    """The three cheap measures on `worlds` (started from the engine); returns their numbers."""
    worlds = Worlds(worlds.world, worlds.engine, worlds.same, start="engine")
    results: dict = {"start": "engine", "timings_s": {}}
    for name, measure in (("counterfactual", measure_counterfactual), ("teacher_forced", measure_teacher_forced),
                          ("fidelity", measure_fidelity)):  # fmt: skip
        t0 = time.perf_counter()
        part = measure(worlds, cfg)
        part.pop("_strip", None)
        results.update(part)
        results["timings_s"][name] = round(time.perf_counter() - t0, 2)
        log(f"scoreboard: {name} done in {results['timings_s'][name]:.1f} s")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from model.evaluation.suite import BACKENDS, add_guidance_arguments

    parser.add_argument("--backend", default="generated", choices=BACKENDS)
    parser.add_argument("--checkpoint", help="world checkpoint directory, e.g. a training run's runs/x/checkpoint "
                        "(default: the bundled world)")
    parser.add_argument("--sampler", help="sampler of the generated world (default: the checkpoint's)")
    parser.add_argument("--steps", type=int, help="denoising steps of the teacher/uniform sampler")
    parser.add_argument("--schedule", help="per-chunk steps of the diagonal sampler, e.g. 4,3,2")
    parser.add_argument("--context-noise", type=float, help="diagonal sampler: network time of the context K/V")
    add_guidance_arguments(parser)
    parser.add_argument("--device", default="cpu", help="cpu (default: deterministic, leaves a GPU to training) | "
                        "auto | cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the JSON to this file")
    parser.add_argument("--json", action="store_true", help="last stdout line: the whole result as one JSON object")


def run(args: argparse.Namespace) -> int:
    from model.common.checkpoint import CheckpointError
    from model.common.device import set_threads
    from model.evaluation.suite import _sampler_config, open_worlds, parse_world_options
    from world.backend import BackendError

    t0 = time.perf_counter()
    set_threads(args.threads)
    args.rewarm, args.start = None, "engine"
    try:
        options = parse_world_options(args)
        worlds = open_worlds(args, options)
    except (CheckpointError, BackendError, ValueError, RuntimeError, OSError) as e:
        print(f"scoreboard: {e}", file=sys.stderr)
        return 2
    cfg = replace(EVAL_PRESETS["scoreboard"], seed=args.seed)
    try:
        results = scoreboard(worlds, cfg, log=lambda s: print(s, file=sys.stderr))
    finally:
        worlds.world.close()
        worlds.engine.close()
    model = getattr(worlds.world, "model", None)
    results = {
        "backend": args.backend, "world": worlds.world.info.description, "checkpoint": args.checkpoint,
        "model_step": getattr(model, "step", None), "sampler": args.sampler, "steps": args.steps,
        "schedule": options.get("schedule"), "context_noise": args.context_noise, "guidance": args.guidance,
        "guide": args.guide,
        "sampler_config": _sampler_config(worlds.world), "device": args.device, "threads": args.threads,
        "seed": cfg.seed, **{k: results[k] for k in ("start", *FIELDS)},
        "counterfactual_contexts": results["counterfactual_contexts"],
        "counterfactual_skipped": results["counterfactual_skipped"],
        "teacher_forced_contexts": results["teacher_forced_contexts"],
        "fidelity_episodes": results["fidelity_episodes"],
        "timings_s": results["timings_s"], "seconds": round(time.perf_counter() - t0, 2),
    }  # fmt: skip
    results = clean(results)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(summary(results))
    if args.json:
        print(json.dumps(results))
    return 0


def summary(r: dict) -> str:
    """A few human-readable lines: each number beside its baseline."""

    def f(v, digits=3):
        return "n/a" if v is None else f"{v:.{digits}f}"

    return "\n".join([
        f"scoreboard: {r['backend']} {r.get('checkpoint') or ''} {r.get('sampler') or ''} ({r['seconds']:.0f} s)",
        f"  counterfactual accuracy {f(r['counterfactual_accuracy'])} (chance {f(r['counterfactual_chance'])}, "
        f"engine 1), spread ratio {f(r['counterfactual_spread_ratio'])} (still 0, engine 1)",
        f"  teacher-forced PSNR {f(r['teacher_forced_psnr_mean'], 2)} dB (copy-last "
        f"{f(r['teacher_forced_psnr_copy_last_mean'], 2)}), worst moving-class gain "
        f"{f(r['teacher_forced_gain_min'], 2)} dB ({r['teacher_forced_gain_min_class']})",
        f"  fidelity PSNR 1 / 10 chunks {f(r['psnr_1chunk'], 2)} / {f(r['psnr_10chunk'], 2)} dB "
        f"(still {f(r['psnr_still_1chunk'], 2)} / {f(r['psnr_still_10chunk'], 2)})",
        *_ceiling_lines(r, f),
    ])


def _ceiling_lines(r: dict, f: Callable) -> list[str]:
    """The autoencoder ceiling (model/evaluation/ceiling.py), for worlds that have one."""
    ae, gain = r.get("teacher_forced_psnr_autoencoder_mean"), r.get("teacher_forced_gain_ceiling")
    if ae is None or gain is None:
        return []
    moving = {k: v for k, v in gain.items() if k != "idle"}
    low = min(moving, key=moving.get)
    return [f"  autoencoder ceiling: teacher-forced {f(ae, 2)} dB (most gain over copy-last on {low}: "
            f"{f(moving[low], 2)} dB), fidelity 1-10 chunks {f(r.get('psnr_autoencoder_10chunk'), 2)} dB"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.evaluation.scoreboard", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
