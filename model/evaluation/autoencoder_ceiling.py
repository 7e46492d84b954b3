"""Compare autoencoders by the ceiling each puts on a latent world, before any world is trained.

    python -m model.evaluation.autoencoder_ceiling --autoencoder runs/ae_teacher --autoencoder runs/ae_sharp8
        [--contexts 8] [--episodes 4] [--json OUT.json]

On the contexts and episodes of the full evaluation (model/evaluation/eval_config.py), the engine's
own frames are encoded and decoded by each autoencoder (model/evaluation/ceiling.py): the best a
perfect latent prediction can score. Reported beside the exact-copy baselines they are compared
with in the measures:

- teacher_forced: per action class, the round trip of the engine's next chunk, copy-last on the same
  chunk, and the ceiling gain (round trip minus copy-last), as `measure_teacher_forced` reports it
  for a world with that autoencoder;
- fidelity: the round trip of the fidelity episodes' chunk 1 and chunks 1-10 beside `still`, the
  baseline a world must pass (a ceiling below still's chunk 1 means no world can pass it there);
- decode ms per frame (batch 3, fp32 CPU, the real-time path) and parameters.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from model.common.images import frames_to_tensor, tensor_to_frames
from model.evaluation.eval_config import EVAL_PRESETS, EvalConfig
from model.evaluation.measure_counterfactual import context_start, outcomes
from model.evaluation.measure_fidelity import episode_frames
from model.evaluation.measure_teacher_forced import TEACHER_FORCED_CLASSES, teacher_forced_context
from model.evaluation.metrics import psnr_per_frame
from model.evaluation.worlds import Worlds
from model.nets import count_parameters
from model.training.autoencoder import decode_ms_per_frame, load_autoencoder
from world.backends.registry import create_backend


@torch.inference_mode()
def roundtrip(ae: torch.nn.Module, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    """uint8 frames [..., H, W, 3] encoded and decoded by `ae` (same shape)."""
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = [tensor_to_frames(ae.decode(ae.encode(frames_to_tensor(flat[i : i + batch]))))
           for i in range(0, len(flat), batch)]
    return np.concatenate(out).reshape(frames.shape)


def _mean_psnr(gen: np.ndarray, ref: np.ndarray) -> float:
    return float(psnr_per_frame(gen.reshape(-1, *gen.shape[-3:]), ref.reshape(-1, *ref.shape[-3:])).mean())


def engine_references(cfg: EvalConfig) -> dict:
    """The engine frames and the exact-copy baselines the ceilings are read against."""
    engine = create_backend("engine")
    info = engine.info
    f = info.chunk_frames
    copy = Worlds(create_backend("copy-last", height=info.height, width=info.width, chunk_frames=f), engine)
    still = Worlds(create_backend("still", height=info.height, width=info.width, chunk_frames=f), engine)
    next_chunks, copies = [], []
    for c in range(cfg.teacher_forced_contexts):
        seed, prompt = teacher_forced_context(c, cfg)
        ctx = context_start(copy, cfg, seed, prompt)
        next_chunks.append(outcomes(copy, seed, prompt, ctx, TEACHER_FORCED_CLASSES, f, engine=True))
        copies.append(outcomes(copy, seed, prompt, ctx, TEACHER_FORCED_CLASSES, f, engine=False))
    episodes, stills = [], []
    for e in range(cfg.fidelity_episodes):
        gen, ref = episode_frames(still, cfg, e)  # the fidelity measure's own episodes
        episodes.append(ref)
        stills.append(gen)
    return {"chunk_frames": f, "next": np.stack(next_chunks, 1), "copy": np.stack(copies, 1),  # [A, C, F, H, W, 3]
            "episodes": np.stack(episodes), "still": np.stack(stills)}  # [E, n, H, W, 3]


def ceiling_report(ae: torch.nn.Module, refs: dict) -> dict:
    names = list(TEACHER_FORCED_CLASSES)
    f = refs["chunk_frames"]
    ae_db = {n: _mean_psnr(roundtrip(ae, refs["next"][a]), refs["next"][a]) for a, n in enumerate(names)}
    copy_db = {n: _mean_psnr(refs["copy"][a], refs["next"][a]) for a, n in enumerate(names)}
    episodes = refs["episodes"]
    ae_ep, still_ep = roundtrip(ae, episodes), refs["still"]
    return {
        "parameters": count_parameters(ae),
        "latent_shape": list(ae.config.latent_shape),
        "decode_ms_per_frame": decode_ms_per_frame(ae, batch=3, threads=1),
        "teacher_forced_psnr_autoencoder": ae_db,
        "teacher_forced_psnr_copy_last": copy_db,
        "teacher_forced_gain_ceiling": {n: ae_db[n] - copy_db[n] for n in names},
        "psnr_autoencoder_1chunk": _mean_psnr(ae_ep[:, :f], episodes[:, :f]),
        "psnr_still_1chunk": _mean_psnr(still_ep[:, :f], episodes[:, :f]),
        "psnr_autoencoder_10chunk": _mean_psnr(ae_ep, episodes),
        "psnr_still_10chunk": _mean_psnr(still_ep, episodes),
    }


def markdown(reports: dict[str, dict]) -> str:
    names = list(TEACHER_FORCED_CLASSES)
    head = "| class | copy-last dB | " + " | ".join(f"`{k}` round trip / ceiling gain" for k in reports) + " |"
    rows = [head, "| --- | --- | " + " | ".join("---" for _ in reports) + " |"]
    first = next(iter(reports.values()))
    for n in names:
        cells = [f"{r['teacher_forced_psnr_autoencoder'][n]:.2f} / {r['teacher_forced_gain_ceiling'][n]:+.2f}"
                 for r in reports.values()]
        rows.append(f"| {n} | {first['teacher_forced_psnr_copy_last'][n]:.2f} | " + " | ".join(cells) + " |")
    for key, label, base in (("psnr_autoencoder_1chunk", "fidelity chunk 1", "psnr_still_1chunk"),
                             ("psnr_autoencoder_10chunk", "fidelity chunks 1-10", "psnr_still_10chunk")):
        rows.append(f"| {label} (still) | {first[base]:.2f} | " + " | ".join(f"{r[key]:.2f}" for r in reports.values())
                    + " |")
    rows.append("| decode ms/frame (1 thread) | | " + " | ".join(f"{r['decode_ms_per_frame']:.2f}"
                                                                    for r in reports.values()) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.evaluation.autoencoder_ceiling",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--autoencoder", action="append", required=True,
                        help="autoencoder checkpoint or training --out directory (repeat to compare)")
    parser.add_argument("--contexts", type=int, default=None, help="teacher-forced contexts (default: full eval's)")
    parser.add_argument("--episodes", type=int, default=None, help="fidelity episodes (default: full eval's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write the reports here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = EVAL_PRESETS["full"]
    if args.contexts is not None:
        cfg = replace(cfg, teacher_forced_contexts=args.contexts)
    if args.episodes is not None:
        cfg = replace(cfg, fidelity_episodes=args.episodes)
    refs = engine_references(cfg)
    reports = {path: ceiling_report(load_autoencoder(path, "cpu").eval(), refs) for path in args.autoencoder}
    print(markdown(reports))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"contexts": cfg.teacher_forced_contexts,
                                         "episodes": cfg.fidelity_episodes, "reports": reports}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
