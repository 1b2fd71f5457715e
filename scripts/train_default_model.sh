#!/usr/bin/env bash
# Reproduce the embedded default model (policy/default_model): a tiny BLIP-2-shaped VLA trained from scratch on
# the twin's scripted expert set. ~10 min of collection + ~25-35 min of training on 2 CPU cores (a GPU: minutes).
#   bash scripts/train_default_model.sh [work_dir]        (default work_dir: runs/default_model)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="${1:-runs/default_model}"
IREVLA=.venv/bin/irevla
EXPERT_TASKS=(pick_red_block pick_green_block pick_blue_block pick_yellow_block
              place_red_block_on_plate place_green_block_on_plate place_blue_block_in_bin place_yellow_block_in_bin
              press_button open_drawer route_cable)
# 1. 40 scripted episodes per expert task, 96 px, both cameras, expert noise 0.1 (seeds 0 + 100000 k + i).
"$IREVLA" collect --out "$WORK/expert" --episodes-per-task 40 --tasks "${EXPERT_TASKS[@]}" --workers 2 \
  --image-size 96 --noise 0.1
# 2. Stage 0: config/policy_tiny.yaml (3000 steps, batch 32) with 4-px random-shift augmentation, one torch thread
#    (two threads are slower on a busy 2-core machine).
sed 's/augment_shift_px: 0/augment_shift_px: 4/; s/eval_every: 500/eval_every: 0/; s/num_threads: 0/num_threads: 1/' \
  config/policy_tiny.yaml > "$WORK/default_model.yaml"
"$IREVLA" train --config "$WORK/default_model.yaml" --data "$WORK/expert" --out "$WORK/stage0" --resume
# 3. Export: the final checkpoint without trainer state, weights stored as they are (safetensors).
rm -rf policy/default_model.new && cp -r "$WORK/stage0/final" policy/default_model.new
rm -f policy/default_model.new/trainer_state.pt
rm -rf policy/default_model && mv policy/default_model.new policy/default_model
du -sh policy/default_model
