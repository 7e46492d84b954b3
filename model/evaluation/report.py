"""Evaluation outputs: results.json (every number), report.md (a table), PNG plots."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from model.common.runlog import agg_pyplot
from model.readers.scores import ACTION_NAMES

# (key in results, label, engine/ceiling key, baseline key, target as text); the order of report.md's
# table. A reference starting with "=" is literal text (a value fixed by construction).
TABLE: tuple[tuple[str, str, str | None, str | None, str], ...] = (
    ("action_f1", "action macro F1 (IDM on probe)", "action_f1_ceiling", "action_f1_chance", ""),
    ("action_ratio_to_ceiling", "action F1 / engine (ceiling)", "=1", None, ">= 0.90"),
    ("action_f1_chance", "action macro F1 at chance (shuffled)", None, None, ""),
    ("motion_world", "motion: mean abs frame difference on the probe (0-1)", "motion_engine", "=0 (still)", ""),
    ("motion_ratio", "motion / engine", "=1", "=0 (still)", ""),
    ("idm_moving_world", "frames the IDM reads as moving (not idle)", "idm_moving_engine", None, ""),
    ("counterfactual_accuracy", "counterfactual accuracy (5 actions)", "=1 (by construction)", "counterfactual_chance",
     ""),
    ("counterfactual_spread_ratio", "counterfactual spread / engine", "=1", "=0 (still)", ""),
    ("teacher_forced_psnr_mean", "teacher-forced PSNR dB, mean over action classes", "=100 (bit-identical)",
     "teacher_forced_psnr_copy_last_mean", ""),
    ("teacher_forced_gain_min", "teacher-forced gain over copy-last dB, worst moving class", None, "=0 (copy-last)",
     "> 0"),
    ("prompt_accuracy", "prompt accuracy, train phrasings (joint)", "prompt_accuracy_engine", "prompt_accuracy_chance",
     ">= 0.90"),
    ("prompt_accuracy_heldout", "prompt accuracy, held-out phrasings", "prompt_accuracy_heldout_engine",
     "prompt_accuracy_chance", ">= 0.90"),
    ("prompt_ratio_to_engine", "prompt accuracy / engine, train phrasings", None, None, ""),
    ("prompt_ratio_to_engine_heldout", "prompt accuracy / engine, held-out phrasings", None, None, ""),
    ("prompt_accuracy_file", "prompt accuracy, --prompts file", "prompt_accuracy_file_engine", None, ">= 0.90"),
    ("prompt_accuracy_chance", "prompt accuracy at chance (shuffled)", None, None, ""),
    ("switch_chunks", "prompt switch: chunks until agreement (median)", "switch_chunks_engine", None, "<= 2"),
    ("switch_frames", "prompt switch: frames until agreement (median)", "switch_frames_engine", None, ""),
    ("switch_success", "prompt switches that took effect", "switch_success_engine", "=0 (still)", ""),
    ("psnr_1chunk", "PSNR dB, next chunk", "=100", "psnr_still_1chunk", ""),
    ("ssim_1chunk", "SSIM, next chunk", "=1", "ssim_still_1chunk", ""),
    ("psnr_10chunk", "PSNR dB, 10 chunks", "=100", "psnr_still_10chunk", ""),
    ("ssim_10chunk", "SSIM, 10 chunks", "=1", "ssim_still_10chunk", ""),
    ("fd_mean", "Frechet distance to engine (mean per segment)", "=0", None, ""),
    ("drift_saturation_pct", "saturation drift % (10 s windows vs first 10 s)", "drift_saturation_pct_engine",
     "=0 (still)", "<= 10"),
    ("drift_contrast_pct", "RMS contrast drift % (10 s windows vs first 10 s)", "drift_contrast_pct_engine",
     "=0 (still)", "<= 10"),
)
HEADLINE_KEYS = (
    "backend", "world", "checkpoint", "sampler", "steps", "schedule", "context_noise", "guidance", "guide", "quick",
    "start", "action_f1", "action_f1_ceiling", "action_ratio_to_ceiling", "action_f1_chance",
    "motion_world", "motion_engine", "motion_ratio", "idm_moving_world", "idm_moving_engine",
    "counterfactual_accuracy", "counterfactual_chance", "counterfactual_spread_ratio",
    "counterfactual_accuracy_per_action",
    "teacher_forced_psnr", "teacher_forced_psnr_mean", "teacher_forced_psnr_copy_last",
    "teacher_forced_psnr_copy_last_mean", "teacher_forced_gain_min", "teacher_forced_gain_min_class",
    "prompt_accuracy", "prompt_accuracy_heldout", "prompt_accuracy_file", "prompt_accuracy_chance",
    "prompt_accuracy_engine", "prompt_ratio_to_engine", "prompt_ratio_to_engine_heldout",
    "switch_frames", "switch_chunks", "switch_success", "psnr_1chunk", "ssim_1chunk", "psnr_10chunk", "ssim_10chunk",
    "fidelity_mode", "psnr_still_1chunk", "ssim_still_1chunk", "psnr_still_10chunk", "ssim_still_10chunk",
    "psnr_per_chunk", "psnr_still_per_chunk",
    "fd_mean", "fd_per_segment", "drift_script", "drift_saturation_pct", "drift_contrast_pct",
    "drift_saturation_pct_engine", "drift_contrast_pct_engine", "longstream_verdicts", "longstream_holds",
    "seconds", "out",
)  # fmt: skip


def clean(obj):
    """JSON-safe copy: numpy scalars -> Python, nan/inf -> None, private '_' keys dropped."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def headline(results: dict) -> dict:
    return clean({k: results[k] for k in HEADLINE_KEYS if k in results})


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def _ref(r: dict, ref: str | None) -> str:
    """A table cell for a reference column: a results key, or literal text after '='."""
    if not ref:
        return ""
    return ref[1:] if ref.startswith("=") else _fmt(r.get(ref))


