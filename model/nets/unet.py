"""The causal conv U-Net: the shipped world's network (assets/teacher, assets/default_world).

A 5-degree turn moves the 64x64 view about 4 pixels a frame: one latent pixel, half a patch-2
token. A transformer on patch tokens must learn that sub-token shift from a global modulation; a
3x3 convolution over the noisy frame stacked with the previous frames makes it one weight
pattern. Every small world model that learned control does this (DIAMOND, GameNGen, Delta-IRIS);
docs/world-model.md has the bake-off that chose it over the patch DiT (model/nets/dit.py).

Two conv levels with a short transformer at the bottom, a WorldNet (model/nets/world_net.py:
conditioning, causal attention over the KV cache, the prompt's cross-attention, streaming):

    planes [in_ch, 16, 16] -> conv, residual blocks at 16x16 (conv_width)  --skip-----------------+
      -> stride-2 conv, residual blocks at 8x8 (2 x conv_width)            --skip---------+       |
      -> each 8x8 position is a token: the transformer blocks (depth), causal across chunks |     |
      -> residual blocks at 8x8 (+ skip) -> upsample, conv -> residual blocks at 16x16 (+ skip) -> v

- Input planes per frame: the noisy latent, the copy path's `copy_frames` previous frames as the
  context holds them (`WorldNet.previous_frames`) and the action planes: the frame's own action and
  the sum of the chunk's actions up to it, broadcast over the plane (where the view is now relative
  to the context depends on every earlier frame's action), plus an "actions given" plane (zero for
  guidance's null action). Frames are processed independently by the convolutions: mixing across
  frames (the chunk, the cached context, the prompt) is the transformer's job.
- Time and action reach every conv block through adaptive group norm (DIAMOND): a zero-initialised
  projection of the frame's condition scales and shifts the normalised features, and each block's
  last convolution starts at zero, so a fresh block is the identity.
- The prompt's FiLM (`text_film`): the pooled projection of the prompt joins the conv blocks'
  condition. Without it the prompt enters only by cross-attention at the bottom level, and conv
  layers that draw the picture from noise (a text start) never see it. It is built once per prompt
  and cached with the prompt's K/V (`_prompt_extras`).
- Coordinate planes (`coord_planes`, CoordConv): x and y, each running from -1 to 1 across the
  grid, join the input of every residual block's first convolution at both levels. A convolution
  is translation-equivariant: the same weights at every position, so a block cannot tell the
  horizon row from the near-ground row, nor the centre of the picture from its edge, except
  through the zero padding at the border. Walking forward expands the picture about its centre
  (near ground moves fast, the horizon hardly at all): a motion that depends on where it is. The
  planes' weights start at zero, so a network warm-started from a checkpoint without them begins
  by computing exactly what the checkpoint computed.
- Motion by resampling (`flow_warp`): a turn shifts the whole view, which a 3x3 convolution over
  the previous frame expresses with one weight pattern; walking forward expands the picture about
  its centre by an amount that depends on depth (the near ground moves fast, the horizon hardly at
  all), a resampling that a few convolution weights do not express, while copying the previous
  frame's detail is what keeps the picture sharp. So, as SDC-Net and GEN3C do, the network moves
  the past frame and generates only what is newly revealed: a small flow head reads the copy
  path's previous frames and the action planes and predicts, per frame, a flow field in latent
  pixels; the most recent previous frame (the one just before the chunk) is resampled along it
  (bilinear, border padding) and joins the input planes beside the unwarped copy. The flow head's
  last convolution and the warped frame's input convolution start at zero: the flow starts at 0,
  the warped frame is not read, and a network warm-started from a checkpoint without them begins
  by computing exactly what the checkpoint computed. The input convolution gets gradient at once
  (the warped frame is the previous frame), the flow head from the step after it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from model.nets.world_net import NetConfig, WorldNet


@dataclass
class UNetConfig(NetConfig):
    FAMILY: ClassVar[str] = "unet"

    conv_width: int = 96  # channels at 16x16; 2x at 8x8
    conv_blocks: int = 2  # residual blocks per level, on each side
    # The prompt also reaches the conv blocks: its pooled projection joins their adaptive group norms'
    # condition (FiLM; module docstring). False in configs written before it existed.
    text_film: bool = False
    # Every residual block's first convolution also reads x/y coordinate planes (module docstring:
    # where in the picture a motion happens). False in configs written before it existed.
    coord_planes: bool = False
    # The most recent previous frame, resampled along a predicted flow field, joins the input planes
    # (module docstring: motion by resampling). Needs the copy path. False in configs written before it.
    flow_warp: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.conv_width < 1:
            raise ValueError(f"conv_width must be positive, got {self.conv_width}")
        if self.patch != 2:
            raise ValueError(f"the U-Net's 8x8 level is the token grid: it needs patch 2, got {self.patch}")
        if self.flow_warp and not self.copy_path:
            raise ValueError("flow_warp resamples the copy path's most recent previous frame: it needs "
                             "copy_path True")

    @classmethod
    def legacy(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Configs saved when the U-Net was an option of the DiT name its two levels (conv_levels 2);
        1 was the removed hybrid (residual blocks at 16x16 around the patch DiT), git history has it."""
        data = dict(data)
        levels = data.pop("conv_levels", 2)
        if levels != 2:
            raise ValueError(f"conv_levels {levels}: only the two-level U-Net is supported (the "
                             "one-level hybrid was removed)")
        return data


