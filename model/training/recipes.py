"""Named training recipes: the options a release was trained with, as code.

`run_world.py train teacher --recipe NAME` starts from TeacherTrainConfig's defaults, applies the
recipe, then whatever the command line gives (each option still overridable: `--recipe unet-teacher
--shift 2.0`, `--no-text-film`). The scripts (scripts/teacher_long_run.sh, scripts/gpu_segment.sh)
and the docs name a recipe instead of copying its option strings, so the recipe that made a release
is written once, here, and tests/test_recipes.py checks that it rebuilds the released network.

Values are TeacherTrainConfig field names (model/training/teacher.py); replace_config checks them.
"""

from __future__ import annotations

from typing import Any

# The shipped U-Net teacher's recipe (docs/model-card.md, "The current teacher"; docs/world-model.md
# says why each value): the U-Net preset (copy path of the 3 previous frames, action tokens, the
# prompt's FiLM), most clips teacher-forced with their context noised up to the diagonal student's
# level, uniform training levels with shift 3 (the keys decide the picture near pure noise), the
# copy path reading the clean context as streaming stores it, and clips across prompt switches
# oversampled. The latent width follows the latent cache's autoencoder (8 channels in the releases).
UNET_TEACHER: dict[str, Any] = {
    "preset": "unet",
    "teacher_forcing_prob": 0.9,
    "context_noise_max": 0.1,
    "shift": 3.0,
    "level_sampling": "uniform",
    "copy_context": "clean",
    "switch_share": 0.03,
}

TEACHER_RECIPES: dict[str, dict[str, Any]] = {
    "unet-teacher": UNET_TEACHER,
    # assets/teacher: the same recipe, warm from the unguided teacher (--init-from, which is also the
    # guidance reference), distilling guidance 1 on the actions into the weights.
    "unet-teacher-guided": {**UNET_TEACHER, "action_guidance": 1.0},
}


def teacher_recipe(name: str) -> dict[str, Any]:
    """The recipe's TeacherTrainConfig overrides (a copy); ValueError naming the known ones."""
    if name not in TEACHER_RECIPES:
        raise ValueError(f"unknown teacher recipe {name!r}; known: {sorted(TEACHER_RECIPES)}")
    return dict(TEACHER_RECIPES[name])
