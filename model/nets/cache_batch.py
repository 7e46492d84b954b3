"""Several streams' K/V caches seen by the network as one batch (batched chunks, exact per stream).

A worker serving several players runs one forward for all of their next chunks. Each stream keeps
its own `KVCache` (its own span length: streams may sit at different chunk indices), prompt and text
K/V, so the batch cannot be one padded tensor without changing the numbers. `CacheBatch` implements
the five calls a `WorldNet` makes on a streaming cache (`KVCache.per_stream`, `previous_input`,
`write_inputs`, `attend`, `text_kv`) by splitting the rows per stream and calling each member's own:

- the token-wise work (patch, qkv, MLP, output projections) runs once over all rows: those matmuls
  have hundreds of rows per stream, where the CPU GEMM gives every row the same bits whatever the
  batch (tests/test_batched_chunks.py checks it end to end);
- per-frame conditioning (a handful of rows per stream, where a GEMM's kernel does depend on the row
  count), self-attention over each stream's own span and cross-attention to each stream's own prompt
  run per stream (`per_stream`, `attend`, `text_kv` groups), exactly as a lone stream runs them.

So a stream's chunk is identical, bit for bit on the same device and dtype, to generating it alone.
Rows are stream-major: member i owns rows [offset_i, offset_i + rows_i) of every tensor, its own
cond/uncond order inside (model/runtime/stream.py, Conditioning).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from model.nets.kv_cache import KVCache


@dataclass(frozen=True)
class Member:
    """One stream in the batch: its cache and the prompt rows it is conditioned on."""

    cache: KVCache
    text: torch.Tensor  # [R, L, text_dim] (R = this stream's rows; L may differ between streams)
    text_mask: torch.Tensor  # [R, L] bool

    @property
    def rows(self) -> int:
        return self.text.shape[0]


class CacheBatch:
    """The streaming-cache calls of a WorldNet over several members' caches (module docstring).

    The network is called with `text=None, text_mask=None`: each member brings its own prompt.
    """

    def __init__(self, members: Sequence[Member]):
        if not members:
            raise ValueError("a CacheBatch needs at least one member")
        self.members = list(members)
        self.sizes = [m.rows for m in self.members]

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.shape[0] != sum(self.sizes):
            raise ValueError(f"batch has {x.shape[0]} rows, the members hold {sum(self.sizes)}")
        return x.split(self.sizes)

    def per_stream(self, fn: Callable[..., tuple[torch.Tensor, ...]], *tensors: torch.Tensor) -> tuple:
        """fn over each member's rows of `tensors` ([R_total, ...] each), outputs concatenated by row."""
        parts = [fn(*row) for row in zip(*(self._split(t) for t in tensors))]
        return tuple(torch.cat(outs) for outs in zip(*parts))

    def previous_input(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        return torch.cat([m.cache.previous_input(xi, frames) for m, xi in zip(self.members, self._split(x))])

    def write_inputs(self, x: torch.Tensor, t: torch.Tensor, actions: torch.Tensor,
                     prev: torch.Tensor | None = None) -> None:
        prevs = self._split(prev) if prev is not None else [None] * len(self.members)
        for m, xi, ti, ai, pi in zip(self.members, self._split(x), self._split(t), self._split(actions), prevs):
            m.cache.write_inputs(xi, ti, ai, pi)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               span_attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Each member writes its rows of k/v [R, H, C*T, hd] and attends over its own span."""
        parts = zip(self.members, self._split(q), self._split(k), self._split(v))
        return torch.cat([m.cache.attend(layer, qi, ki, vi, span_attention) for m, qi, ki, vi in parts])

    def text_kv(self, text: torch.Tensor | None, text_mask: torch.Tensor | None,
                build: Callable[[torch.Tensor, torch.Tensor], tuple[list, torch.Tensor]]) -> list[list[tuple]]:
        """Per layer, one (k, v, mask) group per member (each built once per prompt by its cache)."""
        if text is not None or text_mask is not None:
            raise ValueError("a CacheBatch takes the prompts from its members; call the network with text=None")
        per_member = [m.cache.text_kv(m.text, m.text_mask, build) for m in self.members]
        return [[group for layers in per_member for group in layers[layer]] for layer in range(len(per_member[0]))]