PRESETS: dict[str, UNetConfig] = {
    # The shipped network (assets/teacher, assets/default_world): 96 channels at 16x16, 192 at 8x8,
    # two transformer blocks at the bottom, the three previous frames on the copy path, action tokens,
    # the prompt's FiLM. Its latent width follows the autoencoder (8 channels in the releases).
    "unet": UNetConfig(dim=256, depth=2, heads=4, mlp_ratio=3.0, conv_width=96, conv_blocks=2,
                       copy_path=True, copy_frames=3, action_tokens=True, text_film=True),
    # Seconds-long tests.
    "tiny-unet": UNetConfig(dim=32, depth=1, heads=2, conv_width=8, conv_blocks=1, copy_path=True, copy_frames=3),
}


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class AdaGroupNorm(nn.Module):
    """GroupNorm whose scale and shift come from the per-frame condition (zero-initialised)."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels, affine=False, eps=1e-6)
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x [N, ch, h, w], cond [N, D] -> [N, ch, h, w]."""
        scale, shift = self.proj(cond)[:, :, None, None].chunk(2, dim=1)
        return self.norm(x) * (1 + scale) + shift


def coordinate_planes(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[1, 2, h, w]: the column's x and the row's y, each linear from -1 to 1 across the grid."""
    ys = torch.linspace(-1.0, 1.0, h, dtype=dtype, device=device)
    xs = torch.linspace(-1.0, 1.0, w, dtype=dtype, device=device)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"))[None]


class ResBlock(nn.Module):
    """A residual block under the frame's condition; with `coord`, its first convolution also reads the
    coordinate planes (module docstring)."""

    def __init__(self, channels: int, cond_dim: int, coord: bool = False):
        super().__init__()
        self.norm1 = AdaGroupNorm(channels, cond_dim)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = AdaGroupNorm(channels, cond_dim)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        # conv1 over [features; planes] is conv1 over the features plus a convolution over the planes,
        # so the planes get their own layer: conv1 keeps its name and shape (a checkpoint without the
        # planes loads as it is, only `coord` missing) and `coord` starts at zero (the block computes
        # what it did without them). skip_init: no draw from the random generator, so the other layers
        # of a fresh network get the same initial weights with the planes as without.
        self.coord = nn.utils.skip_init(nn.Conv2d, 2, channels, 3, padding=1, bias=False) if coord else None
        if self.coord is not None:
            nn.init.zeros_(self.coord.weight)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, ch, h, w], cond [N, D], coords [1, 2, h, w] (with `coord`) -> [N, ch, h, w]."""
        h = self.conv1(F.silu(self.norm1(x, cond)))
        if self.coord is not None:
            h = h + self.coord(coords)  # [1, ch, h, w]: the same for every frame, broadcast over N
        return x + self.conv2(F.silu(self.norm2(h, cond)))


def action_planes(actions: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """actions [B, F, A] -> [B, F, 2A]: each frame's action and the running sum of its chunk's actions
    up to and including it (chunks never look across each other here: the context does that)."""
    B, Fr, A = actions.shape
    per_chunk = actions.reshape(B, Fr // chunk_frames, chunk_frames, A)
    running = per_chunk.cumsum(2).reshape(B, Fr, A)
    return torch.cat([actions, running], -1)


# The coordinate planes of one forward, per level: ([1, 2, h, w], [1, 2, h/2, w/2]), or None without them.
Coords = tuple[torch.Tensor, torch.Tensor] | None

# Latent pixels per unit of the flow head's output. 1: the head predicts the displacement in latent
# pixels directly (a 5-degree turn is about one latent pixel a frame, module docstring at the top), so
# its zero-initialised last layer reaches the motions it must learn with weights of order one.
FLOW_SCALE = 1.0
FLOW_HIDDEN = 32  # the flow head's hidden channels: a small fraction of the U-Net's cost


@functools.lru_cache(maxsize=16)
def identity_grid(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[1, h, w, 2]: every latent pixel's centre as grid_sample reads it with align_corners=False, (x, y)
    each in (-1, 1): the grid that samples a frame unmoved. Built once per (h, w, dtype, device), and as
    an ordinary tensor even when first asked for under inference mode (it is reused outside it)."""
    with torch.inference_mode(False):
        xs = (2 * torch.arange(w, dtype=torch.float64) + 1) / w - 1
        ys = (2 * torch.arange(h, dtype=torch.float64) + 1) / h - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)[None]
        return grid.to(dtype=dtype, device=device)


def warp(frame: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """frame [N, c, h, w], flow [N, 2, h, w] in latent pixels (x then y) -> [N, c, h, w]: at every pixel
    p, the frame at p + flow(p), bilinear; positions past the edge read the border (a view that moves
    reveals new ground at its edge, and the nearest known pixel is the best guess the generator then
    corrects). A zero flow returns the frame itself."""
    N, _, h, w = frame.shape
    flow = flow.to(frame.dtype)
    # Latent pixels -> grid_sample's normalised units: the frame spans 2 across its w columns and h rows.
    step = torch.tensor([2.0 / w, 2.0 / h], dtype=frame.dtype, device=frame.device)
    grid = identity_grid(h, w, frame.dtype, frame.device) + flow.permute(0, 2, 3, 1) * step  # [N, h, w, 2]
    return F.grid_sample(frame, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FlowHead(nn.Module):
    """The copy path's previous frames and the action planes [N, in_ch, h, w] -> a flow field [N, 2, h, w]
    in latent pixels: where each pixel of the frame being generated was in the most recent previous
    frame. Two 3x3 convolutions: motion a frame ahead is a few pixels at most, and the action planes say
    which way. The last one starts at zero, so the flow starts at exactly 0."""

    def __init__(self, in_ch: int, hidden: int = FLOW_HIDDEN):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_ch, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, 2, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    @property
    def last(self) -> nn.Conv2d:
        return self.net[-1]

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        """planes [N, in_ch, h, w] -> flow [N, 2, h, w] (latent pixels, x then y)."""
        return FLOW_SCALE * self.net(planes)


class ConvIn(nn.Module):
    """Per-frame planes [N, in_ch, h, w] -> tokens [N, (h/2)(w/2), dim] and the skips `ConvOut` reads.
    With `warp_channels` (flow_warp: the latent's c), the warped previous frame [N, c, h, w] is read too."""

    def __init__(self, in_ch: int, width: int, blocks: int, dim: int, cond_dim: int, coord: bool = False,
                 warp_channels: int = 0):
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, width, 3, padding=1)
        # conv_in over [planes; warped] is conv_in over the planes plus a convolution over the warped frame:
        # as with ResBlock.coord, conv_in keeps its name and shape (a checkpoint without the warp loads as
        # it is, only `warp_in` missing), `warp_in` starts at zero, and skip_init draws nothing from the
        # random generator, so the other layers of a fresh network are what they are without it.
        self.warp_in = (nn.utils.skip_init(nn.Conv2d, warp_channels, width, 3, padding=1, bias=False)
                        if warp_channels else None)
        if self.warp_in is not None:
            nn.init.zeros_(self.warp_in.weight)
        self.full = nn.ModuleList([ResBlock(width, cond_dim, coord) for _ in range(blocks)])
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.low = nn.ModuleList([ResBlock(2 * width, cond_dim, coord) for _ in range(blocks)])
        self.to_tokens = nn.Linear(2 * width, dim)

    def forward(self, planes: torch.Tensor, cond: torch.Tensor, coords: Coords = None,
                warped: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """planes [N, in_ch, h, w], cond [N, D], coords (with coordinate planes), warped [N, c, h, w] (with
        `warp_in`) -> tokens [N, (h/2)(w/2), dim] and the skips [[N, width, h, w], [N, 2 * width, h/2, w/2]]."""
        full, low = coords if coords is not None else (None, None)
        h = self.conv_in(planes)
        if self.warp_in is not None:
            h = h + self.warp_in(warped)
        for blk in self.full:
            h = blk(h, cond, full)
        skips = [h]
        h = self.down(h)
        for blk in self.low:
            h = blk(h, cond, low)
        skips.append(h)
        return self.to_tokens(rearrange(h, "n c gh gw -> n (gh gw) c")), skips


class ConvOut(nn.Module):
    """Token features [N, T, 2 * width] (the transformer's final layer) + skips -> velocity [N, out_ch, h, w]."""

    def __init__(self, out_ch: int, width: int, blocks: int, cond_dim: int, coord: bool = False):
        super().__init__()
        self.low = nn.ModuleList([ResBlock(2 * width, cond_dim, coord) for _ in range(blocks)])
        self.up = nn.Conv2d(2 * width, width, 3, padding=1)
        self.full = nn.ModuleList([ResBlock(width, cond_dim, coord) for _ in range(blocks)])
        self.norm_out = nn.GroupNorm(_groups(width), width, eps=1e-6)
        self.conv_out = nn.Conv2d(width, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, feats: torch.Tensor, skips: list[torch.Tensor], cond: torch.Tensor, grid: int,
                coords: Coords = None) -> torch.Tensor:
        """feats [N, grid^2, 2 * width], skips as ConvIn gives them, cond [N, D] -> [N, out_ch, h, w]."""
        full, low = coords if coords is not None else (None, None)
        h = rearrange(feats, "n (gh gw) c -> n c gh gw", gh=grid, gw=grid) + skips[1]
        for blk in self.low:
            h = blk(h, cond, low)
        h = self.up(F.interpolate(h, scale_factor=2, mode="nearest"))
        h = h + skips[0]
        for blk in self.full:
            h = blk(h, cond, full)
        return self.conv_out(F.silu(self.norm_out(h)))


class CausalUNet(WorldNet):
    config: UNetConfig

    def __init__(self, config: UNetConfig):
        super().__init__(config)
        cfg = config
        stacked = cfg.copy_frames if cfg.copy_path else 0
        in_ch = cfg.latent_channels * (1 + stacked) + 2 * cfg.action_dim + 1  # + "actions given" plane
        warp_channels = cfg.latent_channels if cfg.flow_warp else 0
        self.conv_in = ConvIn(in_ch, cfg.conv_width, cfg.conv_blocks, cfg.dim, cfg.dim, cfg.coord_planes,
                              warp_channels)
        self.conv_out = ConvOut(cfg.latent_channels, cfg.conv_width, cfg.conv_blocks, cfg.dim, cfg.coord_planes)
        self._build_core(out_features=2 * cfg.conv_width)
        self._build_action_tokens()
        self.text_film = nn.Linear(cfg.dim, cfg.dim) if cfg.text_film else None
        self.initialize_weights()
        # Built last: its first convolution's random weights are drawn after every other layer's, so a
        # fresh network's other layers are what they are without it. It reads the copy path's previous
        # frames and the action planes (in_ch less the noisy frame).
        self.flow_head = FlowHead(in_ch - cfg.latent_channels) if cfg.flow_warp else None

    def silent_inputs(self) -> list[nn.Linear]:
        return super().silent_inputs() + ([self.text_film] if self.text_film is not None else [])

    def initialize_weights(self) -> None:
        super().initialize_weights()
        for m in self.modules():  # the xavier pass reset them: adaptive norms start as plain norms
            if isinstance(m, AdaGroupNorm):
                nn.init.zeros_(m.proj.weight)
                nn.init.zeros_(m.proj.bias)

    def _prompt_extras(self, ctx: torch.Tensor, mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """With text_film, the prompt's FiLM condition [B, D] as both k and v of one entry after the
        blocks' (so the caches keep it with the prompt's K/V): the mean over the prompt's tokens and the
        null token (a dropped prompt: the null token alone)."""
        if self.text_film is None:
            return []
        w = mask.to(ctx.dtype)[..., None]
        film = self.text_film((ctx * w).sum(1) / w.sum(1))
        return [(film, film)]

    def input_action_planes(self, actions: torch.Tensor, drop_actions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """actions [B, F, A], drop_actions [B], x [B, F, c, h, w] (dtype and size) -> the action planes
        [B, F, 2A + 1, h, w]: each frame's action, its chunk's running sum and the "actions given" plane,
        broadcast over the plane. A dropped clip's planes are all zero (the null action)."""
        B, Fr, _, h, w = x.shape
        given = (~drop_actions).to(x.dtype)[:, None, None].expand(B, Fr, 1)
        acts = torch.cat([action_planes(actions.to(x.dtype), self.config.chunk_frames) * given, given], -1)
        return acts[..., None, None].expand(*acts.shape, h, w)

    def warped_previous(self, prev: torch.Tensor, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """flow_warp: prev [B, F, K * c, h, w] (the copy path's frames, oldest first), acts [B, F, 2A + 1, h, w]
        (`input_action_planes`) -> (the most recent previous frame resampled along the predicted flow [B, F, c, h, w],
        the flow [B, F, 2, h, w] in latent pixels). The flow reads only what both modes give alike (the
        previous frames and the actions), so streaming and the full sequence warp the same."""
        assert self.flow_head is not None, "warped_previous needs flow_warp"
        c = self.config.latent_channels
        flow = self.flow_head(torch.cat([prev, acts], 2).flatten(0, 1))  # [B * F, 2, h, w]
        last = prev[:, :, -c:].flatten(0, 1)  # the frame just before the chunk (zeros for chunk 0)
        lead = prev.shape[:2]  # B, F
        return warp(last, flow).unflatten(0, lead), flow.unflatten(0, lead)

    def _tokens(self, x: torch.Tensor, prev: torch.Tensor | None, actions: torch.Tensor, drop_actions: torch.Tensor,
                c: torch.Tensor, text_kv: list[list[tuple]]) -> tuple[torch.Tensor, tuple]:
        """Conv stem: x [B, F, c, h, w], prev [B, F, K * c, h, w] or None, actions [B, F, A], drop [B],
        c [B, F, D] -> tokens [B, F, T, D] and (skips, the conv blocks' condition, the coordinate planes)
        for `_velocity`. A dropped clip's action planes are zero and its "actions given" plane too (the
        null action). The coordinate planes are built here once per forward, for both levels and every
        block of ConvIn and ConvOut. With flow_warp the warped previous frame joins the planes."""
        c_conv = c  # the conv blocks' condition: time + action (+ the prompt's FiLM)
        if self.text_film is not None:
            film = torch.cat([k for k, _, _ in text_kv[len(self.blocks)]])  # [B, D], rows in batch order
            c_conv = c + film[:, None, :].to(c.dtype)
        B, Fr, _, h, w = x.shape
        acts = self.input_action_planes(actions, drop_actions, x)
        prev = prev.to(x.dtype) if self.config.copy_path else None
        planes = [x] + ([prev] if prev is not None else []) + [acts]
        warped = self.warped_previous(prev, acts)[0].flatten(0, 1) if self.flow_head is not None else None
        coords = None
        if self.config.coord_planes:
            grid = self.config.grid  # the 8x8 level: the token grid
            coords = (coordinate_planes(h, w, x.dtype, x.device), coordinate_planes(grid, grid, x.dtype, x.device))
        tokens, skips = self.conv_in(torch.cat(planes, 2).flatten(0, 1), c_conv.flatten(0, 1), coords, warped)
        return tokens.reshape(B, Fr, *tokens.shape[1:]), (skips, c_conv, coords)

    def _velocity(self, out: torch.Tensor, state: tuple, shape: torch.Size) -> torch.Tensor:
        skips, c_conv, coords = state
        v = self.conv_out(out.flatten(0, 1), skips, c_conv.flatten(0, 1), self.config.grid, coords)
        return v.reshape(shape)
