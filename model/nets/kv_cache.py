"""The streaming K/V cache of the world network (model/nets/world_net.py): sink + rolling window + current-chunk slot.

Attention span of chunk i (docs/design.md §3): the sink (the first `sink_frames` frames, never evicted)
plus the most recent `window_frames` frames *including the chunk being generated*. `attention_span`
states that rule once; the full-sequence forward slices its K/V with it and this cache holds exactly
the same frames, which is what makes streaming equal to full-sequence training.

Per layer the cache is one preallocated buffer laid out as the span itself:

    frame slot:  0 .. S-1         S .. n_ctx-1              n_ctx .. n_ctx+C-1
                 sink (kept)      recent committed frames   current chunk (rewritten every forward)

so attention reads `buffer[:, :, :(n_ctx + C) * T]` without any concatenation, and RoPE is applied
to that span with positions 0, 1, ... (keys are stored unrotated). Committing a chunk appends it to
the window; when the window is full the oldest whole chunk is shifted out. Memory is fixed by the
config (`span_frames` frames per layer) whatever the stream length.

Besides K/V the cache remembers the network input (x, t, actions) that last wrote each held frame,
so a prompt switch can re-run the recent window with the new prompt (LongLive KV-recache) and the
text cross-attention K/V of the current prompt (computed once per prompt).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CacheLayout:
    """Frame counts that fix the cache; derived from the network's NetConfig (`CacheLayout.from_config`)."""

    chunk_frames: int
    sink_frames: int
    window_frames: int  # recent frames attended, the current chunk included
    tokens_per_frame: int

    def __post_init__(self) -> None:
        c = self.chunk_frames
        if c < 1 or self.sink_frames % c or self.window_frames % c or self.window_frames < c:
            raise ValueError(
                f"sink_frames ({self.sink_frames}) and window_frames ({self.window_frames}) must be whole "
                f"chunks of {c} frames, window at least one chunk"
            )

    @classmethod
    def from_config(cls, cfg) -> CacheLayout:
        return cls(cfg.chunk_frames, cfg.sink_frames, cfg.window_frames, cfg.tokens_per_frame)

    @property
    def span_frames(self) -> int:
        """Largest attention span (sink + window) = frames held per layer."""
        return self.sink_frames + self.window_frames

    @property
    def max_context_frames(self) -> int:
        """Committed frames held at most (the span minus the current chunk)."""
        return self.span_frames - self.chunk_frames


def attention_span(chunk_index: int, layout: CacheLayout) -> tuple[int, int, int]:
    """Frames chunk `chunk_index` attends to: [0, sink_end) U [window_start, chunk_end).

    Inside the sink region everything before the chunk is visible; afterwards the sink plus the
    recent `window_frames` frames ending with the chunk itself.
    """
    c = layout.chunk_frames
    start, end = chunk_index * c, (chunk_index + 1) * c
    sink_end = min(layout.sink_frames, start)
    window_start = max(sink_end, end - layout.window_frames)
    return sink_end, window_start, end


def context_frame_ids(chunk_index: int, layout: CacheLayout) -> list[int]:
    """Absolute indices of the committed frames chunk `chunk_index` attends to (not itself)."""
    sink_end, window_start, end = attention_span(chunk_index, layout)
    return list(range(sink_end)) + list(range(window_start, end - layout.chunk_frames))


@dataclass
class ChunkInputs:
    """The network input that wrote a chunk's K/V: replayed by `KVCache.recache`."""

    x: torch.Tensor  # [B, C, c, h, w] (C = chunk frames)
    t: torch.Tensor  # [B, C] network time
    actions: torch.Tensor  # [B, C, A]
    prev: torch.Tensor  # [B, C, K * c, h, w] the copy path's input (model/nets/world_net.py; zeros without one)

    def buffers(self) -> tuple[torch.Tensor, ...]:
        return (self.x, self.t, self.actions, self.prev)


