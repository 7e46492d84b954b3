"""Metrics for long-running commands: a CSV that survives restarts, PNG curves, a progress bar."""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm


def agg_pyplot():
    """matplotlib.pyplot on the file-only Agg backend (servers, CI: no display), imported lazily
    because matplotlib is slow to import and most commands never plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class RunLog:
    """Appends one row per logged step to `<directory>/<name>.csv` and draws `<name>.png`.

    On resume, rows at or after the resumed step are dropped first, so the CSV never holds two
    rows for one step after a kill and restart.
    """

    def __init__(self, directory: str | Path, name: str = "metrics", resume_step: int | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.directory / f"{name}.csv"
        self.png_path = self.directory / f"{name}.png"
        self.rows: list[dict[str, float]] = self._read_rows(resume_step)
        self._rewrite()

    def _read_rows(self, resume_step: int | None) -> list[dict[str, float]]:
        if resume_step is None or not self.csv_path.exists():
            return []
        with self.csv_path.open() as f:
            rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
        return [r for r in rows if r.get("step", math.inf) < resume_step]

    def _columns(self) -> list[str]:
        cols: list[str] = ["step"]
        for row in self.rows:
            cols += [k for k in row if k not in cols]
        return cols

    def _rewrite(self) -> None:
        with self.csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns())
            writer.writeheader()
            writer.writerows(self.rows)

    def log(self, step: int, **metrics: float) -> None:
        row = {"step": float(step), **{k: float(v) for k, v in metrics.items()}}
        new_columns = any(k not in self._columns() for k in row)
        self.rows.append(row)
        if new_columns:
            self._rewrite()
            return
        with self.csv_path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._columns()).writerow(row)

    def plot(self, keys: Iterable[str] | None = None, title: str = "", log_y: bool = True) -> Path | None:
        """One panel per metric against step; returns the PNG path (None when nothing is logged)."""
        if not self.rows:
            return None
        plt = agg_pyplot()

        keys = [k for k in (keys or self._columns()) if k != "step"]
        fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.4 * len(keys)), squeeze=False)
        for ax, key in zip(axes[:, 0], keys):
            pts = [(r["step"], r[key]) for r in self.rows if key in r and math.isfinite(r[key])]
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, lw=1)
            if log_y and min(ys) > 0:
                ax.set_yscale("log")
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(self.png_path, dpi=100)
        plt.close(fig)
        return self.png_path


def progress(total: int, initial: int = 0, desc: str = "", unit: str = "step") -> tqdm:
    """A progress bar on stderr that still prints sensibly when stderr is not a terminal."""
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        mininterval=0.5 if interactive else 30.0,
        file=sys.stderr,
    )
