"""Infinite deterministic terrain: value-noise heightmap and surface fields on an integer lattice.

Every value is a pure function of (seed, integer lattice coordinates): corner values come from an
integer hash, interpolation is elementwise with a fixed formula, so a point has the same bits no
matter which chunk batch or window computed it. That is what lets the engine cache chunks and
rebuild windows at any time without breaking bit-exact replays.

Two levels of detail share one height function: level 0 samples it every world unit near the
camera, level 1 every 4 units far away and leaves out octaves too fine for that spacing
(a low-pass version, so far terrain does not shimmer).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

# Field channels stored per lattice point (last axis of a field chunk).
FIELDS: tuple[str, ...] = ("height", "slope_x", "slope_y", "moisture", "detail", "speck")
F_HEIGHT, F_SX, F_SY, F_MOIST, F_DETAIL, F_SPECK = range(len(FIELDS))


@dataclass(frozen=True)
class TerrainConfig:
    """Shape of the world. Heights in world units; sea level is 0."""

    chunk_cells: int = 32  # lattice points per chunk side
    # (wavelength in world units, amplitude) of the rolling base terrain
    octaves: tuple[tuple[int, float], ...] = (
        (512, 20.0), (256, 11.0), (128, 7.0), (64, 4.0), (32, 2.2), (16, 1.2), (8, 0.6), (4, 0.3),
    )
    ridge_octaves: tuple[tuple[int, float], ...] = ((192, 1.0), (96, 0.5), (48, 0.25))
    ridge_height: float = 40.0  # mountain ridges, where the mountain mask allows them
    mask_wavelength: int = 768
    base_offset: float = 4.0  # lifts the mean above sea level so roughly a fifth is water
    lod_spacing: tuple[int, ...] = (1, 4)  # world units between lattice points per level
    max_cached_chunks: int = 1024  # ~40 MB of fields + colours at most


def _hash_u32(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Integer hash of lattice coordinates (uint32 wrap-around arithmetic, fully deterministic)."""
    with np.errstate(over="ignore"):
        h = (ix.astype(np.uint32) * np.uint32(0x8DA6B343)) ^ (iy.astype(np.uint32) * np.uint32(0xD8163841))
        h ^= np.uint32(salt & 0xFFFFFFFF)
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x7FEB352D)
        h ^= h >> np.uint32(15)
        h *= np.uint32(0x846CA68B)
        h ^= h >> np.uint32(16)
    return h


