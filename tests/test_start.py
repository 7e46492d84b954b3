"""Where a generated world starts (session option `start`): engine view, text, or a client's image.

In process on the backend, through a real worker process (tiny random world checkpoint), through
`play --headless` with recordings and replay, and in the window's HUD.
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import pytest
import zmq
from PIL import Image

from tests.helpers import collect_chunks
from world.actions import Action
from world.backend import BackendError
from world.backends.registry import create_backend
from world.data.dataset import START_IMAGE_FILE, EpisodeReader
from world.data.replay import frame_mismatches, recorded_start
from world.server import protocol as P
from world.server import wire
from world.server.client import ChunkEvent, WorldClient, WorldRequestError
from world.start import MAX_START_IMAGE_SIDE, StartImageError, decode_start_image, fit_image

PROMPT = "green hills at noon"
UNKNOWN = "purple elephants"  # names no biome, time of day or weather: the engine cannot render it
IDLE = [Action()] * 3


def png(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(buf, fmt)
    return buf.getvalue()


PICTURE = np.random.default_rng(0).integers(0, 256, (80, 120, 3), dtype=np.uint8)  # wider than tall


def engine_chunk(seed: int, prompt: str) -> np.ndarray:
    """The frames an engine start must show: the engine's reset view, then its first idle step."""
    engine = create_backend("engine", height=64, width=64, chunk_frames=3)
    first = engine.reset(seed, prompt).copy()
    return np.concatenate([first[None], engine.step_chunk(IDLE).frames[:2]])


def generated(world_dir, **options):
    return create_backend("generated", checkpoint=str(world_dir), device="cpu", sampler="diagonal", **options)


# ----------------------------------------------------------------------------- images


def test_start_images_decode_to_rgb_and_fit_the_world():
    image = decode_start_image(png(PICTURE))
    assert image.format == "PNG" and np.array_equal(image.pixels, PICTURE)
    assert image.facts()["width"] == 120 and image.facts()["height"] == 80 and len(image.facts()["sha256"]) == 64
    rgba = np.dstack([PICTURE, np.full(PICTURE.shape[:2], 128, np.uint8)])
    assert np.array_equal(decode_start_image(png(rgba)).pixels, PICTURE)  # alpha dropped
    grey = decode_start_image(png(PICTURE, mode="L")).pixels
    assert grey.shape == (80, 120, 3) and np.array_equal(grey[..., 0], grey[..., 2])
    jpeg = decode_start_image(png(PICTURE, "JPEG"))
    assert jpeg.format == "JPEG" and jpeg.pixels.shape == (80, 120, 3)
    fitted = fit_image(PICTURE, 64, 64)
    assert fitted.shape == (64, 64, 3) and fitted.dtype == np.uint8
    # the centre crop: a picture whose sides differ from its centre fits to the centre's colour
    framed = np.zeros((80, 120, 3), np.uint8)
    framed[:, 20:100] = 200
    assert np.all(fit_image(framed, 64, 64) == 200)
    assert np.array_equal(fit_image(fitted, 64, 64), fitted)  # already the world's size: unchanged


@pytest.mark.parametrize("data, match", [
    (b"", "empty"),
    (b"GIF89a" + b"\0" * 64, "not a PNG or JPEG"),
    (b"not an image at all", "not a PNG or JPEG"),
    (png(PICTURE)[:200], "cannot be decoded"),  # truncated
    (png(np.zeros((1, MAX_START_IMAGE_SIDE + 1, 3), np.uint8)), "4097x1 pixels; the limit is 4096"),
    (b"\x89PNG" + b"x" * P.MAX_START_IMAGE_BYTES, "bytes; the limit"),
])  # fmt: skip
def test_bad_start_images_are_refused_with_the_reason(data, match):
    with pytest.raises(StartImageError, match=match):
        decode_start_image(data)


# ----------------------------------------------------------------------------- the backend, in process


