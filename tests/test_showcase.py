"""model.tools.showcase: engine and world columns side by side, held keys and a prompt switch row."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model.runtime.world_model import make_random_world
from model.tools.showcase import Scenario, main, parse_world, rollout, scenarios_for
from world.backends.registry import create_backend

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py



def test_a_switch_row_switches_the_prompt_halfway():
    engine = create_backend("engine")
    plain = rollout(engine, 3, Scenario("green grassland hills at noon", ("forward",)), 4)
    switched = rollout(engine, 3, Scenario("green grassland hills at noon", ("forward",), "desert dunes at night"), 4)
    half = 1 + 2 * engine.info.chunk_frames  # first view + the chunks before the switch
    assert plain.shape == switched.shape == (1 + 4 * engine.info.chunk_frames, 64, 64, 3)
    np.testing.assert_array_equal(plain[:half], switched[:half])
    assert not np.array_equal(plain[half:], switched[half:])
    rows = scenarios_for(("a", "b"), (("forward",), ("turn_left",)), "c")
    assert len(rows) == 5 and rows[-1].switch_to == "c"


def test_showcase_writes_one_column_per_world(tmp_path):
    world = make_random_world(tmp_path / "w", sampler="diagonal", schedule=[2])
    out = tmp_path / "show"
    assert main(["--world", f"a={world}@diagonal", "--world", f"b={world}@uniform", "--switch", "desert at night",
                 "--chunks", "2", "--out", str(out), "--device", "cpu", "--start", "text"]) == 0
    png = Image.open(out.with_suffix(".png"))
    gif = Image.open(out.with_suffix(".gif"))
    assert gif.n_frames == 1 + 2 * 3
    assert png.height == 7 * (3 * (64 + 2) + 14 + 2)  # 6 key rows + the switch row, 3 columns each


def test_bad_world_specs_are_refused(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x")]) == 2
    assert "at least one world" in capsys.readouterr().err
    assert main(["--world", "no-label", "--out", str(tmp_path / "x")]) == 2
    assert "LABEL=CHECKPOINT" in capsys.readouterr().err
    assert parse_world("d=assets/x@diagonal") == ("d", {"checkpoint": "assets/x", "sampler": "diagonal"})


def test_engine_start_gives_every_world_the_engines_first_chunk(tmp_path):
    world = create_backend("generated", checkpoint=str(make_random_world(tmp_path / "w")), device="cpu")
    engine = create_backend("engine")
    scenario = Scenario("green grassland hills at noon", ("forward",))
    ref = rollout(engine, 3, scenario, 2, start="engine")
    gen = rollout(world, 3, scenario, 2, start="engine")
    assert ref.shape == gen.shape == (3 + 2 * 3, 64, 64, 3)
    np.testing.assert_array_equal(gen[:3], ref[:3])  # the shared real start
    text = rollout(engine, 3, scenario, 2, start="text")
    np.testing.assert_array_equal(text[0], ref[0])  # the same reset view


def test_steps_and_guidance_reach_every_world_column(tmp_path, monkeypatch, capsys):
    import model.tools.showcase as showcase
    from world.backend import BackendError

    opened = []

    def fake_backend(name, **options):
        if name == "generated":
            opened.append(options)
            if len(opened) == 3:  # every column is built: stop before any rollout
                raise BackendError("enough")
        return object()

    monkeypatch.setattr(showcase, "create_backend", fake_backend)
    argv = ["--checkpoint", "c0", "--sampler", "teacher", "--world", "one=c1@teacher", "--world", "two=c2",
            "--steps", "8", "--guidance", "0", "--out", str(tmp_path / "x")]
    assert main(argv) == 2 and "enough" in capsys.readouterr().err
    assert opened == [{"checkpoint": "c0", "sampler": "teacher", "steps": 8, "guidance": 0.0, "device": "auto"},
                      {"checkpoint": "c1", "sampler": "teacher", "steps": 8, "guidance": 0.0, "device": "auto"},
                      {"checkpoint": "c2", "steps": 8, "guidance": 0.0, "device": "auto"}]
