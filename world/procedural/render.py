"""Numpy voxel-space renderer: theme looks, baked terrain colours, sky panoramas, frames.

Rendering a frame (all vectorised, no per-pixel Python):
  1. every screen column is a ray; sample the terrain window at K increasing depths   [W, K]
  2. project each sample's height to a screen row; a running minimum along depth gives the
     top of what is visible so far (front-to-back occlusion)                           [W, K]
  3. each pixel shows the first sample whose running top reaches it (one searchsorted)  [H, W]
  4. pixels no sample reaches show the sky panorama; precipitation streaks go on top.
Terrain colour (albedo, sun/moon shading, glow) is baked per lattice point when a window is
built, so a frame costs only lookups, fog blending and projection.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from world.procedural.terrain import F_DETAIL, F_HEIGHT, F_MOIST, F_SPECK, F_SX, F_SY, hash01
from world.procedural.themes import Theme, precipitation_kind

Color = tuple[float, float, float]


@dataclass(frozen=True)
class BiomeLook:
    """Surface palette of a biome (albedo colours in [0, 1])."""

    dry: Color
    wet: Color
    shore: Color
    rock: Color
    liquid_shallow: Color
    liquid_deep: Color
    veg: tuple[Color, ...] = ()
    veg_density: float = 0.0
    veg_height: float = 0.0  # trees stick up this far (render only; the camera floor ignores it)
    veg_max_height: float = 99.0
    peak: Color = (1.0, 1.0, 1.0)
    peak_height: float = 999.0
    liquid_glow: float = 0.0  # emissive strength of the liquid (lava, alien sea)
    crack_glow: Color = (0.0, 0.0, 0.0)  # emissive veins in low ground (volcanic)
    strata: float = 0.0  # horizontal rock bands (canyon)
    detail_contrast: float = 0.18
    sky_zenith_mix: tuple[Color, float] = ((0.0, 0.0, 0.0), 0.0)
    sky_horizon_mix: tuple[Color, float] = ((0.0, 0.0, 0.0), 0.0)
    cloudiness: float = 0.4


BIOME_LOOKS: dict[str, BiomeLook] = {
    "grassland": BiomeLook(
        dry=(0.50, 0.62, 0.22), wet=(0.20, 0.48, 0.14), shore=(0.78, 0.72, 0.50),
        rock=(0.45, 0.43, 0.40), liquid_shallow=(0.20, 0.45, 0.62), liquid_deep=(0.06, 0.18, 0.40),
        veg=((0.10, 0.30, 0.08), (0.16, 0.36, 0.10)), veg_density=0.10, veg_height=1.2,
        veg_max_height=30.0, peak=(0.92, 0.94, 0.98), peak_height=52.0,
    ),
    "desert": BiomeLook(
        dry=(0.84, 0.64, 0.36), wet=(0.78, 0.54, 0.30), shore=(0.86, 0.76, 0.58),
        rock=(0.55, 0.36, 0.22), liquid_shallow=(0.80, 0.72, 0.56), liquid_deep=(0.74, 0.64, 0.48),
        veg=((0.40, 0.42, 0.20),), veg_density=0.01, detail_contrast=0.3,
        sky_horizon_mix=((0.92, 0.80, 0.60), 0.3), cloudiness=0.1,
    ),
    "snow": BiomeLook(
        dry=(0.86, 0.89, 0.95), wet=(0.78, 0.83, 0.93), shore=(0.74, 0.83, 0.93),
        rock=(0.30, 0.31, 0.35), liquid_shallow=(0.62, 0.80, 0.92), liquid_deep=(0.45, 0.65, 0.85),
        veg=((0.08, 0.20, 0.14),), veg_density=0.06, veg_height=1.5, veg_max_height=14.0,
        detail_contrast=0.08, sky_horizon_mix=((0.92, 0.95, 1.0), 0.25),
    ),
    "volcanic": BiomeLook(
        dry=(0.16, 0.14, 0.14), wet=(0.28, 0.20, 0.17), shore=(0.10, 0.08, 0.08),
        rock=(0.08, 0.08, 0.09), liquid_shallow=(1.00, 0.50, 0.08), liquid_deep=(0.95, 0.22, 0.03),
        liquid_glow=1.0, crack_glow=(1.0, 0.35, 0.05), detail_contrast=0.35,
        sky_zenith_mix=((0.22, 0.14, 0.13), 0.6), sky_horizon_mix=((0.62, 0.30, 0.18), 0.55),
        cloudiness=0.7,
    ),
    "autumn_forest": BiomeLook(
        dry=(0.55, 0.32, 0.12), wet=(0.42, 0.26, 0.12), shore=(0.40, 0.33, 0.22),
        rock=(0.40, 0.37, 0.34), liquid_shallow=(0.22, 0.35, 0.42), liquid_deep=(0.10, 0.18, 0.26),
        veg=((0.92, 0.42, 0.06), (0.80, 0.14, 0.06), (0.96, 0.70, 0.12), (0.55, 0.20, 0.08)),
        veg_density=0.75, veg_height=1.8, veg_max_height=45.0, detail_contrast=0.12,
    ),
    "alien": BiomeLook(
        dry=(0.52, 0.22, 0.62), wet=(0.32, 0.12, 0.52), shore=(0.90, 0.55, 0.85),
        rock=(0.20, 0.10, 0.30), liquid_shallow=(0.10, 0.80, 0.70), liquid_deep=(0.02, 0.45, 0.55),
        veg=((0.20, 0.95, 0.70), (1.00, 0.35, 0.80)), veg_density=0.08, veg_height=1.0,
        liquid_glow=0.3, detail_contrast=0.3,
        sky_zenith_mix=((0.30, 0.10, 0.45), 0.6), sky_horizon_mix=((0.45, 0.95, 0.70), 0.55),
    ),
    "canyon": BiomeLook(
        dry=(0.74, 0.36, 0.18), wet=(0.62, 0.28, 0.15), shore=(0.70, 0.55, 0.38),
        rock=(0.56, 0.22, 0.12), liquid_shallow=(0.25, 0.50, 0.45), liquid_deep=(0.12, 0.30, 0.32),
        veg=((0.35, 0.40, 0.20),), veg_density=0.03, strata=0.45, detail_contrast=0.12,
        sky_horizon_mix=((0.90, 0.75, 0.60), 0.2), cloudiness=0.2,
    ),
    "tropical": BiomeLook(
        dry=(0.30, 0.62, 0.16), wet=(0.10, 0.50, 0.18), shore=(0.98, 0.94, 0.78),
        rock=(0.42, 0.40, 0.34), liquid_shallow=(0.15, 0.85, 0.80), liquid_deep=(0.02, 0.32, 0.62),
        veg=((0.05, 0.38, 0.12), (0.12, 0.55, 0.10)), veg_density=0.45, veg_height=2.0,
        veg_max_height=25.0, detail_contrast=0.15,
        sky_zenith_mix=((0.05, 0.45, 0.95), 0.4),
    ),
}


@dataclass(frozen=True)
class TimeLook:
    """Light and sky of a time of day; sun_az in degrees from +y (north) towards +x (east)."""

    sun_az: float
    sun_el: float
    sun: Color
    ambient: Color
    zenith: Color
    horizon: Color
    sun_disc: Color
    stars: float = 0.0
    disc_size: float = 2.5  # degrees


TIME_LOOKS: dict[str, TimeLook] = {
    "dawn": TimeLook(90.0, 9.0, (1.0, 0.70, 0.55), (0.36, 0.35, 0.46), (0.30, 0.42, 0.70),
                     (1.00, 0.70, 0.62), (1.0, 0.90, 0.70)),
    "noon": TimeLook(160.0, 62.0, (0.90, 0.86, 0.80), (0.40, 0.44, 0.52), (0.20, 0.44, 0.86),
                     (0.70, 0.82, 0.96), (1.0, 1.0, 0.95)),
    "dusk": TimeLook(270.0, 6.0, (1.0, 0.48, 0.22), (0.34, 0.25, 0.34), (0.16, 0.14, 0.36),
                     (1.00, 0.48, 0.22), (1.0, 0.75, 0.4), disc_size=3.5),
    "night": TimeLook(200.0, 35.0, (0.26, 0.31, 0.48), (0.09, 0.10, 0.16), (0.006, 0.01, 0.04),
                      (0.05, 0.07, 0.15), (0.92, 0.94, 1.0), stars=1.0, disc_size=2.2),
}


@dataclass
class Look:
    """Everything the renderer needs for one theme, resolved to arrays."""

    theme: Theme
    biome: BiomeLook
    time: TimeLook
    sun_dir: np.ndarray  # [3] unit vector towards the sun (moon at night)
    sun: np.ndarray  # [3] direct light colour
    ambient: np.ndarray  # [3]
    zenith: np.ndarray  # [3]
    horizon: np.ndarray  # [3] also the fog colour, so far terrain melts into the sky
    fog_distance: float  # e-folding distance of distance haze, world units
    cloudiness: float
    precipitation: str  # "", "rain", "snow" or "ash"
    glint: np.ndarray | None  # [3] colour of sun glitter on water, None when there is none


def _mix(a: np.ndarray, mix: tuple[Color, float]) -> np.ndarray:
    color, amount = mix
    return a * (1.0 - amount) + np.asarray(color) * amount


def direction(az_deg: float, el_deg: float) -> np.ndarray:
    az, el = math.radians(az_deg), math.radians(el_deg)
    return np.array([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), math.sin(el)])


def make_look(theme: Theme, view_distance: float) -> Look:
    """Resolve a theme into colours and light: biome palette x time of day, then weather on top."""
    b, t = BIOME_LOOKS[theme.biome], TIME_LOOKS[theme.time_of_day]
    zenith = _mix(np.asarray(t.zenith), b.sky_zenith_mix)
    horizon = _mix(np.asarray(t.horizon), b.sky_horizon_mix)
    if theme.time_of_day == "night":  # biome sky tints would light up the night sky
        zenith, horizon = np.asarray(t.zenith), np.asarray(t.horizon) * 0.7 + horizon * 0.06
    look = Look(theme, b, t, direction(t.sun_az, t.sun_el), np.asarray(t.sun), np.asarray(t.ambient),
                zenith, horizon, view_distance * 0.45, b.cloudiness, "", None)
    if theme.weather == "fog":
        _fog_weather(look)
    elif theme.weather == "precipitation":
        _precipitation_weather(look, view_distance)
    elif t.sun_el < 40.0 and not b.liquid_glow and theme.biome != "desert":  # low sun/moon on water
        look.glint = (np.asarray(t.sun_disc) * (0.4 if theme.time_of_day == "night" else 0.7)).astype(np.float32)
    return look


def _fog_weather(look: Look) -> None:
    night = look.theme.time_of_day == "night"
    grey = look.horizon.mean() * 0.35 + 0.65 * look.horizon
    # Moonlit fog stays a dim blue-grey (not black) so the ground's colours still show through.
    look.horizon = grey * 0.75 + 0.25 * (np.array([0.30, 0.34, 0.42]) if night else np.full(3, 0.8))
    look.zenith = look.horizon * 0.95
    look.fog_distance = 35.0 if night else 28.0
    look.sun, look.ambient = look.sun * 0.45, look.ambient * (1.6 if night else 1.1)


def _precipitation_weather(look: Look, view_distance: float) -> None:
    look.horizon = look.horizon * 0.45 + look.horizon.mean() * 0.25
    look.zenith = look.zenith * 0.35 + look.horizon * 0.4
    look.fog_distance, look.cloudiness, look.sun = view_distance * 0.25, 1.0, look.sun * 0.45
    look.precipitation = precipitation_kind(look.theme.biome)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _lerp(a: np.ndarray, b: np.ndarray | Color, t: np.ndarray) -> np.ndarray:
    return a + (np.asarray(b, dtype=np.float32) - a) * t[..., None]


def _albedo(f: np.ndarray, b: BiomeLook, spacing: float) -> np.ndarray:
    """Ground albedo [..., 3] from surface fields [..., F] (land only; liquid is separate)."""
    h, moist, detail = f[..., F_HEIGHT], f[..., F_MOIST], f[..., F_DETAIL]
    slope = np.hypot(f[..., F_SX], f[..., F_SY])
    col = _lerp(np.asarray(b.dry, np.float32) + 0 * h[..., None], b.wet, _smoothstep(-0.4, 0.5, moist))
    if b.strata:  # alternating pale and dark rock layers, slightly wavy; muted far away (aliasing)
        layer, amount = np.sin(h * 1.1 + 1.2 * detail), b.strata / spacing**0.75
        col = _lerp(col, (0.90, 0.70, 0.50), amount * _smoothstep(0.2, 0.7, layer))
        col = col * (1.0 - 0.5 * amount * _smoothstep(0.3, 0.9, -layer))[..., None]
    col = _lerp(col, b.shore, 1.0 - _smoothstep(0.4, 1.6, h + 0.6 * detail))
    col = _lerp(col, b.peak, _smoothstep(b.peak_height, b.peak_height + 6.0, h + 8.0 * detail))
    col = _lerp(col, b.rock, _smoothstep(0.55, 1.1, slope + 0.3 * detail))
    col = col * (1.0 + b.detail_contrast * detail)[..., None]
    return _vegetation(col, f, b, slope)


def _vegetation(col: np.ndarray, f: np.ndarray, b: BiomeLook, slope: np.ndarray) -> np.ndarray:
    if not b.veg:
        return col
    speck, h = f[..., F_SPECK], f[..., F_HEIGHT]
    density = b.veg_density * (0.6 + 0.8 * _smoothstep(-0.6, 0.6, f[..., F_MOIST]))
    trees = (speck < density) & (h > 0.8) & (h < b.veg_max_height) & (slope < 0.9)
    # Pick each tree's colour from the speck value itself: cheap and stable per lattice point.
    which = np.minimum((speck / np.maximum(density, 1e-6) * len(b.veg)).astype(np.int64), len(b.veg) - 1)
    palette = np.asarray(b.veg, dtype=np.float32)
    shade = (0.85 + 0.3 * f[..., F_DETAIL])[..., None]
    return np.where(trees[..., None], palette[which] * shade, col)


def _liquid(f: np.ndarray, b: BiomeLook) -> np.ndarray:
    depth = np.maximum(-f[..., F_HEIGHT], 0.0)
    col = _lerp(np.asarray(b.liquid_shallow, np.float32) + 0 * depth[..., None], b.liquid_deep,
                1.0 - np.exp(-depth / 3.0))
    # Ripples, crust and glints give the flat surface texture, so motion over it stays visible.
    col = col * (1.0 + 0.25 * f[..., F_DETAIL])[..., None]
    return _lerp(col, (1.0, 1.0, 1.0), 0.2 * _smoothstep(0.95, 1.0, f[..., F_SPECK]))


def bake_colors(fields: np.ndarray, look: Look, spacing: float = 1.0) -> np.ndarray:
    """Shaded surface [n, C, C, 4] float32: rendered height, then RGB in [0, 1.2] (glow may exceed 1).

    fields: [n, C, C, F] from world.procedural.terrain.field_chunks; spacing: their lattice spacing.
    """
    b = look.biome
    h = fields[..., F_HEIGHT]
    water = h < 0.0
    sx, sy = fields[..., F_SX], fields[..., F_SY]
    # Explicit elementwise dot product (no BLAS): bits must not depend on how chunks were batched.
    sun = look.sun_dir.astype(np.float32)
    lambert = np.clip((sun[2] - sx * sun[0] - sy * sun[1]) / np.sqrt(sx * sx + sy * sy + 1.0), 0.0, None)
    lambert = np.where(water, float(max(look.sun_dir[2], 0.0)), lambert)
    light = look.ambient.astype(np.float32) + look.sun.astype(np.float32) * lambert[..., None]
    albedo = np.where(water[..., None], _liquid(fields, b), _albedo(fields, b, spacing))
    col = albedo * light + _glow(fields, b, water)
    out = np.empty(h.shape + (4,), dtype=np.float32)
    out[..., 0] = np.maximum(h, 0.0) + _tree_height(fields, b)
    out[..., 1:] = np.clip(col, 0.0, 1.2)
    return out


def _glow(f: np.ndarray, b: BiomeLook, water: np.ndarray) -> np.ndarray:
    glow = np.zeros(f.shape[:-1] + (3,), dtype=np.float32)
    if b.liquid_glow:
        glow += np.where(water[..., None], _liquid(f, b) * b.liquid_glow, 0.0)
    if any(b.crack_glow):
        veins = _smoothstep(0.86, 0.97, 1.0 - np.abs(f[..., F_DETAIL])) * _smoothstep(6.0, 0.5, f[..., F_HEIGHT])
        glow += veins[..., None] * np.asarray(b.crack_glow, dtype=np.float32) * (~water)[..., None]
    return glow


def _tree_height(f: np.ndarray, b: BiomeLook) -> np.ndarray:
    if not b.veg_height:
        return np.zeros(f.shape[:-1], dtype=np.float32)
    h = f[..., F_HEIGHT]
    density = b.veg_density * (0.6 + 0.8 * _smoothstep(-0.6, 0.6, f[..., F_MOIST]))
    trees = (f[..., F_SPECK] < density) & (h > 0.8) & (h < b.veg_max_height)
    return trees * np.float32(b.veg_height)


# ---------------------------------------------------------------------------------------------
# Sky


SKY_TAN_RANGE = (-2.5, 2.5)  # tan(elevation) covered by the panorama rows


def sky_panorama(look: Look, seed: int, rows: int, cols: int) -> np.ndarray:
    """Sky colour [rows, cols, 3] float32 over tan(elevation) x azimuth (0..360 from north)."""
    tan_el = np.linspace(SKY_TAN_RANGE[1], SKY_TAN_RANGE[0], rows)[:, None]  # top row first
    az = (np.arange(cols) + 0.5) / cols * 2.0 * np.pi
    el = np.arctan(tan_el)
    t = np.sqrt(np.clip(tan_el, 0.0, None) / 1.2).clip(0.0, 1.0)
    sky = look.horizon + (look.zenith - look.horizon) * t[..., None]  # [rows, 1, 3]
    sky = np.broadcast_to(sky, (rows, cols, 3)).copy()
    dirs = np.stack([np.sin(az)[None] * np.cos(el), np.cos(az)[None] * np.cos(el),
                     np.broadcast_to(np.sin(el), (rows, cols))], axis=-1)  # [rows, cols, 3]
    cos_sun = dirs[..., 0] * look.sun_dir[0] + dirs[..., 1] * look.sun_dir[1] + dirs[..., 2] * look.sun_dir[2]
    sky = _clouds(sky, look, seed, az, el, cos_sun)
    sky = _sun_and_stars(sky, look, seed, cos_sun, el)
    return sky.astype(np.float32)


def point_noise(x: np.ndarray, y: np.ndarray, salt: int) -> np.ndarray:
    """Value noise in [-1, 1] at arbitrary float64 points (unit wavelength), any shape."""
    ix, iy = np.floor(x), np.floor(y)
    u, v = _fade(x - ix), _fade(y - iy)
    ix, iy = ix.astype(np.int64), iy.astype(np.int64)
    c00, c10 = hash01(ix, iy, salt), hash01(ix + 1, iy, salt)
    c01, c11 = hash01(ix, iy + 1, salt), hash01(ix + 1, iy + 1, salt)
    top, bot = c00 + (c10 - c00) * u, c01 + (c11 - c01) * u
    return (top + (bot - top) * v) * 2.0 - 1.0


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def _clouds(sky: np.ndarray, look: Look, seed: int, az: np.ndarray, el: np.ndarray,
            cos_sun: np.ndarray) -> np.ndarray:
    """Clouds on a flat layer overhead, projected into the panorama (so they are seamless at 360)."""
    if look.cloudiness <= 0.0 or look.theme.weather == "fog":
        return sky
    tan_el = np.clip(np.tan(el), 0.03, None)  # [rows, 1]
    px, py = np.sin(az)[None] / tan_el * 2.0, np.cos(az)[None] / tan_el * 2.0  # layer coordinates
    c = sum(a * point_noise(px * f + 17.0 * i, py * f - 5.0 * i, seed * 13 + i)
            for i, (f, a) in enumerate(((0.35, 0.6), (0.8, 0.3), (1.9, 0.15))))
    cover = _smoothstep(0.55 - 0.6 * look.cloudiness, 0.75 - 0.4 * look.cloudiness, c * 0.5 + 0.5)
    cover = cover * _smoothstep(0.02, 0.2, el)  # far-away layer aliases: fade it into the haze
    lit = look.sun * 0.55 + look.ambient * 0.9 + 0.3 * np.exp((cos_sun - 1.0) * 6.0)[..., None] * look.sun
    cloud = np.clip(lit, 0.0, 1.0) * (0.85 + 0.15 * c)[..., None]
    if look.precipitation:
        cloud = cloud * 0.5 + look.horizon * 0.35
    strength = 0.9 if look.theme.time_of_day != "night" else 0.45
    return sky + (cloud - sky) * (cover * strength)[..., None]


def _sun_and_stars(sky: np.ndarray, look: Look, seed: int, cos_sun: np.ndarray, el: np.ndarray) -> np.ndarray:
    veil = 0.15 if look.theme.weather != "clear" else 1.0  # fog/rain hide the disc and the stars
    glow = np.exp((cos_sun - 1.0) * 40.0) * 0.6 + np.exp((cos_sun - 1.0) * 6.0) * 0.25
    if look.theme.time_of_day == "night":
        glow = glow * 0.3
    sky = sky + (glow * veil)[..., None] * np.asarray(look.time.sun_disc)
    disc = _smoothstep(math.cos(math.radians(look.time.disc_size)),
                       math.cos(math.radians(look.time.disc_size * 0.8)), cos_sun) * veil
    sky = sky + (np.asarray(look.time.sun_disc) - sky) * disc[..., None]
    if look.time.stars:
        rows, cols = cos_sun.shape
        ix, iy = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        r = hash01(ix, iy, seed * 31 + 5)
        star = np.clip((r - 0.992) / 0.008, 0.0, 1.0) * _smoothstep(0.02, 0.15, el) * (1 - disc)
        sky = sky + (star * veil * look.time.stars)[..., None] * np.array([0.9, 0.92, 1.0])
    return sky


# ---------------------------------------------------------------------------------------------
# Frames


@dataclass
class Window:
    """Baked surface around the camera for one level of detail.

    data: [N * N, 4] float32 rows (rendered height, r, g, b), flat index ix * N + iy.
    origin: world coordinates of lattice point (0, 0); spacing: world units between points.
    """

    data: np.ndarray
    n: int
    origin: tuple[float, float]
    spacing: float


@dataclass(frozen=True)
class Pose:
    x: float
    y: float
    z: float  # eye altitude (world units)
    yaw: float  # radians, 0 looks along +y, positive turns right (towards +x)
    pitch: float  # tan of the look angle; positive looks up


class View:
    """Per-resolution constants: column rays, depth samples, LOD blend weights."""

    def __init__(self, height: int, width: int, fov_deg: float, depth_samples: int, near: float,
                 far: float, lod_blend: tuple[float, float], sky_cols: int) -> None:
        self.h, self.w, self.k = height, width, depth_samples
        self.focal = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)  # pixels
        self.t_col = ((np.arange(width) + 0.5 - width / 2.0) / self.focal).astype(np.float64)  # [W]
        u = np.linspace(0.0, 1.0, depth_samples)
        self.z = (near + (far - near) * u**1.8).astype(np.float32)  # [K] denser up close
        self.proj = (self.focal / self.z).astype(np.float32)  # [K] pixels per world unit at depth
        self.lod_w = _smoothstep(lod_blend[0], lod_blend[1], self.z).astype(np.float32)  # [K] far weight
        # Level 0 serves samples [0, k0_end), level 1 serves [k1_start, K); the overlap is blended.
        self.k0_end = int(np.searchsorted(self.lod_w, 1.0))
        self.k1_start = int(np.searchsorted(self.lod_w, 0.0, side="right"))
        self.col_off = (np.arange(width, dtype=np.float32) * (height + 4))[None, :]  # [1, W]
        self.row_q = (-(np.arange(height, dtype=np.float32) + 0.5))[:, None]  # [H, 1]
        self.az_col = np.arctan(self.t_col)  # [W] azimuth offset of each column
        self.sky_cols = sky_cols

    def fog(self, look: Look, far: float) -> np.ndarray:
        """[K] haze amount per depth sample; reaches 1 at the far end so there is no hard edge."""
        haze = 1.0 - np.exp(-self.z / look.fog_distance)
        return np.maximum(haze, _smoothstep(0.7 * far, far, self.z)).astype(np.float32)


def _sample(win: Window, pose: Pose, view: View, ks: slice, fwd: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Bilinear lookup of the window along every column ray: [W, len(ks), 4]."""
    inv = 1.0 / win.spacing
    dx = ((fwd[0] + view.t_col * right[0]) * inv).astype(np.float32)  # [W] per unit depth
    dy = ((fwd[1] + view.t_col * right[1]) * inv).astype(np.float32)
    z = view.z[ks]
    gx = np.float32((pose.x - win.origin[0]) * inv) + dx[:, None] * z[None, :]  # [W, k]
    gy = np.float32((pose.y - win.origin[1]) * inv) + dy[:, None] * z[None, :]
    np.clip(gx, 0.0, win.n - 1.001, out=gx)
    np.clip(gy, 0.0, win.n - 1.001, out=gy)
    ix, iy = gx.astype(np.int32), gy.astype(np.int32)
    fx, fy = (gx - ix)[..., None], (gy - iy)[..., None]
    i00 = ix * win.n + iy
    d = win.data
    # np.take is several times faster than fancy indexing for row gathers.
    c00, c10 = np.take(d, i00, axis=0), np.take(d, i00 + win.n, axis=0)
    c01, c11 = np.take(d, i00 + 1, axis=0), np.take(d, i00 + (win.n + 1), axis=0)
    c10 -= c00
    c10 *= fx
    c00 += c10  # top edge
    c11 -= c01
    c11 *= fx
    c01 += c11  # bottom edge
    c01 -= c00
    c01 *= fy
    c00 += c01
    return c00


