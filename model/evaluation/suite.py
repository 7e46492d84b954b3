"""`run_world.py eval`: score a world (generated or the engine itself) against the engine.

    python run_world.py eval --quick                                  # the bundled generated world
    python run_world.py eval --backend engine --json                  # the sanity row (ceiling)
    python run_world.py eval --checkpoint runs/student --sampler diagonal --out runs/eval/student
    python run_world.py eval --checkpoint runs/student --sampler diagonal --schedule 5,4,3,2 --context-noise 250
    python run_world.py eval --backend still --quick                   # a baseline row (the floor)
    python run_world.py eval --checkpoint assets/teacher --guidance 2 --guide actions   # guidance on keys only
    python run_world.py eval --checkpoint assets/teacher --measures longstream          # 3 x 5-minute streams

Writes results.json, report.md and PNG plots into --out (default runs/eval/<backend>-<time>/);
with --json the last stdout line is one JSON object with the headline numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from model.common.checkpoint import CheckpointError
from model.common.device import resolve_device, set_threads
from model.diffusion.samplers import GUIDES, parse_schedule
from model.evaluation.eval_config import EVAL_PRESETS, EvalConfig
from model.evaluation.measure_actions import measure_actions
from model.evaluation.measure_counterfactual import measure_counterfactual
from model.evaluation.measure_drift import measure_drift
from model.evaluation.measure_fidelity import measure_fidelity
from model.evaluation.measure_longstream import measure_longstream
from model.evaluation.measure_prompts import measure_prompts, measure_switches, read_prompt_file
from model.evaluation.measure_teacher_forced import measure_teacher_forced
from model.evaluation.report import headline, markdown, write_outputs
from model.evaluation.worlds import START_MODES, Worlds
from model.readers.reading import IDMReader, ThemeReader, load_classifier, load_idm
from world.backend import Backend, BackendError
from world.backends.baselines import BASELINES
from world.backends.registry import create_backend

DEFAULT_MEASURES: tuple[str, ...] = (
    "actions", "prompts", "switch", "fidelity", "counterfactual", "teacher_forced", "drift",
)  # fmt: skip
# longstream streams three scenarios for 5 minutes each (--quick: 20 s): asked for by name only
MEASURES: tuple[str, ...] = (*DEFAULT_MEASURES, "longstream")
BACKENDS: tuple[str, ...] = ("generated", "engine", *BASELINES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="generated", choices=BACKENDS,
                        help="the world under test: generated, engine (the ceiling), still or copy-last (baselines)")
    parser.add_argument("--start", default="engine", choices=START_MODES,
                        help="how worlds start in actions, switch, fidelity and drift: engine (the engine's "
                        "first chunk written as context, default) or text (reset from the prompt)")
    parser.add_argument("--checkpoint", help="generated world checkpoint directory (default: the bundled one)")
    parser.add_argument("--sampler", help="sampler of the generated world (default: the checkpoint's)")
    parser.add_argument("--steps", type=int, help="denoising steps of the teacher/uniform sampler (default: its own)")
    parser.add_argument("--schedule", help="per-chunk steps of the diagonal sampler, e.g. 4,3,2 (default: the "
                        "checkpoint's); counts above 4 run on a finer grid than the student was distilled on")
    parser.add_argument("--context-noise", type=float, help="diagonal sampler: how much noise (0-1000) the model's "
                        "memory of past frames keeps (default: the value the world was distilled with)")
    parser.add_argument("--rewarm", action="store_const", const=True, default=None,
                        help="diagonal sampler: restart its schedule after each prompt switch")
    add_guidance_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (world, IDM and classifier)")
    parser.add_argument("--idm", default="assets/idm", help="inverse-dynamics checkpoint")
    parser.add_argument("--classifier", default="assets/classifier", help="theme classifier checkpoint")
    parser.add_argument("--prompts", help="extra prompts to score: prompt<TAB>biome,time_of_day,weather per line")
    parser.add_argument("--quick", action="store_true", help="every measure on a small sample (< 1 min on CPU)")
    parser.add_argument("--measures", default=",".join(DEFAULT_MEASURES),
                        help=f"subset of {','.join(MEASURES)} (default: all but longstream)")
    parser.add_argument("--longstream-seconds", type=float, metavar="S",
                        help="length of each longstream scenario (default 300; --quick: 20)")
    parser.add_argument("--longstream-window-s", type=float, metavar="S",
                        help="longstream: seconds per window the ratios are taken over (default 1)")
    parser.add_argument("--longstream-scenarios", metavar="A,B",
                        help="longstream: which scenarios, of turn,forward,mixed (default all three)")
    parser.add_argument(
        "--drift-script",
        default="pan",
        choices=("pan", "walk"),
        help="actions of the long stream: pan (turn in place) or walk (scripted play)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output directory (default runs/eval/<backend>-<time>)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", action="store_true", help="last stdout line: one JSON object of headline numbers")


def add_guidance_arguments(parser: argparse.ArgumentParser) -> None:
    """--guidance and --guide (eval and the scoreboard)."""
    parser.add_argument("--guidance", type=float, metavar="G", help="classifier-free guidance g in c + g (c - u); "
                        "0 disables it (default: the sampler's own: the teacher's 3, students 0)")
    parser.add_argument("--guide", choices=GUIDES, help="what guidance's unconditional rows u leave out: all (prompt "
                        "and actions, the default), actions (same prompt, null actions: amplifies the response to "
                        "keys), text (no prompt, same actions); needs guidance > 0")


GENERATED_ONLY = ("checkpoint", "sampler", "steps", "schedule", "context_noise", "rewarm", "guidance", "guide")


def parse_world_options(args: argparse.Namespace) -> dict:
    """The generated backend's options from the command line (results.json records them). Only the
    syntax is checked here; the backend checks the values when it is built, before any rollout."""
    given = {k: getattr(args, k, None) for k in GENERATED_ONLY}
    if args.backend != "generated":
        named = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
        if named:  # silently scoring the engine under a sampler option would mislabel the run
            raise ValueError(f"{', '.join(named)}: options of --backend generated only, not of the {args.backend}")
        return {}
    if given["schedule"] is not None:
        given["schedule"] = parse_schedule(given["schedule"])
    return {k: v for k, v in given.items() if v is not None}


def open_worlds(args: argparse.Namespace, options: dict) -> Worlds:
    """The world under test (`options`: parse_world_options) plus an engine at the same resolution
    and chunk size, started as --start says."""
    start = getattr(args, "start", "engine")
    if args.backend == "engine":
        engine = create_backend("engine")
        return Worlds(engine, engine, same=True, start=start)
    if args.backend == "generated":
        world = create_backend("generated", device=args.device, **options)
    else:
        world = create_backend(args.backend)
    info = world.info
    engine = create_backend("engine", height=info.height, width=info.width, chunk_frames=info.chunk_frames)
    return Worlds(world, engine, same=False, start=start)


def check_resolution(world: Backend, idm: IDMReader, cls: ThemeReader) -> None:
    h, w = world.info.height, world.info.width
    for name, c in (("IDM", idm.config), ("classifier", cls.config)):
        if (c.height, c.width) != (h, w):
            raise ValueError(f"the {name} was trained on {c.height}x{c.width} frames but the world renders {h}x{w}")


def evaluate(
    worlds: Worlds,
    idm: IDMReader,
    cls: ThemeReader,
    cfg: EvalConfig,
    measures: tuple[str, ...] = DEFAULT_MEASURES,
    prompt_file: str | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> dict:
    """Run the chosen measures; returns every number (plus '_strip_*' frames for the plots)."""
    check_resolution(worlds.world, idm, cls)
    steps: dict[str, Callable[[], dict]] = {
        "actions": lambda: measure_actions(worlds, idm, cfg),
        "prompts": lambda: measure_prompts(worlds, cls, cfg, prompt_file),
        "switch": lambda: measure_switches(worlds, cls, cfg),
        "fidelity": lambda: measure_fidelity(worlds, cfg),
        "counterfactual": lambda: measure_counterfactual(worlds, cfg),
        "teacher_forced": lambda: measure_teacher_forced(worlds, cfg),
        "drift": lambda: measure_drift(worlds, cls, cfg, show=False),
        "longstream": lambda: measure_longstream(worlds, cfg, log),
    }
    results: dict = {"drift_reference_s": cfg.drift_reference_s, "start": worlds.start, "timings_s": {}}
    for name in measures:
        t0 = time.perf_counter()
        part = steps[name]()
        if "_strip" in part:
            results[f"_strip_{name}"] = part.pop("_strip")
        results.update(part)
        results["timings_s"][name] = round(time.perf_counter() - t0, 2)
        log(f"eval: {name} done in {results['timings_s'][name]:.1f} s")
    return results


def _parse_measures(text: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in names if m not in MEASURES]
    if unknown or not names:
        raise ValueError(f"--measures: unknown {unknown}; choose from {','.join(MEASURES)}")
    return names


def _eval_config(args: argparse.Namespace) -> EvalConfig:
    """The preset (--quick or full) with the command line's seed, drift script and longstream lengths."""
    cfg = replace(EVAL_PRESETS["quick" if args.quick else "full"], seed=args.seed, drift_script=args.drift_script)
    given = {"longstream_seconds": args.longstream_seconds, "longstream_window_s": args.longstream_window_s}
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    if args.longstream_scenarios is not None:  # measure_longstream names the unknown ones
        cfg = replace(cfg, longstream_scenarios=tuple(s.strip() for s in args.longstream_scenarios.split(",")
                                                      if s.strip()))
    if not cfg.longstream_seconds >= cfg.longstream_window_s > 0:  # also rejects nan
        raise ValueError(f"--longstream-seconds {cfg.longstream_seconds} and --longstream-window-s "
                         f"{cfg.longstream_window_s}: need a window > 0 and a stream of at least one window")
    return cfg


