"""The procedural reference world: determinism, controls, physics limits, looks, backend."""

import numpy as np
import pytest

from world.actions import KEYS, Action
from world.backend import BackendError, ChunkResult, PromptError
from world.backends.engine_backend import EngineBackend
from world.backends.registry import create_backend
from world.procedural.engine import EngineConfig, EngineWorld
from world.procedural.themes import Theme

IDLE = Action()
WALK = [Action(("forward",)), Action(("forward", "turn_left")), Action(("right", "look_up"), 0.4, -0.2),
        Action(("rise",)), Action(("sink", "back"), -0.7, 0.1)]


def _run(seed: int, n: int = 24, switch_at: int = 10) -> np.ndarray:
    world = EngineWorld()
    frames = [world.reset(seed, Theme("grassland", "noon", "clear"))]
    for i in range(n):
        if i == switch_at:
            world.set_theme(Theme("snow", "dusk", "precipitation"))
        frames.append(world.step(WALK[(i // 3) % len(WALK)]))
    return np.stack(frames)


@pytest.fixture(scope="module")
def world():
    return EngineWorld()


def test_same_seed_same_actions_identical_bytes():
    a, b = _run(5), _run(5)
    assert a.dtype == np.uint8 and a.shape == (25, 64, 64, 3)
    assert a.tobytes() == b.tobytes()


def test_different_seed_different_world():
    assert not np.array_equal(_run(5, n=2), _run(6, n=2))


def test_render_is_history_independent(world):
    # Rebuilding caches (a fresh world at the same pose) must not change a single bit.
    world.reset(1, Theme("alien", "dusk", "clear"))
    for _ in range(70):  # crosses level-0 chunk borders, so windows get rebuilt
        frame = world.step(Action(("forward", "right")))
    fresh = EngineWorld()
    fresh.reset(1, Theme("alien", "dusk", "clear"))
    fresh.x, fresh.y, fresh.yaw, fresh.pitch = world.x, world.y, world.yaw, world.pitch
    fresh.ground, fresh.clearance, fresh.frame = world.ground, world.clearance, world.frame
    assert fresh.render().tobytes() == frame.tobytes()


def _after(world: EngineWorld, action: Action, frames: int = 3) -> np.ndarray:
    world.reset(2, Theme("grassland", "noon", "clear"))
    for _ in range(frames):
        out = world.step(action)
    return out.astype(np.int16)


def test_every_key_changes_the_view_distinctly(world):
    idle = _after(world, IDLE)
    views = {k: _after(world, Action((k,))) for k in KEYS}
    views["mouse_x"] = _after(world, Action((), 1.0, 0.0))
    views["mouse_y"] = _after(world, Action((), 0.0, 1.0))
    for name, view in views.items():
        assert np.abs(view - idle).mean() > 1.0, f"{name} looks like idle"
    names = list(views)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.array_equal(views[a], views[b]), f"{a} and {b} look the same"


def test_idle_frames_are_static_without_precipitation(world):
    world.reset(2, Theme("desert", "dusk", "fog"))
    assert np.array_equal(world.step(IDLE), world.step(IDLE))


def test_precipitation_moves_even_when_idle(world):
    world.reset(2, Theme("grassland", "noon", "precipitation"))
    assert not np.array_equal(world.step(IDLE), world.step(IDLE))


def test_controls_move_the_camera_as_documented(world):
    c = world.config
    world.reset(3, Theme())
    s0 = world.state()
    world.step(Action(("turn_right",)))
    assert world.state()["yaw_deg"] == pytest.approx(c.turn_deg)
    world.step(Action((), -0.5, 0.0))
    assert world.state()["yaw_deg"] == pytest.approx(c.turn_deg - 0.5 * c.mouse_turn_deg)
    world.step(Action(("forward",)))
    moved = np.hypot(world.x - s0["x"], world.y - s0["y"])
    assert moved == pytest.approx(c.move_speed)


def test_pitch_clamps(world):
    world.reset(3, Theme())
    for _ in range(100):
        world.step(Action(("look_up",), 0.0, 1.0))
    assert world.state()["pitch"] == pytest.approx(world.config.pitch_limit)
    for _ in range(100):
        world.step(Action(("look_down",)))
    assert world.state()["pitch"] == pytest.approx(-world.config.pitch_limit)


def test_altitude_limits(world):
    c = world.config
    world.reset(3, Theme())
    for _ in range(200):
        world.step(Action(("rise",)))
    assert world.state()["clearance"] == pytest.approx(c.max_clearance)
    for _ in range(200):
        world.step(Action(("sink",)))
    assert world.state()["clearance"] == 0.0


def test_camera_never_below_terrain(world):
    c = world.config
    world.reset(4, Theme())
    rng = np.random.default_rng(0)
    for i in range(300):
        keys = ("forward", "sink") if i % 50 < 40 else ("turn_left", "forward", "left")
        world.step(Action(keys, float(rng.uniform(-1, 1)), 0.0))
        ground = max(world.height_at(world.x, world.y), 0.0)
        assert world.eye_z >= ground + c.eye_height - 1e-9


def _mean(world: EngineWorld, theme: Theme) -> np.ndarray:
    world.set_theme(theme)
    return world.render().reshape(-1, 3).mean(axis=0)


def test_themes_look_different(world):
    world.reset(7, Theme())
    for _ in range(10):
        world.step(Action(("forward",)))
    means = {b: _mean(world, Theme(b, "noon", "clear")) for b in
             ("grassland", "desert", "snow", "volcanic", "autumn_forest", "alien", "canyon", "tropical")}
    names = list(means)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(means[a] - means[b]).max() > 6.0, f"{a} and {b} have similar colours"
    assert means["snow"].sum() > means["volcanic"].sum() + 150
    assert means["grassland"][1] > means["grassland"][0]  # green
    assert means["alien"][2] > means["alien"][1]  # purple ground
    for biome in ("grassland", "desert", "snow"):
        night = _mean(world, Theme(biome, "night", "clear")).sum()
        noon = _mean(world, Theme(biome, "noon", "clear")).sum()
        dusk = _mean(world, Theme(biome, "dusk", "clear"))
        assert night < 0.5 * noon
        assert dusk[0] > dusk[2]  # warm light
    fog = _mean(world, Theme("volcanic", "noon", "fog"))
    assert fog.sum() > means["volcanic"].sum()  # fog is bright grey


def test_backend_chunks_and_prompt_switch():
    backend = create_backend("engine", height=48, width=40, chunk_frames=3)
    assert isinstance(backend, EngineBackend)
    assert backend.info.name == "engine" and (backend.info.height, backend.info.width) == (48, 40)
    first = backend.reset(0, "green hills at noon")
    assert first.shape == (48, 40, 3) and first.dtype == np.uint8
    chunk = backend.step_chunk([Action(("forward",))] * 3)
    assert isinstance(chunk, ChunkResult)
    assert chunk.frames.shape == (3, 48, 40, 3) and chunk.frames.dtype == np.uint8
    assert (chunk.steps, chunk.nfe) == (0, 0)
    assert chunk.extra["theme"]["biome"] == "grassland"
    pose = chunk.extra["pose"]
    backend.set_prompt("volcanic wasteland at night")
    after = backend.step_chunk([IDLE] * 2)
    assert after.frames.shape[0] == 2
    assert after.extra["theme"]["biome"] == "volcanic" and after.extra["theme"]["time_of_day"] == "night"
    assert (after.extra["pose"]["x"], after.extra["pose"]["y"]) == (pose["x"], pose["y"])  # world continues
    assert after.frames.mean() < chunk.frames.mean()


def test_backend_errors():
    with pytest.raises(BackendError, match="colour"):
        EngineBackend(colour="red")
    with pytest.raises(BackendError):
        EngineBackend(height=0)
    backend = EngineBackend()
    with pytest.raises(BackendError):
        backend.step_chunk([IDLE])
    with pytest.raises(PromptError):
        backend.reset(0, "a cat")
    backend.reset(0, "desert")
    with pytest.raises(PromptError):
        backend.set_prompt("")
    assert backend.world.theme.biome == "desert"


def test_other_resolutions_render():
    world = EngineWorld(EngineConfig(height=32, width=96))
    assert world.reset(0, Theme("canyon", "dawn", "precipitation")).shape == (32, 96, 3)
    assert world.step(Action(("forward",))).shape == (32, 96, 3)


def test_chunks_do_not_depend_on_batching():
    from world.procedural.render import bake_colors, make_look
    from world.procedural.terrain import TerrainConfig, field_chunks

    cfg = TerrainConfig()
    alone = field_chunks([(3, -2)], 0, 9, cfg)[0]
    batched = field_chunks([(0, 0), (3, -2), (-7, 5)], 0, 9, cfg)[1]
    assert alone.tobytes() == batched.tobytes()
    look = make_look(Theme("canyon", "dusk", "clear"), 240.0)
    assert bake_colors(alone[None], look)[0].tobytes() == bake_colors(batched[None], look)[0].tobytes()
    far = field_chunks([(0, 0)], 1, 9, cfg)[0]
    near = field_chunks([(0, 0)], 0, 9, cfg)[0]
    # Level 1 samples the same terrain every 4 units, without the finest octaves.
    assert np.abs(far[0, 0, 0] - near[0, 0, 0]) < 2.0
