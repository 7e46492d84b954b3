"""The patch-token causal DiT: each latent frame's 2x2 patches are the transformer's tokens.

The family of the first releases (assets/teacher-v1, assets/teacher-dit; docs/world-model.md
compares it with the U-Net that replaced it). A WorldNet (model/nets/world_net.py: conditioning,
causal attention, the prompt, streaming) whose frames become tokens by a linear patch embedding:

- Tokens: each latent frame [C, 16, 16] is cut into 2x2 patches -> 8x8 = 64 tokens.
- Copy path (`copy_path`): every frame's tokens also receive the patches of the `copy_frames`
  frames before its chunk (as the context holds them) through a zero-initialised projection.
- Output: the final layer gives each token its patch of the velocity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from einops import rearrange
from torch import nn

from model.nets.world_net import NetConfig, WorldNet


@dataclass
class DiTConfig(NetConfig):
    FAMILY: ClassVar[str] = "dit"

    @classmethod
    def legacy(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Configs saved when the U-Net was an option of this class carry its options switched off
        (conv_width 0, conv_blocks and conv_levels unread); anything else was another network."""
        data = dict(data)
        if data.pop("conv_width", 0) or data.pop("text_film", False):
            raise ValueError("conv options on a DiT config: a U-Net config needs family 'unet'")
        data.pop("conv_blocks", None)
        data.pop("conv_levels", None)
        return data


PRESETS: dict[str, DiTConfig] = {
    # Seconds-long tests.
    "tiny": DiTConfig(dim=32, depth=2, heads=2),
    # The DiT releases: 8.15M parameters, so the fp16 file stays under 16 MiB (docs/design.md §5);
    # MLP ratio 3 rather than 4 pays for the cross-attention within that budget.
    "default": DiTConfig(dim=256, depth=8, heads=4, mlp_ratio=3.0),
}


class CausalDiT(WorldNet):
    config: DiTConfig

    def __init__(self, config: DiTConfig):
        super().__init__(config)
        cfg = config
        patch_dim = cfg.latent_channels * cfg.patch**2
        self.patch_in = nn.Linear(patch_dim, cfg.dim)
        self._build_core(out_features=patch_dim)
        self.copy_in = nn.Linear(patch_dim * cfg.copy_frames, cfg.dim) if cfg.copy_path else None
        self._build_action_tokens()
        self.initialize_weights()

    def silent_inputs(self) -> list[nn.Linear]:
        return ([self.copy_in] if self.copy_in is not None else []) + super().silent_inputs()

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, F, C, h, w] -> [B, F, T, C * p * p] patch vectors."""
        p = self.config.patch
        return rearrange(x, "b f c (gh p) (gw q) -> b f (gh gw) (p q c)", p=p, q=p)

    def _tokens(self, x: torch.Tensor, prev: torch.Tensor | None, actions: torch.Tensor, drop_actions: torch.Tensor,
                c: torch.Tensor, text_kv: list[list[tuple]]) -> tuple[torch.Tensor, None]:
        hid = self.patch_in(self._patchify(x))  # [B, F, T, D]
        if self.copy_in is not None:
            hid = hid + self.copy_in(self._patchify(prev))
        return hid, None

    def _velocity(self, out: torch.Tensor, state: None, shape: torch.Size) -> torch.Tensor:
        g, p = self.config.grid, self.config.patch
        return rearrange(out, "b f (gh gw) (p q c) -> b f c (gh p) (gw q)", gh=g, gw=g, p=p, q=p)
