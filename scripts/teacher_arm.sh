#!/usr/bin/env bash
# One teacher arm under the protocol every arm of docs/teacher-own-rollouts.md follows: STEPS (432)
# steps warm from assets/teacher on data/teacher_ft_latents (4-chunk clips, batch 8, lr 3e-4, the
# shipped guided recipe, 2 DDP processes), released as Euler 8 + refresh unguided, scored with the
# bake-off scorer (80 counterfactual cases, teacher-forced gains, fidelity per chunk), a 30 s long
# stream, and with TEXT=1 the prompt and switch measures. Resumable: a run directory with a
# checkpoint continues; finished stages are skipped.
#   scripts/teacher_arm.sh NAME [TRAIN OPTIONS...]
#   e.g. scripts/teacher_arm.sh data_target --guidance-target data
# Writes runs/teacher_arms/NAME/{run,release,bakeoff/NAME.json,ls30/results.json,text/results.json};
# scripts/arm_table.py turns the JSON into the doc's table rows.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: scripts/teacher_arm.sh NAME [TRAIN OPTIONS...]}
shift
py=${PYTHON:-.venv/bin/python}
out=${OUT:-runs/teacher_arms}/$name
latents=${LATENTS:-data/teacher_ft_latents}
if ! grep -q '"complete": true' "$latents/cache.json" 2>/dev/null; then
  echo "$0: $latents is not a complete latent cache; make it as docs/teacher-own-rollouts.md says (datagen --seed 31," \
       "then encode-latents with assets/autoencoder-sharp8)" >&2
  exit 2
fi
mkdir -p "$out"
OMP_NUM_THREADS=1 "$py" -m torch.distributed.run --standalone --nproc_per_node="${NPROC:-2}" run_world.py train teacher \
  --recipe unet-teacher-guided --latents "$latents" --out "$out/run" --steps "${STEPS:-432}" --batch 8 --clip-chunks 4 \
  --lr 3e-4 --device "${DEVICE:-cpu}" --init-from assets/teacher --guidance-reference assets/teacher-reference \
  --ckpt-every 50 --resume "$@"
[ -f "$out/release/config.json" ] || "$py" -m model.tools.release "$out/run" "$out/release" --step-offset 5180 \
  --steps 8 --guidance 0 --note "arm=$name" --note "options=$*"
[ -f "$out/bakeoff/$name.json" ] || "$py" -m model.evaluation.bakeoff --own-sampler --arm "$name=$out/release" \
  --threads 2 --out "$out/bakeoff"
[ -f "$out/ls30/results.json" ] || "$py" run_world.py eval --measures longstream --longstream-seconds 30 \
  --longstream-window-s 5 --threads 2 --json --out "$out/ls30" --checkpoint "$out/release"
if [ "${TEXT:-0}" = 1 ] && [ ! -f "$out/text/results.json" ]; then
  "$py" run_world.py eval --measures prompts,switch --threads 2 --json --out "$out/text" --checkpoint "$out/release"
fi
