"""World actors on a real local Ray instance behind the front door (`serve --cluster local`).

One front-door process per module (it starts Ray: seconds), two actors serving a tiny world. Clients
are ordinary WorldClients on loopback: they are placed on the least loaded actor, and when an actor's
process is killed its sessions get an error within 2 s (asserted with slack), reconnect
and continue elsewhere, while the other actor's sessions keep streaming. Refused opens leave the
front door's descriptors where they were, under a lowered RLIMIT_NOFILE (the measurement with more
of them: controls/harness/front_door_fds.py). Needs ray (the `cluster` extra, which the `dev` extra
pulls in)."""

from __future__ import annotations

import os
import resource
import signal
import time
from collections import Counter

import pytest
import zmq

from controls.harness.front_door_fds import fd_count, lower_nofile, refuse_many, still_answers
from world.server.client import ChunkEvent, ErrorEvent, WorldClient
from world.server.process import start_worker_process, stop_worker_process

OPTIONS = {"sampler": "diagonal", "start": "text"}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    """conftest's tiny world, made without touching the global RNG: the modules after this one (the
    evaluation suite's freshly initialised nets) see the RNG state they saw before it existed."""
    import torch

    from model.runtime.world_model import make_random_world

    path = tmp_path_factory.mktemp("world") / "tiny"
    with torch.random.fork_rng():
        make_random_world(path, preset="tiny", text_encoder="hash")
    return path


@pytest.fixture(scope="module")
def front_process(world_dir):
    """(the front door's process, its endpoint), both actors up."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    args = ("--cluster", "local", "--actors", "2", "--checkpoint", str(world_dir), "--device", "cpu",
            "--max-sessions", "8", "--log-level", "WARNING")  # fmt: skip
    proc, endpoint = start_worker_process(extra_args=args, timeout_s=180.0, env=env)
    try:
        wait_for_actors(endpoint, 2)
        yield proc, endpoint
    finally:
        stop_worker_process(proc, timeout_s=60.0)


@pytest.fixture(scope="module")
def front(front_process):
    return front_process[1]


def cluster_status(endpoint: str) -> dict:
    client = WorldClient(endpoint, timeout_s=30.0)
    try:
        return client.status().worker
    finally:
        client.close()


def wait_for_actors(endpoint: str, n: int, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = cluster_status(endpoint)
        if len(status["actors"]) >= n:
            return status
        time.sleep(0.5)
    raise AssertionError(f"fewer than {n} actors up after {timeout_s} s: {status}")


def open_clients(endpoint: str, n: int) -> tuple[list[WorldClient], list[str]]:
    clients, workers = [], []
    for seed in range(n):
        client = WorldClient(endpoint, timeout_s=60.0)
        info = client.open(backend="generated", prompt="green hills at noon", seed=seed, options=OPTIONS)
        assert info["security"] == "none"  # players' link to a front door without keys
        workers.append(placed_on(client))
        clients.append(client)
    return clients, workers


def placed_on(client: WorldClient) -> str:
    """The instance of the worker running the client's session (its actor answers a session status)."""
    return client.status().worker["instance"]


def test_sessions_are_spread_over_the_actors(front):
    clients, workers = open_clients(front, 4)
    try:
        status = cluster_status(front)
        for client in clients:
            got = 0
            deadline = time.monotonic() + 60
            while got < 2 and time.monotonic() < deadline:
                for event in client.poll(50):
                    assert not isinstance(event, ErrorEvent), event
                    if isinstance(event, ChunkEvent):
                        client.ack(event.seq)
                        got += 1
            assert got >= 2  # one poll may bring two chunks
    finally:
        for client in clients:
            client.close()
    assert sorted(Counter(workers).values()) == [2, 2]  # least loaded first: two per actor
    assert sorted(a["sessions"] for a in status["actors"]) == [2, 2]


def test_killed_actor_ends_its_sessions_and_they_continue_elsewhere(front):
    """2 actors x 4 sessions; one actor's process is SIGKILLed mid-stream."""
    clients, workers = open_clients(front, 8)
    status = cluster_status(front)
    victim = status["actors"][0]
    lost_at: dict[int, float] = {}
    chunks_after: Counter = Counter()
    gaps: dict[int, float] = {}
    last: dict[int, float] = {}
    try:
        pump(clients, 3.0, lost_at, chunks_after, last, gaps)  # streaming before the kill
        by_worker = Counter(workers)
        assert sorted(by_worker.values()) == [4, 4]
        killed = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        chunks_after.clear()
        gaps.clear()
        pump(clients, 8.0, lost_at, chunks_after, last, gaps)
        victims = sorted(lost_at)
        survivors = [k for k in range(8) if k not in lost_at]
        assert len(victims) == 4 and len({workers[k] for k in victims}) == 1
        assert max(lost_at[k] - killed for k in victims) < 4.0  # 2 s, with slack for a busy CI box
        assert all(chunks_after[k] >= 3 for k in survivors)  # the rest kept streaming meanwhile
        rate = min(chunks_after[k] for k in survivors) / 8.0
        print(f"errors after {max(lost_at[k] - killed for k in victims):.2f} s; longest gap of the others "
              f"{max(gaps[k] for k in survivors):.2f} s at >= {rate:.1f} chunks/s each")
        for k in victims:
            clients[k].reconnect()
            assert placed_on(clients[k]) != workers[k]  # placed on a live actor, not the dead one
        chunks_after.clear()
        pump(clients, 6.0, {}, chunks_after, last, {})
        assert all(chunks_after[k] >= 2 for k in range(8))
        status = wait_for_actors(front, 2)  # Ray restarted the killed actor and it is back in the pool
        assert status["actors_lost"] >= 1 and victim["pid"] not in [a["pid"] for a in status["actors"]]
    finally:
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a lost session is already closed
                pass


def pump(clients, seconds, lost_at, counts, last, gaps) -> None:
    """Poll every client for `seconds`, acknowledging chunks; note when each first sees its session lost."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for k, client in enumerate(clients):
            for event in client.poll(5):
                now = time.monotonic()
                if isinstance(event, ErrorEvent):
                    lost_at.setdefault(k, now)
                elif isinstance(event, ChunkEvent):
                    client.ack(event.seq)
                    counts[k] += 1
                    if k in last:
                        gaps[k] = max(gaps.get(k, 0.0), now - last[k])
                    last[k] = now


def test_refused_opens_leave_the_front_doors_descriptors_flat(front_process):
    """Each refused open had the front door connect a socket to an actor for that player: 2 descriptors
    that stayed until a `closed` that never came. 600 refusals under a limit 200 above what the front
    door holds would take 1,200 descriptors if they leaked; it must keep answering and end where it began."""
    proc, endpoint = front_process
    context = zmq.Context()
    before = fd_count(proc.pid)
    soft, hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
    lower_nofile(proc.pid, before + 200)
    try:
        summary = refuse_many(context, endpoint, proc.pid, opens=600)
        answers = still_answers(context, endpoint)
    finally:
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
        context.destroy(linger=0)
    print(summary)
    assert summary["opens"] == 600 and summary["unanswered"] == 0
    assert summary["fds_after"] <= summary["fds_before"] + 16  # flat: a leak would be +1,200
    assert answers == {"ping": "pong", "status": "status", "open": "unknown_backend"}
