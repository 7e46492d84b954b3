"""The student ablation's plot (docs/student-unet.md#ablations): fidelity per chunk for every arm, and
counterfactual accuracy (teacher-forced, free-running) per arm, from the bake-off JSON the ablation
wrote (docs/reports/student-ablation/) with the teacher and the shipped student beside them.

    .venv/bin/python scripts/plot_student_ablation.py [OUT_PNG]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
ARMS = {  # label: bake-off JSON, relative to docs/reports
    "teacher (Euler 8 + refresh)": "bakeoff-sharp8/teacher_distilled_g1.json",
    "shipped: DMD 800, 4-3-2": "student-unet/student_dmd800.json",
    "shipped weights, 4-3-1": "student-ablation/diag431.json",
    "shipped weights, uniform 1 + refresh": "student-ablation/uniform1.json",
    "base: DMD 150": "student-ablation/base.json",
    "rollouts of 3 chunks": "student-ablation/rollout3.json",
    "flow DMD off": "student-ablation/noflow.json",
    "context noise t = 1": "student-ablation/ctx0.json",
}


def main(out: Path) -> None:
    runs = {label: json.loads((DOCS / "reports" / path).read_text()) for label, path in ARMS.items()}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1.2, 1]})
    for label, r in runs.items():
        chunks = range(1, len(r["psnr_per_chunk"]) + 1)
        left.plot(chunks, r["psnr_per_chunk"], marker="o", ms=3, label=label,
                  lw=2.2 if label.startswith(("teacher", "shipped:")) else 1.2)
    still = runs["base: DMD 150"]["psnr_still_per_chunk"]
    left.plot(range(1, len(still) + 1), still, "k--", lw=1, label="still image")
    left.set(xlabel="chunk", ylabel="PSNR to the engine (dB)", title="fidelity per chunk (engine start)")
    left.legend(fontsize=7)
    labels = list(runs)
    y = range(len(labels))
    right.barh([i + 0.2 for i in y], [runs[k]["counterfactual_tf_accuracy"] for k in labels], 0.4,
               label="teacher-forced")
    right.barh([i - 0.2 for i in y], [runs[k]["counterfactual_free_accuracy"] for k in labels], 0.4,
               label="free-running")
    right.axvline(0.2, color="grey", ls=":", lw=1, label="chance")
    right.axvline(0.625, color="red", ls="--", lw=1, label="floor 0.625")
    right.set_yticks(list(y), labels, fontsize=8)
    right.invert_yaxis()
    right.set(xlabel="counterfactual accuracy (80 cases)", xlim=(0, 1), title="answers to the keys")
    right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DOCS / "images" / "student_ablation.png")
