"""World checkpoints (round trip, bad files) and the generated backend on a tiny random world."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.common.checkpoint import CheckpointError, save_checkpoint
from model.nets.families import build_net, net_config
from model.runtime.world_model import load_world_model, make_random_world
from world.actions import Action
from world.backend import BackendError, PromptError
from world.backends.registry import create_backend

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py



@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    return make_random_world(tmp_path_factory.mktemp("worlds") / "tiny", preset="tiny", text_encoder="hash")


def backend(world_dir, **options):
    return create_backend("generated", checkpoint=str(world_dir), device="cpu", **options)


WALK = [Action(("forward",)), Action(("forward", "turn_left")), Action((), 0.5, -0.2)]


# ----------------------------------------------------------------------------- checkpoints


def test_world_checkpoint_round_trip(world_dir):
    world = load_world_model(world_dir, "cpu")
    assert world.config.text_encoder == "hash" and world.step == 0
    torch.manual_seed(0)  # make_random_world's recipe: fp16 release weights
    reference = build_net(net_config("tiny"))
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for (name, a), b in zip(world.dit.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(a, b.half().float()), name
    assert not world.dit.training


def copy_world(world_dir, tmp_path):
    import shutil

    target = tmp_path / "world"
    shutil.copytree(world_dir, target)
    return target


def test_truncated_weights_name_the_file(world_dir, tmp_path):
    d = copy_world(world_dir, tmp_path)
    data = (d / "dit.safetensors").read_bytes()
    (d / "dit.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="dit.safetensors"):
        load_world_model(d)


def test_wrong_shapes_name_the_file(world_dir, tmp_path):
    d = copy_world(world_dir, tmp_path)
    meta = json.loads((d / "config.json").read_text())
    meta["configs"]["dit"]["dim"] = 64  # weights were saved for dim 32
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"dit\.safetensors.*shape"):
        load_world_model(d)


def test_unknown_config_key_names_the_file(world_dir, tmp_path):
    d = copy_world(world_dir, tmp_path)
    meta = json.loads((d / "config.json").read_text())
    meta["configs"]["world"]["colour"] = "blue"
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"config\.json.*colour"):
        load_world_model(d)


def test_another_kind_of_checkpoint_is_refused(tmp_path):
    from model.nets.autoencoder import Autoencoder, autoencoder_config

    ae = Autoencoder(autoencoder_config("tiny"))
    save_checkpoint(tmp_path / "ae", kind="autoencoder", modules={"autoencoder": ae},
                    configs={"autoencoder": ae.config})
    with pytest.raises(CheckpointError, match=r"config\.json.*'autoencoder'.*'world'"):
        load_world_model(tmp_path / "ae")
    with pytest.raises(BackendError, match="config.json"):
        backend(tmp_path / "ae")


def test_missing_checkpoint_is_a_backend_error(tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        backend(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- the backend


def test_step_chunk_shapes_and_records(world_dir):
    b = backend(world_dir, sampler="diagonal", schedule=[3, 2])
    info = b.info
    assert (info.name, info.height, info.width, info.chunk_frames, info.fps) == ("generated", 64, 64, 3, 30.0)
    first = b.reset(7, "snowy mountains at dusk")
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    result = b.step_chunk(WALK)
    assert result.frames.shape == (3, 64, 64, 3) and result.frames.dtype == np.uint8
    assert (result.steps, result.nfe) == (2, 2)  # chunk 1 of schedule [3, 2]
    assert result.extra["sampler"] == "diagonal" and len(result.extra["timesteps"]) == 2
    json.dumps(result.extra)
    b.close()


def run_episode(b, seed: int, switch: str | None = None) -> np.ndarray:
    frames = [b.reset(seed, "green hills at noon")[None]]
    for i in range(5):
        if switch is not None and i == 3:
            b.set_prompt(switch)
        frames.append(b.step_chunk(WALK).frames)
    return np.concatenate(frames)


def test_same_seed_same_frames(world_dir):
    a = run_episode(backend(world_dir, sampler="uniform", steps=2), seed=3, switch="desert at night")
    b = backend(world_dir, sampler="uniform", steps=2)
    assert np.array_equal(a, run_episode(b, seed=3, switch="desert at night"))
    assert not np.array_equal(a, run_episode(b, seed=4, switch="desert at night"))
    assert np.array_equal(a[:10], run_episode(b, seed=3)[:10])  # frames before the switch agree
    assert not np.array_equal(a[10:], run_episode(b, seed=3)[10:])


def test_teacher_sampler_counts_guidance(world_dir):
    b = backend(world_dir, steps=3)  # the checkpoint's default: the teacher with guidance 3
    b.reset(0, "alien world")
    result = b.step_chunk(WALK)
    assert (result.steps, result.nfe) == (3, 2 * (3 + 1))
    assert result.extra["timesteps"][0] == 1000 and result.extra["timesteps"][-1] == 0


def test_prompts_and_options_are_validated(world_dir):
    b = backend(world_dir, sampler="diagonal")
    with pytest.raises(PromptError, match="empty prompt: describe the world"):  # the text encoder's check
        b.reset(0, "   ")
    with pytest.raises(BackendError, match="before reset"):
        b.step_chunk(WALK)
    b.reset(0, "any words at all work here")
    with pytest.raises(PromptError):
        b.set_prompt("")
    with pytest.raises(BackendError, match="3 frames"):
        b.step_chunk(WALK[:2])
    with pytest.raises(BackendError, match="unknown generated-backend options"):
        backend(world_dir, colour="blue")
    with pytest.raises(BackendError, match="more steps than the teacher's grid"):
        backend(world_dir, sampler="diagonal", schedule=[40, 2])
    with pytest.raises(BackendError, match="chunk_frames=3"):
        backend(world_dir, chunk_frames=4)
    backend(world_dir, sampler="diagonal", chunk_frames=3, height=64, width=64)  # the model's own geometry


def test_context_noise_and_schedule_are_session_options_checked_when_it_opens(world_dir):
    for options, message in (
        ({"sampler": "diagonal", "context_noise": 0}, "context_noise must be a network time strictly between"),
        ({"sampler": "diagonal", "context_noise": 1000}, "context_noise"),
        ({"sampler": "diagonal", "context_noise": "250"}, "context_noise"),
        ({"sampler": "uniform", "context_noise": 250}, "option of 'diagonal'"),
        ({"context_noise": 250}, "option of 'diagonal'"),  # the checkpoint's own sampler: the teacher
        ({"sampler": "diagonal", "schedule": [0]}, r"schedule\[0\] must be a positive whole number"),
        ({"sampler": "diagonal", "schedule": []}, "non-empty"),
        ({"sampler": "diagonal", "schedule": [40]}, r"schedule\[0\]=40 is more steps than the teacher's grid"),
        ({"sampler": "diagonal", "schedule": "4,x"}, "comma-separated"),
    ):
        with pytest.raises(BackendError, match=message):
            backend(world_dir, **options)
    b = backend(world_dir, sampler="diagonal", schedule=[3, 2], context_noise=250)
    assert b.sampler.describe()["context_noise"] == 250.0 and b.sampler.describe()["steps"] == [3, 2]
    assert b.sampler.timesteps(0)[-1] == b.sampler.timesteps(1)[-1] == 250
    assert "diagonal 3-2 steps, context t=250" in b.info.description
    b.reset(0, "green hills at noon")
    assert b.step_chunk(WALK).extra["timesteps"] == [1000, 250]
    default = backend(world_dir, sampler="diagonal")  # no option: the checkpoint's (here the library default)
    assert default.sampler.context_noise == load_world_model(world_dir).sampler("diagonal").context_noise == 100.0


def test_a_schedule_longer_than_the_distilled_grid_streams(world_dir):
    b = backend(world_dir, sampler="diagonal", schedule=[5, 4, 3, 2])
    assert backend(world_dir, sampler="diagonal", schedule="5,4,3,2").sampler == b.sampler  # protocol form
    b.reset(1, "desert dunes at dusk")  # chunk 0: 5 steps
    results = [b.step_chunk(WALK) for _ in range(4)]
    assert [(r.steps, r.nfe) for r in results] == [(4, 4), (3, 3), (2, 2), (2, 2)]
    assert all(r.extra["timesteps"][-1] == 100 for r in results)


def test_world_model_sampler_takes_context_noise(world_dir):
    world = load_world_model(world_dir)
    assert world.sampler("diagonal", schedule=[2], context_noise=300).timesteps(0) == [1000, 300]
    with pytest.raises(ValueError, match="option of 'diagonal'"):
        world.sampler("teacher", context_noise=300)


def test_stream_can_start_from_a_clean_latent(world_dir):
    world = load_world_model(world_dir)
    stream = world.stream(world.sampler("diagonal", schedule=[4, 3, 2]))
    start = torch.randn(*world.dit.config.latent_shape)
    stream.reset(0, "volcanic plain", first_frame_latent=start)
    assert stream.cache.frame_ids == [0, 1, 2] and torch.equal(stream.cache.inputs.t[0, :3], torch.zeros(3))
    out = stream.next_chunk(np.zeros((3, 12), dtype=np.float32))
    assert out.steps == 3  # the clean chunk took schedule slot 0, this is chunk 1
    with pytest.raises(ValueError, match="actions must be"):
        stream.next_chunk(np.zeros((2, 12), dtype=np.float32))


def test_rewarm_restarts_the_diagonal_schedule_after_a_switch(world_dir):
    from model.diffusion.samplers import diagonal_sampler

    world = load_world_model(world_dir)
    stream = world.stream(diagonal_sampler([4, 3, 2], rewarm=True))
    stream.reset(0, "green hills")
    idle = np.zeros((3, 12), dtype=np.float32)
    assert [stream.next_chunk(idle).steps for _ in range(3)] == [4, 3, 2]
    assert stream.set_prompt("snowy mountains in fog") == 2  # chunks 1 and 2: the window after the sink
    assert [stream.next_chunk(idle).steps for _ in range(2)] == [4, 3]


def test_without_a_checkpoint_the_default_world_wins_over_the_teacher(tmp_path, monkeypatch, world_dir):
    from model.runtime import generated_backend as generated
    from world import bundled

    monkeypatch.setattr(bundled, "DEFAULT_CHECKPOINT", tmp_path / "default_world")
    monkeypatch.setattr(bundled, "TEACHER_CHECKPOINT", tmp_path / "teacher")
    with pytest.raises(BackendError, match="no bundled world checkpoint"):
        generated._load(None, "cpu")
    monkeypatch.setattr(bundled, "TEACHER_CHECKPOINT", world_dir)
    assert bundled.bundled_checkpoint() == world_dir
    monkeypatch.setattr(bundled, "DEFAULT_CHECKPOINT", world_dir.parent)  # not a checkpoint: skipped
    assert bundled.bundled_checkpoint() == world_dir


def test_reset_chunk_is_chunk_zero_handed_over_once(world_dir):
    b = backend(world_dir, sampler="diagonal")
    first = b.reset(5, "green hills at noon")
    chunk = b.take_reset_chunk()
    assert chunk.frames.shape == (3, 64, 64, 3) and chunk.frames.dtype == np.uint8
    assert np.array_equal(chunk.frames[-1], first)  # reset's first view is the chunk's last frame
    assert (chunk.steps, chunk.nfe) == (4, 4)  # chunk 0 of the diagonal 4-3-2 schedule
    assert b.take_reset_chunk() is None  # once
    assert (b.step_chunk(WALK).nfe, b.take_reset_chunk()) == (3, None)
    # Taken or not, it does not change the stream: the same seed gives the same chunk 0 and chunk 1.
    b.reset(5, "green hills at noon")
    after_untaken = b.step_chunk(WALK)
    assert b.take_reset_chunk() is None  # stepping past it drops it
    b.reset(5, "green hills at noon")
    assert np.array_equal(b.take_reset_chunk().frames, chunk.frames)
    assert np.array_equal(b.step_chunk(WALK).frames, after_untaken.frames)
    b.close()
    assert b.take_reset_chunk() is None


def test_the_engine_has_no_reset_chunk():
    engine = create_backend("engine")
    engine.reset(0, "green hills at noon")
    assert engine.take_reset_chunk() is None


def test_rewarm_is_a_session_option_of_the_diagonal_sampler(world_dir):
    backend = create_backend("generated", checkpoint=str(world_dir), device="cpu", sampler="diagonal", rewarm=True)
    assert backend.sampler.rewarm and backend.sampler.describe()["rewarm"]
    assert "re-warm" in backend.info.description
    backend.reset(0, "green hills")
    idle = [Action()] * 3
    assert [backend.step_chunk(idle).steps for _ in range(2)] == [3, 2]  # chunk 0 (4 steps) was the reset
    backend.set_prompt("snowy mountains in fog")
    assert [backend.step_chunk(idle).steps for _ in range(2)] == [4, 3]
    plain = create_backend("generated", checkpoint=str(world_dir), device="cpu", sampler="diagonal")
    assert not plain.sampler.rewarm
    for bad in ({"sampler": "uniform", "rewarm": True}, {"sampler": "diagonal", "rewarm": "yes"}):
        with pytest.raises(BackendError, match="rewarm"):
            create_backend("generated", checkpoint=str(world_dir), device="cpu", **bad)


@pytest.mark.parametrize("options, words", [
    ({"sampler": "diagonal", "steps": 3}, "steps"),
    ({"chunk_frames": 4}, "chunk_frames=4 is not possible"),
    ({"sampler": "teacher", "guide": "bogus"}, "guide"),
])  # fmt: skip
def test_a_refused_open_never_loads_the_weights(tmp_path, monkeypatch, options, words):
    """Sampler options and geometry come from config.json: a refusal costs a file read, not a model load."""
    import model.runtime.world_model as wm
    from model.runtime.generated_backend import GeneratedBackend

    make_random_world(tmp_path / "w", preset="tiny", text_encoder="hash")
    loads = []
    monkeypatch.setattr(wm, "load_world_model", lambda *a, **k: loads.append(a) or pytest.fail("weights loaded"))
    with pytest.raises(BackendError, match=words):
        GeneratedBackend(checkpoint=str(tmp_path / "w"), device="cpu", **options)
    assert loads == []
