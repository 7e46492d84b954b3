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
