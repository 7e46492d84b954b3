#!/usr/bin/env bash
# Set-up wrapper: installs the project into .venv on first use, then runs it.
#   ./world.sh            open the window on the bundled world (worker started locally)
#   ./world.sh test       run the test suite
#   ./world.sh ARGS...    python run_world.py ARGS...
set -euo pipefail
cd "$(dirname "$0")"
venv=${WORLD_VENV:-.venv}
stamp="$venv/.installed"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setting up $venv (first run only) ..." >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2 || true
  # torch first, pinned: a CPU machine takes its local CPU build, a GPU machine the CUDA build
  # from PyPI. Unpinned, pip would pull several GB of CUDA wheels onto a CPU-only laptop.
  "$venv/bin/pip" install -q "torch==${WORLD_TORCH_VERSION:-2.13.0}" >&2
  # The sound extra (sounddevice) always: where PortAudio is missing it fails to load and the window
  # says "no audio device" and plays on.
  # setuptools' editable install always ends with an informational "Editable installation" block
  # (folders named like a package in the working directory may shadow it; here they are the package)
  # that recent pip prints as a warning; its other modes print a deprecation block instead. Only
  # that one message is filtered; any other warning still shows.
  PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Editable installation" \
    "$venv/bin/pip" install -q -e ".[dev,sound]" >&2
  touch "$stamp"
fi
# Hints the program prints read `./world.sh ...`, the form this user runs (world/launcher.py).
export WORLD_LAUNCHER="${WORLD_LAUNCHER:-$0}"
if [ "${1:-}" = "test" ]; then
  shift
  exec "$venv/bin/python" -m pytest "$@"
fi
exec "$venv/bin/python" run_world.py "$@"