def sample_terrain(windows: tuple[Window, Window], pose: Pose, view: View) -> np.ndarray:
    """[W, K, 4] (height, r, g, b) along all rays, the near level blended into the far level."""
    fwd = np.array([math.sin(pose.yaw), math.cos(pose.yaw)])
    right = np.array([math.cos(pose.yaw), -math.sin(pose.yaw)])
    k0, k1 = view.k0_end, view.k1_start
    near = _sample(windows[0], pose, view, slice(0, k0), fwd, right)  # [W, k0, 4]
    far = _sample(windows[1], pose, view, slice(k1, view.k), fwd, right)  # [W, K - k1, 4]
    w = view.lod_w[k1:k0][None, :, None]
    band = near[:, k1:] + (far[:, : k0 - k1] - near[:, k1:]) * w
    return np.concatenate([near[:, :k1], band, far[:, k0 - k1 :]], axis=1)


def render_frame(view: View, pose: Pose, windows: tuple[Window, Window], look: Look, fog: np.ndarray,
                 sky: np.ndarray, frame_index: int, seed: int) -> np.ndarray:
    """One view [H, W, 3] uint8. fog: [K] from View.fog; sky: panorama from sky_panorama."""
    s = sample_terrain(windows, pose, view)  # [W, K, 4]
    horizon = view.h / 2.0 + pose.pitch * view.focal
    rows = np.float32(horizon) + (np.float32(pose.z) - s[..., 0]) * view.proj[None, :]  # [W, K]
    top = np.minimum.accumulate(rows, axis=1)
    np.clip(top, -1.0, view.h + 1.0, out=top)
    keys = (view.col_off.T - top).ravel()  # [W*K] non-decreasing: per column, then column offset
    hit = np.searchsorted(keys, (view.row_q + view.col_off).ravel()).reshape(view.h, view.w)  # [H, W]
    covered = hit < (np.arange(view.w) + 1) * view.k  # the hit lies inside its own column
    color = s[..., 1:]  # [W, K, 3]
    if look.glint is not None:
        color = color + _glint(view, pose, look, s[..., 0])
    color = color + (look.horizon.astype(np.float32) - color) * fog[None, :, None]
    terrain = np.take(color.reshape(-1, 3), np.minimum(hit, view.w * view.k - 1), axis=0)  # [H, W, 3]
    img = np.where(covered[..., None], terrain, _sky_view(sky, view, pose, horizon))
    if look.precipitation:
        img = draw_precipitation(img, look.precipitation, view, pose, frame_index, seed)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _glint(view: View, pose: Pose, look: Look, height: np.ndarray) -> np.ndarray:
    """Low sun (or moon) reflected on open water: a shimmering path below it. [W, K, 3]"""
    water = height < 0.05  # the liquid surface is flat at 0 (trees never grow in it)
    d = np.angle(np.exp(1j * (pose.yaw + view.az_col - math.radians(look.time.sun_az))))  # [W] wrapped
    across = np.exp(-((d / 0.09) ** 2)).astype(np.float32)
    along = _smoothstep(4.0, 50.0, view.z)  # [K] grazing angles reflect more
    return (water * across[:, None] * along[None, :])[..., None] * look.glint


