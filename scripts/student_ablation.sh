#!/usr/bin/env bash
# The student's ablations (docs/student-unet.md): short DMD runs from the same init and ODE pairs,
# equal steps, one factor each, scored like the shipped student; plus the shipped weights sampled
# uniform 1 step + refresh (2 NFE a chunk) and diagonal 4-3-1 (1 step + a K/V-only pass) against their
# diagonal 4-3-2 (2 a steady chunk); and context
# noise ~0 against 100, which needs its own ODE pairs and init (INIT_STEPS, the shipped init's 37).
# Resumable: rerun after a kill, finished arms are skipped.
#   [STEPS=200] scripts/student_ablation.sh [RUN] [INIT_RUN]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/student_ablation}
SRC=${2:-runs/student_unet}  # holds ode_pairs/ and init/ (scripts/student_unet.sh)
STEPS=${STEPS:-200}
INIT_STEPS=${INIT_STEPS:-37}
PY=${PY:-.venv/bin/python}
[ -d "$SRC/ode_pairs" ] && [ -d "$SRC/init/checkpoint" ] || { echo "no $SRC/ode_pairs or $SRC/init: run scripts/student_unet.sh first" >&2; exit 1; }
mkdir -p "$RUN"
score() {  # arm name, world checkpoint
  [ -f "$RUN/$1/scored" ] && return
  $PY -m model.evaluation.bakeoff --own-sampler --arm "$1=$2" --threads 2 --out "$RUN/bakeoff"
  $PY run_world.py eval --measures longstream --longstream-seconds 30 --longstream-window-s 5 --threads 2 --json \
      --out "$RUN/$1/ls30" --checkpoint "$2"
  touch "$RUN/$1/scored"
}
arm() {  # name, extra DMD options... (ARM_SRC: another run's ode_pairs/ and init/)
  local name=$1; shift
  local out="$RUN/$name" src=${ARM_SRC:-$SRC}
  mkdir -p "$out"; [ -e "$out/ode_pairs" ] || ln -s "$(realpath "$src/ode_pairs")" "$out/ode_pairs"
  if [ ! -f "$out/release/config.json" ]; then
    local resume=""; [ -d "$out/dmd/checkpoint" ] && resume=--resume
    $PY run_world.py train student --stage dmd --teacher assets/teacher --init "$src/init" --out "$out" --steps "$STEPS" \
        --batch 4 --lr 2e-5 --critic-lr 4e-5 --guidance 0 --threads 2 --ckpt-every 20 $resume "$@"
    $PY -m model.tools.release "$out/dmd" "$out/release" --note "ablation=$name"
  fi
  score "$name" "$out/release"
}
# Inference only: the shipped weights played by another sampler (its WorldConfig fields as JSON).
resampled() {  # name, world config fields
  if [ ! -f "$RUN/$1/release/config.json" ]; then
    mkdir -p "$RUN/$1" && cp -r assets/default_world "$RUN/$1/release"
    $PY - "$RUN/$1/release/config.json" "$2" <<'PYEOF'
import json, sys
path, fields = sys.argv[1], json.loads(sys.argv[2])
meta = json.load(open(path))
meta["configs"]["world"].update(fields)
json.dump(meta, open(path, "w"), indent=1)
PYEOF
  fi
  score "$1" "$RUN/$1/release"
}
# uniform 1 step + refresh: 2 forwards every chunk (the refresh is K/V-only).
resampled uniform1 '{"sampler": "uniform", "steps": 1, "schedule": null, "context_noise": null}'
# diagonal 4-3-1: steady chunks of 1 step + a K/V-only context pass at t = 100.
resampled diag431 '{"schedule": [4, 3, 1]}'
# uniform 4 + refresh (bench's "uniform"): 5 forwards every chunk, the diagonal's speed baseline.
resampled uniform4 '{"sampler": "uniform", "steps": 4, "schedule": null, "context_noise": null}'
arm base
arm rollout3 --rollout-chunks 3
arm noflow --flow-weight 0
# Context noise t = 1 (the diagonal sampler needs a level strictly above 0; the chunk's last forward
# then sees an almost clean input and writes almost clean K/V): ODE pairs on its own grid, its own init
# with the shipped init's step count, then the same DMD. The DMD run reads t = 1 from the init's record.
CTX0="$RUN/ctx0_src"
if [ ! -f "$CTX0/init.done" ]; then
  resume=""; [ -d "$CTX0/init/checkpoint" ] && resume=--resume
  $PY run_world.py train student --stage init --teacher assets/teacher --latents data/student_latents --out "$CTX0" \
      --pairs 128 --clip-chunks 6 --teacher-steps 8 --teacher-guidance 0 --context-noise 1 --steps "$INIT_STEPS" \
      --batch 8 --threads 2 $resume
  touch "$CTX0/init.done"
fi
ARM_SRC="$CTX0" arm ctx0
