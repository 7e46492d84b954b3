"""Compare eval runs side by side: one markdown table (a row per run) and a PNG of grouped bars.

    python -m model.evaluation.compare --out docs/reports/ablation-schedule.md \\
        --png docs/images/ablation_schedule.png --title "Diagonal schedule ablation" \\
        "4-3-2=runs/eval/student/results.json" "5-4-3-2=runs/eval/student-5432/results.json"

Each LABEL=PATH names one `run_world.py eval` output (PATH: its results.json, or the directory
holding it). Cells read results.json keys as written (docs/evaluation.md explains them): '—' when
the run did not measure that key, 'n/a' when it did and the number is undefined (results.json
writes nan as null, e.g. a prompt switch that never took effect has no switch_chunks).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.common.runlog import agg_pyplot

MISSING = "—"  # the run did not measure this
UNDEFINED = "n/a"  # measured, but undefined (null in results.json)


class CompareError(ValueError):
    """A bad LABEL=PATH argument or results file; the message says which and why."""


@dataclass(frozen=True)
class Run:
    label: str
    path: Path
    results: dict


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[dict], str]


def _number(key: str, digits: int, scale: float = 1.0) -> Callable[[dict], str]:
    """Cell of a numeric results key: MISSING when absent, UNDEFINED when null (nan)."""

    def cell(r: dict) -> str:
        if key not in r:
            return MISSING
        v = r[key]
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return UNDEFINED
        return f"{v * scale:.{digits}f}"

    return cell


def sampler_text(r: dict) -> str:
    """What the run sampled with, e.g. "diagonal 4-3-2, t=100". sampler_config (the sampler actually used,
    checkpoint defaults filled in) when the run recorded it; else the command-line options."""
    if r.get("backend") == "engine":
        return "engine"
    cfg = r.get("sampler_config")
    if isinstance(cfg, dict) and cfg.get("name"):
        steps = cfg.get("steps") or []
        text = f"{cfg['name']} {'-'.join(map(str, steps))}".rstrip()
        if not cfg.get("refresh", True) and cfg.get("context_noise") is not None:
            text += f", t={cfg['context_noise']:g}"
        if cfg.get("guidance"):  # a run recorded before the `guide` option guided on everything ("all")
            text += f", g={cfg['guidance']:g}" + (f" on {cfg['guide']}" if cfg.get("guide", "all") != "all" else "")
        return text
    if not any(k in r for k in ("sampler", "steps", "schedule", "context_noise")):
        return MISSING
    parts = [str(r.get("sampler") or "checkpoint default")]
    if r.get("steps"):
        parts.append(f"{r['steps']} steps")
    if r.get("schedule"):
        parts.append("-".join(map(str, r["schedule"])))
    text = " ".join(parts)
    return text + (f", t={r['context_noise']:g}" if r.get("context_noise") is not None else "")


def _pair(r: dict, first: str, second: str, digits: int) -> str:
    a, b = _number(first, digits)(r), _number(second, digits)(r)
    return MISSING if a == b == MISSING else f"{a} / {b}"


def _run_kind(r: dict) -> str:
    return MISSING if "quick" not in r else ("quick" if r["quick"] else "full")


COLUMNS: tuple[Column, ...] = (
    Column("action F1", _number("action_f1", 3)),
    Column("F1 / ceiling", _number("action_ratio_to_ceiling", 2)),
    Column("F1 chance", _number("action_f1_chance", 3)),
    Column("prompt acc. train", _number("prompt_accuracy", 2)),
    Column("prompt acc. held-out", _number("prompt_accuracy_heldout", 2)),
    Column("switch chunks", _number("switch_chunks", 1)),
    Column("PSNR dB 1 / 10 chunks", lambda r: _pair(r, "psnr_1chunk", "psnr_10chunk", 1)),
    Column("FD", _number("fd_mean", 1)),
    Column("drift sat. % (max abs)", _number("drift_saturation_pct", 1)),
    Column("drift contrast % (max abs)", _number("drift_contrast_pct", 1)),
    Column("motion / engine", _number("motion_ratio", 2)),
    Column("sampler", sampler_text),
    Column("run", _run_kind),
    Column("eval s", _number("seconds", 0)),
)

# (results key, label, take |value|) per bar group; two panels because their scales differ.
BARS_UNIT: tuple[tuple[str, str, bool], ...] = (
    ("action_f1", "action F1", False),
    ("prompt_accuracy_heldout", "prompt accuracy\n(held-out)", False),
)
BARS_PCT: tuple[tuple[str, str, bool], ...] = (
    ("drift_saturation_pct", "|drift| saturation", True),
    ("drift_contrast_pct", "|drift| contrast", True),
)


def parse_run(arg: str) -> tuple[str, Path]:
    """Argument "LABEL=PATH" -> (label, path of results.json); PATH may be the eval output directory.

    Labels may hold '=' themselves ("ctx t=250=runs/eval/a"): the split is at the first '=' after
    which an existing path follows, else at the last one (and the missing path is reported)."""
    cuts = [i for i, ch in enumerate(arg) if ch == "="]
    cut = next((i for i in cuts if Path(arg[i + 1 :].strip()).exists()), cuts[-1] if cuts else -1)
    label, path = (arg[:cut], arg[cut + 1 :]) if cut >= 0 else (arg, "")
    if cut < 0 or not label.strip() or not path.strip():
        raise CompareError(f"{arg!r}: expected LABEL=path/to/results.json (e.g. 4-3-2=runs/eval/student/results.json)")
    p = Path(path.strip())
    return label.strip(), p / "results.json" if p.is_dir() else p


def load_run(label: str, path: Path) -> Run:
    if not path.is_file():
        raise CompareError(f"{label}: {path} does not exist (write it with `run_world.py eval --out DIR`)")
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CompareError(f"{label}: {path} is not a readable JSON file ({e})") from None
    if not isinstance(results, dict):
        raise CompareError(f"{label}: {path} holds a {type(results).__name__}, not an eval results object")
    return Run(label, path, results)


def load_runs(args: Sequence[str]) -> list[Run]:
    if not args:
        raise CompareError("name at least one LABEL=path/to/results.json")
    parsed = [parse_run(a) for a in args]
    labels = [label for label, _ in parsed]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise CompareError(f"labels must differ; repeated: {', '.join(dupes)}")
    return [load_run(label, path) for label, path in parsed]


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(runs: Sequence[Run], title: str, png: str | None = None) -> str:
    header = ["run", *(c.header for c in COLUMNS)]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for run in runs:
        cells = [run.label, *(c.cell(run.results) for c in COLUMNS)]
        lines.append("| " + " | ".join(_escape(x) for x in cells) + " |")
    lines += ["", f"{MISSING}: not measured in that run; {UNDEFINED}: measured but undefined (e.g. a switch that "
              "never took effect). Keys and their meaning: docs/evaluation.md.", "", "Sources:", ""]
    lines += [f"- {_escape(run.label)}: `{run.path}`" for run in runs]
    if png:
        lines += ["", f"![{_escape(title)}]({png})"]
    return "\n".join(lines) + "\n"


def _value(r: dict, key: str, absolute: bool) -> float:
    v = r.get(key)
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return float("nan")  # no bar: matplotlib draws nothing for nan
    return abs(v) if absolute else float(v)


def plot(runs: Sequence[Run], path: Path, title: str) -> Path:
    plt = agg_pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 2.2 + 1.2 * len(runs)), 3.6))
    width = 0.8 / len(runs)
    for ax, bars, ylabel in ((axes[0], BARS_UNIT, "score (0-1)"), (axes[1], BARS_PCT, "% vs first window")):
        x = np.arange(len(bars))
        for i, run in enumerate(runs):
            values = [_value(run.results, key, absolute) for key, _, absolute in bars]
            xs = x - 0.4 + width * (i + 0.5)
            ax.bar(xs, values, width, label=run.label)
            for xi, v in zip(xs, values):  # so a missing number is not read as a zero bar
                if not math.isfinite(v):
                    ax.text(xi, 0, MISSING, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [label for _, label, _ in bars], fontsize=8)
        ax.set_ylabel(ylabel)
    axes[0].set_ylim(0, 1)
    axes[1].axhline(10, color="green", ls="--", lw=1, label="target <= 10%")
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.evaluation.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="markdown file to write, e.g. docs/reports/NAME.md")
    parser.add_argument("--png", help="grouped-bar PNG to write, e.g. docs/images/NAME.png")
    parser.add_argument("--title", default="Evaluation runs compared")
    parser.add_argument("runs", nargs="+", metavar="LABEL=PATH", help="an eval run's results.json (or its directory)")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.runs)
    except CompareError as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    png = None
    if args.png:
        png = plot(runs, Path(args.png), args.title)
    # the image link is relative to the markdown file, so the report renders where it is committed
    link = os.path.relpath(png, out.parent).replace(os.sep, "/") if png else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(runs, args.title, link))
    print(f"wrote {out}" + (f" and {png}" if png else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
