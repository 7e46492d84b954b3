"""Authentication of remote players and workers (CURVE, world/server/auth.py).

Real workers on loopback with CURVE keys made by `run_world.py keys`: a listed client key plays,
an unknown key and a client without keys are refused, loopback without keys still works, and a
bind beyond loopback without keys needs --insecure, which every client is told; players trust a
worker's key on first use and refuse a changed one, whether they give a key or not: an address with
a remembered key is checked by a handshake every time it is played.
"""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest

from tests.helpers import FAKE_MODULE, collect
from world.server import protocol as P
from world.server.auth import (
    ClientKeys,
    fingerprint,
    normal_address,
    read_public_key,
    read_secret_key,
)
from world.server.client import WorldClient, WorldConnectionError, WorldRequestError
from world.server.process import REPO_ROOT, _wait_ready, start_worker_process, stop_worker_process


def make_keys(directory, name: str) -> tuple[str, str]:
    done = subprocess.run([sys.executable, str(REPO_ROOT / "run_world.py"), "keys", "--name", name, "--dir",
                           str(directory)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    assert fingerprint(read_public_key(str(public))) in done.stdout
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    return str(public), str(secret)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    home = tmp_path_factory.mktemp("keys")
    authorized = tmp_path_factory.mktemp("authorized")
    made = {name: make_keys(home, name) for name in ("worker", "player", "stranger")}
    (authorized / "player.key").write_text(open(made["player"][0]).read())
    return made, authorized


@pytest.fixture(scope="module")
def secure_worker(keys):
    made, authorized = keys
    args = [*FAKE_MODULE, "--server-key", made["worker"][1], "--authorized-keys", str(authorized), "--per-client", "2"]
    proc, endpoint = start_worker_process(extra_args=args)
    yield endpoint
    assert stop_worker_process(proc) == 0


def client_keys(made: dict, name: str) -> ClientKeys:
    public, secret = read_secret_key(made[name][1])
    return ClientKeys(public, secret, read_public_key(made["worker"][0]))


def test_a_listed_client_key_plays_encrypted(keys, secure_worker):
    client = WorldClient(secure_worker, timeout_s=10, keys=client_keys(keys[0], "player"))
    info = client.open("fake", "hills", seed=1)
    assert info["security"] == "curve" and info["notice"] is None
    assert len(collect(client, 3)) >= 3
    client.close()


@pytest.mark.parametrize("who", ["stranger", "no keys"])
def test_an_unknown_key_and_a_client_without_keys_are_refused(keys, secure_worker, who):
    client = WorldClient(secure_worker, timeout_s=2, keys=None if who == "no keys" else client_keys(keys[0], who))
    with pytest.raises(WorldConnectionError):
        client.open("fake", "hills")
    client.close()


def test_one_key_is_one_client_across_sockets(keys, secure_worker):
    sockets = [WorldClient(secure_worker, timeout_s=10, keys=client_keys(keys[0], "player")) for _ in range(3)]
    sockets[0].open("fake", "hills"), sockets[1].open("fake", "hills")
    with pytest.raises(WorldRequestError) as refused:
        sockets[2].open("fake", "hills")  # a third socket, the same key: over the cap of 2
    assert refused.value.code == P.TOO_MANY_SESSIONS
    for client in sockets:
        client.close()


def test_loopback_without_keys_still_works():
    proc, endpoint = start_worker_process(extra_args=FAKE_MODULE)
    try:
        client = WorldClient(endpoint, timeout_s=10)
        assert client.open("fake", "hills")["security"] == "none"
        client.close()
    finally:
        stop_worker_process(proc)


def serve(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO_ROOT / "run_world.py"), "serve", *FAKE_MODULE, *args]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_beyond_loopback_needs_keys_or_insecure_which_every_client_hears():
    refused = serve("--bind", "tcp://0.0.0.0:0")
    out, err = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "--insecure" in err and "READY" not in out
    proc = serve("--bind", "tcp://0.0.0.0:0", "--insecure")
    try:
        endpoint = _wait_ready(proc, 30).replace("0.0.0.0", "127.0.0.1")
        client = WorldClient(endpoint, timeout_s=10)
        info = client.open("fake", "hills")
        assert info["security"] == "none" and "without authentication" in info["notice"]
        client.close()
    finally:
        stop_worker_process(proc)
    assert "WITHOUT authentication" in proc.stderr.read()


def play(endpoint: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO_ROOT / "run_world.py"), "play", "--headless", "--backend", "engine", "--frames",
           "6", "--connect", endpoint, *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_play_connects_with_its_key_and_the_worker_key(keys, secure_worker, tmp_path):
    made = keys[0]
    done = play(secure_worker, "--client-key", made["player"][1], "--server-key", made["worker"][0],
                "--known-servers", str(tmp_path / "known"))
    assert done.returncode == 0, done.stderr
    assert fingerprint(read_public_key(made["worker"][0])) in done.stderr  # what the player may compare


def test_a_worker_key_is_trusted_on_first_use_and_a_changed_one_refused(keys, secure_worker, tmp_path):
    made = keys[0]
    known = tmp_path / "known_servers"
    mine = ("--client-key", made["player"][1], "--known-servers", str(known))
    done = play(secure_worker, *mine)  # nothing known yet, no key given: say what to do
    assert done.returncode == 2 and f"no key is known for the worker at {secure_worker}" in done.stderr
    done = play(secure_worker, *mine, "--server-key", made["worker"][0])
    assert done.returncode == 0 and "(remembered," in done.stderr, done.stderr
    assert known.read_text() == f"{secure_worker} {read_public_key(made['worker'][0]).decode()}\n"
    done = play(secure_worker, *mine)  # the remembered key suffices from now on
    assert done.returncode == 0 and "(known," in done.stderr, done.stderr
    done = play(secure_worker, *mine, "--server-key", made["stranger"][0])  # someone else's key for this address
    assert done.returncode == 2 and f"SERVER KEY CHANGED for the worker at {secure_worker}" in done.stderr
    assert fingerprint(read_public_key(made["stranger"][0])) in done.stderr and str(known) in done.stderr
    assert known.read_text().count("\n") == 1  # the changed key was not written


def test_keys_show_prints_a_fingerprint(keys):
    made = keys[0]
    done = subprocess.run([sys.executable, str(REPO_ROOT / "run_world.py"), "keys", "--show", made["worker"][0]],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and fingerprint(read_public_key(made["worker"][0])) in done.stdout


def remember(known, address: str, public_file: str) -> None:
    known.write_text(f"# players' known servers\n{address} {read_public_key(public_file).decode()}\n")


def refused_loudly(done: subprocess.CompletedProcess, address: str, remembered: str, known) -> None:
    """Exit 2 with one message naming the address, the remembered fingerprint and the file to edit."""
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert address in done.stderr and fingerprint(read_public_key(remembered)) in done.stderr
    assert f"remove the line for {address} from {known}" in done.stderr
    assert "no worker answers" not in done.stderr and done.stdout == ""


def test_a_keyless_worker_at_a_remembered_address_is_refused_without_client_key(keys, tmp_path):
    """An impostor needs no key to answer in clear: a player who gives no key is still checked."""
    made = keys[0]
    proc, endpoint = start_worker_process(extra_args=FAKE_MODULE)  # a plain worker where a keyed one was
    try:
        known = tmp_path / "known_servers"
        remember(known, endpoint.replace("127.0.0.1", "localhost"), made["worker"][0])  # spelled otherwise
        done = play(endpoint, "--known-servers", str(known))
        refused_loudly(done, endpoint, made["worker"][0], known)
        assert "NOW ANSWERS WITHOUT KEYS" in done.stderr
        done = play(endpoint, "--known-servers", str(known), "--client-key", made["player"][1])  # with keys too
        refused_loudly(done, endpoint, made["worker"][0], known)
        assert "NOW ANSWERS WITHOUT KEYS" in done.stderr
    finally:
        stop_worker_process(proc)


def test_a_changed_worker_key_is_refused_as_changed_not_as_silence(keys, secure_worker, tmp_path):
    made = keys[0]
    known = tmp_path / "known_servers"
    remember(known, secure_worker, made["stranger"][0])  # the key this address had before
    done = play(secure_worker, "--client-key", made["player"][1], "--known-servers", str(known))
    refused_loudly(done, secure_worker, made["stranger"][0], known)
    assert f"SERVER KEY CHANGED for the worker at {secure_worker}" in done.stderr and "--server-key" in done.stderr
    done = play(secure_worker, "--known-servers", str(known))  # no key at all: the same verdict
    refused_loudly(done, secure_worker, made["stranger"][0], known)
    assert "SERVER KEY CHANGED" in done.stderr
    assert known.read_text().count("\n") == 2  # nothing written


def test_a_remembered_worker_needs_the_client_key(keys, secure_worker, tmp_path):
    made = keys[0]
    known = tmp_path / "known_servers"
    remember(known, secure_worker, made["worker"][0])
    done = play(secure_worker, "--known-servers", str(known))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "play it with --client-key" in done.stderr and fingerprint(read_public_key(made["worker"][0])) in done.stderr
    stranger = play(secure_worker, "--known-servers", str(known), "--client-key", made["stranger"][1])
    assert stranger.returncode == 2 and "does not list your client key" in stranger.stderr


def test_localhost_and_127_0_0_1_are_remembered_as_one_address(keys, secure_worker, tmp_path):
    made = keys[0]
    known = tmp_path / "known_servers"
    port = secure_worker.rsplit(":", 1)[1]
    mine = ("--client-key", made["player"][1], "--known-servers", str(known))
    done = play(f"tcp://localhost:{port}", *mine, "--server-key", made["worker"][0])
    assert done.returncode == 0 and "(remembered," in done.stderr, done.stderr
    assert known.read_text() == f"tcp://127.0.0.1:{port} {read_public_key(made['worker'][0]).decode()}\n"
    done = play(f"tcp://127.0.0.1:{port}", *mine)
    assert done.returncode == 0 and "(known," in done.stderr, done.stderr
    done = play(f"tcp://localhost:{port}", *mine, "--server-key", made["stranger"][0])
    assert done.returncode == 2 and f"SERVER KEY CHANGED for the worker at tcp://127.0.0.1:{port}" in done.stderr


@pytest.mark.parametrize("spelled", ["tcp://localhost:5555", "TCP://LocalHost:05555/", "localhost:5555",
                                     "tcp://0.0.0.0:5555", "tcp://*:5555", "127.0.0.1:5555"])
def test_addresses_are_normalised_before_they_are_remembered(spelled):
    assert normal_address(spelled) == "tcp://127.0.0.1:5555"
    assert normal_address("tcp://[::1]:7") == normal_address("tcp://::1:7") == "tcp://[::1]:7"
    assert normal_address("tcp://Worker.Example:5555") == "tcp://worker.example:5555"
    assert normal_address("ipc:///tmp/w") == "ipc:///tmp/w"
