"""The cluster's front door speaks CURVE (`serve --cluster local --server-key --authorized-keys`): a
listed player plays through it on a real local Ray instance and is told `security: curve`, a client
without keys or with an unlisted key gets nothing, one key holds `--per-client` sessions whatever its
sockets and actors, and the actors' own ports answer no one but the front door. A cluster bound
beyond loopback without keys is refused unless --insecure, as one worker is. Needs ray (the
`cluster` extra, which the `dev` extra pulls in)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import collect
from world.server import protocol as P
from world.server.auth import ClientKeys, read_public_key, read_secret_key
from world.server.client import WorldClient, WorldConnectionError, WorldRequestError
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
    args = ("--cluster", "local", "--actors", "2", "--checkpoint", str(world_dir), "--device", "cpu",
            "--server-key", str(home / "worker.key_secret"), "--authorized-keys", str(authorized),
            "--log-level", "WARNING")  # fmt: skip
    proc, endpoint = start_worker_process(extra_args=args, timeout_s=180.0, env=env)
    try:
        wait_for_an_actor(endpoint, client_keys(home, "player"))
        yield endpoint
    finally:
        stop_worker_process(proc, timeout_s=60.0)


def wait_for_an_actor(endpoint: str, keys: ClientKeys, timeout_s: float = 120.0, actors: int = 2) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        client = WorldClient(endpoint, timeout_s=30.0, keys=keys)
        try:
            status = client.status().worker
            if len(status["actors"]) >= actors:
                return status
        finally:
            client.close()
        time.sleep(0.5)
    raise AssertionError(f"fewer than {actors} world actors up after {timeout_s} s")


def client_keys(home, name: str) -> ClientKeys:
    public, secret = read_secret_key(str(home / f"{name}.key_secret"))
    return ClientKeys(public, secret, read_public_key(str(home / "worker.key")))


def test_a_listed_player_plays_through_the_keyed_front_door(keys, secure_front):
    client = WorldClient(secure_front, timeout_s=120.0, keys=client_keys(keys[0], "player"))
    try:
        info = client.open(backend="generated", prompt="green hills at noon", seed=1, options=OPTIONS)
        chunks = collect(client, 3, polls=1200)
    finally:
        client.close()
    assert info["security"] == "curve" and info["notice"] is None
    assert len(chunks) >= 3 and all(c.frames.shape == (3, 64, 64, 3) for c in chunks)


@pytest.mark.parametrize("who", ["no keys", "stranger"])
def test_clients_without_a_listed_key_get_nothing(keys, secure_front, who):
    client = WorldClient(secure_front, timeout_s=3.0, keys=None if who == "no keys" else client_keys(keys[0], who))
    try:
        with pytest.raises(WorldConnectionError):
            client.status()
    finally:
        client.close()


def test_one_key_holds_per_client_sessions_over_its_sockets_and_the_actors(keys, secure_front):
    """--per-client 2 (the default): two sockets with one key open a session each (one per actor, the
    least loaded first); a third socket with that key is refused, counted at the front door."""
    player = client_keys(keys[0], "player")
    clients = [WorldClient(secure_front, timeout_s=120.0, keys=player) for _ in range(3)]
    try:
        placed = []
        for seed, client in enumerate(clients[:2]):
            client.open(backend="generated", prompt="green hills at noon", seed=seed, options=OPTIONS)
            placed.append(client.status().worker["instance"])  # the actor that runs it answers
        with pytest.raises(WorldRequestError) as refused:
            clients[2].open(backend="generated", prompt="green hills at noon", seed=2, options=OPTIONS)
    finally:
        for client in clients:
            client.close()
    assert len(set(placed)) == 2  # the two sessions are on different actors
    assert refused.value.code == P.TOO_MANY_SESSIONS and "(2)" in str(refused.value)


def zmtp_mechanism(endpoint: str) -> str:
    """The security mechanism a ZeroMQ socket at a tcp:// endpoint announces in its ZMTP 3 greeting (64
    bytes, the mechanism's name at 12-31), sent once it has our signature and major version."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"\xff" + bytes(8) + b"\x7f" + b"\x03")
        answer = b""
        while len(answer) < 64:
            part = sock.recv(64 - len(answer))
            if not part:
                break
            answer += part
    return answer[12:32].rstrip(b"\0").decode("ascii", "replace")


def test_an_actors_port_answers_only_the_front_door(keys, secure_front):
    """The status hands out each actor's endpoint: a CURVE socket on loopback that takes only the front
    door's own key, so neither a client without keys nor a listed player reaches a worker through it."""
    home = keys[0]
    status = wait_for_an_actor(secure_front, client_keys(home, "player"))
    player = client_keys(home, "player")
    for actor in status["actors"]:
        endpoint = actor["endpoint"]
        assert endpoint.startswith("tcp://127.0.0.1:") and zmtp_mechanism(endpoint) == "CURVE"
        for who in (None, player):  # the player's key pair, with the front door's public key
            client = WorldClient(endpoint, timeout_s=3.0, keys=who)
            try:
                with pytest.raises(WorldConnectionError):
                    client.open(backend="generated", prompt="green hills at noon", seed=1, options=OPTIONS)
            finally:
                client.close()


def test_a_cluster_bound_beyond_loopback_needs_keys_or_insecure():
    cmd = [sys.executable, str(REPO_ROOT / "run_world.py"), "serve", "--cluster", "local", "--bind",
           "tcp://0.0.0.0:0"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "READY" not in done.stdout
    assert "reaches other machines" in done.stderr and "--insecure" in done.stderr
