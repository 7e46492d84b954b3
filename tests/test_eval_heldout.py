"""model.evaluation.heldout: the next-chunk loss and how much a network uses the keys."""

from __future__ import annotations

import torch

from model.evaluation.heldout import LEVELS, heldout_scores, parse_episodes
from model.nets.families import build_net, net_config
from model.nets.world_net import WorldNet


def _batch(cfg, clips: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    frames = 2 * cfg.chunk_frames
    return {"latents": torch.randn(clips, frames, *cfg.latent_shape, generator=g),
            "actions": (torch.rand(clips, frames, cfg.action_dim, generator=g) > 0.5).float(),
            "text": torch.randn(clips, 4, cfg.text_dim, generator=g),
            "text_mask": torch.ones(clips, 4, dtype=torch.bool)}


def _dit(uses_actions: bool) -> WorldNet:
    torch.manual_seed(0)
    dit = build_net(net_config("tiny")).eval()
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if uses_actions or not name.startswith("a_embed.mlp"):
                p.add_(0.1 * torch.randn_like(p))
        if not uses_actions:  # the action MLP outputs its bias alone: every action looks the same
            dit.a_embed.mlp[2].weight.zero_()
    return dit


def test_action_gain_is_zero_for_a_network_blind_to_actions():
    cfg = net_config("tiny")
    blind = heldout_scores(_dit(False), _batch(cfg), cfg.chunk_frames)
    seeing = heldout_scores(_dit(True), _batch(cfg), cfg.chunk_frames)
    assert blind["heldout_action_gain"] == 0.0
    assert seeing["heldout_action_gain"] != 0.0
    assert len(seeing["heldout_loss_per_level"]) == len(LEVELS) and seeing["copy_last_x0_mse"] > 0


def test_scores_are_deterministic_and_episode_ranges_parse():
    cfg = net_config("tiny")
    a = heldout_scores(_dit(True), _batch(cfg), cfg.chunk_frames)
    b = heldout_scores(_dit(True), _batch(cfg), cfg.chunk_frames)
    assert a == b
    assert parse_episodes("3-5") == [3, 4, 5] and parse_episodes("1,7") == [1, 7]