def test_engine_start_writes_the_engines_frames_as_chunk_0(world_dir):
    backend = generated(world_dir, start="engine")
    try:
        last = backend.reset(4, PROMPT)
        view = backend.take_reset_chunk()
        expected = engine_chunk(4, PROMPT)
        assert np.array_equal(view.frames, expected) and np.array_equal(last, expected[-1])
        assert (view.steps, view.nfe) == (0, 0) and view.extra["start"] == "engine"
        source = view.extra["start_source"]
        assert (source["backend"], source["seed"], source["prompt"]) == ("engine", 4, PROMPT)
        nxt = backend.step_chunk([Action(("forward",))] * 3)
        assert nxt.nfe >= 1 and nxt.frames.shape == (3, 64, 64, 3)
        # a prompt the engine cannot render: text start, and a notice that says why
        backend.reset(4, UNKNOWN)
        view = backend.take_reset_chunk()
        assert view.extra["start"] == "text" and view.extra["start_requested"] == "engine" and view.nfe >= 1
        assert view.extra["start_notice"].startswith(f'start: text (the engine does not know "{UNKNOWN}":')
    finally:
        backend.close()


def test_text_start_is_the_default_in_process_and_image_start_repeats_the_picture(world_dir):
    backend = generated(world_dir)
    try:
        assert backend.start == "text"
        backend.reset(4, PROMPT)
        view = backend.take_reset_chunk()
        assert view.extra["start"] == "text" and view.nfe >= 1
        backend.set_start("image", png(PICTURE))
        backend.reset(4, PROMPT)
        view = backend.take_reset_chunk()
        picture = fit_image(PICTURE, 64, 64)
        assert np.array_equal(view.frames, np.stack([picture] * 3)) and (view.steps, view.nfe) == (0, 0)
        assert view.extra["start"] == "image" and view.extra["start_source"]["image"]["width"] == 120
        assert backend.step_chunk(IDLE).nfe >= 1
        with pytest.raises(BackendError, match="needs the image"):
            backend.set_start("image")
        with pytest.raises(BackendError, match="start must be one of"):
            backend.set_start("video")
        with pytest.raises(BackendError, match="not a PNG or JPEG"):
            backend.set_start("image", b"garbage")
    finally:
        backend.close()


def test_the_engine_backend_starts_only_from_its_own_view():
    assert create_backend("engine", start="engine").info.name == "engine"
    for start in ("text", "image"):
        with pytest.raises(BackendError, match="option of the generated backend"):
            create_backend("engine", start=start)


# ----------------------------------------------------------------------------- through a worker


def test_sessions_start_from_the_engine_by_default(worker):
    client = WorldClient(worker, timeout_s=30.0)
    try:
        info = client.open("generated", PROMPT, seed=6, options={"sampler": "diagonal"})
        view, nxt = collect_chunks(client, 2)
        status = client.status().session
    finally:
        client.close()
    assert info["start"] == "engine" and info["start_notice"] is None and status["start"] == "engine"
    assert view.extra["reset_view"] and view.extra["start"] == "engine" and (view.steps, view.nfe) == (0, 0)
    assert view.extra["start_source"]["engine_version"] is not None
    assert np.array_equal(view.frames, engine_chunk(6, PROMPT))  # the engine's frames themselves
    assert [r["start"] for r in view.records] == ["engine"] * 3 and all(r["reset_view"] for r in view.records)
    assert "start" not in nxt.extra and nxt.nfe >= 1 and not any("start" in r for r in nxt.records)


def test_text_start_through_the_worker(worker):
    client = WorldClient(worker, timeout_s=30.0)
    try:
        info = client.open("generated", PROMPT, seed=6, options={"sampler": "diagonal", "start": "text"})
        (view,) = collect_chunks(client, 1)
    finally:
        client.close()
    assert info["start"] == view.extra["start"] == "text" and view.nfe >= 1
    assert not np.array_equal(view.frames, engine_chunk(6, PROMPT))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_start_through_the_worker_and_after_a_reset(worker, fmt):
    data = png(PICTURE, fmt)
    expected = fit_image(decode_start_image(data).pixels, 64, 64)
    client = WorldClient(worker, timeout_s=30.0)
    try:
        info = client.open("generated", PROMPT, seed=6, options={"sampler": "diagonal"}, start_image=data)
        view, _ = collect_chunks(client, 2)
        client.reset(9)
        (again,) = collect_chunks(client, 1)
    finally:
        client.close()
    assert info["start"] == "image" and view.extra["start"] == "image" and again.extra["start"] == "image"
    assert np.array_equal(view.frames, np.stack([expected] * 3)) and np.array_equal(again.frames, view.frames)
    assert view.extra["start_source"]["image"]["format"] == fmt


