"""The scoreboard of a long training run plotted against training time.

    python -m model.evaluation.history runs/teacher_long --out docs/images/teacher_long_scoreboard.png \\
        [--table docs/reports/teacher-long-scoreboard.md]

Reads RUN/history.csv (one row per scoreboard: `step,train_hours,scoreboard` with the path of that
scoreboard's JSON, written by scripts/teacher_long_run.sh) and plots, against cumulative training
hours, each signal beside its baseline: counterfactual accuracy (chance), teacher-forced PSNR (the
copy-last world), fidelity over chunks 1-10 (the still world). With --table it also writes a
markdown table of the same rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from model.common.runlog import agg_pyplot

HISTORY_FILE = "history.csv"


def read_history(run: str | Path) -> list[dict]:
    """Rows sorted by training time: {step, train_hours, **scoreboard JSON}."""
    path = Path(run) / HISTORY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no history (scripts/teacher_long_run.sh writes it)")
    rows = []
    with path.open() as f:
        for rec in csv.DictReader(f):
            board = Path(rec["scoreboard"])
            board = board if board.is_absolute() else Path(run) / board
            if not board.is_file():
                print(f"history: {board} missing, row skipped", file=sys.stderr)
                continue
            rows.append({"step": int(rec["step"]), "train_hours": float(rec["train_hours"]),
                         **json.loads(board.read_text())})
    return sorted(rows, key=lambda r: r["train_hours"])


PANELS = (  # (title, [(field, label, style)])
    ("counterfactual accuracy (5 actions)", [("counterfactual_accuracy", "world", "o-"),
                                             ("counterfactual_chance", "chance", "k--")]),
    ("teacher-forced next chunk, PSNR dB", [("teacher_forced_psnr_mean", "world", "o-"),
                                            ("teacher_forced_psnr_copy_last_mean", "copy-last", "k--")]),
    ("fidelity from an engine start, chunks 1-10, PSNR dB", [("psnr_10chunk", "world", "o-"),
                                                             ("psnr_still_10chunk", "still", "k--")]),
)


def plot(rows: list[dict], out: str | Path, title: str) -> None:
    plt = agg_pyplot()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    hours = [r["train_hours"] for r in rows]
    for ax, (panel, series) in zip(axes, PANELS):
        for field, label, style in series:
            ax.plot(hours, [r.get(field) for r in rows], style, label=label, markersize=4)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("training wall hours")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.supxlabel("wall hours of the training machine (x2 for core-hours on 2 CPU cores)", fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def table(rows: list[dict]) -> str:
    def f(v, d=2):
        return "n/a" if v is None else f"{v:.{d}f}"

    lines = ["| step | training h (wall) | counterfactual acc. (chance) | spread | TF PSNR (copy-last) | "
             "worst TF gain | PSNR ch. 1-10 (still) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r['step']} | {r['train_hours']:.2f} | {f(r.get('counterfactual_accuracy'), 3)} "
            f"({f(r.get('counterfactual_chance'), 2)}) | {f(r.get('counterfactual_spread_ratio'))} | "
            f"{f(r.get('teacher_forced_psnr_mean'))} ({f(r.get('teacher_forced_psnr_copy_last_mean'))}) | "
            f"{f(r.get('teacher_forced_gain_min'))} ({r.get('teacher_forced_gain_min_class', '')}) | "
            f"{f(r.get('psnr_10chunk'))} ({f(r.get('psnr_still_10chunk'))}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Plot a long run's scoreboard against training time.")
    p.add_argument("run", help="run directory holding history.csv")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--table", help="also write a markdown table here")
    p.add_argument("--title", default="teacher scoreboard during training (engine start, uniform sampler)")
    args = p.parse_args(argv)
    try:
        rows = read_history(args.run)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"history: {e}", file=sys.stderr)
        return 2
    if not rows:
        print("history: no scoreboard rows yet", file=sys.stderr)
        return 2
    plot(rows, args.out, args.title)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(table(rows))
    print(f"history: {len(rows)} rows -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