def hash01(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) float64 per lattice point."""
    return _hash_u32(ix, iy, salt).astype(np.float64) * (1.0 / 4294967296.0)


def _salt(seed: int, channel: int) -> int:
    return (seed * 0x9E3779B1 + channel * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)  # quintic: C2-smooth across cells


def value_noise(xs: np.ndarray, ys: np.ndarray, wavelength: int, salt: int) -> np.ndarray:
    """Value noise on regular grids, separably interpolated.

    xs: [n, A] int64 lattice x per grid row, ys: [n, B] int64 (each row increasing by a constant).
    Returns [n, A, B] float64 in [-1, 1].
    """
    cx, cy = np.floor_divide(xs, wavelength), np.floor_divide(ys, wavelength)
    u = _fade((xs - cx * wavelength) / wavelength)  # [n, A]
    v = _fade((ys - cy * wavelength) / wavelength)  # [n, B]
    cx0, cy0 = cx[:, :1], cy[:, :1]
    lx, ly = cx - cx0, cy - cy0  # local coarse cell per point
    gx = cx0 + np.arange(int(lx.max()) + 2)  # [n, ca] coarse lattice covering the grid
    gy = cy0 + np.arange(int(ly.max()) + 2)  # [n, cb]
    corners = hash01(gx[:, :, None], gy[:, None, :], salt) * 2.0 - 1.0  # [n, ca, cb]
    c0 = np.take_along_axis(corners, lx[:, :, None], axis=1)  # [n, A, cb]
    c1 = np.take_along_axis(corners, lx[:, :, None] + 1, axis=1)
    along_x = c0 + (c1 - c0) * u[:, :, None]
    t0 = np.take_along_axis(along_x, ly[:, None, :], axis=2)  # [n, A, B]
    t1 = np.take_along_axis(along_x, ly[:, None, :] + 1, axis=2)
    return t0 + (t1 - t0) * v[:, None, :]


def height_grid(xs: np.ndarray, ys: np.ndarray, seed: int, cfg: TerrainConfig, min_wl: int) -> np.ndarray:
    """Terrain height [n, A, B] float64 at world lattice coords, octaves below min_wl left out."""
    h = np.full((xs.shape[0], xs.shape[1], ys.shape[1]), cfg.base_offset)
    for i, (wl, amp) in enumerate(cfg.octaves):
        if wl >= min_wl:
            h += amp * value_noise(xs, ys, wl, _salt(seed, 100 + i))
    mask = value_noise(xs, ys, cfg.mask_wavelength, _salt(seed, 200))
    mask = np.clip((mask - 0.05) * 2.5, 0.0, 1.0) ** 2  # mountains only in some regions
    ridge = np.zeros_like(h)
    for i, (wl, amp) in enumerate(cfg.ridge_octaves):
        if wl >= min_wl:
            ridge += amp * (1.0 - np.abs(value_noise(xs, ys, wl, _salt(seed, 300 + i))))
    return h + cfg.ridge_height * mask * ridge**2


def field_chunks(keys: list[tuple[int, int]], level: int, seed: int, cfg: TerrainConfig) -> np.ndarray:
    """Surface fields for a batch of chunks: [n, C, C, len(FIELDS)] float32.

    keys: (chunk_x, chunk_y) in chunk units of this level. Slopes come from central differences,
    so heights are computed with a one-point border.
    """
    c, s = cfg.chunk_cells, cfg.lod_spacing[level]
    k = np.asarray(keys, dtype=np.int64).reshape(-1, 2)
    offs = np.arange(-1, c + 1, dtype=np.int64)
    xs = (k[:, :1] * c + offs) * s  # [n, C+2] world coords
    ys = (k[:, 1:] * c + offs) * s
    h = height_grid(xs, ys, seed, cfg, min_wl=4 * s)  # [n, C+2, C+2]
    out = np.empty((len(k), c, c, len(FIELDS)), dtype=np.float32)
    out[..., F_HEIGHT] = h[:, 1:-1, 1:-1]
    out[..., F_SX] = (h[:, 2:, 1:-1] - h[:, :-2, 1:-1]) / (2.0 * s)
    out[..., F_SY] = (h[:, 1:-1, 2:] - h[:, 1:-1, :-2]) / (2.0 * s)
    inner_x, inner_y = xs[:, 1:-1], ys[:, 1:-1]
    out[..., F_MOIST] = value_noise(inner_x, inner_y, 128, _salt(seed, 400))
    out[..., F_DETAIL] = _detail(inner_x, inner_y, seed, s)
    out[..., F_SPECK] = hash01(inner_x[:, :, None], inner_y[:, None, :], _salt(seed, 500))
    return out


def _detail(xs: np.ndarray, ys: np.ndarray, seed: int, spacing: int) -> np.ndarray:
    # Mid-scale colour variation (patches of trees, dune ripples); finer octaves only up close.
    d = 0.6 * value_noise(xs, ys, 24, _salt(seed, 600))
    if spacing <= 2:
        d += 0.4 * value_noise(xs, ys, 6, _salt(seed, 601))
    return d


class ChunkCache:
    """LRU cache of pure per-chunk arrays; eviction only costs recomputation, never changes bits."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def get_many(self, keys: list[tuple], compute) -> list[np.ndarray]:
        """Arrays for keys, computing the missing ones in one batch via compute(missing_keys)."""
        missing = [k for k in keys if k not in self._items]
        if missing:
            for key, value in zip(missing, compute(missing)):
                self._items[key] = value
        for k in keys:
            self._items.move_to_end(k)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return [self._items[k] for k in keys]

    def clear(self) -> None:
        self._items.clear()
