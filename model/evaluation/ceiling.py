"""The autoencoder ceiling: the best PSNR any latent world with this autoencoder can score.

A latent world draws every frame through its autoencoder's decoder, so even a perfect prediction
of the next latents scores only what encoding and decoding the engine's own frames scores. The
`still` and `copy-last` baselines are exact pixel copies and have no such ceiling: where the
view barely moves (idle, the first chunk, slow walking) they can lie above it, and a target of
"baseline + N dB" can be out of reach for every model with this autoencoder. The measures report
the ceiling beside the world and its baselines so such a target is read for what it is.
"""

from __future__ import annotations

import numpy as np


def autoencoder_roundtrip(world, frames: np.ndarray) -> np.ndarray | None:
    """frames [..., H, W, 3] uint8 encoded and decoded by `world`'s autoencoder (same shape), or
    None for a world without one (the engine, the baselines)."""
    stream = getattr(world, "stream", None)
    if stream is None or not hasattr(stream, "encode") or not hasattr(stream, "decode"):
        return None
    flat = frames.reshape(-1, *frames.shape[-3:])
    return stream.decode(stream.encode(flat)).reshape(frames.shape)
