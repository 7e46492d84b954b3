"""The generator bake-off: every arm's checkpoint scored by the same measures (docs/world-model.md).

    python -m model.evaluation.bakeoff --arm a_dit=runs/bake/a_dit --arm c_unet=runs/bake/c_unet \\
        --heldout data/bake_heldout_latents --episodes 0-15 --out docs/reports/bakeoff [--threads 2]
    python -m model.evaluation.bakeoff --arm a_dit=runs/bake/a_dit/snap_10min --quick ...  # curve points

Per arm, all from an engine start with the same seeds and the same sampler (Euler, 8 steps, no
guidance, a clean refresh pass: the teacher sampler at 8 steps, 9 network evaluations per chunk):
  - counterfactual accuracy, teacher-forced (one chunk after the engine's context) and free-running
    (three chunks: the second and third read the world's own output), 16 contexts x 5 actions =
    80 cases each (model/evaluation/measure_counterfactual.py);
  - teacher-forced PSNR per action class against copy-last, beside the autoencoder's ceiling
    (model/evaluation/measure_teacher_forced.py);
  - fidelity per chunk against the still image (model/evaluation/measure_fidelity.py);
  - held-out next-chunk loss and action use on episodes none of the arms trained on
    (model/evaluation/heldout.py);
  - inference cost: milliseconds per frame for 1, 2 and 4 network evaluations of a chunk against a
    full context (sink + window), plus the decoder, batch 1, at --threads;
  - training facts from the run's teacher.csv: steps, frames seen, seconds per step.
--guidance G scores with classifier-free guidance on the actions alone (c + G (c - u_a), the null
action with the same prompt; two network rows per evaluation) instead of none, for a row that says so.
--own-sampler scores an arm with the sampler its release records (a diagonal student: its schedule and
context noise, no refresh pass) instead of the bake-off's, for a row that says so.
--quick scores the teacher-forced counterfactual accuracy (the same 80 cases) alone: the points of
the curve against training time. Writes OUT/<arm>.json per arm; `--table` and `--plot` build the
report from those files.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from model.evaluation.eval_config import EVAL_PRESETS
from model.evaluation.measure_counterfactual import measure_counterfactual
from model.evaluation.measure_fidelity import measure_fidelity
from model.evaluation.measure_teacher_forced import measure_teacher_forced
from model.evaluation.report import clean
from model.evaluation.worlds import Worlds

SAMPLER = {"sampler": "teacher", "steps": 8, "guidance": 0.0}
NFE_POINTS = (1, 2, 4)


def training_facts(run: Path) -> dict:
    """Steps and seconds per step from a run's teacher.csv (its last row), frames seen from its checkpoint."""
    rows = list(csv.DictReader(open(run / "teacher.csv"))) if (run / "teacher.csv").exists() else []
    if not rows:
        return {}
    last = rows[-1]
    out = {"train_steps": int(float(last["step"]))}
    for key in ("frames", "elapsed_s", "loss", "frames_per_s", "steps_per_s"):
        if key in last and last[key] != "":
            out[f"train_{key}"] = float(last[key])
    if out.get("train_steps_per_s"):
        out["train_s_per_step"] = 1.0 / out["train_steps_per_s"]
    config = run / "checkpoint" / "config.json"
    if config.exists():  # frames seen = steps x clips x frames per clip
        meta = json.loads(config.read_text())
        train, chunk = meta["configs"].get("train", {}), meta["configs"]["dit"].get("chunk_frames", 3)
        if "batch" in train and "clip_chunks" in train:
            out["train_frames"] = int(meta["step"]) * train["batch"] * train["clip_chunks"] * chunk
    return out


