"""Where the bundled worlds live (assets/), torch-free: the worker sizes a session's checkpoint, the
window picks its default backend and replay looks for recorded weights without loading a model."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_CHECKPOINT = ASSETS / "default_world"  # the bundled default world (the distilled student)
TEACHER_CHECKPOINT = ASSETS / "teacher"  # the bundled teacher: used when no default world is bundled
CLASSIFIER_CHECKPOINT = ASSETS / "classifier"  # the theme classifier behind each chunk's `theme` reading


def bundled_checkpoint(teacher_fallback: bool = True) -> Path | None:
    """The bundled world: assets/default_world, else (teacher_fallback) assets/teacher; None when absent."""
    candidates = (DEFAULT_CHECKPOINT, TEACHER_CHECKPOINT) if teacher_fallback else (DEFAULT_CHECKPOINT,)
    return next((p for p in candidates if (p / "config.json").is_file()), None)
