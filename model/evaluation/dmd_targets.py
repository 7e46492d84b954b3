"""Do the DMD real-score targets push the student towards saturation?

The generator's DMD gradient points from its samples towards what the teacher (the real score)
predicts from their noisy versions. If the teacher's x0 predictions are more saturated than the
samples they are computed from, every generator step pushes colour up, which is the rollout
failure the long stream shows (docs/distillation.md). This tool measures it directly:

    python -m model.evaluation.dmd_targets --student RUN/dmd --teacher assets/teacher \
        --pairs RUN/ode_pairs [--guidance 0,1,3] [--batches 4] [--batch 4] [--out FILE.json]

For each batch of ODE pairs the student rolls out its clips exactly as the DMD stage does (the
diagonal sampler, the pairs' noise and actions); the clips are noised at DMD levels in three
bands (low, middle, high noise) and the teacher predicts x0 at each guidance g (c + g (c - u)).
Both are decoded and compared per band: saturation and RMS contrast of the teacher's targets over
the samples' (1.0 = no push; > 1 = the score pushes towards saturation / contrast).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from model.common.device import torch_threads
from model.common.images import tensor_to_frames
from model.diffusion.flow import add_noise
from model.evaluation.metrics import hsv_saturation, rms_contrast
from model.runtime.stream import Conditioning
from model.runtime.world_model import load_world_model
from model.training.distill import predict_x0_full, self_forcing_rollout
from model.training.ode_pairs import OdePairs

BANDS = {"low (s 0.05-0.3)": (0.05, 0.3), "middle (s 0.3-0.7)": (0.3, 0.7), "high (s 0.7-0.98)": (0.7, 0.98)}


def decode_frames(autoencoder: torch.nn.Module, latents: torch.Tensor) -> np.ndarray:
    """[B, F, C, h, w] latents -> uint8 frames [B*F, H, W, 3]."""
    flat = latents.reshape(-1, *latents.shape[2:])
    return tensor_to_frames(autoencoder.decode(flat.float()))


def _stats(frames: np.ndarray) -> tuple[float, float]:
    return float(hsv_saturation(frames).mean()), float(rms_contrast(frames).mean())


@torch.no_grad()
def measure(student_dir: str, teacher_dir: str, pairs_dir: str, guidances: list[float], batches: int,
            batch: int, seed: int = 0) -> dict:
    student = load_world_model(student_dir, "cpu", with_text_encoder=False)
    teacher = load_world_model(teacher_dir, "cpu", with_text_encoder=False)
    pairs = OdePairs(Path(pairs_dir))
    sampler = student.sampler()
    sums: dict[str, dict[str, list[float]]] = {}
    samples_sat, samples_con = [], []
    gen = torch.Generator().manual_seed(seed)
    for k in range(batches):
        b = pairs.batch(k, batch, seed, torch.device("cpu"))
        chunk = student.dit.config.chunk_frames
        # every chunk exits at its last step: the clip a player sees
        exits = [sampler.steps(i) - 1 for i in range(b.x0.shape[1] // chunk)]
        cond = Conditioning.build(b.text, b.text_mask, False)
        noise = lambda shape: torch.randn(shape, generator=gen)  # noqa: E731
        x = self_forcing_rollout(student.dit, sampler, cond, b.actions, b.noise, exits, noise).latents
        sat_x, con_x = _stats(decode_frames(student.autoencoder, x))
        samples_sat.append(sat_x)
        samples_con.append(con_x)
        for band, (lo, hi) in BANDS.items():
            s = lo + (hi - lo) * torch.rand(x.shape[0], generator=gen)
            eps = torch.randn(x.shape, generator=gen)
            x_t = add_noise(x.float(), eps, s[:, None].expand(x.shape[0], x.shape[1]))
            for g in guidances:
                x0 = predict_x0_full(teacher.dit, x_t, s, b.actions, b.text, b.text_mask, g)
                sat, con = _stats(decode_frames(teacher.autoencoder, x0))
                row = sums.setdefault(f"g={g:g}, {band}", {"saturation": [], "contrast": []})
                row["saturation"].append(sat / max(sat_x, 1e-9))
                row["contrast"].append(con / max(con_x, 1e-9))
        print(f"batch {k + 1}/{batches}: samples saturation {sat_x:.3f}, contrast {con_x:.3f}", flush=True)
    return {
        "student": student_dir, "teacher": teacher_dir, "pairs": pairs_dir, "batches": batches, "batch": batch,
        "samples": {"saturation": float(np.mean(samples_sat)), "contrast": float(np.mean(samples_con))},
        "target_over_sample": {name: {k: float(np.mean(v)) for k, v in row.items()} for name, row in sums.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", required=True, help="student world checkpoint (e.g. RUN/dmd or RUN/init)")
    p.add_argument("--teacher", required=True, help="the real score's world checkpoint")
    p.add_argument("--pairs", required=True, help="the run's ODE pairs directory (noise, actions, prompts)")
    p.add_argument("--guidance", default="0,1,3", help="comma-separated real-score guidance values")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", help="write the JSON here too")
    args = p.parse_args(argv)
    try:
        guidances = [float(g) for g in args.guidance.split(",")]
    except ValueError:
        print(f"dmd_targets: --guidance must be comma-separated numbers, got {args.guidance!r}", file=sys.stderr)
        return 2
    with torch_threads(args.threads):
        result = measure(args.student, args.teacher, args.pairs, guidances, args.batches, args.batch)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