def _detail_tables(r: dict) -> list[str]:
    """Teacher-forced PSNR per class, counterfactual accuracy per action and fidelity per chunk,
    each beside its baseline."""
    lines: list[str] = []
    tf = r.get("teacher_forced_psnr")
    if tf:
        copy, gain = r.get("teacher_forced_psnr_copy_last", {}), r.get("teacher_forced_gain", {})
        lines += ["", f"Teacher-forced PSNR dB per action class ({r.get('teacher_forced_contexts')} contexts of 2 "
                  "engine chunks, one chunk predicted; gain = world - copy-last; the worst moving class is "
                  f"{r.get('teacher_forced_gain_min_class')}):", "",
                  "| class | world | copy-last | gain |", "| --- | --- | --- | --- |"]
        lines += [f"| {c} | {_fmt(v)} | {_fmt(copy.get(c))} | {_fmt(gain.get(c))} |" for c, v in tf.items()]
    cf = r.get("counterfactual_accuracy_per_action")
    if cf:
        lines += ["", f"Counterfactual accuracy per action ({r.get('counterfactual_contexts')} contexts, "
                  f"{r.get('counterfactual_chunks')} chunks each; chance {_fmt(r.get('counterfactual_chance'))}; "
                  "row: the world's outcome, columns: credit to the engine's outcomes):", "",
                  "| action | accuracy | " + " | ".join(cf) + " |", "| --- | --- |" + " --- |" * len(cf)]
        conf = r.get("counterfactual_confusion", {})
        lines += [f"| {a} | {_fmt(v)} | " + " | ".join(_fmt(conf.get(a, {}).get(b)) for b in cf) + " |"
                  for a, v in cf.items()]
    p, ps = r.get("psnr_per_chunk"), r.get("psnr_still_per_chunk")
    if p and ps:
        s, ss = r.get("ssim_per_chunk") or [None] * len(p), r.get("ssim_still_per_chunk") or [None] * len(p)
        lines += ["", f"Fidelity per chunk ({r.get('fidelity_mode')} mode; baseline: still on the same episodes):", "",
                  "| chunk | PSNR world | PSNR still | SSIM world | SSIM still |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {i + 1} | {_fmt(a)} | {_fmt(b)} | {_fmt(c)} | {_fmt(d)} |"
                  for i, (a, b, c, d) in enumerate(zip(p, ps, s, ss))]
    return lines


