"""docs/reliability.md, row 5: huge numbers must be refused by the field they are in, never answered
with `internal` errors and tracebacks in the log.

A real worker (its log captured) gets every request type with out-of-range numbers in every
numeric place: each is refused with a specific code, none with `internal`, and the log holds no
traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys

import zmq

from tests.helpers import FAKE_MODULE
from world.server import protocol as P
from world.server import wire
from world.server.process import REPO_ROOT, _wait_ready, stop_worker_process

HUGE = [10**400, -(10**400), 10**21, 1e21, 1e300, -1e300, 2**64]


def messages(session: str) -> list[dict]:
    out = []
    for n in HUGE:
        out += [
            {"type": "open", "backend": "engine", "prompt": "green hills at noon", "options": {"fps": n}},
            {"type": "open", "backend": "engine", "prompt": "green hills at noon", "options": {"height": n}},
            {"type": "open", "backend": "fake", "prompt": "hills", "options": {"delay_s": n}},
            {"type": "open", "backend": "fake", "prompt": "hills", "seed": n, "lookahead": n},
            {"type": "open", "backend": "fake", "prompt": "hills", "start_image": n},
            {"type": "input", "session": session, "action": {"mouse": [n, 0]}},
            {"type": "actions", "session": session, "actions": [{"mouse": [0, n]}]},
            {"type": "reset", "session": session, "seed": n},
            {"type": "ack", "session": session, "seq": n},
            {"type": "ping", "ref": n},
            {"type": "status", "ref": n},
        ]
    return out


def test_out_of_range_numbers_are_refused_by_name_and_never_logged_as_tracebacks(tmp_path):
    log = tmp_path / "worker.log"
    cmd = [sys.executable, str(REPO_ROOT / "run_world.py"), "serve", "--bind", "tcp://127.0.0.1:0", *FAKE_MODULE]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        endpoint = _wait_ready(proc, 30)
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send(json.dumps({"v": 1, "type": "open", "backend": "fake", "prompt": "hills", "ref": "o"}).encode())
        while (reply := wire.decode_reply(sock.recv_multipart())[0]).TYPE != "opened":
            pass
        codes = []
        sent = messages(reply.session)
        for k, message in enumerate(sent):
            sock.send(json.dumps({"v": 1, **message, "ref": message.get("ref", k)}).encode())
        while len(codes) < len(sent) - 2 * len(HUGE):  # pings and status with a huge ref: replies, not errors
            if not sock.poll(10000):
                break
            answer = wire.decode_reply(sock.recv_multipart())[0]
            if answer.TYPE == "error":
                codes.append(answer.code)
        assert codes and P.INTERNAL not in codes, codes
        assert set(codes) <= {P.BAD_OPTION, P.BAD_SEED, P.BAD_LOOKAHEAD, P.BAD_MESSAGE, P.BAD_ACTION, P.BAD_ACK,
                              P.TOO_LARGE}, set(codes)  # fmt: skip
        sock.close(0)
    finally:
        stop_worker_process(proc)
    assert "Traceback" not in log.read_text()
