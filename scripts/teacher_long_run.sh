#!/usr/bin/env bash
# The teacher's long run, resumable across restarts and machines (docs/teacher-recipe.md).
#   scripts/teacher_long_run.sh [SEGMENT_MINUTES] [SEGMENTS] [RUN]
# Each segment trains for SEGMENT_MINUTES of wall time (DDP over 2 CPU processes, or one process
# per GPU with DEVICE=cuda NPROC=N), saves, scores the checkpoint with the cheap scoreboard and
# appends (step, cumulative training hours, scoreboard JSON) to RUN/history.csv, then replots
# docs/images/teacher_long_scoreboard.png. Data is made on the spot if missing (engine episodes,
# then the latent cache), so a fresh machine only needs the repository. A run directory that
# does not exist yet starts from INIT (a run directory to copy and resume, e.g. the ablation's
# winner), else warm-starts from INIT_FROM, which a new run must set: a world release (its fp16 weights are
# committed, so a fresh machine continues where the last run stopped; the U-Net runs set INIT_FROM
# and RECIPE, docs/world-model.md), or empty for a fresh network. The latents are encoded with the
# autoencoder of AE_FROM (default INIT_FROM) unless runs/ae_teacher already holds one.
# Environment: RECIPE (training options; default "--recipe unet-teacher", the shipped teacher's, model/training/
# recipes.py; e.g. "--recipe unet-teacher-guided" to distil guidance, or the DiT's "--copy-path --action-tokens ..."
# of the runs docs/teacher-recipe.md records, whose network is the "default" preset), DATA / LATENTS /
# EPISODES / SEED / DATAGEN_ARGS (the data made when the cache is missing), PLOT / TABLE (outputs).
set -euo pipefail
cd "$(dirname "$0")/.."
segment=${1:-30}
segments=${2:-1000}
run=${3:-runs/teacher_long}
py=${PYTHON:-.venv/bin/python}
device=${DEVICE:-cpu}
nproc=${NPROC:-2}
if [ -z "${INIT_FROM+set}" ] && [ -z "${INIT:-}" ] && [ ! -f "$run/checkpoint/config.json" ]; then
  echo "$0: $run holds no run to resume: set INIT_FROM to the world release to warm-start from (e.g. assets/teacher), or INIT_FROM= for a" \
       "fresh network; the DiT teacher this script first trained is in git history:" \
       "git archive 23c0eb9 assets/teacher-dit | tar -x" >&2
  exit 2
fi
init_from=${INIT_FROM:-}  # empty: a fresh network (or the resumed run's own weights)
ae_from=${AE_FROM:-$init_from}
data=${DATA:-data/engine}
latents=${LATENTS:-data/latents}
episodes=${EPISODES:-512}
seed=${SEED:-1}
read -r -a datagen_extra <<< "${DATAGEN_ARGS:-}"  # e.g. "--bout-scale 0.2 --random-share 0.3"
plot=${PLOT:-docs/images/teacher_long_scoreboard.png}
table=${TABLE:-docs/reports/teacher-long-scoreboard.md}
recipe=(--recipe unet-teacher)
[ -n "${RECIPE:-}" ] && read -r -a recipe <<< "$RECIPE"

if ! grep -q '"complete": true' "$latents/cache.json" 2>/dev/null; then
  if [ ! -f runs/ae_teacher/config.json ] && [ -z "$ae_from" ]; then
    echo "$0: no runs/ae_teacher and no release to take an autoencoder from: set AE_FROM" >&2
    exit 2
  fi
  [ -f runs/ae_teacher/config.json ] || "$py" -c "
from model.runtime.world_model import load_world_model
from model.common.checkpoint import save_checkpoint
ae = load_world_model('$ae_from').autoencoder  # the autoencoder the warm start was trained with
save_checkpoint('runs/ae_teacher', kind='autoencoder', modules={'autoencoder': ae}, configs={'autoencoder': ae.config})"
  "$py" run_world.py datagen --out "$data" --episodes "$episodes" --frames-per-episode 600 --seed "$seed" \
    --workers "$nproc" --no-progress "${datagen_extra[@]}"
  "$py" run_world.py encode-latents --data "$data" --autoencoder runs/ae_teacher --out "$latents"
fi

if [ ! -f "$run/checkpoint/config.json" ] && [ -n "${INIT:-}" ]; then
  mkdir -p "$run" && cp -r "$INIT/checkpoint" "$run/checkpoint"
  [ -f "$INIT/teacher.csv" ] && cp "$INIT/teacher.csv" "$run/teacher.csv"
fi
hours_file="$run/train_hours"
mkdir -p "$run/scoreboard"
[ -f "$hours_file" ] || echo 0 > "$hours_file"
[ -f "$run/history.csv" ] || echo "step,train_hours,scoreboard" > "$run/history.csv"

for ((k = 0; k < segments; k++)); do
  start=$(date +%s)
  OMP_NUM_THREADS=1 "$py" -m torch.distributed.run --standalone --nproc_per_node="$nproc" run_world.py train teacher \
    --latents "$latents" --out "$run" --steps 10000000 --batch 8 --clip-chunks 3 --lr 3e-4 \
    --device "$device" --init-from "$init_from" --ckpt-every 100 --max-minutes "$segment" --resume "${recipe[@]}"
  hours=$("$py" -c "print(round($(cat "$hours_file") + ($(date +%s) - $start) / 3600, 4))")
  echo "$hours" > "$hours_file"
  step=$("$py" -c "import json; print(json.load(open('$run/checkpoint/config.json'))['step'])")
  board="scoreboard/step_$step.json"
  OMP_NUM_THREADS=2 "$py" -m model.evaluation.scoreboard --checkpoint "$run/checkpoint" --sampler uniform \
    --threads 2 --out "$run/$board" > "$run/scoreboard/step_$step.log" 2>&1 && echo "$step,$hours,$board" >> "$run/history.csv"
  "$py" -m model.evaluation.history "$run" --out "$plot" --table "$table" || true
done
