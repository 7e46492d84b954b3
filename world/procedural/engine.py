"""The procedural reference world: a flying first-person camera over infinite themed terrain.

`EngineWorld` owns the camera physics and the terrain windows; `world.procedural.render` draws frames and
`world.procedural.terrain` supplies the heights. A frame is a pure function of (seed, theme, camera pose,
frame counter), and the pose evolves with plain float64 arithmetic, so the same seed, theme
sequence and actions give bit-identical frames.

Benchmark: `python -m world.procedural.engine --bench [--frames 1000] [--size 64]` (one thread).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from world.actions import Action
from world.procedural.render import (
    Look,
    Pose,
    View,
    Window,
    bake_colors,
    make_look,
    render_frame,
    sky_panorama,
)
from world.procedural.terrain import F_HEIGHT, ChunkCache, TerrainConfig, field_chunks, height_grid
from world.procedural.themes import Theme

# Version of the engine's output. Bump it with any change that alters rendered bytes for the same
# seed, prompts and actions (physics, terrain, colours, renderer, defaults): recordings store it,
# so `replay` can tell "recorded with another engine" from a determinism bug.
ENGINE_VERSION = 1


@dataclass(frozen=True)
class EngineConfig:
    """Render and physics constants. Speeds are per frame (the world runs at a nominal 30 FPS)."""

    height: int = 64
    width: int = 64
    fov_deg: float = 75.0  # horizontal field of view
    view_distance: float = 240.0  # world units; terrain fades into the sky before this
    depth_samples: int = 112  # samples along each column ray
    near: float = 0.6
    lod_blend: tuple[float, float] = (34.0, 46.0)  # depths where level 0 hands over to level 1
    eye_height: float = 2.5  # minimum eye height above the ground (or the liquid surface)
    start_clearance: float = 3.0  # extra height above the minimum at reset
    max_clearance: float = 40.0  # how far rise can lift the eye above the minimum
    move_speed: float = 0.55  # forward/back, world units per frame
    strafe_speed: float = 0.4
    turn_deg: float = 5.0  # turn_left/turn_right per frame
    mouse_turn_deg: float = 10.0  # mouse_dx = 1.0 turns this much in one frame
    look_step: float = 0.05  # look_up/look_down change of tan(pitch) per frame
    mouse_look_step: float = 0.10  # mouse_dy = 1.0
    pitch_limit: float = 0.65  # |tan(pitch)|; keeps the horizon on screen
    rise_speed: float = 0.45  # rise/sink, world units per frame
    follow_rate: float = 0.35  # how fast the eye follows the ground below (fraction per frame)
    terrain: TerrainConfig = field(default_factory=TerrainConfig)


class EngineWorld:
    """Camera + terrain + theme. reset() before anything else."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        c = self.config
        self.view = View(c.height, c.width, c.fov_deg, c.depth_samples, c.near, c.view_distance,
                         c.lod_blend, sky_cols=_sky_cols(c))
        self._fields = ChunkCache(c.terrain.max_cached_chunks)
        self._colors = ChunkCache(c.terrain.max_cached_chunks)
        self._radius = self._window_radii()
        self._windows: list[Window | None] = [None, None]
        self._window_keys: list[tuple | None] = [None, None]
        self.seed, self.frame = 0, 0
        self.x = self.y = self.yaw = self.pitch = self.clearance = self.ground = 0.0
        self.theme = Theme()
        self._look: Look | None = None

    # -- public API ---------------------------------------------------------------------------

    def reset(self, seed: int, theme: Theme) -> np.ndarray:
        """Start a new world; returns the first view [H, W, 3] uint8."""
        if seed != self.seed:
            self._fields.clear()
            self._colors.clear()
        self.seed, self.frame = int(seed), 0
        self.x, self.y = self._start_position()
        self.yaw, self.pitch = 0.0, -0.08  # slightly down: more ground than sky in the first view
        self.clearance = self.config.start_clearance
        self.set_theme(theme)
        self.ground = self._ground_height()
        return self.render()

    def set_theme(self, theme: Theme) -> None:
        """Change the look; terrain and camera stay where they are."""
        self.theme = theme
        self._look = make_look(theme, self.config.view_distance)
        self._fog = self.view.fog(self._look, self.config.view_distance)
        rows = int(self.config.height * 2.5)
        self._sky = sky_panorama(self._look, self.seed, rows, self.view.sky_cols)
        self._window_keys = [None, None]  # baked colours depend on the theme

    def step(self, action: Action) -> np.ndarray:
        """Apply one frame of input, return the new view [H, W, 3] uint8."""
        if self._look is None:
            raise RuntimeError("EngineWorld.reset(seed, theme) must be called first")
        self._move(action)
        self.frame += 1
        return self.render()

    def state(self) -> dict:
        """Camera pose and counters, JSON-able."""
        return {
            "x": self.x, "y": self.y, "z": self.eye_z, "yaw_deg": math.degrees(self.yaw) % 360.0,
            "pitch": self.pitch, "clearance": self.clearance, "ground": self.ground,
            "frame": self.frame, "seed": self.seed, "theme": self.theme.to_json(),
        }

    POSE_FIELDS = ("x", "y", "yaw", "pitch", "clearance", "ground", "frame")

    def pose(self) -> dict[str, float]:
        """The camera's exact state (yaw in radians): `restore` on a world reset with the same seed
        and theme continues bit for bit, which `state()`'s rounded degrees could not promise."""
        return {name: getattr(self, name) for name in self.POSE_FIELDS}

    def restore(self, pose: dict[str, float]) -> None:
        """Put the camera back to a `pose()` of this seed's world (after `reset`)."""
        missing = [name for name in self.POSE_FIELDS if name not in pose]
        if missing:
            raise ValueError(f"engine pose lacks {missing}")
        for name in self.POSE_FIELDS:
            setattr(self, name, int(pose[name]) if name == "frame" else float(pose[name]))

    def teleport(self, x: float, y: float, yaw_deg: float | None = None, pitch: float | None = None) -> None:
        """Move the camera (for scripted set-ups and figures); the eye lands on the local ground."""
        self.x, self.y = float(x), float(y)
        if yaw_deg is not None:
            self.yaw = math.radians(yaw_deg) % (2.0 * math.pi)
        if pitch is not None:
            self.pitch = min(max(float(pitch), -self.config.pitch_limit), self.config.pitch_limit)
        self.ground = self._ground_height()

    @property
    def eye_z(self) -> float:
        return self.ground + self.config.eye_height + self.clearance

    def render(self) -> np.ndarray:
        """The current view [H, W, 3] uint8 (no state change apart from window caches)."""
        if self._look is None:
            raise RuntimeError("EngineWorld.reset(seed, theme) must be called first")
        self._ensure_windows()
        pose = Pose(self.x, self.y, self.eye_z, self.yaw, self.pitch)
        return render_frame(self.view, pose, self._windows_tuple(), self._look, self._fog, self._sky,
                            self.frame, self.seed)

    def height_at(self, x: float, y: float) -> float:
        """Terrain (or liquid surface) height at a point near the camera, as the camera sees it."""
        self._ensure_windows()
        w = self._windows[0]
        gx, gy = (x - w.origin[0]) / w.spacing, (y - w.origin[1]) / w.spacing
        ix, iy = int(math.floor(gx)), int(math.floor(gy))
        fx, fy = gx - ix, gy - iy
        h = self._level0_heights
        top = h[ix, iy] + (h[ix + 1, iy] - h[ix, iy]) * fx
        bot = h[ix, iy + 1] + (h[ix + 1, iy + 1] - h[ix, iy + 1]) * fx
        return float(top + (bot - top) * fy)

    # -- physics ------------------------------------------------------------------------------

    def _move(self, a: Action) -> None:
        c = self.config
        turn = (a.held("turn_right") - a.held("turn_left")) * c.turn_deg + a.mouse_dx * c.mouse_turn_deg
        self.yaw = (self.yaw + math.radians(turn)) % (2.0 * math.pi)
        look = (a.held("look_up") - a.held("look_down")) * c.look_step + a.mouse_dy * c.mouse_look_step
        self.pitch = min(max(self.pitch + look, -c.pitch_limit), c.pitch_limit)
        fwd = (a.held("forward") - a.held("back")) * c.move_speed
        side = (a.held("right") - a.held("left")) * c.strafe_speed
        sy, cy = math.sin(self.yaw), math.cos(self.yaw)
        self.x += fwd * sy + side * cy
        self.y += fwd * cy - side * sy
        climb = (a.held("rise") - a.held("sink")) * c.rise_speed
        self._follow_ground(climb)

    def _follow_ground(self, climb: float) -> None:
        """Glide towards the ground below, but never let the eye dip under ground + eye_height."""
        c = self.config
        target = self._ground_height()
        self.ground += (target - self.ground) * c.follow_rate
        self.ground = max(self.ground, target)  # rising ground pushes the camera up at once
        self.clearance = min(max(self.clearance + climb, 0.0), c.max_clearance)

    def _ground_height(self) -> float:
        return self.height_at(self.x, self.y)

    def _start_position(self) -> tuple[float, float]:
        """First dry point of a fixed spiral around the origin (the start must not be in a lake)."""
        i = np.arange(64)
        xs = np.round(37.0 * i * np.cos(i * 2.4)).astype(np.int64)[:, None]  # [n, 1] one-point grids
        ys = np.round(37.0 * i * np.sin(i * 2.4)).astype(np.int64)[:, None]
        h = height_grid(xs, ys, self.seed, self.config.terrain, min_wl=1)[:, 0, 0]
        dry = np.flatnonzero(h > 1.5)
        j = int(dry[0]) if len(dry) else 0
        return float(xs[j, 0]), float(ys[j, 0])

    # -- terrain windows ----------------------------------------------------------------------

    def _window_radii(self) -> tuple[int, int]:
        """Chunks either side of the camera's chunk that each level must cover."""
        c, t = self.config, self.config.terrain
        spread = math.hypot(1.0, math.tan(math.radians(c.fov_deg) / 2.0))  # edge rays reach further
        reach = (c.lod_blend[1] * spread + 2.0, c.view_distance * spread + 8.0)
        return tuple(math.ceil(r / (t.chunk_cells * t.lod_spacing[i])) for i, r in enumerate(reach))

    def _ensure_windows(self) -> None:
        """Rebuild a level's window when the camera changed chunk (or the theme changed)."""
        t = self.config.terrain
        for level in (0, 1):
            size = t.chunk_cells * t.lod_spacing[level]
            key = (math.floor(self.x / size), math.floor(self.y / size), self.theme)
            if key != self._window_keys[level]:
                self._windows[level] = self._build_window(level, key[0], key[1])
                self._window_keys[level] = key

    def _build_window(self, level: int, cx: int, cy: int) -> Window:
        t, r = self.config.terrain, self._radius[level]
        keys = [(cx + i, cy + j) for i in range(-r, r + 1) for j in range(-r, r + 1)]
        fields = self._fields.get_many(
            [(level, *k) for k in keys], lambda ks: field_chunks([k[1:] for k in ks], level, self.seed, t))
        by_key = dict(zip(keys, fields))
        colors = self._colors.get_many(
            [(level, self.theme, *k) for k in keys], lambda ks: self._bake([by_key[k[2:]] for k in ks], level))
        n_side, c = 2 * r + 1, t.chunk_cells
        grid = np.stack(colors).reshape(n_side, n_side, c, c, 4).transpose(0, 2, 1, 3, 4)
        grid = np.ascontiguousarray(grid.reshape(n_side * c, n_side * c, 4))  # [N, N, 4] indexed [ix, iy]
        if level == 0:
            hf = np.stack([f[..., F_HEIGHT] for f in fields]).reshape(n_side, n_side, c, c)
            self._level0_heights = np.maximum(hf.transpose(0, 2, 1, 3).reshape(n_side * c, -1), 0.0)
        s = t.lod_spacing[level]
        origin = ((cx - r) * c * s, (cy - r) * c * s)
        return Window(grid.reshape(-1, 4), n_side * c, (float(origin[0]), float(origin[1])), float(s))

    def _bake(self, fields: list[np.ndarray], level: int) -> list[np.ndarray]:
        spacing = self.config.terrain.lod_spacing[level]
        return list(bake_colors(np.stack(fields), self._look, spacing))

    def _windows_tuple(self) -> tuple[Window, Window]:
        return (self._windows[0], self._windows[1])


