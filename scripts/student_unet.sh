#!/usr/bin/env bash
# Distil the U-Net teacher (assets/teacher) into the diagonal student, resumably, one stage after
# another: engine data -> latent cache -> ODE pairs (the teacher's released sampler: Euler 8,
# guidance 0) + CausVid init -> DMD with 6-chunk Self-Forcing rollouts. Rerun the same command
# after a kill: every stage continues where it stopped.
#   [INIT_STEPS=400] [DMD_MINUTES=M] scripts/student_unet.sh [RUN_DIR] [THREADS] [DMD_STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/student_unet}
THREADS=${2:-2}
DMD_STEPS=${3:-800}
INIT_STEPS=${INIT_STEPS:-400}
DMD_MINUTES=${DMD_MINUTES:-}
PY=${PY:-.venv/bin/python}
SRC=data/student_src
LAT=data/student_latents
if [ ! -f "$SRC/.done" ]; then
  # short bouts with held single keys: the rollouts see held turns, walks and key changes
  $PY run_world.py datagen --out "$SRC" --episodes 48 --frames-per-episode 300 --seed 21 --bout-scale 0.2 \
      --random-share 0.3 --workers "$THREADS" --no-progress
  touch "$SRC/.done"
fi
if [ ! -f "$LAT/.done" ]; then
  $PY run_world.py encode-latents --data "$SRC" --autoencoder assets/autoencoder-sharp8 --out "$LAT"
  touch "$LAT/.done"
fi
resume() { [ -d "$RUN/$1/checkpoint" ] && echo --resume || true; }
$PY run_world.py train student --stage init --teacher assets/teacher --latents "$LAT" --out "$RUN" \
    --pairs 128 --clip-chunks 6 --teacher-steps 8 --teacher-guidance 0 --steps "$INIT_STEPS" --batch 8 \
    --threads "$THREADS" $(resume init)
$PY run_world.py train student --stage dmd --teacher assets/teacher --out "$RUN" --steps "$DMD_STEPS" --batch 4 \
    --lr 2e-5 --critic-lr 4e-5 --guidance 0 --threads "$THREADS" $(resume dmd) \
    ${DMD_MINUTES:+--max-minutes "$DMD_MINUTES"}
