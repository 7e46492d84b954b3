#!/usr/bin/env bash
# Equal-wall-time ablation of the teacher recipe (docs/teacher-recipe.md): every arm is warm-started
# from INIT_FROM, which must be set (the previous teacher assets/teacher-v1 was the one: no copy path,
# so every arm can load it; it is in git history: git archive b38cb69 assets/teacher-v1 | tar -x), trains on
# the same latent cache with the same seed for MINUTES of wall time on one CPU thread, PARALLEL arms at a time (default: all four at once, so every arm shares
# the machine's load equally), then each is scored with the same scoreboard. Resumable: an arm
# whose run directory holds a checkpoint continues from it.
#   [PARALLEL=4] scripts/teacher_ablation.sh [MINUTES] [LATENTS] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-25}
latents=${2:-data/latents}
out=${3:-runs/ablation}
py=${PYTHON:-.venv/bin/python}
device=${DEVICE:-cpu}
init_from=${INIT_FROM:?set INIT_FROM to a world release with no copy path, e.g. assets/teacher-v1 (git archive b38cb69 assets/teacher-v1 | tar -x)}
common=(train teacher --latents "$latents" --preset default --steps 1000000 --batch 8 --clip-chunks 3
        --lr 3e-4 --device "$device" --init-from "$init_from" --ckpt-every 100 --max-minutes "$minutes" --resume)
declare -A arms=(
  [a_baseline]=""
  [b_copy]="--copy-path"
  [c_copy_ctxnoise]="--copy-path --teacher-forcing-prob 0.9 --context-noise-max 0.3"
  [d_copy_ctxnoise_actions]="--copy-path --teacher-forcing-prob 0.9 --context-noise-max 0.3 --action-tokens"
)
order=(a_baseline b_copy c_copy_ctxnoise d_copy_ctxnoise_actions)
mkdir -p "$out"
parallel=${PARALLEL:-4}
for ((i = 0; i < ${#order[@]}; i += parallel)); do
  pids=()
  for arm in "${order[@]:i:parallel}"; do
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=1 "$py" run_world.py "${common[@]}" --out "$out/$arm" ${arms[$arm]} \
      > "$out/$arm.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
done
for arm in "${order[@]}"; do
  OMP_NUM_THREADS=1 "$py" -m model.evaluation.scoreboard --checkpoint "$out/$arm/checkpoint" --sampler uniform \
    --threads 1 --out "$out/$arm/scoreboard.json" > "$out/$arm/scoreboard.log" 2>&1 || echo "scoreboard failed: $arm"
done
