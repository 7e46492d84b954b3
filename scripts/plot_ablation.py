"""The ablation plots: fidelity per chunk for every arm, and counterfactual accuracy (teacher-forced,
free-running) per arm, from the bake-off JSON in docs/reports/:
  student  the student's ablation (docs/student-unet.md#ablations), teacher and shipped student beside it;
  teacher  the teacher's arms beside their control (docs/teacher-own-rollouts.md).

    .venv/bin/python scripts/plot_ablation.py [student|teacher] [OUT_PNG]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
STUDENT = {  # label: bake-off JSON, relative to docs/reports
    "teacher (Euler 8 + refresh)": "bakeoff-sharp8/teacher_distilled_g1.json",
    "shipped: DMD 800, 4-3-2": "student-unet/student_dmd800.json",
    "shipped weights, 4-3-1": "student-ablation/diag431.json",
    "shipped weights, uniform 1 + refresh": "student-ablation/uniform1.json",
    "shipped weights, uniform 4 + refresh": "student-ablation/uniform4.json",
    "base: DMD 150": "student-ablation/base.json",
    "rollouts of 3 chunks": "student-ablation/rollout3.json",
    "flow DMD off": "student-ablation/noflow.json",
    "context noise t = 1": "student-ablation/ctx0.json",
}
TEACHER = {
    "assets/teacher": "bakeoff-sharp8/teacher_distilled_g1.json",
    "control: +432 steps": "teacher-arms/control.json",
    "own rollouts: +432, share 0.5": "teacher-arms/own_rollout.json",
    "where: coordinate planes + first frame x3": "teacher-arms/where.json",
    "flow warp, zero start": "teacher-arms/flow.json",
    "flow warp, transfer start": "teacher-arms/flow_transfer.json",
    "guidance without its parallel part (APG)": "teacher-arms/apg.json",
    "data target: data's velocity + guidance term": "teacher-arms/data_target.json",
    "data target + prompt paraphrases": "teacher-arms/prompts.json",
    "data target + flow warp, transfer start": "teacher-arms/data_target_warp.json",
}
SETS = {"student": (STUDENT, "student_ablation.png"), "teacher": (TEACHER, "teacher_arms.png")}


def main(arms: dict[str, str], out: Path) -> None:
    runs = {label: json.loads((DOCS / "reports" / path).read_text()) for label, path in arms.items()}
    # A third panel when every arm measured walking: forward's effect, which the teacher's arms target.
    walking = all("counterfactual_free_effect_world_per_action" in r for r in runs.values())
    fig, axes = plt.subplots(1, 3 if walking else 2, figsize=(17 if walking else 12, 4.5),
                             gridspec_kw={"width_ratios": [1.2, 1, 0.7] if walking else [1.2, 1]})
    left, right = axes[0], axes[1]
    for label, r in runs.items():
        chunks = range(1, len(r["psnr_per_chunk"]) + 1)
        left.plot(chunks, r["psnr_per_chunk"], marker="o", ms=3, label=label,
                  lw=2.2 if label.startswith(("teacher", "shipped:", "assets/")) else 1.2)
    still = next(iter(runs.values()))["psnr_still_per_chunk"]
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
    if walking:
        effect = {mode: [runs[k][f"counterfactual_{mode}_effect_world_per_action"]["forward"]
                         / runs[k][f"counterfactual_{mode}_effect_engine_per_action"]["forward"] for k in labels]
                  for mode in ("tf", "free")}
        axes[2].barh([i + 0.2 for i in y], effect["tf"], 0.4, label="teacher-forced")
        axes[2].barh([i - 0.2 for i in y], effect["free"], 0.4, label="free-running")
        axes[2].axvline(0.5, color="red", ls="--", lw=1, label="target 0.5")
        axes[2].set_yticks(list(y), [""] * len(labels))
        axes[2].invert_yaxis()
        axes[2].set(xlabel="forward's effect, world / engine", xlim=(0, 0.6), title="walking")
        axes[2].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "student"
    if which not in SETS:
        sys.exit(f"plot: choose one of {', '.join(SETS)}, got {which!r}")
    arms, name = SETS[which]
    main(arms, Path(sys.argv[2]) if len(sys.argv) > 2 else DOCS / "images" / name)