@torch.no_grad()
def inference_ms(checkpoint: str, repeats: int = 5) -> dict:
    """ms per frame for k network evaluations of one chunk against a full context, plus decode per frame."""
    from model.runtime.world_model import load_world_model

    wm = load_world_model(checkpoint, "cpu", with_text_encoder=False)
    dit, cfg = wm.dit, wm.dit.config
    C = cfg.chunk_frames
    gen = torch.Generator().manual_seed(0)
    text, mask = torch.randn(1, 6, cfg.text_dim, generator=gen), torch.ones(1, 6, dtype=torch.bool)
    cache = dit.new_cache()
    x = torch.randn(1, C, *cfg.latent_shape, generator=gen)
    t, a = torch.full((1, C), 100.0), torch.zeros(1, C, cfg.action_dim)
    while cache.n_ctx < cache.layout.max_context_frames:  # fill sink + window
        dit(x, t, a, text, mask, cache)
        cache.commit_chunk()
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        dit(x, t, a, text, mask, cache)
        times.append(time.perf_counter() - t0)
    forward = sorted(times[1:])[len(times[1:]) // 2] * 1000 / C  # median, ms per frame per evaluation
    decode = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        wm.autoencoder.decode(x[0])
        decode.append(time.perf_counter() - t0)
    dec = sorted(decode[1:])[len(decode[1:]) // 2] * 1000 / C
    return {"ms_per_frame_per_nfe": forward, "decode_ms_per_frame": dec,
            **{f"ms_per_frame_{k}nfe": k * forward + dec for k in NFE_POINTS}}  # fmt: skip


def sampler_options(guidance: float, own: bool = False) -> dict:
    """The bake-off's sampler, with guidance G on the actions alone when G > 0; `own`: none, so the
    world plays the sampler its release records (only guidance 0 is allowed with it)."""
    if guidance < 0:
        raise ValueError(f"guidance must be >= 0, got {guidance}")
    if own:
        if guidance:
            raise ValueError("--own-sampler scores the release as it plays: give no --guidance with it")
        return {}
    return {**SAMPLER, "guidance": guidance, **({"guide": "actions"} if guidance > 0 else {})}


def played_sampler(config) -> dict:
    """What a world plays by its release (WorldConfig): recorded in the arm's JSON beside the numbers."""
    return {"sampler": config.sampler, "own_sampler": True,
            **{k: getattr(config, k) for k in ("steps", "schedule", "context_noise", "guidance")
               if getattr(config, k, None) is not None}}


def score_arm(checkpoint: str, heldout: str | None, episodes: list[int], quick: bool, seed: int = 0,
              guidance: float = 0.0, own_sampler: bool = False) -> dict:
    from world.backends.registry import create_backend

    world = create_backend("generated", device="cpu", checkpoint=checkpoint, **sampler_options(guidance, own_sampler))
    sampler = sampler_options(guidance) if not own_sampler else played_sampler(world.model.config)
    info = world.info
    engine = create_backend("engine", height=info.height, width=info.width, chunk_frames=info.chunk_frames)
    worlds = Worlds(world, engine, same=False, start="engine")
    full = replace(EVAL_PRESETS["full"], seed=seed)
    out: dict = {"checkpoint": checkpoint, "model_step": getattr(world.model, "step", None), **sampler,
                 "timings_s": {}}  # fmt: skip
    try:
        parts = [("counterfactual_tf", lambda: measure_counterfactual(
            worlds, replace(full, counterfactual_contexts=16, counterfactual_chunks=1)))]
        if not quick:
            parts += [
                ("counterfactual_free", lambda: measure_counterfactual(
                    worlds, replace(full, counterfactual_contexts=16, counterfactual_chunks=3))),
                ("teacher_forced", lambda: measure_teacher_forced(worlds, replace(full, teacher_forced_contexts=4))),
                ("fidelity", lambda: measure_fidelity(worlds, replace(full, fidelity_episodes=2))),
            ]
        for name, measure in parts:
            t0 = time.perf_counter()
            part = measure()
            part.pop("_strip", None)
            if name.startswith("counterfactual"):
                part = {f"{name}_{k.removeprefix('counterfactual_')}": v for k, v in part.items()}
            out.update(part)
            out["timings_s"][name] = round(time.perf_counter() - t0, 1)
            print(f"bakeoff: {checkpoint}: {name} in {out['timings_s'][name]} s", file=sys.stderr, flush=True)
    finally:
        world.close()
        engine.close()
    if quick:
        return out
    if heldout:
        from model.evaluation.heldout import heldout_batch, heldout_scores
        from model.runtime.world_model import load_world_model

        dit = load_world_model(checkpoint, "cpu", with_text_encoder=False).dit
        out.update(heldout_scores(dit, heldout_batch(heldout, episodes, 48, dit.config.chunk_frames),
                                  dit.config.chunk_frames))
    out.update(inference_ms(checkpoint))
    return out


# ----------------------------------------------------------------------------- report

TABLE_COLUMNS = (
    ("arm", "arm"), ("parameters", "parameters (M)"), ("train_steps", "steps"), ("train_frames", "frames seen"),
    ("train_s_per_step", "s / step"), ("counterfactual_tf_accuracy", "counterfactual acc., teacher-forced (80)"),
    ("counterfactual_free_accuracy", "counterfactual acc., free-running (80)"),
    ("counterfactual_tf_spread_ratio", "spread of futures / engine's (teacher-forced)"),
    ("heldout_loss", "held-out loss"), ("heldout_action_gain", "action use"),
    ("tf_gain_min", "TF gain over copy-last, worst moving class (dB)"), ("tf_ceiling_min", "ceiling there (dB)"),
    ("psnr_per_chunk_vs_still", "chunks above still (of 10)"),
    ("ms_per_frame_1nfe", "ms/frame 1 NFE"), ("ms_per_frame_2nfe", "ms/frame 2 NFE"),
    ("ms_per_frame_4nfe", "ms/frame 4 NFE"),
)  # fmt: skip


def table_row(name: str, r: dict) -> dict:
    row = dict(r, arm=name)
    gain, ceiling = r.get("teacher_forced_gain") or {}, r.get("teacher_forced_gain_ceiling") or {}
    moving = {k: v for k, v in gain.items() if k != "idle"}
    if moving:
        worst = min(moving, key=moving.get)
        row["tf_gain_min"] = f"{moving[worst]:+.2f} ({worst})"
        row["tf_ceiling_min"] = ceiling.get(worst)
    if r.get("psnr_per_chunk") and r.get("psnr_still_per_chunk"):
        row["psnr_per_chunk_vs_still"] = sum(p > s for p, s in zip(r["psnr_per_chunk"], r["psnr_still_per_chunk"]))
    return row


def markdown_table(results: dict[str, dict]) -> str:
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(h for _, h in TABLE_COLUMNS) + " |", "|" + " --- |" * len(TABLE_COLUMNS)]
    for name, r in results.items():
        row = table_row(name, r)
        lines.append("| " + " | ".join(fmt(row.get(k)) for k, _ in TABLE_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(points: dict[str, list[tuple[float, float]]], out: Path, chance: float) -> None:
    """Counterfactual accuracy (teacher-forced) against training minutes, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for name, pts in points.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance / still ({chance:.2f})")
    ax.axhline(1.0, color="black", ls=":", lw=1, label="engine (1.00)")
    ax.set_xlabel("training wall minutes in the bake-off (2-core CPU, one arm at a time)")
    ax.set_ylabel("counterfactual accuracy, teacher-forced")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def write_report(full: Path, snaps: Path | None, arm_minutes: float, table: Path | None, plot: Path | None) -> str:
    """The markdown table of every <arm>.json in `full` and the curve of counterfactual accuracy against
    training minutes: <arm>_<m>min.json points from `snaps`, each arm's final at `arm_minutes`."""
    results = {f.stem: json.loads(f.read_text()) for f in sorted(full.glob("*.json"))}
    for r in results.values():  # training facts as the run has them now (older JSON may lack some)
        run = Path(r["checkpoint"]).parent
        if (run / "teacher.csv").exists():
            r.update({k: v for k, v in training_facts(run).items() if k not in r})
    text = markdown_table(results)
    if table is not None:
        table.parent.mkdir(parents=True, exist_ok=True)
        table.write_text(text)
    if plot is not None:
        points: dict[str, list[tuple[float, float]]] = {}
        for name, r in results.items():
            if r.get("train_steps"):  # a trained arm (a bundled baseline has no training here)
                # Its own training time where the run says (a long run goes past the arms' minutes).
                minutes = r["train_steps"] * r["train_s_per_step"] / 60.0 if r.get("train_s_per_step") else arm_minutes
                points.setdefault(name, []).append((minutes, r["counterfactual_tf_accuracy"]))
        for f in sorted(snaps.glob("*min.json")) if snaps is not None else []:
            name = f.stem.rpartition("_")[0]
            if name in points:  # a snapshot's checkpoint is its last save: place it by its step
                snap = json.loads(f.read_text())
                minutes = snap["model_step"] * results[name].get("train_s_per_step", 0.0) / 60.0
                points[name].append((minutes, snap["counterfactual_tf_accuracy"]))
        chance = next(iter(results.values()))["counterfactual_tf_chance"] if results else 0.2
        plot_curves(points, plot, chance)
    return text


def main(argv: list[str] | None = None) -> int:
    from model.common.device import set_threads
    from model.evaluation.heldout import parse_episodes

    p = argparse.ArgumentParser(prog="python -m model.evaluation.bakeoff", description=__doc__.split("\n")[0])
    p.add_argument("--arm", action="append", default=[], metavar="NAME=RUN",
                   help="an arm: its name and its run directory (or checkpoint); repeat per arm")
    p.add_argument("--heldout", help="latent cache of held-out episodes (held-out loss and action use)")
    p.add_argument("--episodes", default="0-15", help="held-out episode indices (default 0-15)")
    p.add_argument("--quick", action="store_true", help="teacher-forced counterfactual accuracy only (80 cases)")
    p.add_argument("--guidance", type=float, default=0.0,
                   help="classifier-free guidance on the actions alone (default 0: none, the bake-off's rule)")
    p.add_argument("--own-sampler", action="store_true",
                   help="score with the sampler each release records (a student's diagonal schedule), not the "
                   "bake-off's Euler 8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, help="directory for <arm>.json (with --report: the one to read)")
    p.add_argument("--report", action="store_true", help="score nothing: write --table and --plot from --out")
    p.add_argument("--snapshots", help="with --report: directory of <arm>_<m>min.json curve points")
    p.add_argument("--minutes", type=float, default=30.0, help="with --report: training minutes of every arm")
    p.add_argument("--table", help="with --report: markdown table file")
    p.add_argument("--plot", help="with --report: PNG of counterfactual accuracy against training time")
    args = p.parse_args(argv)
    if args.report:
        print(write_report(Path(args.out), Path(args.snapshots) if args.snapshots else None, args.minutes,
                           Path(args.table) if args.table else None, Path(args.plot) if args.plot else None))
        return 0
    set_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for spec in args.arm:
        name, sep, run = spec.partition("=")
        if not sep or not name or not run:
            print(f"bakeoff: --arm wants NAME=RUN, got {spec!r}", file=sys.stderr)
            return 2
        from model.common.checkpoint import checkpoint_dir
        from model.nets import count_parameters
        from model.runtime.world_model import load_world_model

        ckpt = str(checkpoint_dir(run))
        result = score_arm(ckpt, args.heldout, parse_episodes(args.episodes), args.quick, guidance=args.guidance,
                           own_sampler=args.own_sampler)
        run_dir = Path(run) if (Path(run) / "teacher.csv").exists() else Path(ckpt).parent
        result.update(training_facts(run_dir))
        result["parameters"] = count_parameters(load_world_model(ckpt, "cpu", with_text_encoder=False).dit) / 1e6
        result["threads"] = args.threads
        (out / f"{name}.json").write_text(json.dumps(clean(result), indent=1) + "\n")
        print(f"bakeoff: {name}: counterfactual (teacher-forced) {result['counterfactual_tf_accuracy']:.3f}"
              + (f", free-running {result['counterfactual_free_accuracy']:.3f}" if not args.quick else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
