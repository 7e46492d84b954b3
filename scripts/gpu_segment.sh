#!/usr/bin/env bash
# One segment of a teacher's long run on a lent GPU machine that has PyTorch but not this project's
# other packages and cannot download anything (no text encoder: the prompt embeddings come from a
# small carried cache with --text-from). Everything happens inside a wall-clock budget so what was
# trained always comes back:
#   scripts/gpu_segment.sh SECONDS OUT
# 1. engine episodes on every CPU core (datagen), 2. their latents on the GPU with the autoencoder of
# INIT_FROM, 3. `train teacher` warm-started from INIT_FROM until the budget is nearly spent,
# 4. the run's release weights (fp16 EMA "dit", fp16 "dit_online"), config and loss log into OUT.
# Environment: INIT_FROM (world checkpoint, default assets/teacher-reference), AUTOENCODER (another
# autoencoder, e.g. assets/autoencoder-sharp8: the latents are encoded with it and the layers that read
# or write latents start fresh, the rest warm from INIT_FROM), RECIPE (training options, default
# "--recipe unet-teacher": the shipped teacher's, model/training/recipes.py),
# TEXT_FROM (the prompt embeddings: `encode-latents --text-only` of the same datagen run here),
# EPISODES, SEED, DATAGEN_ARGS, BATCH, LR, DEVICE.
# Back on the CPU machine, the weights warm-start the next segment (INIT_FROM=that directory) and
# are scored there (docs/world-model.md, "Training on a lent GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:?seconds}
out=${2:?output directory}
deadline=$(( $(date +%s) + budget ))
py=${PYTHON:-python3}
init_from=${INIT_FROM:-assets/teacher-reference}
text_from=${TEXT_FROM:-data/text_ref}
episodes=${EPISODES:-256}
seed=${SEED:-15}
batch=${BATCH:-64}
lr=${LR:-3e-4}
device=${DEVICE:-cuda}  # cpu: a rehearsal of the whole segment on this machine
read -r -a datagen_extra <<< "${DATAGEN_ARGS:---bout-scale 0.2 --random-share 1.0 --random-keys one}"
read -r -a recipe <<< "${RECIPE:---recipe unet-teacher}"
work=${WORK:-/tmp/gpu_segment}
run="$work/run"
mkdir -p "$work" "$out"

save_out() {  # whatever the run has saved, even after a failure
  local ck="$run/checkpoint"
  [ -f "$ck/config.json" ] || return 0
  cp "$ck/config.json" "$ck/dit.safetensors" "$ck/autoencoder.safetensors" "$out/"
  [ -f "$ck/dit_online.safetensors" ] && cp "$ck/dit_online.safetensors" "$out/"
  [ -f "$run/teacher.csv" ] && cp "$run/teacher.csv" "$out/"
  return 0
}
trap save_out EXIT

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

t0=$(date +%s)
init_extra=()
if [ -n "${AUTOENCODER:-}" ]; then
  rm -rf "$work/ae" && cp -r "$AUTOENCODER" "$work/ae"
  init_extra=(--init-mismatched fresh)
else
  "$py" -c "
from model.runtime.world_model import load_world_model
from model.common.checkpoint import save_checkpoint
ae = load_world_model('$init_from', with_text_encoder=False).autoencoder  # the latents must come from the teacher's own autoencoder
save_checkpoint('$work/ae', kind='autoencoder', modules={'autoencoder': ae}, configs={'autoencoder': ae.config})"
fi
"$py" run_world.py datagen --out "$work/data" --episodes "$episodes" --frames-per-episode 600 --seed "$seed" \
  --workers "$(nproc)" --no-progress "${datagen_extra[@]}"
t1=$(date +%s)
"$py" run_world.py encode-latents --data "$work/data" --autoencoder "$work/ae" --out "$work/latents" \
  --device "$device" --batch 1200 --text-from "$text_from"
t2=$(date +%s)
echo "data: datagen $((t1 - t0)) s, encode $((t2 - t1)) s"

minutes=$("$py" -c "print(round(max(0.5, ($deadline - $(date +%s) - 45) / 60), 2))")
echo "training for $minutes minutes"
"$py" run_world.py train teacher --latents "$work/latents" --out "$run" --steps 10000000 --batch "$batch" \
  --clip-chunks 3 --lr "$lr" --device "$device" --init-from "$init_from" --ckpt-every 500 --log-every 50 \
  --max-minutes "$minutes" "${recipe[@]}" "${init_extra[@]}"
t3=$(date +%s)
echo "train: $((t3 - t2)) s"
"$py" -c "
import json; c = json.load(open('$run/checkpoint/config.json'))
print(json.dumps({'step': c['step'], 'episodes': $episodes, 'batch': $batch, 'datagen_s': $((t1 - t0)),
                  'encode_s': $((t2 - t1)), 'train_s': $((t3 - t2))}))" | tee "$out/segment.json"