def _longstream_table(r: dict) -> list[str]:
    """Verdict, share of judged windows inside and the worst window's ratios per longstream scenario."""
    scenarios = r.get("longstream")
    if not scenarios:
        return []
    rule = r.get("longstream_rule", {})
    lines = ["", f"Long streams ({r.get('longstream_seconds'):g} s each from an engine start; ratios world / "
             f"engine per {r.get('longstream_window_s'):g} s window; holds when saturation and contrast stay "
             f"within +-{100 * rule.get('band', 0):.0f}% and sharpness >= {rule.get('min_sharpness')}x in every "
             f"window after the first {100 * rule.get('settle_share', 0):.0f}%):", "",
             "| scenario | verdict | windows inside | worst at s | saturation | contrast | sharpness | colourfulness |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, s in scenarios.items():
        w = s["worst_window"]
        verdict = s["verdict"] + (f" ({', '.join(s['failed_on'])})" if s["failed_on"] else "")
        lines.append(f"| {name} | {verdict} | {_fmt(s['share_inside'])} | {w['t_s']:g} | {_fmt(w['saturation'])} "
                     f"| {_fmt(w['contrast'])} | {_fmt(w['sharpness'])} | {_fmt(w['colourfulness'])} |")
    return lines


def markdown(results: dict) -> str:
    r = results
    lines = [
        f"# Evaluation: {r.get('backend')} {r.get('checkpoint') or ''} {r.get('sampler') or ''}"
        f"{' ' + str(r['steps']) + ' steps' if r.get('steps') else ''}"
        f"{' ' + '-'.join(map(str, r['schedule'])) if r.get('schedule') else ''}"
        f"{' context t=' + format(r['context_noise'], 'g') if r.get('context_noise') is not None else ''}".rstrip(),
        "",
        f"World: {r.get('world', '')}.",
        "",
        f"{'quick' if r.get('quick') else 'full'} run, {r.get('seconds', 0):.0f} s, device {r.get('device')}, "
        f"IDM `{r.get('idm')}`, classifier `{r.get('classifier')}`; start: {r.get('start')}; "
        f"fidelity mode: {r.get('fidelity_mode')}.",
    ]
    rows = [f"| {label} | {_fmt(r[key])} | {_ref(r, ref)} | {_ref(r, base)} | {target} |"
            for key, label, ref, base, target in TABLE if key in r]
    if rows:  # a run of measures without headline numbers (longstream alone) gets no empty table
        lines += ["", "| measure | world | engine (ceiling / reference) | baseline (still, copy-last or chance) "
                  "| target |", "| --- | --- | --- | --- | --- |", *rows]
    w, e = r.get("action_per_action_f1", {}), r.get("action_per_action_f1_ceiling", {})
    if w:
        lines += ["", "Per-action F1 (world / engine):", "", "| action | world | engine |", "| --- | --- | --- |"]
        lines += [f"| {a} | {_fmt(w.get(a))} | {_fmt(e.get(a))} |" for a in ACTION_NAMES if a in w]
    lines += _detail_tables(r)
    lines += _longstream_table(r)
    if r.get("fd_per_segment"):
        segs = ", ".join(_fmt(x) for x in r["fd_per_segment"])
        lines += ["", f"Frechet distance per {r.get('fd_segment_s'):.0f} s segment: {segs}"]
    return "\n".join(lines) + "\n"


def write_outputs(results: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "report.md"}
    paths["json"].write_text(json.dumps(clean(results), indent=1) + "\n")
    paths["markdown"].write_text(markdown(results))
    paths.update(plot_all(results, out))
    return paths


# ----------------------------------------------------------------------------- plots


def plot_all(results: dict, out: Path) -> dict[str, Path]:
    paths = {}
    if "curves" in results:
        paths["drift_png"] = plot_drift(results, out / "eval_drift.png")
    if results.get("longstream"):
        paths["longstream_png"] = plot_longstream(results, out / "eval_longstream.png")
    if "action_per_action_f1" in results:
        paths["f1_png"] = plot_action_f1(results, out / "eval_action_f1.png")
    strips = [
        (name, results[k])
        for name, k in (("fidelity", "_strip_fidelity"), ("drift", "_strip_drift"))
        if results.get(k) is not None
    ]
    if strips:
        paths["strip_png"] = plot_strips(strips, out / "eval_strips.png")
    return paths


def plot_drift(results: dict, path: Path) -> Path:
    plt, c = agg_pyplot(), results["curves"]
    fd = results.get("fd_per_segment") or []
    win = results.get("drift_reference_s", 10)
    fig, axes = plt.subplots(1, 3 if fd else 2, figsize=(13 if fd else 9, 3.2))
    for ax, key, title in ((axes[0], "saturation", "HSV saturation"), (axes[1], "contrast", "RMS contrast")):
        ax.plot(c[f"{key}_pct"], label="world, per s", lw=0.6, alpha=0.5)
        ax.plot(c[f"{key}_engine_pct"], label="engine, per s", lw=0.6, alpha=0.5, ls="--")
        for suffix, style in (("", "-"), ("_engine", "--")):
            windows = c.get(f"{key}{suffix}_window_pct", [])
            xs = np.arange(len(windows) + 1) * (len(c[f"{key}_pct"]) // max(1, len(windows)))
            ax.stairs(windows, xs, lw=2, ls=style, label=f"{'engine' if suffix else 'world'}, {win:.0f} s windows")
        ax.axhspan(-10, 10, color="green", alpha=0.08, label="target +-10%")
        ax.set_title(f"{title}: % vs first {win:.0f} s ({results.get('drift_script', '')})")
        ax.set_xlabel("second")
        ax.legend(fontsize=6)
    if fd:
        axes[2].plot(np.arange(1, len(fd) + 1), fd, marker="o")
        axes[2].set_title(f"Frechet distance per {results.get('fd_segment_s', 60):.0f} s")
        axes[2].set_xlabel("segment")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_longstream(results: dict, path: Path) -> Path:
    """One panel per longstream scenario: the four world/engine ratios per window, the +-band and
    the sharpness floor; the shaded start is not judged."""
    plt, scenarios, rule = agg_pyplot(), results["longstream"], results["longstream_rule"]
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(10, 2.6 * len(scenarios)), squeeze=False)
    for ax, (name, s) in zip(axes[:, 0], scenarios.items()):
        t = s["windows"]["t_s"]
        for stat, ratios in s["windows"]["ratio"].items():
            ax.plot(t, ratios, lw=1, label=stat)
        ax.axhspan(1 - rule["band"], 1 + rule["band"], color="green", alpha=0.1, label=f"+-{100 * rule['band']:.0f}%")
        ax.axhline(rule["min_sharpness"], color="grey", ls=":", lw=1, label="sharpness floor")
        ax.axvspan(0, s["judged_from_s"], color="grey", alpha=0.1)
        ax.set_title(f"{name}: {s['verdict']}, {100 * s['share_inside']:.0f}% of windows inside", fontsize=9)
        ax.set_ylabel("world / engine")
        ax.legend(fontsize=6, ncol=6, loc="upper left")
    axes[-1, 0].set_xlabel("second")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_action_f1(results: dict, path: Path) -> Path:
    plt = agg_pyplot()
    w, e = results["action_per_action_f1"], results["action_per_action_f1_ceiling"]
    names = [a for a in ACTION_NAMES if a in w]
    x = np.arange(len(names))
    val = lambda d, a: d.get(a) if d.get(a) is not None and math.isfinite(d.get(a)) else 0.0  # noqa: E731
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.bar(x - 0.2, [val(w, a) for a in names], 0.4, label="world")
    ax.bar(x + 0.2, [val(e, a) for a in names], 0.4, label="engine (ceiling)")
    ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title("per-action F1 of the IDM's reading of the probe")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_strips(strips: list[tuple[str, tuple[np.ndarray, np.ndarray]]], path: Path, cols: int = 8) -> Path:
    """Rows: world over engine for each strip (fidelity frames, drift-stream frames)."""
    plt = agg_pyplot()
    fig, axes = plt.subplots(2 * len(strips), 1, figsize=(cols * 1.1, 2.4 * len(strips)), squeeze=False)
    for s, (name, (gen, ref)) in enumerate(strips):
        idx = np.linspace(0, len(gen) - 1, min(cols, len(gen))).round().astype(int)
        for r, (label, frames) in enumerate((("world", gen), ("engine", ref))):
            ax = axes[2 * s + r, 0]
            ax.imshow(np.concatenate(list(frames[idx]), axis=1))
            ax.set_axis_off()
            ax.set_title(f"{name}: {label}", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(report: dict, text: str, args: argparse.Namespace) -> int:
    """The table on stdout, the JSON to --out, and as the last stdout line with --json."""
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    if args.json:
        print(json.dumps(report))
    return 0