def _sampler_config(world: Backend) -> dict | None:
    """The sampler the run actually used (checkpoint defaults filled in); None for the engine."""
    sampler = getattr(world, "sampler", None)
    return sampler.describe() if sampler is not None else None


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    set_threads(args.threads)
    try:
        measures = _parse_measures(args.measures)
        cfg = _eval_config(args)
        options = parse_world_options(args)  # syntax errors now; the backend checks values when it opens
        if args.prompts:
            read_prompt_file(args.prompts)  # a bad file fails now, not after minutes of rollouts
        device = resolve_device(args.device)
        idm, cls = load_idm(args.idm, device), load_classifier(args.classifier, device)
        worlds = open_worlds(args, options)
    except (CheckpointError, BackendError, ValueError, RuntimeError, OSError) as e:
        print(f"eval: {e}", file=sys.stderr)
        return 2
    try:
        results = evaluate(worlds, idm, cls, cfg, measures, args.prompts)
    except ValueError as e:  # bad --prompts file, resolution mismatch
        print(f"eval: {e}", file=sys.stderr)
        return 2
    finally:
        worlds.world.close()
        worlds.engine.close()
    out = Path(args.out or f"runs/eval/{args.backend}-{datetime.now():%Y%m%d-%H%M%S}")
    results.update(
        backend=args.backend, start=args.start, world=worlds.world.info.description, checkpoint=args.checkpoint,
        sampler=args.sampler, steps=args.steps, schedule=options.get("schedule"),
        context_noise=args.context_noise, rewarm=args.rewarm, guidance=args.guidance, guide=args.guide,
        sampler_config=_sampler_config(worlds.world),
        device=str(device),
        quick=args.quick, idm=args.idm, classifier=args.classifier, seed=args.seed,
        seconds=time.perf_counter() - t0, out=str(out),
    )  # fmt: skip
    write_outputs(results, out)
    print(markdown(results))
    print(f"wrote {out}/results.json, report.md and plots", file=sys.stderr)
    if args.json:
        print(json.dumps(headline(results)))
    return 0
