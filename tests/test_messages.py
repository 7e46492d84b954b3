"""Messages a person can act on: hints in the form they ran, usage errors in one line, a quiet local
worker unless -v, everyday options first in `play --help`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from world.launcher import LAUNCHER_ENV, command

REPO = Path(__file__).resolve().parent.parent


def test_hints_use_the_launcher_the_person_ran(monkeypatch):
    monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    assert command("serve --bind tcp://1.2.3.4:5") == "python run_world.py serve --bind tcp://1.2.3.4:5"
    monkeypatch.setenv(LAUNCHER_ENV, "./world.sh")
    assert command("play --help") == "./world.sh play --help"


def test_a_dead_address_suggests_serve_in_the_launchers_form(monkeypatch):
    from controls.probe import probe
    from world.server.client import WorldClient

    monkeypatch.setenv(LAUNCHER_ENV, "./world.sh")
    client = WorldClient("tcp://127.0.0.1:1", timeout_s=1.0)
    try:
        message = probe(client, attempts=1)
    finally:
        client.close()
    assert "`./world.sh serve --bind tcp://127.0.0.1:1`" in message and "python run_world.py" not in message


@pytest.mark.parametrize("argv, words", [
    (["play", "--backend", "nope"], "argument --backend: invalid choice: 'nope'"),
    (["nope"], "invalid choice: 'nope'"),
    (["replay"], "the following arguments are required: episode"),
])  # fmt: skip
def test_usage_errors_are_one_line_that_says_where_to_read_more(argv, words, monkeypatch, capsys):
    import run_world

    monkeypatch.setenv(LAUNCHER_ENV, "./world.sh")
    with pytest.raises(SystemExit) as exit_info:
        run_world.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and words in err and "(see ./world.sh" in err and "--help)" in err
    assert "usage:" not in err


def test_play_help_puts_everyday_options_first_and_experiments_in_their_own_group(capsys):
    import run_world

    with pytest.raises(SystemExit):
        run_world.main(["play", "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: run_world.py play [options]\n")  # not 17 lines of every flag
    text = text[text.index("\noptions:") :]
    expert = text.index("experiments (sampler, memory, guidance")
    for everyday in ("--prompt PROMPT", "--seed SEED", "--headless", "--record DIR", "-v, --verbose"):
        assert text.index(everyday) < expert, everyday
    for option in ("--sampler {", "--context-noise T", "--guide {", "--lookahead {"):
        assert text.index(option) > expert, option
    assert "'generated' once" not in text  # the default is said plainly


@pytest.mark.parametrize("verbose", [False, True])
def test_the_local_workers_info_log_shows_only_with_verbose(verbose):
    argv = [sys.executable, "run_world.py", "play", "--headless", "--backend", "engine", "--frames", "6",
            *(["-v"] if verbose else [])]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["frames"] == 6
    assert ("INFO world.worker" in done.stderr) == verbose
