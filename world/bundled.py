"""Where the bundled worlds live (assets/), torch-free: the worker sizes a session's checkpoint, the
window picks its default backend and replay looks for recorded weights without loading a model.

`world_release` reads a world release's config.json with json alone, so `play` can refuse a
--checkpoint that is not a world before it starts a worker (which loads torch and the weights, and
checks them again), and say in --help what sampler each bundled release records."""

from __future__ import annotations

import json
import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_CHECKPOINT = ASSETS / "default_world"  # the bundled default world (the distilled student)
TEACHER_CHECKPOINT = ASSETS / "teacher"  # the bundled teacher: used when no default world is bundled
CLASSIFIER_CHECKPOINT = ASSETS / "classifier"  # the theme classifier behind each chunk's `theme` reading
# model/common/checkpoint.py's layout, named again here: world/ may not import model/ (nor torch).
CONFIG_FILE = "config.json"
CHECKPOINT_SUBDIR = "checkpoint"  # a training run's --out holds its checkpoint here
WORLD_KIND = "world"
# The sampler fields of a release's world config (model/runtime/world_model.py WorldConfig).
SAMPLER_FIELDS = ("sampler", "steps", "schedule", "context_noise", "guidance", "guide")


class ReleaseError(ValueError):
    """A path that is not a playable world release; the message names the path and what is wrong."""


def bundled_checkpoint(teacher_fallback: bool = True) -> Path | None:
    """The bundled world: assets/default_world, else (teacher_fallback) assets/teacher; None when absent."""
    candidates = (DEFAULT_CHECKPOINT, TEACHER_CHECKPOINT) if teacher_fallback else (DEFAULT_CHECKPOINT,)
    return next((p for p in candidates if (p / CONFIG_FILE).is_file()), None)


def world_release(path: str | os.PathLike) -> tuple[Path, dict]:
    """(directory, its world config) of the world release at `path`, or in `path`/checkpoint (a
    training run's --out), read with json only. Raises ReleaseError."""
    path = Path(path)
    if not path.exists():
        raise ReleaseError(f"{path}: no such directory")
    if not path.is_dir():
        raise ReleaseError(f"{path}: a file; a world release is a directory holding {CONFIG_FILE}")
    nested = path / CHECKPOINT_SUBDIR
    directory = nested if not (path / CONFIG_FILE).exists() and (nested / CONFIG_FILE).is_file() else path
    return directory, _world_config(directory / CONFIG_FILE)


def _world_config(config: Path) -> dict:
    try:
        meta = json.loads(config.read_text())
    except FileNotFoundError:
        raise ReleaseError(f"{config.parent}: no {CONFIG_FILE}: not a world release (assets/teacher is one)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReleaseError(f"{config}: not readable JSON ({exc})") from None
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if kind != WORLD_KIND:
        raise ReleaseError(f"{config}: kind {kind!r}, not a world release (kind {WORLD_KIND!r})")
    world = meta.get("configs", {}).get("world") if isinstance(meta.get("configs"), dict) else None
    if not isinstance(world, dict):
        raise ReleaseError(f"{config}: no world config under configs.world")
    return world


def recorded_sampler(path: str | os.PathLike) -> dict:
    """The sampler settings a world release records (SAMPLER_FIELDS; None: not recorded, the
    sampler's own default). Raises ReleaseError."""
    world = world_release(path)[1]
    return {name: world.get(name) for name in SAMPLER_FIELDS}
