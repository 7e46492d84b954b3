"""Descriptors of the cluster's front door under refused opens (target: flat, and it keeps answering).

    python -m controls.harness.front_door_fds                    # 2,000 refused opens, RLIMIT_NOFILE 1,024
    python -m controls.harness.front_door_fds --opens 600 --nofile 256 --json

A front door is started as players start one (`serve --cluster local --actors 1`, a real local Ray
instance), its RLIMIT_NOFILE is lowered (prlimit on its pid), and `--opens` players each connect a
socket of their own, send an `open` the actor refuses (an unknown backend), wait for the refusal and
go away. Every refusal comes back through the front door, so each one made the front door connect an
upstream socket to the actor for that player. Reported: the front door's open descriptors
(/proc/PID/fd) before, at the most (sampled every `--sample-every` opens) and after; how many opens
got no answer and the first of them; and whether a new player still gets answers to `ping`,
`status` and `open`. Linux only (prlimit, /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import zmq

from controls.harness.common import raw_socket
from world.server import protocol as P
from world.server import wire

REFUSED_BACKEND = "no-such-backend"  # the actor refuses it at once (unknown_backend), nothing is built


def fd_count(pid: int) -> int:
    """Open descriptors of process `pid`."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def lower_nofile(pid: int, limit: int) -> None:
    """Set process `pid`'s soft RLIMIT_NOFILE to `limit` (its hard limit stays)."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))


def ask(context: zmq.Context, endpoint: str, request: P.Message, timeout_s: float = 10.0) -> P.Message | None:
    """Send one request from a new socket (a new player) and return the first reply, or None."""
    sock = raw_socket(context, endpoint)
    try:
        sock.send_multipart(wire.encode(request))
        if not sock.poll(int(timeout_s * 1000)):
            return None
        return wire.decode_reply(sock.recv_multipart())[0]
    finally:
        sock.close(linger=0)


def refused_open(ref: int = 1) -> P.Open:
    return P.Open(backend=REFUSED_BACKEND, prompt="green hills at noon", ref=ref)


def still_answers(context: zmq.Context, endpoint: str) -> dict[str, str | None]:
    """A new player's ping, status and open: the reply's type (and code for an error), None for silence."""
    out = {}
    for name, request in (("ping", P.Ping(ref=1)), ("status", P.Status(ref=1)), ("open", refused_open())):
        reply = ask(context, endpoint, request)
        out[name] = None if reply is None else getattr(reply, "code", None) or reply.TYPE
    return out


def refuse_many(context: zmq.Context, endpoint: str, pid: int, opens: int, sample_every: int = 50,
                give_up: int = 5) -> dict:  # fmt: skip
    """`opens` refused opens, one new socket each; the front door's descriptors along the way. Stops
    after `give_up` unanswered opens in a row (each waits 5 s): the front door has stopped answering."""
    before = fd_count(pid)
    most, silent, first_silent, sent, in_a_row = before, 0, None, 0, 0
    started = time.monotonic()
    for k in range(opens):
        reply = ask(context, endpoint, refused_open(k + 1), timeout_s=5.0)
        sent += 1
        in_a_row = in_a_row + 1 if reply is None else 0
        if reply is None:
            silent += 1
            first_silent = k if first_silent is None else first_silent
        if in_a_row >= give_up:
            break
        if k % sample_every == 0:
            most = max(most, fd_count(pid))
    time.sleep(0.5)  # libzmq closes a socket's descriptors on its own thread, just after close()
    after = fd_count(pid)
    return {"opens": sent, "fds_before": before, "fds_most": max(most, after), "fds_after": after,
            "unanswered": silent, "first_unanswered": first_silent,
            "seconds": round(time.monotonic() - started, 1)}  # fmt: skip


def wait_for_an_actor(context: zmq.Context, endpoint: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = ask(context, endpoint, P.Status(ref=1))
        if isinstance(reply, P.StatusReply) and reply.worker.get("actors"):
            return
        time.sleep(0.5)
    raise RuntimeError(f"no world actor came up within {timeout_s} s")


def main(argv: list[str] | None = None) -> int:
    from world.server.process import start_worker_process, stop_worker_process

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--opens", type=int, default=2000, help="refused opens (default %(default)s)")
    parser.add_argument("--nofile", type=int, default=1024, help="the front door's RLIMIT_NOFILE (default %(default)s)")
    parser.add_argument("--sample-every", type=int, default=50, metavar="N", help="count descriptors every N opens")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    proc, endpoint = start_worker_process(extra_args=("--cluster", "local", "--actors", "1", "--log-level",
                                                      "WARNING"), timeout_s=180.0, env=env)  # fmt: skip
    context = zmq.Context()
    try:
        wait_for_an_actor(context, endpoint)
        lower_nofile(proc.pid, args.nofile)
        summary = {"nofile": args.nofile, **refuse_many(context, endpoint, proc.pid, args.opens, args.sample_every)}
        summary["answers_after"] = still_answers(context, endpoint)
        summary["front_door_alive"] = proc.poll() is None
    finally:
        context.destroy(linger=0)
        stop_worker_process(proc, timeout_s=60.0)
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>18}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
