"""The cluster's front door speaks CURVE (`serve --cluster local --server-key --authorized-keys`): a
listed player plays through it on a real local Ray instance, a client without keys or with an
unlisted key gets nothing. Needs ray (the `cluster` extra, which the `dev` extra pulls in)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.helpers import collect
from world.server.auth import ClientKeys, read_public_key, read_secret_key
from world.server.client import WorldClient, WorldConnectionError
from world.server.process import REPO_ROOT, start_worker_process, stop_worker_process

OPTIONS = {"sampler": "diagonal", "start": "text"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    home, authorized = tmp_path_factory.mktemp("keys"), tmp_path_factory.mktemp("authorized")
    for name in ("worker", "player", "stranger"):
        done = subprocess.run([sys.executable, str(REPO_ROOT / "run_world.py"), "keys", "--name", name, "--dir",
                               str(home)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stdout
    (authorized / "player.key").write_text((home / "player.key").read_text())
    return home, authorized


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    import torch

    from model.runtime.world_model import make_random_world

    path = tmp_path_factory.mktemp("world") / "tiny"
    with torch.random.fork_rng():  # later modules see the RNG state they saw before
        make_random_world(path, preset="tiny", text_encoder="hash")
    return path


@pytest.fixture(scope="module")
def secure_front(keys, world_dir):
    home, authorized = keys
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    args = ("--cluster", "local", "--actors", "1", "--checkpoint", str(world_dir), "--device", "cpu",
            "--server-key", str(home / "worker.key_secret"), "--authorized-keys", str(authorized),
            "--log-level", "WARNING")  # fmt: skip
    proc, endpoint = start_worker_process(extra_args=args, timeout_s=180.0, env=env)
    try:
        wait_for_an_actor(endpoint, client_keys(home, "player"))
        yield endpoint
    finally:
        stop_worker_process(proc, timeout_s=60.0)


def wait_for_an_actor(endpoint: str, keys: ClientKeys, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        client = WorldClient(endpoint, timeout_s=30.0, keys=keys)
        try:
            if client.status().worker["actors"]:
                return
        finally:
            client.close()
        time.sleep(0.5)
    raise AssertionError(f"no world actor up after {timeout_s} s")


def client_keys(home, name: str) -> ClientKeys:
    public, secret = read_secret_key(str(home / f"{name}.key_secret"))
    return ClientKeys(public, secret, read_public_key(str(home / "worker.key")))


def test_a_listed_player_plays_through_the_keyed_front_door(keys, secure_front):
    client = WorldClient(secure_front, timeout_s=120.0, keys=client_keys(keys[0], "player"))
    try:
        client.open(backend="generated", prompt="green hills at noon", seed=1, options=OPTIONS)
        chunks = collect(client, 3, polls=1200)
    finally:
        client.close()
    assert len(chunks) >= 3 and all(c.frames.shape == (3, 64, 64, 3) for c in chunks)


@pytest.mark.parametrize("who", ["no keys", "stranger"])
def test_clients_without_a_listed_key_get_nothing(keys, secure_front, who):
    client = WorldClient(secure_front, timeout_s=3.0, keys=None if who == "no keys" else client_keys(keys[0], who))
    try:
        with pytest.raises(WorldConnectionError):
            client.status()
    finally:
        client.close()