def test_a_prompt_the_engine_does_not_know_falls_back_to_text_with_a_notice(worker):
    client = WorldClient(worker, timeout_s=30.0)
    try:
        info = client.open("generated", UNKNOWN, seed=1, options={"sampler": "diagonal"})
        (view,) = collect_chunks(client, 1)
    finally:
        client.close()
    assert info["start"] == "text" and info["start_notice"] == view.extra["start_notice"]
    assert info["start_notice"].startswith(f'start: text (the engine does not know "{UNKNOWN}": ')
    assert view.extra["start_requested"] == "engine" and view.nfe >= 1


def raw_open(endpoint: str, frames: list[bytes]) -> P.Message:
    """Send hand-made frames (no client-side checks) and return the worker's reply."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        assert sock.poll(30000), "no reply"
        reply, _ = wire.decode_reply(sock.recv_multipart())
        return reply
    finally:
        sock.close()


def open_header(size: int, **fields) -> bytes:
    return json.dumps({"v": 1, "type": "open", "backend": "generated", "prompt": PROMPT, "start_image": size,
                       "ref": 1, **fields}).encode()  # fmt: skip


def test_oversized_and_corrupt_images_get_clear_errors_and_the_worker_goes_on(worker):
    big = b"\x89PNG" + b"\0" * (P.MAX_START_IMAGE_BYTES - 3)  # one byte over the limit
    for frames, code, words in [
        ([open_header(len(big)), big], P.TOO_LARGE, "start image has 4194305 bytes; the limit is 4194304 (4 MiB)"),
        ([open_header(100), big], P.TOO_LARGE, "start image has 4194305 bytes"),
        ([open_header(12), b"not an image"], P.BAD_IMAGE, "not a PNG or JPEG"),
        ([open_header(300), png(PICTURE)[:300]], P.BAD_IMAGE, "cannot be decoded"),
        ([open_header(5), b"12345", b"x"], P.BAD_FRAME, "exactly one header frame"),
        ([open_header(6), b"12345"], P.BAD_FRAME, "declares a start image of 6 bytes"),
        ([open_header(len(png(PICTURE)), options={"start": "text"}), png(PICTURE)], P.BAD_OPTION, "start 'image'"),
    ]:  # fmt: skip
        reply = raw_open(worker, frames)
        assert isinstance(reply, P.Error) and reply.code == code and words in reply.message, reply
        if len(frames) == 2:  # a header the worker read: the error answers that open
            assert reply.ref == 1 and reply.request == "open"
    client = WorldClient(worker, timeout_s=30.0)
    try:
        with pytest.raises(WorldRequestError) as info:  # the client refuses before sending
            client.open("generated", PROMPT, start_image=big)
        assert info.value.code == P.TOO_LARGE
        with pytest.raises(WorldRequestError) as info:
            client.open("generated", PROMPT, start_image=b"\xff\xd8 not really a jpeg")
        assert info.value.code == P.BAD_IMAGE and "not a PNG or JPEG" in info.value.message
        with pytest.raises(WorldRequestError) as info:
            client.open("generated", PROMPT, options={"start": "image"})
        assert info.value.code == P.BAD_OPTION and "needs the image" in info.value.message
        with pytest.raises(WorldRequestError) as info:
            client.open("engine", PROMPT, start_image=png(PICTURE))
        assert info.value.code == P.BAD_OPTION and "generated backend" in info.value.message
        with pytest.raises(WorldRequestError) as info:
            client.open("generated", PROMPT, options={"start": "video"})
        assert info.value.code == P.BAD_OPTION and "start must be one of" in info.value.message
        with pytest.raises(WorldRequestError) as info:
            client.open("generated", PROMPT, options={"start_image": "/etc/passwd"})  # never a path, never an option
        assert info.value.code == P.BAD_OPTION and "second frame" in info.value.message
        assert client.open("engine", PROMPT, options={"start": "engine"})["start"] is None  # accepted, the default
        assert client.status().worker["sessions"] == 1  # nothing leaked, the worker serves on
    finally:
        client.close()


# ----------------------------------------------------------------------------- play, recordings, replay


def play(argv: list[str], capsys) -> tuple[int, str, str]:
    from controls import play as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    code = cli.run(parser.parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_play_records_an_image_start_and_replay_makes_it_again(worker, world_dir, tmp_path, capsys):
    image = tmp_path / "start.jpg"
    image.write_bytes(png(PICTURE, "JPEG"))
    code, out, err = play(["--connect", worker, "--headless", "--backend", "generated", "--sampler", "diagonal",
                           "--start-image", str(image), "--frames", "9", "--seed", "2", "--prompt", PROMPT,
                           "--record", str(tmp_path / "rec")], capsys)  # fmt: skip
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["start"] == "image" and result["start_notice"] is None
    reader = EpisodeReader(result["record"])
    meta = reader.meta
    assert meta["start"] == "image" and meta["options"] == {"sampler": "diagonal", "start": "image"}
    assert meta["start_image"] == START_IMAGE_FILE and meta["start_source"]["image"]["format"] == "JPEG"
    picture = reader.start_image()
    assert np.array_equal(picture, fit_image(decode_start_image(image.read_bytes()).pixels, 64, 64))
    assert all(np.array_equal(frame, picture) for frame in reader.frames[:3])
    assert [r.get("start") for r in reader.records[:4]] == ["image"] * 3 + [None]
    backend = generated(world_dir)  # built with the default text start: replay sets the recorded one
    try:
        assert recorded_start(reader) == "image" and frame_mismatches(reader, backend) == []
    finally:
        backend.close()


def test_play_falls_back_to_text_says_so_and_records_it(worker, world_dir, tmp_path, capsys):
    code, out, err = play(["--connect", worker, "--headless", "--backend", "generated", "--sampler", "diagonal",
                           "--frames", "6", "--prompt", UNKNOWN, "--record", str(tmp_path)], capsys)  # fmt: skip
    assert code == 0, err
    assert f'play: start: text (the engine does not know "{UNKNOWN}"' in err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["start"] == "text" and result["start_notice"].startswith("start: text")
    reader = EpisodeReader(result["record"])
    assert (reader.meta["start"], reader.meta["start_requested"]) == ("text", "engine")
    assert reader.meta["start_notice"] == result["start_notice"]
    backend = generated(world_dir, start="engine")  # replay follows the recording: the fallback's text start
    try:
        assert frame_mismatches(reader, backend) == []
    finally:
        backend.close()
    # A recording made before start modes (no meta start) still loads and replays as the text start it was.
    meta = {k: v for k, v in reader.meta.items() if not k.startswith("start")}
    (reader.path / "meta.json").write_text(json.dumps(meta))
    old = EpisodeReader(reader.path)
    assert recorded_start(old) == "text"
    backend = generated(world_dir, start="engine")
    try:
        assert frame_mismatches(old, backend) == []
    finally:
        backend.close()


@pytest.mark.parametrize("argv, words", [
    (["--start", "image"], "--start image needs --start-image FILE"),
    (["--start", "text", "--start-image", "x.png"], "cannot go with --start text"),
    (["--backend", "engine", "--start", "text"], "apply to --backend generated only"),
    (["--backend", "generated", "--start-image", "/nonexistent/x.png"], "cannot read /nonexistent/x.png"),
])  # fmt: skip
def test_start_options_that_cannot_apply_are_usage_errors(argv, words, capsys):
    code, out, err = play(["--connect", "tcp://127.0.0.1:9", "--headless", *argv], capsys)
    assert code == 2 and words in err and out == ""


def test_an_oversized_start_image_file_is_refused_before_anything_is_sent(tmp_path, capsys):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * P.MAX_START_IMAGE_BYTES)
    code, _, err = play(["--connect", "tcp://127.0.0.1:9", "--headless", "--backend", "generated",
                         "--start-image", str(big)], capsys)  # fmt: skip
    assert code == 2 and "the limit is 4194304 (4 MiB)" in err


def _bad_input(case: str, tmp_path) -> tuple[list[str], str]:
    """(play arguments, words of the refusal) for each input the client can check itself."""
    if case == "missing checkpoint":
        return ["--checkpoint", str(tmp_path / "nonexistent")], "no such directory"
    if case == "not a world":
        (tmp_path / "ae").mkdir()
        (tmp_path / "ae" / "config.json").write_text(json.dumps({"format": "gworld-checkpoint", "kind": "autoencoder"}))
        return ["--checkpoint", str(tmp_path / "ae")], "kind 'autoencoder', not a world release"
    bad = tmp_path / "view.png"
    bad.write_bytes(b"not a picture at all" if case == "not an image" else png(PICTURE)[:200])
    return ["--backend", "generated", "--start-image", str(bad)], ("not a PNG or JPEG" if case == "not an image"
                                                                   else "cannot be decoded")  # fmt: skip


@pytest.mark.parametrize("headless", [True, False], ids=["headless", "window"])
@pytest.mark.parametrize("case", ["missing checkpoint", "not a world", "not an image", "truncated PNG"])
def test_a_bad_checkpoint_or_start_image_is_refused_before_any_worker_starts(case, headless, tmp_path, monkeypatch,
                                                                             capsys):  # fmt: skip
    """The client checks what it can (json and Pillow, no torch) before it starts a worker, where
    the worker used to say it after loading: 12 s headless, 35 s in the window."""
    from controls import keymap as km
    from controls import play as cli
    from world.server import process

    started = []

    def no_worker(*args, **kwargs):
        started.append(args)
        raise RuntimeError("a worker was started for input the client could have refused")

    monkeypatch.setattr(cli, "LocalWorker", no_worker)
    monkeypatch.setattr(process, "start_worker_process", no_worker)
    monkeypatch.setattr(km, "USER_KEYMAP_PATH", tmp_path / "absent.json")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # the window's path: a display is there, the input is not
    argv, words = _bad_input(case, tmp_path)
    began = time.perf_counter()
    code, out, err = play([*argv, *(["--headless"] if headless else [])], capsys)
    print(f"{case}, {'headless' if headless else 'window'}: refused in {time.perf_counter() - began:.2f} s")
    assert started == [] and code == 2 and out == ""
    assert err.startswith("play: ") and words in err and err.count("\n") == 1, err  # one line


def test_the_play_command_refuses_a_missing_checkpoint_in_one_line(tmp_path):
    import subprocess
    import sys

    from world.server.process import REPO_ROOT

    missing = tmp_path / "nonexistent"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "run_world.py"), "play", "--headless", "--checkpoint",
                           str(missing)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"play: --checkpoint: {missing}: no such directory\n"  # no "starting a local worker"


def test_a_training_runs_out_directory_is_a_world_release_and_other_layouts_are_named(tmp_path):
    from world.bundled import ReleaseError, world_release

    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    config = {"format": "gworld-checkpoint", "kind": "world", "configs": {"world": {"sampler": "teacher"}}}
    (run / "checkpoint" / "config.json").write_text(json.dumps(config))
    assert world_release(run) == (run / "checkpoint", {"sampler": "teacher"})
    (run / "checkpoint" / "config.json").write_text("{not json")
    with pytest.raises(ReleaseError, match="not readable JSON"):
        world_release(run)
    (run / "checkpoint" / "config.json").write_text(json.dumps({**config, "configs": {}}))
    with pytest.raises(ReleaseError, match="no world config under configs.world"):
        world_release(run)


def test_play_help_shows_the_sampler_defaults_the_bundled_releases_record():
    """--help's defaults are read from the releases' config.json, not from a sentence that went
    stale ("the teacher's 3" while assets/teacher records guidance 0)."""
    from controls import play as cli
    from model.diffusion.samplers import make_sampler
    from world.bundled import DEFAULT_CHECKPOINT, TEACHER_CHECKPOINT

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    teacher = json.loads((TEACHER_CHECKPOINT / "config.json").read_text())["configs"]["world"]
    default = json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())["configs"]["world"]
    assert (f"assets/teacher: sampler {teacher['sampler']}, steps {teacher['steps']}, "
            f"guidance {teacher['guidance']:g}") in text  # fmt: skip
    schedule = ",".join(str(n) for n in default["schedule"])
    assert (f"assets/default_world: sampler {default['sampler']}, schedule {schedule}, "
            f"context noise {default['context_noise']:g}") in text  # fmt: skip
    assert default["guidance"] is None and "guidance not recorded (the diagonal sampler's own 0)" in text
    assert "the teacher's 3" not in text
    for name in ("teacher", "uniform", "diagonal"):  # what a release that records no guidance gets
        assert make_sampler(name).guidance == cli.OWN_GUIDANCE.get(name, 0.0)


def test_window_hud_shows_the_start_and_the_fallback_notice(worker, tmp_path):
    pygame = pytest.importorskip("pygame")
    from controls import keymap as km
    from controls.link import WorldLink
    from controls.window import PlayWindow, WindowConfig

    pygame.display.init()
    pygame.font.init()
    client = WorldClient(worker, timeout_s=30.0)
    client.open("generated", UNKNOWN, seed=3, options={"sampler": "diagonal"})
    window = PlayWindow(WorldLink(client), km.load_keymap(), WindowConfig(seed=3, record_dir=tmp_path))
    try:
        deadline = time.monotonic() + 60.0
        while window.frames_shown < 3:
            assert time.monotonic() < deadline and window.step()
        state = window.hud_state(time.perf_counter())
        assert state.start == "text" and state.message_is_warning and not state.message_is_error
        assert state.message.startswith(f'start: text (the engine does not know "{UNKNOWN}"')
        assert window.summary()["start"] == "text"
    finally:
        window.close()
        window.link.close()
        pygame.quit()


def test_the_io_thread_lets_only_a_few_images_wait_and_answers_busy_beyond(monkeypatch):
    """Queued start images are bounded (MAX_PENDING_IMAGES here 2): the next one is `busy` until the
    compute loop has handled one; requests without an image are not affected."""
    import queue
    import threading

    from world.server.io_loop import WorkerIO
    from world.server.worker_config import IOStats

    io = WorkerIO(None, None, queue.Queue(maxsize=16), threading.Event(), "test", IOStats(),
                  image_slots=threading.BoundedSemaphore(2))  # fmt: skip
    sent: list[P.Message] = []
    monkeypatch.setattr(io, "_send", lambda identity, frames: sent.append(wire.decode_reply(frames)[0]))
    image_open = wire.encode(P.Open(backend="generated", prompt=PROMPT, start_image=png(PICTURE), ref=7))
    for _ in range(3):
        io._on_message(b"peer", image_open)
    io._on_message(b"peer", wire.encode(P.Open(backend="generated", prompt=PROMPT, ref=8)))
    assert io.inbound.qsize() == 3 and [(m.code, m.ref) for m in sent] == [(P.BUSY, 7)]
    assert "start images" in sent[0].message
    io.image_slots.release()  # the compute loop handled one
    io._on_message(b"peer", image_open)
    assert io.inbound.qsize() == 4 and len(sent) == 1


def test_the_recorder_keeps_a_worlds_start_for_episodes_started_later(tmp_path):
    """F5 after the reset view was shown: the episode still says how its world started (and keeps
    the picture); an episode of another world does not borrow it."""
    from world.data.recorder import Recorder

    info = {"backend": "generated", "height": 64, "width": 64, "chunk_frames": 3, "fps": 30.0,
            "description": "causal DiT world tiny (step 0), sampler diagonal 4-3-2 steps"}  # fmt: skip
    picture = fit_image(PICTURE, 64, 64)
    idle = Action().to_json()

    def chunk(index: int, extra: dict, frames: np.ndarray) -> ChunkEvent:
        records = [{"i": 3 * index + k, "chunk": index, "action": idle, "prompt": PROMPT} for k in range(3)]
        return ChunkEvent(index, frames, records, 1.0, 0, 0, chunk=index, extra=extra)

    start = {"start": "image", "start_source": {"image": {"format": "PNG"}}, "reset_view": True, "sampler": "d"}
    recorder = Recorder(tmp_path, info, {"start": "image"})
    recorder.append(chunk(0, start, np.stack([picture] * 3)), seed=5, world="A")  # shown, not recorded
    recorder.start(5, PROMPT, world="A")
    recorder.append(chunk(1, {}, np.zeros((3, 64, 64, 3), np.uint8)), seed=5, world="A")
    recorder.append(chunk(0, {}, np.zeros((3, 64, 64, 3), np.uint8)), seed=6, world="B")  # a reset
    first, second = recorder.paths
    recorder.stop()
    a, b = EpisodeReader(first), EpisodeReader(second)
    assert a.meta["start"] == "image" and a.meta["start_image"] == START_IMAGE_FILE and "reset_view" not in a.meta
    assert np.array_equal(a.start_image(), picture) and a.meta["world"] == info["description"]
    assert [r["i"] for r in a.records] == [3, 4, 5]
    assert "start" not in b.meta and b.start_image() is None
