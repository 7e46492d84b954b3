"""The soak and fault run (controls/harness/soak.py), short: a real worker on loopback with the fake backend,
every abusive client at once and a SIGKILL of the worker half way."""

from __future__ import annotations

from controls.harness.soak import SoakConfig, run_soak
from tests.helpers import FAKE_MODULE
from world.server import protocol as P


def test_a_short_soak_loses_nothing_and_refuses_every_abuse(tmp_path):
    config = SoakConfig(seconds=8.0, players=2, backend="fake", prompt="hills", oversized={"delay_s": 1.5},
                        worker_args=tuple(FAKE_MODULE), kill_at=0.5, record_dir=str(tmp_path))  # fmt: skip
    report = run_soak(config, log=lambda _: None)
    assert report["worker_alive_at_end"]
    assert report["fuzz"]["sent"] > 1000 and report["fuzz"]["internal"] == 0, report["fuzz"]
    assert report["thief"]["refused"] > 0 and report["thief"]["succeeded"] == 0
    assert report["recordings"]["frames_lost"] == 0 and report["recordings"]["frames_recorded"] > 0
    for player in report["players"]:
        assert player["frames"] > 0 and player["reconnects"] == 1, player
    assert report["oversized"].get(P.OVER_BUDGET, 0) >= 1, report["oversized"]
