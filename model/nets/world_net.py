"""What every world network is to the rest of the project: `NetConfig` and `WorldNet`.

A world network predicts the flow velocity `v = eps - x0` (docs/design.md §3) of video latents,
chunk by chunk, from actions and a prompt, and knows nothing about noise schedules or samplers.
The samplers, the streaming loop (model/runtime/stream.py), training (model/training/) and
distillation use a network only through this interface:

    net.config                    a NetConfig: latent shape, chunking, attention span, copy path, ...
    net(x, t, actions, text, text_mask, cache=None, drop_actions=None, prev=None) -> v
    net.new_cache()               a KVCache for streaming
    net.previous_frames(x, cache) the copy path's input as the context holds it

The families (model/nets/families.py builds them by name) differ in how a frame becomes tokens and
tokens become a velocity: the patch-token DiT (model/nets/dit.py) projects 2x2 patches; the U-Net
(model/nets/unet.py) runs conv levels at the latent's resolution around a short transformer. What
they share lives here, once:

- Conditioning per frame: sinusoidal timestep MLP + action MLP (a learned null action for
  classifier-free guidance), summed, drive adaLN shift/scale/gate per frame (DIAMOND / Oasis
  style). adaLN-single (PixArt-alpha): one projection of the per-frame condition shared by all
  blocks plus a learned per-block offset table; per-block adaLN MLPs would add 3M parameters and
  push the fp16 checkpoint past the 16 MiB limit (docs/design.md §5). Gates and the output layer
  start at zero (adaLN-Zero), so the untrained network is the identity residual.
- Self-attention (model/nets/transformer.py): bidirectional inside a chunk (3 frames), causal
  across chunks, restricted to the sink + recent window of `attention_span` (model/nets/kv_cache.py).
  3D RoPE on q/k with span-relative frame positions, so streams are unbounded (keys cached unrotated).
- Text: cross-attention to the projected prompt tokens plus a learned null token that is always
  visible; dropping the prompt (classifier-free guidance) = masking every real token.
- Copy path (`copy_path`): each frame also reads the `copy_frames` frames before its chunk as the
  *input* that wrote their K/V (clean after a refresh pass, at the context level for the diagonal
  sampler): in full-sequence mode the input x itself shifted by one chunk, when streaming the
  cache's stored inputs, so training and inference see the same thing. Chunk 0 (the sink) has no
  predecessor and gets zeros. How a family reads it is its own (a patch projection, conv planes).
- Action tokens (`action_tokens`): the frame's action embedding is also added to each of its
  tokens through a zero-initialised projection (Hunyuan-GameCraft: adding beats concatenating).

Two modes, one attention rule:
- full sequence (`cache=None`, F a multiple of the chunk): each chunk's queries attend to the
  K/V slice `attention_span` names, which is the block-causal + sink/window mask, evaluated per
  chunk (window-bounded cost, and the same code path as streaming).
- streaming (`cache` given, F = one chunk): the chunk's K/V go into the cache's current slot and
  attention reads the cached span. Equal to full sequence on the same inputs (tests/test_dit.py).
  The network reads a cache only through five calls (`KVCache.per_stream` and the four after it), so
  a `CacheBatch` (model/nets/cache_batch.py) streams several worlds in one forward, each row group
  with its own cache and prompt, identical to streaming them one by one.

A family subclasses `WorldNet`, builds its input and output layers around `_build_core`, and
implements `_tokens` (frames -> tokens) and `_velocity` (token features -> v); its config subclasses
`NetConfig` with its `FAMILY` name, which every saved config records (`family`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from model.nets.cache_batch import CacheBatch
from model.nets.kv_cache import CacheLayout, KVCache, attention_span
from model.nets.rope import Rope3D
from model.nets.transformer import ActionEmbedder, Attend, Block, TimestepEmbedder, modulate


@dataclass
class NetConfig:
    """The fields every family has; a family's config adds its own and names itself in FAMILY."""

    FAMILY: ClassVar[str] = ""

    # The family this config builds (model/nets/families.py); written into every saved config, so a
    # checkpoint says which network it holds. Fixed per config class (checked in __post_init__).
    family: str = ""
    latent_channels: int = 4
    latent_size: int = 16
    patch: int = 2  # 16x16 latent -> 8x8 = 64 tokens per frame
    dim: int = 256
    depth: int = 8  # transformer blocks
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
    # Copy path (docs/design.md, "learning dynamics at small scale"): every frame also gets the frames
    # before its chunk, exactly as the context holds them, so copying and shifting the view is easy.
    copy_path: bool = False
    # Action embedding added to every token of its frame as well as to adaLN (harder to ignore).
    action_tokens: bool = False
    # Previous frames on the copy path, stacked on channels (1: the previous chunk's last frame).
    copy_frames: int = 1

    def __post_init__(self) -> None:
        if not self.family:
            self.family = self.FAMILY
        if self.family != self.FAMILY:
            raise ValueError(f"a {type(self).__name__} is family {self.FAMILY!r}, not {self.family!r}")
        if self.latent_size % self.patch:
            raise ValueError(f"latent_size {self.latent_size} is not divisible by patch {self.patch}")
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError(f"dim {self.dim} must split into {self.heads} heads of even size")
        CacheLayout.from_config(self)  # validates sink/window against the chunk
        if not 1 <= self.copy_frames <= max(1, self.window_frames - self.chunk_frames):
            raise ValueError(f"copy_frames {self.copy_frames} must be in [1, window_frames - chunk_frames]: "
                             "the cache holds that many recent frames")

    @classmethod
    def legacy(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A saved config written before the families had their own configs -> this family's keys
        (model/nets/families.py, `net_config_from_dict`); ValueError for one this family cannot
        read. The base has nothing to translate."""
        return data

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


class WorldNet(nn.Module):
    """The causal core every family shares (module docstring) and the forward they all run.

    A family's __init__ calls `super().__init__(config)`, builds its input/output layers, then
    `_build_core(out_features)` (out_features: what the final layer gives each token), then its
    optional extras, then `initialize_weights()`. Building in that order keeps parameter names and
    the random initialisation of every family what they were when they were one class."""

    config: NetConfig
    action_in: nn.Linear | None

    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = config
        self.layout = CacheLayout.from_config(config)

    def _build_core(self, out_features: int) -> None:
        cfg = self.config
        self.t_embed = TimestepEmbedder(cfg.dim, cfg.freq_dim)
        self.a_embed = ActionEmbedder(cfg.action_dim, cfg.dim)
        self.text_proj = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.dim)
        )
        self.null_text = nn.Parameter(torch.zeros(1, cfg.dim))
        self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList([Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.final_norm = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.final_table = nn.Parameter(torch.zeros(2, cfg.dim))
        self.final = nn.Linear(cfg.dim, out_features)
        self.rope = Rope3D(cfg.head_dim, cfg.grid, self.layout.span_frames, cfg.rope_theta)

    def _build_action_tokens(self) -> None:
        self.action_in = nn.Linear(self.config.dim, self.config.dim) if self.config.action_tokens else None

    def silent_inputs(self) -> list[nn.Linear]:
        """Projections of optional inputs; they start at zero, so a network warm-started from one
        without them begins as it was. A family adds its own."""
        return [self.action_in] if self.action_in is not None else []

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
        for extra in self.silent_inputs():
            nn.init.zeros_(extra.weight)
            nn.init.zeros_(extra.bias)

    # ------------------------------------------------------------------ what a family supplies

    def _tokens(self, x: torch.Tensor, prev: torch.Tensor | None, actions: torch.Tensor, drop_actions: torch.Tensor,
                c: torch.Tensor, text_kv: list[list[tuple]]) -> tuple[torch.Tensor, Any]:
        """Frames -> tokens: x [B, F, c, h, w], prev the copy path's input or None, actions [B, F, A],
        drop_actions [B] bool, c [B, F, D] the per-frame condition, text_kv the prompt's entries ->
        (tokens [B, F, T, D], whatever `_velocity` needs from the input side)."""
        raise NotImplementedError

    def _velocity(self, out: torch.Tensor, state: Any, shape: torch.Size) -> torch.Tensor:
        """Token features [B, F, T, out_features] (+ `_tokens`' state) -> v of `shape` [B, F, c, h, w]."""
        raise NotImplementedError

    def _prompt_extras(self, ctx: torch.Tensor, mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-prompt entries after the blocks' K/V, built and cached with them (one build per prompt when
        streaming): ctx [B, 1 + L', D] the projected prompt, mask [B, 1 + L']. None in the base."""
        return []

    # ------------------------------------------------------------------ the prompt

    def text_context(self, text: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """text [B, L, text_dim], mask [B, L] -> ctx [B, 1 + L', D], mask [B, 1 + L'] (null token first)."""
        L = min(text.shape[1], self.config.max_text_tokens)
        ctx = self.text_proj(text[:, :L])
        null = self.null_text.to(ctx.dtype).expand(text.shape[0], 1, -1)
        ones = torch.ones(text.shape[0], 1, dtype=torch.bool, device=text.device)
        return torch.cat([null, ctx], 1), torch.cat([ones, text_mask[:, :L].bool()], 1)

    def _build_text_kv(self, text: torch.Tensor, text_mask: torch.Tensor) -> tuple[list, torch.Tensor]:
        """text [B, L, text_dim], mask [B, L] -> (per-layer (k, v) [B, H, 1 + L', hd], then the family's
        `_prompt_extras`; mask [B, 1 + L'])."""
        ctx, mask = self.text_context(text, text_mask)
        kv = [blk.cross.text_kv(ctx) for blk in self.blocks]
        return kv + self._prompt_extras(ctx, mask), mask

    def _text_kv(self, text: torch.Tensor | None, text_mask: torch.Tensor | None,
                 cache: StreamCache | None) -> list[list[tuple]]:
        """Per layer, the (k, v, mask) groups of the prompt(s); computed once per prompt when streaming."""
        if cache is None:
            kv, mask = self._build_text_kv(text, text_mask)
            return [[(k, v, mask)] for k, v in kv]
        return cache.text_kv(text, text_mask, self._build_text_kv)

    # ------------------------------------------------------------------ attention

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

    # ------------------------------------------------------------------ inputs

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
        context_only: bool = False,
    ) -> torch.Tensor | None:
        """Predict v = eps - x0.

        x [B, F, C, h, w] noisy latents; t [B, F] network time in [0, 1000] (equal within a chunk);
        actions [B, F, A]; text [B, L, text_dim] with text_mask [B, L] (all False = no prompt);
        cache: streaming mode (F = one chunk), else full sequence (F = whole chunks); a CacheBatch
        streams several worlds' chunks at once (text and text_mask None: each member brings its own);
        drop_actions [B] bool: use the null action (guidance); prev [B, F, C, h, w]: the copy path's
        input when it must not come from x or the cache (a recache replaying stored inputs).
        Returns v [B, F, C, h, w].

        context_only (streaming): write the chunk's K/V and stored inputs into the cache and return
        None. The cache is what a full forward leaves (tests/test_context_pass.py), but nothing after
        the last block's self-attention runs: for the U-Net that skips its decoder half
        (`_velocity`), which is most of a K/V-writing pass's cost (a refresh, a diagonal 1-step
        chunk's context pass, a prompt switch's recache).
        """
        cfg = self.config
        B, Fr, C, h, w = x.shape
        assert (C, h, w) == cfg.latent_shape, f"latent frames {(C, h, w)} != {cfg.latent_shape}"
        assert t.shape == (B, Fr) and actions.shape == (B, Fr, cfg.action_dim), (t.shape, actions.shape)
        if cfg.copy_path and prev is None:
            prev = self.previous_frames(x, cache)  # read before the cache is written
        assert cache is not None or not context_only, "context_only writes a streaming cache: pass one"
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
        hid, state = self._tokens(x, prev, actions, drop_actions, c, text_kv)
        if self.action_in is not None:
            hid = hid + a_tok[:, :, None, :]
        mod = rearrange(mod, "b f (six d) -> b f six d", six=6)
        last = len(self.blocks) - 1
        for layer, blk in enumerate(self.blocks):
            if context_only and layer == last:
                blk.write_kv(hid, mod, layer, attend)  # the last K/V the cache needs
                return None
            hid = blk(hid, mod, layer, attend, text_kv[layer])
        shift, scale = (self.final_table + c[:, :, None, :]).unsqueeze(2).unbind(3)  # [B, F, 1, D]
        out = self.final(modulate(self.final_norm(hid), shift, scale))
        return self._velocity(out, state, x.shape)

    def new_cache(self) -> KVCache:
        return KVCache.for_config(self.config)
