"""The causal diffusion transformer: chunk-by-chunk video latents from actions and a prompt.

A pure network (DiT habit): `forward(x, t, actions, text, text_mask, cache)` predicts the flow
velocity `v = eps - x0` (docs/design.md §3) and knows nothing about noise schedules or samplers.

- Tokens: each latent frame [C, 16, 16] is cut into 2x2 patches -> 8x8 = 64 tokens.
- Conditioning per frame: sinusoidal timestep MLP + action MLP (a learned null action for
  classifier-free guidance), summed, drive adaLN shift/scale/gate per frame (DIAMOND / Oasis
  style action conditioning). adaLN-single (PixArt-alpha): one projection of the per-frame
  condition shared by all blocks plus a learned per-block offset table; per-block adaLN MLPs would
  add 3M parameters and push the fp16 checkpoint past the 16 MiB limit (docs/design.md §5). Gates and
  the output layer start at zero (adaLN-Zero), so the untrained network is the identity residual.
- Self-attention: bidirectional inside a chunk (3 frames), causal across chunks, restricted to the
  sink + recent window of `attention_span` (model/nets/kv_cache.py). 3D RoPE on q/k with span-relative
  frame positions, so streams are unbounded (keys cached unrotated).
- Text: cross-attention to the projected prompt tokens plus a learned null token that is always
  visible; dropping the prompt (classifier-free guidance) = masking every real token.
- Copy path (`copy_path`): each frame's tokens also receive the patches of the previous chunk's
  last frame through a zero-initialised projection. The previous frame is the *input* that wrote
  that frame's K/V (clean after a refresh pass, at the context level for the diagonal sampler):
  in full-sequence mode it is the input x itself shifted by one chunk, when streaming the cache's
  stored input of its newest frame, so training and inference see the same thing. Chunk 0 (the
  sink) has no predecessor and gets zeros.
- Action tokens (`action_tokens`): the frame's action embedding is also added to each of its
  tokens through a zero-initialised projection (Hunyuan-GameCraft: adding beats concatenating).
- Motion at full resolution (`conv_width` > 0, model/nets/conv_stem.py): instead of a linear patch
  embedding, residual conv blocks at the latent's resolution read the noisy frame, the copy path's
  `copy_frames` previous frames and action planes, and turn them into the tokens; after the
  transformer, conv blocks with skips from the input side make the velocity. `conv_levels` 2 adds a
  half-resolution level, so the transformer sits at the bottom of a small U-Net (presets "unet"
  and "hybrid" below; docs/world-model.md compares them).

Two modes, one attention rule:
- full sequence (`cache=None`, F a multiple of the chunk): each chunk's queries attend to the
  K/V slice `attention_span` names, which is the block-causal + sink/window mask, evaluated per
  chunk (window-bounded cost, and the same code path as streaming).
- streaming (`cache` given, F = one chunk): the chunk's K/V go into the cache's current slot and
  attention reads the cached span. Equal to full sequence on the same inputs (tests/test_dit.py).
  The network reads a cache only through five calls (`KVCache.per_stream` and the four after it), so
  a `CacheBatch` (model/nets/cache_batch.py) streams several worlds in one forward, each row group
  with its own cache and prompt, identical to streaming them one by one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from model.nets.cache_batch import CacheBatch
from model.nets.conv_stem import AdaGroupNorm, ConvIn, ConvOut, action_planes
from model.nets.kv_cache import CacheLayout, KVCache, attention_span
from model.nets.rope import Rope3D


@dataclass
class DiTConfig:
    latent_channels: int = 4
    latent_size: int = 16
    patch: int = 2  # 16x16 latent -> 8x8 = 64 tokens per frame
    dim: int = 256
    depth: int = 8
    heads: int = 4  # head dim 64
    mlp_ratio: float = 4.0
    text_dim: int = 384  # MiniLM token features
    action_dim: int = 12  # world.actions.ACTION_DIM
    chunk_frames: int = 3  # docs/design.md §3: chunk = 3 latent frames
    sink_frames: int = 3  # first chunk, never evicted
    # Attention frames: the most recent frames each query attends besides the sink, the current chunk
    # included (the KV cache's rolling window, model/nets/kv_cache.py). Not the worker's flow-control limit
    # (WorkerConfig.max_unacked, in chunks) nor the protocol's lookahead.
    window_frames: int = 9
    max_text_tokens: int = 32  # longer prompts are truncated
    cfg_dropout_text: float = 0.1  # training: probability a clip loses its prompt
    cfg_dropout_actions: float = 0.1  # training: probability a clip loses its actions
    freq_dim: int = 256  # sinusoidal timestep features
    rope_theta: float = 10000.0
    # Copy path (docs/design.md, "learning dynamics at small scale"): every frame's tokens also
    # get the previous chunk's last frame, exactly as the context holds it, through their own
    # patch projection, so copying and shifting the view is easy.
    copy_path: bool = False
    # Action embedding added to every token of its frame as well as to adaLN (harder to ignore).
    action_tokens: bool = False
    # Previous frames on the copy path, stacked on channels (1: the previous chunk's last frame).
    copy_frames: int = 1
    # Conv blocks at full latent resolution around the transformer (model/nets/conv_stem.py); 0: none.
    conv_width: int = 0
    conv_blocks: int = 2  # residual blocks per level, on each side
    conv_levels: int = 1  # 2: a half-resolution level whose positions are the tokens (needs patch 2)
    # The prompt also reaches the conv blocks: its pooled projection joins their adaptive group norms'
    # condition (FiLM). Without it the prompt enters only by cross-attention at the transformer's
    # level, and conv layers that draw the picture from noise (a text start) never see it.
    text_film: bool = False

    def __post_init__(self) -> None:
        if self.latent_size % self.patch:
            raise ValueError(f"latent_size {self.latent_size} is not divisible by patch {self.patch}")
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError(f"dim {self.dim} must split into {self.heads} heads of even size")
        CacheLayout.from_config(self)  # validates sink/window against the chunk
        if self.text_film and not self.conv_width:
            raise ValueError("text_film conditions the conv blocks: it needs conv_width > 0")
        if not 1 <= self.copy_frames <= max(1, self.window_frames - self.chunk_frames):
            raise ValueError(f"copy_frames {self.copy_frames} must be in [1, window_frames - chunk_frames]: "
                             "the cache holds that many recent frames")

    @property
    def grid(self) -> int:
        return self.latent_size // self.patch

    @property
    def tokens_per_frame(self) -> int:
        return self.grid**2

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)


DIT_PRESETS: dict[str, DiTConfig] = {
    # Seconds-long tests.
    "tiny": DiTConfig(dim=32, depth=2, heads=2),
    # The bundled world: 8.15M parameters, so the fp16 file stays under 16 MiB (docs/design.md §5);
    # MLP ratio 3 rather than 4 pays for the cross-attention within that budget.
    "default": DiTConfig(dim=256, depth=8, heads=4, mlp_ratio=3.0),
    # The DiT with residual conv blocks in and out at 16x16 (one layer fewer pays for them: 7.6M).
    "hybrid": DiTConfig(dim=256, depth=7, heads=4, mlp_ratio=3.0, conv_width=64, conv_blocks=2, conv_levels=1,
                        copy_path=True, copy_frames=1),
    # A conv U-Net (96 channels at 16x16, 192 at 8x8, DIAMOND's adaptive group norm) whose lowest
    # level is two transformer blocks: causal context and the prompt by cross-attention there.
    "unet": DiTConfig(dim=256, depth=2, heads=4, mlp_ratio=3.0, conv_width=96, conv_blocks=2, conv_levels=2,
                      copy_path=True, copy_frames=3),
    # Seconds-long tests of the conv variants.
    "tiny-unet": DiTConfig(dim=32, depth=1, heads=2, conv_width=8, conv_blocks=1, conv_levels=2,
                           copy_path=True, copy_frames=3),
    "tiny-hybrid": DiTConfig(dim=32, depth=2, heads=2, conv_width=8, conv_blocks=1, conv_levels=1, copy_path=True),
}


def dit_config(preset: str) -> DiTConfig:
    if preset not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {preset!r}; known: {sorted(DIT_PRESETS)}")
    return copy.deepcopy(DIT_PRESETS[preset])


def stacked_previous(x: torch.Tensor, chunk_frames: int, copy_frames: int) -> torch.Tensor:
    """x [B, F, c, h, w] (whole chunks) -> [B, F, K * c, h, w], K = copy_frames: for every frame, the K
    frames of x before its chunk, oldest first, stacked on channels; zeros before the first frame."""
    B, Fr = x.shape[:2]
    C, K = chunk_frames, copy_frames
    padded = torch.cat([x.new_zeros(B, K, *x.shape[2:]), x], 1)  # frame j of x is padded[j + K]
    stacks = [padded[:, i * C : i * C + K].flatten(1, 2) for i in range(Fr // C)]  # frames iC-K .. iC-1
    return torch.stack(stacks, 1).repeat_interleave(C, 1)


# A streaming cache: one stream's KVCache, or several streams' caches batched (model/nets/cache_batch.py).
StreamCache = KVCache | CacheBatch

# ----------------------------------------------------------------------------- embeddings


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """t [...] network time in [0, 1000] -> [..., dim] sinusoidal features (DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[..., None] * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t [B, F] -> [B, F, D]."""
        return self.mlp(timestep_features(t, self.freq_dim))


class ActionEmbedder(nn.Module):
    """Per-frame action vector -> [D]; `drop` rows use a learned null action (guidance)."""

    def __init__(self, action_dim: int, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(action_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.zeros(dim))

    def forward(self, actions: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        """actions [B, F, A], drop [B] bool or None -> [B, F, D]."""
        emb = self.mlp(actions)
        if drop is None:
            drop = torch.zeros(actions.shape[0], dtype=torch.bool, device=actions.device)
        # torch.where keeps `null` in the graph even when nothing is dropped (DDP sees its grad).
        return torch.where(drop[:, None, None], self.null.to(emb.dtype), emb)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


# ----------------------------------------------------------------------------- blocks

# attend(layer, q, k, v) -> out: q/k/v [B, H, N, hd] unrotated, out [B, H, Nq, hd].
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        # QK-norm (Wan / Self-Forcing) keeps attention logits bounded; keys are cached after it.
        self.q_norm = nn.RMSNorm(dim // heads, eps=1e-6)
        self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, layer: int, attend: Attend) -> torch.Tensor:
        """x [B, N, D] -> [B, N, D]; which keys are visible is `attend`'s business."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        out = attend(layer, self.q_norm(q), self.k_norm(k), v)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def text_kv(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ctx [B, L, D] -> K, V [B, H, L, hd]: computed once per prompt and cached."""
        k, v = rearrange(self.kv(ctx), "b l (two h d) -> two b h l d", two=2, h=self.heads)
        return k, v

    def forward(self, x: torch.Tensor, text: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """x [B, N, D], text: groups (k/v [B_g, H, L_g, hd], mask [B_g, L_g] bool) covering the rows
        in order (one group, or one per stream of a batch: prompts differ in length) -> [B, N, D]."""
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.heads)
        qs = q.split([k.shape[0] for k, _, _ in text]) if len(text) > 1 else (q,)
        outs = [F.scaled_dot_product_attention(qg, k, v, attn_mask=mask[:, None, None, :])
                for qg, (k, v, mask) in zip(qs, text)]  # fmt: skip
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(d, cfg.heads)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.cross = CrossAttention(d, cfg.heads)
        self.norm3 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * cfg.mlp_ratio)
        # exact (erf) GELU: ~3x cheaper than the tanh approximation on CPU
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        # adaLN-single: this block's learned offset to the shared per-frame modulation.
        self.mod_table = nn.Parameter(torch.zeros(6, d))

    def forward(self, x: torch.Tensor, mod: torch.Tensor, layer: int, attend: Attend, text: list) -> torch.Tensor:
        """x [B, F, T, D], mod [B, F, 6, D] shared modulation, text [(k, v, mask)] groups -> [B, F, T, D]."""
        B, Fr, T, D = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = (mod + self.mod_table).unsqueeze(2).unbind(3)  # [B,F,1,D]
        h = modulate(self.norm1(x), shift1, scale1).reshape(B, Fr * T, D)
        x = x + gate1 * self.attn(h, layer, attend).reshape(B, Fr, T, D)
        x = x + self.cross(self.norm2(x).reshape(B, Fr * T, D), text).reshape(B, Fr, T, D)
        return x + gate2 * self.mlp(modulate(self.norm3(x), shift2, scale2))