def _sky_cols(c: EngineConfig) -> int:
    # About one panorama column per screen column, rounded up to a power of two.
    need = c.width * 360.0 / c.fov_deg
    return 1 << math.ceil(math.log2(need))


# -- benchmark ------------------------------------------------------------------------------------


def benchmark(frames: int, size: int, theme: Theme) -> dict:
    """Render `frames` frames of a walk with turns; returns fps and ms per frame (steady state)."""
    world = EngineWorld(EngineConfig(height=size, width=size))
    world.reset(0, theme)
    acts = [Action(("forward",)), Action(("forward", "turn_left")), Action(("forward",), 0.3, 0.0)]
    for i in range(20):  # warm-up: window builds, allocator
        world.step(acts[i % 3])
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(frames):
        world.step(acts[(i // 40) % 3])
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    # CPU time is reported too: on a shared machine it is the steadier of the two numbers.
    return {"fps": frames / elapsed, "ms_per_frame": 1000.0 * elapsed / frames,
            "cpu_ms_per_frame": 1000.0 * cpu / frames, "frames": frames, "size": size,
            "theme": theme.to_json()}


def contact_sheet(path: str, seed: int = 11, size: int = 64, scale: int = 2,
                  pose: tuple[float, float, float] = (1903.0, 1001.0, 81.0)) -> None:
    """Save a PNG grid: one row per biome; columns dawn, noon, dusk, night, noon fog, noon rain/snow."""
    from PIL import Image, ImageDraw

    from world.procedural.themes import BIOMES, TIMES

    columns = [(t, "clear") for t in TIMES] + [("noon", "fog"), ("noon", "precipitation")]
    world = EngineWorld(EngineConfig(height=size, width=size))
    world.reset(seed, Theme())
    world.teleport(world.x + pose[0], world.y + pose[1], yaw_deg=pose[2])  # a view with hills and a lake
    cell, label_w, label_h = size * scale, 96, 16
    sheet = Image.new("RGB", (label_w + cell * len(columns), label_h + cell * len(BIOMES)), (20, 20, 24))
    draw = ImageDraw.Draw(sheet)
    for j, (t, w) in enumerate(columns):
        draw.text((label_w + j * cell + 4, 2), t if w == "clear" else f"{t} {w[:6]}", fill=(230, 230, 230))
    for i, biome in enumerate(BIOMES):
        draw.text((4, label_h + i * cell + cell // 2 - 6), biome, fill=(230, 230, 230))
        for j, (t, w) in enumerate(columns):
            world.set_theme(Theme(biome, t, w))
            img = Image.fromarray(world.render()).resize((cell, cell), Image.NEAREST)
            sheet.paste(img, (label_w + j * cell, label_h + i * cell))
    sheet.save(path)


def controls_strip(path: str, seed: int = 11, size: int = 64, scale: int = 2, hold: int = 8,
                   pose: tuple[float, float, float] = (1903.0, 1001.0, 81.0)) -> None:
    """Save a PNG: one row per key, showing the view at the start and after `hold` frames of it."""
    from PIL import Image, ImageDraw

    from world.actions import KEYS

    world = EngineWorld(EngineConfig(height=size, width=size))
    cell, label_w = size * scale, 80
    rows = [(k, Action((k,))) for k in KEYS] + [("mouse dx", Action((), 1.0, 0.0)), ("mouse dy", Action((), 0.0, 1.0))]
    sheet = Image.new("RGB", (label_w + 3 * cell, len(rows) * cell), (20, 20, 24))
    draw = ImageDraw.Draw(sheet)
    for i, (name, action) in enumerate(rows):
        world.reset(seed, Theme())
        world.teleport(world.x + pose[0], world.y + pose[1], yaw_deg=pose[2])
        frames = [world.render()] + [world.step(action) for _ in range(hold)]
        draw.text((4, i * cell + cell // 2 - 6), name, fill=(230, 230, 230))
        for j, frame in enumerate(frames[:: hold // 2]):
            sheet.paste(Image.fromarray(frame).resize((cell, cell), Image.NEAREST), (label_w + j * cell, i * cell))
    sheet.save(path)


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _single_threaded(argv: list[str] | None) -> None:
    """Re-run the benchmark with one BLAS/OpenMP thread: the libraries read these only at load time.

    (The engine itself makes no BLAS calls; this keeps the measurement honest regardless.)
    Set only for this command, never on import, so torch in the same process keeps its threads.
    """
    if argv is not None or all(os.environ.get(v) == "1" for v in THREAD_VARS):
        return  # called from Python (never replace the caller's process) or already single-threaded
    env = {**os.environ, **{v: "1" for v in THREAD_VARS}}
    os.execve(sys.executable, [sys.executable, "-m", "world.procedural.engine", *sys.argv[1:]], env)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m world.procedural.engine", description=__doc__.split("\n")[0])
    p.add_argument("--bench", action="store_true", help="measure rendering speed and print JSON")
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--prompt", default="green hills at noon")
    p.add_argument("--sheet", metavar="PNG", help="save a contact sheet of every biome and time")
    p.add_argument("--controls", metavar="PNG", help="save a strip showing what each key does")
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args(argv)
    if args.sheet or args.controls:
        if args.sheet:
            contact_sheet(args.sheet, seed=args.seed, size=args.size)
        if args.controls:
            controls_strip(args.controls, seed=args.seed, size=args.size)
        return 0
    if not args.bench:
        p.print_help()
        return 0
    _single_threaded(argv)
    from world.procedural.themes import parse_prompt

    print(json.dumps(benchmark(args.frames, args.size, parse_prompt(args.prompt))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
