"""Test-wide environment: no real display, audio or hub is ever needed by the suite."""

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared, busy CPU: one intra-op thread avoids OpenMP waits (behaviour is
    identical at any thread count). Model test modules use it for all their tests
    (`pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch  # here, so the tests that never touch torch do not import it for this fixture

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    """A tiny random world checkpoint (hash text encoder) for a module's generated-world tests;
    modules that need another world define their own `world_dir`."""
    from model.runtime.world_model import make_random_world

    path = tmp_path_factory.mktemp("world") / "tiny"
    make_random_world(path, preset="tiny", text_encoder="hash")
    return path


@pytest.fixture(scope="module")
def worker(world_dir):
    """A real worker process on loopback serving `world_dir`; its endpoint."""
    from world.server.process import start_worker_process, stop_worker_process

    proc, endpoint = start_worker_process(extra_args=("--checkpoint", str(world_dir), "--device", "cpu"))
    yield endpoint
    stop_worker_process(proc)