class KVCache:
    """Per-layer self-attention K/V of the stream plus the prompt's cross-attention K/V.

    Fields (all per layer lists have `depth` entries, allocated on the first write):
      k, v        [B, heads, span_frames * T, head_dim] buffers in span layout (unrotated keys)
      n_ctx       committed frames held (sink + window), slots 0 .. n_ctx - 1
      frame_ids   absolute frame index held in each committed slot
      next_frame  absolute index of the first frame of the chunk being generated
      inputs      ChunkInputs of every held frame (slot-aligned, frames on dim 1)
      text_k, text_v [B, heads, L + 1, head_dim]; text_mask [B, L + 1]; text_source: the text
                  tensor they were computed from (identity), text_builds: how often they were built
    """

    def __init__(self, layout: CacheLayout, depth: int):
        self.layout = layout
        self.depth = depth
        self.text_builds = 0
        self.reset()

    @classmethod
    def for_config(cls, cfg) -> KVCache:
        return cls(CacheLayout.from_config(cfg), cfg.depth)

    # ------------------------------------------------------------------ lifecycle

    def reset(self) -> None:
        """Forget the stream and the prompt (a new world)."""
        self.k: list[torch.Tensor | None] = [None] * self.depth
        self.v: list[torch.Tensor | None] = [None] * self.depth
        self.n_ctx = 0
        self.frame_ids: list[int] = []
        self.next_frame = 0
        self.inputs: ChunkInputs | None = None
        self._written = [False] * self.depth
        self.reset_text()

    def reset_text(self) -> None:
        """Drop the prompt's cross-attention K/V (prompt switch); rebuilt on the next forward."""
        self.text_k: list[torch.Tensor] | None = None
        self.text_v: list[torch.Tensor] | None = None
        self.text_mask: torch.Tensor | None = None
        self.text_source: torch.Tensor | None = None

    @property
    def chunk_index(self) -> int:
        return self.next_frame // self.layout.chunk_frames

    @property
    def span_tokens(self) -> int:
        """Tokens the current chunk attends to (context + itself)."""
        return (self.n_ctx + self.layout.chunk_frames) * self.layout.tokens_per_frame

    # ------------------------------------------------------------------ self-attention K/V

    def write_inputs(self, x: torch.Tensor, t: torch.Tensor, actions: torch.Tensor,
                     prev: torch.Tensor | None = None) -> None:
        """Remember the input of the current chunk's latest forward (x [B,C,c,h,w], t [B,C], actions [B,C,A],
        prev [B,C,c,h,w] the copy path's input, kept so a recache can replay it after its source is evicted)."""
        if self.inputs is None:
            span = self.layout.span_frames
            self.inputs = ChunkInputs(
                x.new_zeros(x.shape[0], span, *x.shape[2:]),
                t.new_zeros(t.shape[0], span),
                actions.new_zeros(actions.shape[0], span, actions.shape[-1]),
                x.new_zeros(x.shape[0], span, *(x.shape[2:] if prev is None else prev.shape[2:])),
            )
        s = slice(self.n_ctx, self.n_ctx + self.layout.chunk_frames)
        self.inputs.x[:, s] = x.detach()
        self.inputs.t[:, s] = t.detach()
        self.inputs.actions[:, s] = actions.detach()
        self.inputs.prev[:, s] = 0.0 if prev is None else prev.detach()

    def write_current(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the current chunk's K/V [B, heads, C*T, hd] in its slot; return the span's K/V.

        Every denoising forward overwrites the slot, so after the chunk's last forward the cache
        holds K/V of the last input it saw (a clean refresh pass, or the last noisy input for the
        diagonal sampler). Stored K/V are detached (context never carries gradient, docs/design.md §3);
        when `k` needs gradient the returned span ends with the live tensors instead.
        """
        if self.k[layer] is None:
            shape = (*k.shape[:2], self.layout.span_frames * self.layout.tokens_per_frame, k.shape[3])
            self.k[layer], self.v[layer] = k.new_zeros(shape), v.new_zeros(shape)
        T = self.layout.tokens_per_frame
        lo, hi = self.n_ctx * T, self.span_tokens
        if k.shape[2] != hi - lo:
            raise ValueError(f"current chunk has {k.shape[2]} tokens, the slot holds {hi - lo}")
        self.k[layer][:, :, lo:hi] = k.detach()
        self.v[layer][:, :, lo:hi] = v.detach()
        self._written[layer] = True
        if k.requires_grad or v.requires_grad:
            return (torch.cat([self.k[layer][:, :, :lo], k], 2), torch.cat([self.v[layer][:, :, :lo], v], 2))
        return self.k[layer][:, :, :hi], self.v[layer][:, :, :hi]

    def commit_chunk(self) -> None:
        """The current chunk is done: its slot joins the window; evict the oldest chunk if full."""
        if not all(self._written):
            raise RuntimeError("commit_chunk before every layer wrote the current chunk")
        c = self.layout.chunk_frames
        self.frame_ids += list(range(self.next_frame, self.next_frame + c))
        self.n_ctx += c
        self.next_frame += c
        self._written = [False] * self.depth
        overflow = self.n_ctx - self.layout.max_context_frames
        if overflow > 0:
            self._evict(overflow)

    def _evict(self, frames: int) -> None:
        """Drop the oldest `frames` window frames (never the sink) by shifting the rest left."""
        S, T = self.layout.sink_frames, self.layout.tokens_per_frame
        keep = slice(S + frames, self.n_ctx)
        for buf in self.k + self.v:
            buf[:, :, S * T : (self.n_ctx - frames) * T] = buf[:, :, keep.start * T : keep.stop * T].clone()
        for buf in self.inputs.buffers():
            buf[:, S : self.n_ctx - frames] = buf[:, keep].clone()
        del self.frame_ids[S : S + frames]
        self.n_ctx -= frames

    # ------------------------------------------------------------------ KV-recache (prompt switch)

    def recache(self, forward_chunk: Callable[[ChunkInputs], None]) -> int:
        """Re-run the recent window chunk by chunk and rewrite its K/V; sink K/V stay (LongLive).

        `forward_chunk(inputs)` must run the network once on `inputs` with this cache (the new
        prompt's text cache already reset), writing every layer's current slot. Returns the number
        of chunks re-run. Eviction never triggers: the same frames go back into the same slots.
        """
        if any(self._written):
            raise RuntimeError("recache in the middle of a chunk; commit or reset first")
        c = self.layout.chunk_frames
        first = min(self.layout.sink_frames, self.n_ctx)
        end = self.n_ctx
        saved = ChunkInputs(*(buf[:, first:end].clone() for buf in self.inputs.buffers())) if end > first else None
        self.next_frame -= end - first
        del self.frame_ids[first:]
        self.n_ctx = first
        for i in range(0, end - first, c):
            s = slice(i, i + c)
            forward_chunk(ChunkInputs(*(buf[:, s] for buf in saved.buffers())))
            self.commit_chunk()
        return (end - first) // c

    # ------------------------------------------------------------------ text cross-attention K/V

    def text_ready(self, text: torch.Tensor) -> bool:
        """Whether the cached cross-attention K/V were computed from this very text tensor."""
        return self.text_k is not None and self.text_source is text

    def set_text(self, text: torch.Tensor, k: list[torch.Tensor], v: list[torch.Tensor], mask: torch.Tensor) -> None:
        self.text_source, self.text_k, self.text_v, self.text_mask = text, k, v, mask
        self.text_builds += 1

    # ------------------------------------------------------------------ the network's view of one stream
    # A WorldNet reads a streaming cache only through these five calls; model/nets/cache_batch.py
    # implements them for several streams' caches at once (batched chunks, exact per stream).

    def per_stream(self, fn: Callable[..., tuple[torch.Tensor, ...]], *tensors: torch.Tensor) -> tuple:
        """fn(*tensors) over this cache's rows: one stream, so simply the call."""
        return fn(*tensors)

    def previous_input(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        """The copy path's input [B, F, frames * c, h, w] for chunk x: the stored inputs of the newest
        `frames` committed frames (what wrote their K/V), oldest first, stacked on channels; zeros
        for frames the stream does not have yet (the sink has no predecessor)."""
        B, Fr = x.shape[:2]
        held = min(frames, self.n_ctx)
        stack = x.new_zeros(B, frames, *x.shape[2:])
        if held:
            stack[:, frames - held :] = self.inputs.x[:, self.n_ctx - held : self.n_ctx].to(x.dtype)
        return stack.flatten(1, 2)[:, None].expand(B, Fr, frames * x.shape[2], *x.shape[3:])

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               span_attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Write the chunk's k/v [B, H, C*T, hd] to its slot, then span_attention(q, span k, span v)."""
        k_span, v_span = self.write_current(layer, k, v)
        return span_attention(q, k_span, v_span)

    def text_kv(self, text: torch.Tensor, text_mask: torch.Tensor,
                build: Callable[[torch.Tensor, torch.Tensor], tuple[list, torch.Tensor]]) -> list[list[tuple]]:
        """Per layer, one group [(k, v, mask)] of the prompt's cross-attention K/V; build(text, mask) ->
        (per-layer (k, v), mask) runs once per prompt (text tensor identity, `text_ready`)."""
        if not self.text_ready(text):
            kv, mask = build(text, text_mask)
            self.set_text(text, [k for k, _ in kv], [v for _, v in kv], mask)
        return [[(k, v, self.text_mask)] for k, v in zip(self.text_k, self.text_v)]

    def nbytes(self) -> int:
        """Bytes held by self-attention buffers (bounded by the layout, not the stream length)."""
        return sum(b.numel() * b.element_size() for b in self.k + self.v if b is not None)