# ----------------------------------------------------------------------------- the network


class CausalDiT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        self.layout = CacheLayout.from_config(cfg)
        patch_dim = cfg.latent_channels * cfg.patch**2
        if cfg.conv_width:
            stacked = cfg.copy_frames if cfg.copy_path else 0
            in_ch = cfg.latent_channels * (1 + stacked) + 2 * cfg.action_dim + 1  # + "actions given" plane
            self.conv_in = ConvIn(in_ch, cfg.conv_width, cfg.conv_blocks, cfg.conv_levels, cfg.patch, cfg.dim, cfg.dim)
            self.conv_out = ConvOut(cfg.latent_channels, cfg.conv_width, cfg.conv_blocks, cfg.conv_levels, cfg.patch,
                                    cfg.dim)
            self.patch_in, out_features = None, ConvOut.token_features(cfg.conv_width, cfg.conv_levels, cfg.patch)
        else:
            self.conv_in = self.conv_out = None
            self.patch_in, out_features = nn.Linear(patch_dim, cfg.dim), patch_dim
        self.t_embed = TimestepEmbedder(cfg.dim, cfg.freq_dim)
        self.a_embed = ActionEmbedder(cfg.action_dim, cfg.dim)
        self.text_proj = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.dim)
        )
        self.null_text = nn.Parameter(torch.zeros(1, cfg.dim))
        self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.final_norm = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.final_table = nn.Parameter(torch.zeros(2, cfg.dim))
        self.final = nn.Linear(cfg.dim, out_features)
        self.rope = Rope3D(cfg.head_dim, cfg.grid, self.layout.span_frames, cfg.rope_theta)
        # The conv stem reads the copy path itself; the patch DiT projects its patches.
        use_copy_in = cfg.copy_path and not cfg.conv_width
        self.copy_in = nn.Linear(patch_dim * cfg.copy_frames, cfg.dim) if use_copy_in else None
        self.action_in = nn.Linear(cfg.dim, cfg.dim) if cfg.action_tokens else None
        self.text_film = nn.Linear(cfg.dim, cfg.dim) if cfg.text_film else None
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """All initialisation in one place (DiT): xavier linears, adaLN-Zero gates and output."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for mlp in (self.t_embed.mlp, self.a_embed.mlp):
            nn.init.normal_(mlp[0].weight, std=0.02)
            nn.init.normal_(mlp[2].weight, std=0.02)
        nn.init.normal_(self.a_embed.null, std=0.02)
        nn.init.normal_(self.null_text, std=0.02)
        # Zero: every gate/shift/scale (shared projection and per-block tables), the cross-attention
        # output and the final layer, so each block starts as the identity and the output at 0.
        nn.init.zeros_(self.adaln[1].weight)
        nn.init.zeros_(self.adaln[1].bias)
        for blk in self.blocks:
            nn.init.zeros_(blk.mod_table)
            nn.init.zeros_(blk.cross.proj.weight)
        nn.init.zeros_(self.final_table)
        nn.init.zeros_(self.final.weight)
        nn.init.zeros_(self.final.bias)
        for m in self.modules():  # the xavier pass above reset them: adaptive norms start as plain norms
            if isinstance(m, AdaGroupNorm):
                nn.init.zeros_(m.proj.weight)
                nn.init.zeros_(m.proj.bias)
        # New inputs start silent, so a network warm-started from one without them begins as it was.
        for extra in (self.copy_in, self.action_in, self.text_film):
            if extra is not None:
                nn.init.zeros_(extra.weight)
                nn.init.zeros_(extra.bias)

    # ------------------------------------------------------------------ pieces

    def text_context(self, text: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """text [B, L, text_dim], mask [B, L] -> ctx [B, 1 + L', D], mask [B, 1 + L'] (null token first)."""
        L = min(text.shape[1], self.config.max_text_tokens)
        ctx = self.text_proj(text[:, :L])
        null = self.null_text.to(ctx.dtype).expand(text.shape[0], 1, -1)
        ones = torch.ones(text.shape[0], 1, dtype=torch.bool, device=text.device)
        return torch.cat([null, ctx], 1), torch.cat([ones, text_mask[:, :L].bool()], 1)

    def _build_text_kv(self, text: torch.Tensor, text_mask: torch.Tensor) -> tuple[list, torch.Tensor]:
        """text [B, L, text_dim], mask [B, L] -> (per-layer (k, v) [B, H, 1 + L', hd], mask [B, 1 + L']).

        With text_film, one entry more after the blocks' (so the caches keep it with the prompt's
        K/V, built once per prompt): the prompt's FiLM condition [B, D] as both its k and v."""
        ctx, mask = self.text_context(text, text_mask)
        kv = [blk.cross.text_kv(ctx) for blk in self.blocks]
        if self.text_film is not None:
            # The mean over the prompt's tokens and the null token (a dropped prompt: the null token alone).
            w = mask.to(ctx.dtype)[..., None]
            film = self.text_film((ctx * w).sum(1) / w.sum(1))
            kv.append((film, film))
        return kv, mask

    def _text_kv(self, text: torch.Tensor | None, text_mask: torch.Tensor | None,
                 cache: StreamCache | None) -> list[list[tuple]]:
        """Per layer, the (k, v, mask) groups of the prompt(s); computed once per prompt when streaming."""
        if cache is None:
            kv, mask = self._build_text_kv(text, text_mask)
            return [[(k, v, mask)] for k, v in kv]
        return cache.text_kv(text, text_mask, self._build_text_kv)

    def _span_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One chunk's queries q [B,H,Cq,hd] over its span k/v [B,H,Nk,hd] (chunk last), all unrotated.

        RoPE positions count frames from the start of the span, so the sink sits right before the
        window whatever the stream length (docs/design.md §3: window-relative positions).
        """
        T = self.config.tokens_per_frame
        span_frames, q_frames = k.shape[2] // T, q.shape[2] // T
        q = self.rope.rotate(q, span_frames - q_frames)
        k = self.rope.rotate(k, 0)
        return F.scaled_dot_product_attention(q, k, v)

    def _full_sequence_attend(self, n_chunks: int) -> Attend:
        """Block-causal attention restricted to sink + window, evaluated chunk by chunk."""
        T, C = self.config.tokens_per_frame, self.config.chunk_frames

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            outs = []
            for i in range(n_chunks):
                sink_end, window_start, end = attention_span(i, self.layout)
                if sink_end == window_start:  # nothing evicted yet: one contiguous view, no copy
                    k_span, v_span = k[:, :, : end * T], v[:, :, : end * T]
                else:
                    keep = [slice(0, sink_end * T), slice(window_start * T, end * T)]
                    k_span = torch.cat([k[:, :, s] for s in keep], 2)
                    v_span = torch.cat([v[:, :, s] for s in keep], 2)
                outs.append(self._span_attention(q[:, :, (end - C) * T : end * T], k_span, v_span))
            return torch.cat(outs, 2)

        return attend

    def _streaming_attend(self, cache: StreamCache) -> Attend:
        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return cache.attend(layer, q, k, v, self._span_attention)  # per stream: its own span

        return attend

    def previous_frames(self, x: torch.Tensor, cache: StreamCache | None) -> torch.Tensor:
        """The copy path's input [B, F, K * c, h, w] (K = copy_frames): for every frame, the K frames
        before its chunk as the context holds them, oldest first, stacked on channels; zeros where the
        stream has fewer (chunk 0, the sink, has no predecessor).

        Full sequence: the input x itself, K frames before each chunk. Streaming: the cache's stored
        inputs of its K newest committed frames (what wrote their K/V), so both modes agree."""
        if cache is not None:
            return cache.previous_input(x, self.config.copy_frames)
        return stacked_previous(x, self.config.chunk_frames, self.config.copy_frames)

    def _frame_terms(self, t: torch.Tensor, actions: torch.Tensor,
                     drop_actions: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Per-frame terms: c [B, F, D], adaLN mod [B, F, 6 * D], action tokens [B, F, D] (zeros without
        them). A few rows per stream, so a batch computes them per stream (StreamCache.per_stream)."""
        a = self.a_embed(actions, drop_actions)  # [B, F, D]
        c = self.t_embed(t) + a  # [B, F, D] per-frame condition
        a_tok = self.action_in(a) if self.action_in is not None else torch.zeros_like(a)
        return c, self.adaln(c), a_tok

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, F, C, h, w] -> [B, F, T, C * p * p] patch vectors."""
        p = self.config.patch
        return rearrange(x, "b f c (gh p) (gw q) -> b f (gh gw) (p q c)", p=p, q=p)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        actions: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        cache: StreamCache | None = None,
        drop_actions: torch.Tensor | None = None,
        prev: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict v = eps - x0.

        x [B, F, C, h, w] noisy latents; t [B, F] network time in [0, 1000] (equal within a chunk);
        actions [B, F, A]; text [B, L, text_dim] with text_mask [B, L] (all False = no prompt);
        cache: streaming mode (F = one chunk), else full sequence (F = whole chunks); a CacheBatch
        streams several worlds' chunks at once (text and text_mask None: each member brings its own);
        drop_actions [B] bool: use the null action (guidance); prev [B, F, C, h, w]: the copy path's
        input when it must not come from x or the cache (a recache replaying stored inputs).
        Returns v [B, F, C, h, w].
        """
        cfg = self.config
        B, Fr, C, h, w = x.shape
        assert (C, h, w) == cfg.latent_shape, f"latent frames {(C, h, w)} != {cfg.latent_shape}"
        assert t.shape == (B, Fr) and actions.shape == (B, Fr, cfg.action_dim), (t.shape, actions.shape)
        if cfg.copy_path and prev is None:
            prev = self.previous_frames(x, cache)  # read before the cache is written
        if cache is not None:
            assert Fr == cfg.chunk_frames, f"streaming takes one chunk of {cfg.chunk_frames} frames, got {Fr}"
            cache.write_inputs(x, t, actions, prev)
            attend = self._streaming_attend(cache)
        else:
            assert Fr % cfg.chunk_frames == 0, f"{Fr} frames is not a whole number of chunks"
            attend = self._full_sequence_attend(Fr // cfg.chunk_frames)
        if drop_actions is None:  # the batch is split per stream below; give every row its flag
            drop_actions = torch.zeros(B, dtype=torch.bool, device=x.device)
        terms = (t, actions, drop_actions)
        c, mod, a_tok = self._frame_terms(*terms) if cache is None else cache.per_stream(self._frame_terms, *terms)
        text_kv = self._text_kv(text, text_mask, cache)
        c_conv = c  # the conv blocks' condition: time + action (+ the prompt's FiLM)
        if self.text_film is not None:
            film = torch.cat([k for k, _, _ in text_kv[len(self.blocks)]])  # [B, D], rows in batch order
            c_conv = c + film[:, None, :].to(c.dtype)
        skips: list[torch.Tensor] = []
        if self.conv_in is not None:
            hid, skips = self._conv_tokens(x, prev, actions, drop_actions, c_conv)
        else:
            hid = self.patch_in(self._patchify(x))  # [B, F, T, D]
            if self.copy_in is not None:
                hid = hid + self.copy_in(self._patchify(prev))
        if self.action_in is not None:
            hid = hid + a_tok[:, :, None, :]
        mod = rearrange(mod, "b f (six d) -> b f six d", six=6)
        for layer, blk in enumerate(self.blocks):
            hid = blk(hid, mod, layer, attend, text_kv[layer])
        shift, scale = (self.final_table + c[:, :, None, :]).unsqueeze(2).unbind(3)  # [B, F, 1, D]
        out = self.final(modulate(self.final_norm(hid), shift, scale))
        g, p = cfg.grid, cfg.patch
        if self.conv_out is not None:
            v = self.conv_out(out.flatten(0, 1), skips, c_conv.flatten(0, 1), g)
            return v.reshape(B, Fr, C, h, w)
        return rearrange(out, "b f (gh gw) (p q c) -> b f c (gh p) (gw q)", gh=g, gw=g, p=p, q=p)

    def _conv_tokens(self, x: torch.Tensor, prev: torch.Tensor | None, actions: torch.Tensor,
                     drop_actions: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Conv stem: x [B, F, c, h, w], prev [B, F, K * c, h, w] or None, actions [B, F, A], drop [B],
        c [B, F, D] -> tokens [B, F, T, D] and the skips the output side reads. A dropped clip's action
        planes are zero and its "actions given" plane too (the null action of guidance)."""
        B, Fr, _, h, w = x.shape
        given = (~drop_actions).to(x.dtype)[:, None, None].expand(B, Fr, 1)
        acts = torch.cat([action_planes(actions.to(x.dtype), self.config.chunk_frames) * given, given], -1)
        planes = [x] + ([prev.to(x.dtype)] if self.config.copy_path else [])
        planes.append(acts[..., None, None].expand(*acts.shape, h, w))
        tokens, skips = self.conv_in(torch.cat(planes, 2).flatten(0, 1), c.flatten(0, 1))
        return tokens.reshape(B, Fr, *tokens.shape[1:]), skips

    def new_cache(self) -> KVCache:
        return KVCache.for_config(self.config)
