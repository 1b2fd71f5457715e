#!/usr/bin/env bash
# Reproduce the embedded default model (policy/default_model) end to end: the 2,002-trajectory scripted expert set
# (182 per expert task, recorded as MCAP episodes by `irevla collect`, phrasings drawn per episode), the frozen
# vision tower's features of every frame, a 1,000-episode clutter set (the same experts, with 3 training-only clutter
# objects per scene: sim_twin/tasks/tasks.yaml `clutter`), and stage 0 of config/policy_towers.yaml on both.
# Measured on 2 CPU cores: collection 21.5 + 11.7 min, features ~8 + 4 min, training ~33 min (README, "Default model").
# Resumable: each step continues where a killed run stopped (collection by its per-task counts and seeds, features
# per episode, training from its last checkpoint).
#   bash scripts/train_default_model.sh [work_dir]        (default work_dir: runs/default_model)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="${1:-runs/default_model}"
IREVLA=.venv/bin/irevla
export MUJOCO_GL="${MUJOCO_GL:-egl}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
EXPERT_TASKS=(pick_red_block pick_green_block pick_blue_block pick_yellow_block
              place_red_block_on_plate place_green_block_on_plate place_blue_block_in_bin place_yellow_block_in_bin
              press_button open_drawer route_cable)
PER_TASK=182
COLLECT=(collect --out "$WORK/expert" --episodes-per-task $PER_TASK --tasks "${EXPERT_TASKS[@]}" --workers 2
         --image-size 128 --noise 0.1 --seed 0)
CLUTTER=(collect --out "$WORK/clutter" --episodes-per-task 100 --tasks "${EXPERT_TASKS[@]:0:10}" --workers 2
         --image-size 128 --noise 0.1 --seed 2000000 --clutter 3)
TRAIN=(train --config config/policy_towers.yaml --data "$WORK/expert" "$WORK/clutter" --out "$WORK/stage0" --resume)
# 1. Expert set: seeds 0 + 100000 k + attempt for task k; expert action noise 0.1 (recorded actions are the noisy
#    executed ones, so the set shows recoveries). collect ends by labelling each episode's object position from its
#    seed (object_labels.jsonl, teleop/object_labels.py): stage 0's auxiliary object loss reads it.
"$IREVLA" "${COLLECT[@]}"
"$IREVLA" dataset label-objects "$WORK/expert" --workers 2   # no-op when collect labelled everything
# 1b. Clutter set: the expert tasks with objects (not the cable), 3 clutter objects drawn per scene from its seed;
#     the labels name them in counterfactual readout rows, so the latents learn to find objects by many more nouns.
"$IREVLA" "${CLUTTER[@]}"
"$IREVLA" dataset label-objects "$WORK/clutter" --workers 2
# 2. Frozen vision tower (EfficientNet-Lite0) output of every frame, two processes, cached next to the data.
"$IREVLA" features --config config/policy_towers.yaml --data "$WORK/expert" --workers 2
"$IREVLA" features --config config/policy_towers.yaml --data "$WORK/clutter" --workers 2
# 3. Stage 0: fusion (Q-Former + LM) and head on the cached features; two torch threads.
sed 's/num_threads: 0/num_threads: 2/' config/policy_towers.yaml > "$WORK/policy_towers.yaml"
TRAIN[2]="$WORK/policy_towers.yaml"
"$IREVLA" "${TRAIN[@]}"
# 4. Export: the final checkpoint without trainer state, its metadata holding the recipe instead of machine paths.
.venv/bin/python scripts/export_default_model.py "$WORK/stage0/final" policy/default_model \
  --recipe "irevla ${COLLECT[*]}" "irevla ${CLUTTER[*]}" \
           "irevla features --config config/policy_towers.yaml --data $WORK/expert --workers 2 (and $WORK/clutter)" \
           "irevla ${TRAIN[*]} (num_threads: 2)" --data "$WORK/expert" "$WORK/clutter"
du -sh policy/default_model
