"""Held-out next-chunk loss: a fast, sensitive signal of what a teacher has learned (ablations).

    python -m model.evaluation.heldout --checkpoint runs/x/checkpoint --latents data/latents128 \\
        --episodes 100-127 [--clips 48] [--threads 1] [--out F.json]

The scoreboard (model/evaluation/scoreboard.py) asks whether a world *plays* better than a still
image; a few hundred CPU steps rarely move it. This asks what the network predicts, on clips of
episodes the run never trained on: two chunks, the first clean (the context, as the teacher's
refresh pass writes it), the second noised to each of LEVELS; the flow loss on the second chunk
is the next-chunk loss. The same clips with the second chunk's actions taken from another clip
measure how much the network uses the keys (`heldout_action_gain`: loss with the wrong actions
minus loss with the right ones; 0 = ignores them). Beside them, the x0 error of the network at
level 0.5 and of copy-last (the context's last frame repeated), in latent space.

Deterministic: the clips, noise and the derangement come from fixed seeds, so every checkpoint
sees exactly the same inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from model.common.device import set_threads
from model.diffusion.flow import add_noise, flow_loss, network_time, predict_x0, velocity_target
from model.runtime.world_model import load_world_model
from model.training.encode_latents import LatentClips, text_table

LEVELS = (0.2, 0.5, 0.8, 0.95)  # noise levels of the predicted chunk


def parse_episodes(text: str) -> list[int]:
    """"100-127" or "3,5,9" -> episode indices."""
    if "-" in text:
        lo, hi = (int(v) for v in text.split("-", 1))
        return list(range(lo, hi + 1))
    return [int(v) for v in text.split(",") if v.strip()]


def heldout_batch(cache: str, episodes: list[int], clips: int, chunk_frames: int, seed: int = 0) -> dict:
    """`clips` two-chunk clips from `episodes`, chosen by a fixed seed: latents [N, 2C, c, h, w] etc."""
    data = LatentClips(cache, 2, chunk_frames, episodes=episodes)
    if len(data) == 0:
        raise ValueError(f"{cache}: no clips in episodes {episodes[0]}..{episodes[-1]} (encoded yet?)")
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(data), generator=gen)[:clips].tolist()
    items = [data[i] for i in pick]
    tokens, mask = text_table(cache)
    ids = torch.stack([torch.as_tensor(it["prompt_ids"])[-1] for it in items])
    return {
        "latents": torch.stack([torch.as_tensor(it["latents"]) for it in items]).float(),
        "actions": torch.stack([torch.as_tensor(it["actions"]) for it in items]).float(),
        "text": tokens[ids].float(), "text_mask": mask[ids].bool(),
    }


@torch.no_grad()
def heldout_scores(dit: torch.nn.Module, batch: dict, chunk_frames: int, seed: int = 0) -> dict:
    x0, actions = batch["latents"], batch["actions"]
    B, Fr = x0.shape[:2]
    C = chunk_frames
    gen = torch.Generator().manual_seed(seed + 1)
    eps = torch.randn(x0.shape, generator=gen)
    shift = torch.roll(torch.arange(B), 1)  # a derangement: every clip gets another clip's actions
    wrong = actions.clone()
    wrong[:, C:] = actions[shift, C:]
    weight = torch.cat([torch.zeros(B, C), torch.ones(B, Fr - C)], 1)  # loss on the predicted chunk only
    out: dict = {"levels": list(LEVELS), "heldout_loss_per_level": [], "heldout_action_gain_per_level": []}
    for s_val in LEVELS:
        s = torch.cat([torch.zeros(B, C), torch.full((B, Fr - C), s_val)], 1)
        xt = add_noise(x0, eps, s)
        t = network_time(s)
        v_right = dit(xt, t, actions, batch["text"], batch["text_mask"])
        v_wrong = dit(xt, t, wrong, batch["text"], batch["text_mask"])
        target = velocity_target(x0, eps)
        right, bad = float(flow_loss(v_right, target, weight)), float(flow_loss(v_wrong, target, weight))
        out["heldout_loss_per_level"].append(right)
        out["heldout_action_gain_per_level"].append(bad - right)
        if s_val == 0.5:
            x0_hat = predict_x0(xt[:, C:], v_right[:, C:], s_val)
            out["heldout_x0_mse"] = float((x0_hat - x0[:, C:]).pow(2).mean())
    copy_last = x0[:, C - 1 : C].expand(B, Fr - C, *x0.shape[2:])
    out["copy_last_x0_mse"] = float((copy_last - x0[:, C:]).pow(2).mean())
    out["heldout_loss"] = sum(out["heldout_loss_per_level"]) / len(LEVELS)
    out["heldout_action_gain"] = sum(out["heldout_action_gain_per_level"]) / len(LEVELS)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Held-out next-chunk loss and action use of a world checkpoint.")
    p.add_argument("--checkpoint", required=True, help="world checkpoint (a run's checkpoint/ or a bundle)")
    p.add_argument("--latents", required=True, help="latent cache holding the held-out episodes")
    p.add_argument("--episodes", required=True, help="held-out episode indices: 100-127 or 3,5,9")
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    set_threads(args.threads)
    try:
        world = load_world_model(args.checkpoint, "cpu")
        batch = heldout_batch(args.latents, parse_episodes(args.episodes), args.clips, world.dit.config.chunk_frames,
                              args.seed)
    except (OSError, ValueError) as e:
        print(f"heldout: {e}", file=sys.stderr)
        return 2
    result = {"checkpoint": args.checkpoint, "model_step": world.step, "episodes": args.episodes,
              "clips": int(batch["latents"].shape[0]), "seed": args.seed,
              **heldout_scores(world.dit.eval(), batch, world.dit.config.chunk_frames, args.seed)}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
