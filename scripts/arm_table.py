"""One markdown table row per teacher arm, from its bake-off JSON and long-stream JSON
(docs/teacher-own-rollouts.md keeps these rows beside their control).

    .venv/bin/python scripts/arm_table.py NAME=BAKEOFF_JSON[:LONGSTREAM_JSON] ...

Columns: counterfactual accuracy (teacher-forced / free-running), forward's effect over the
engine's (teacher-forced / free-running), forward's teacher-forced gain over copy-last (dB),
fidelity chunk 1 / chunks 1-10 (dB), and for each long-stream scenario the range of saturation /
contrast / sharpness over the engine's in the judged windows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def spans(scenario: dict, judged_from_s: float) -> str:
    windows = scenario["windows"]
    keep = [i for i, t in enumerate(windows["t_s"]) if t >= judged_from_s]
    out = []
    for key in ("saturation", "contrast", "sharpness"):
        values = [windows["ratio"][key][i] for i in keep]
        out.append(f"{min(values):.2f}-{max(values):.2f}")
    return " / ".join(out)


def row(name: str, bakeoff: Path, longstream: Path | None) -> str:
    b = json.loads(bakeoff.read_text())
    effect = {mode: b[f"counterfactual_{mode}_effect_world_per_action"]["forward"]
              / b[f"counterfactual_{mode}_effect_engine_per_action"]["forward"] for mode in ("tf", "free")}
    cells = [
        name,
        f"{b['counterfactual_tf_accuracy']:.3f} / {b['counterfactual_free_accuracy']:.3f}",
        f"{effect['tf']:.3f} / {effect['free']:.3f}",
        f"{b['teacher_forced_gain']['forward']:.2f}",
        f"{b['psnr_1chunk']:.2f} / {b['psnr_10chunk']:.2f}",
    ]
    if longstream is not None:
        ls = json.loads(longstream.read_text())["longstream"]
        cells += [spans(ls[s], ls[s]["judged_from_s"]) for s in ("turn", "forward", "mixed") if s in ls]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    print("| arm | counterfactual tf / free | forward's effect tf / free | forward gain (dB) | fidelity 1 / 1-10 (dB) "
          "| held turn sat / con / sharp | held forward | mixed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for arg in argv:
        name, _, paths = arg.partition("=")
        bakeoff, _, longstream = paths.partition(":")
        print(row(name, Path(bakeoff), Path(longstream) if longstream else None))


if __name__ == "__main__":
    main(sys.argv[1:])
