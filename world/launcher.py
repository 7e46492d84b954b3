"""How the person started the program, so a hint can be pasted back as it is.

`./world.sh` (the set-up wrapper) runs the project inside its virtual environment and sets
WORLD_LAUNCHER to the path it was called by; a hint then reads `./world.sh serve ...`. Without it
(`python run_world.py ...` by hand, a test) hints read `python run_world.py ...`. A `./world.sh`
user's plain `python` usually lacks the dependencies, so the other form would not run for them.
"""

from __future__ import annotations

import os

LAUNCHER_ENV = "WORLD_LAUNCHER"
DEFAULT_LAUNCHER = "python run_world.py"


def command(arguments: str = "") -> str:
    """The command a person types to run `run_world.py ARGUMENTS` the way they started us."""
    launcher = os.environ.get(LAUNCHER_ENV, "").strip() or DEFAULT_LAUNCHER
    return f"{launcher} {arguments}".rstrip()