def _sky_view(sky: np.ndarray, view: View, pose: Pose, horizon: float) -> np.ndarray:
    """[H, W, 3] slice of the panorama seen through the current camera."""
    rows_n, cols_n = sky.shape[:2]
    tan_el = (horizon - (np.arange(view.h) + 0.5)) / view.focal  # [H]
    lo, hi = SKY_TAN_RANGE
    r = np.clip(((hi - tan_el) / (hi - lo) * (rows_n - 1) + 0.5).astype(np.int64), 0, rows_n - 1)
    az = (pose.yaw + view.az_col) / (2.0 * np.pi)  # [W] turns
    c = np.floor((az - np.floor(az)) * cols_n).astype(np.int64) % cols_n
    return np.take(sky.reshape(-1, 3), r[:, None] * cols_n + c[None, :], axis=0)


# Per kind: (count per 64x64 pixels, fall speed px/frame, streak length px, alpha, colour)
PRECIPITATION = {
    "rain": (90, 5.0, 4, 0.45, (0.78, 0.82, 0.92)),
    "snow": (110, 0.9, 1, 0.85, (0.97, 0.98, 1.0)),
    "ash": (90, 0.5, 1, 0.75, (0.35, 0.33, 0.32)),
}


@functools.lru_cache(maxsize=16)
def _particle_seeds(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-particle uniforms (x, y, speed) in [0, 1): pure in (seed, n), so caching is safe."""
    ids = np.arange(n)
    out = tuple(hash01(ids, np.full(n, j), seed * 7 + 11) for j in range(3))
    for a in out:
        a.flags.writeable = False
    return out


def draw_precipitation(img: np.ndarray, kind: str, view: View, pose: Pose, frame: int, seed: int) -> np.ndarray:
    """Falling particles; positions are pure functions of (seed, frame, pose), so replays match.

    They are anchored to the view direction (turning or looking sweeps them across the screen) and
    fall at a fixed per-frame speed.
    """
    count, speed, length, alpha, colour = PRECIPITATION[kind]
    h, w = view.h, view.w
    u, v, s = _particle_seeds(seed, max(1, int(count * h * w / 4096)))
    scale = h / 64.0
    fall = frame * speed * scale * (0.75 + 0.5 * s)
    x0 = u * w * 4.0 - pose.yaw * view.focal  # 4 screen widths of particles around the circle
    y0 = v * (h + 8) + fall + pose.pitch * view.focal
    if kind != "rain":  # flakes wobble sideways as they fall
        x0 = x0 + 1.5 * scale * np.sin(frame * 0.15 + s * 6.283)
    steps = np.arange(max(1, int(length * scale)))
    ys = np.floor(np.mod(y0[:, None] - steps[None, :], h + 8)).astype(np.int64) - 4  # [n, L]
    xs = np.floor(np.mod(x0[:, None] - 0.35 * steps[None, :], w * 4.0)).astype(np.int64)
    keep = (ys >= 0) & (ys < h) & (xs < w)
    flat = img.reshape(-1, 3)
    idx = (ys * w + xs)[keep]
    flat[idx] = flat[idx] * (1.0 - alpha) + np.asarray(colour, dtype=np.float32) * alpha
    if kind == "ash":  # a few glowing embers among the ash
        embers = idx[(idx % 7) == 0]
        flat[embers] = np.asarray((1.0, 0.45, 0.1), dtype=np.float32)
    return img
