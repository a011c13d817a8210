#!/usr/bin/env bash
# ReDrafter vs Arctic LSTM vs EAGLE-3 for the embedded model (SmolLM2-135M-Instruct) at the same data and the same
# CPU budget, in resumable stages (re-running skips what is done):
#   1. one feature cache of the self-distilled teacher data (scripts/strong_drafter.sh, stage 1) holding the last
#      hidden state and the three layers EAGLE-3 fuses (vLLM's default 2, 15, 27 of 30);
#   2. each family trained from it for TRAIN_MINUTES of wall-clock (same batch, draft vocabulary, drafting steps);
#   3. one 80-prompt MT-Bench --compare run of the three against transformers generate;
#   4. the EAGLE-3 drafter exported for vLLM and served there (benchmarks/vllm_serving.py; needs .venv-vllm).
# Environment: OUT (outputs/three-families), TEACHER, TRAIN_MINUTES (12), PROMPTS (80), NEW_TOKENS (128),
# VLLM_PROMPTS (24).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/three-families}
TEACHER=${TEACHER:-outputs/teacher/smollm2-sharegpt-greedy-256}
TRAIN_MINUTES=${TRAIN_MINUTES:-12}
PROMPTS=${PROMPTS:-80}
NEW_TOKENS=${NEW_TOKENS:-128}
VLLM_PROMPTS=${VLLM_PROMPTS:-24}
PY=.venv/bin/python
mkdir -p "$OUT"

"$PY" -m drafter.features --dataset_name "$TEACHER" --output_dir "$OUT/features" --model_max_length 512 \
  --num_eval_examples 64 --hidden_dtype bfloat16 --hidden_layers -1 2 15 27 --batch_size 8

COMMON=(--features_dir "$OUT/features" --draft_vocab_size 4096 --per_device_train_batch_size 16
        --lr_scheduler_type constant_with_warmup --warmup_steps 30 --num_train_epochs 50
        --max_train_minutes "$TRAIN_MINUTES" --logging_steps 20 --save_strategy no --report_to tensorboard)
train() {  # family, extra arguments...
  local family=$1; shift
  [ -f "$OUT/$family/drafter_eval.json" ] && return
  "$PY" train_speculator.py "${COMMON[@]}" --drafter_type "$family" "$@" --output_dir "$OUT/$family" \
    --overwrite_output_dir > "$OUT/train-$family.log" 2>&1
}
train redrafter --drafter_predict_n_tokens 4 --exit_dim_multiplier 1.0 --learning_rate 2e-3
train arctic_lstm --n_speculator_heads 4 --learning_rate 2e-3
train eagle3 --drafter_predict_n_tokens 4 --learning_rate 1e-3

[ -f "$OUT/mtbench$PROMPTS.json" ] || "$PY" generate_speculator.py \
  --speculator_path "$OUT/redrafter" "$OUT/arctic_lstm" "$OUT/eagle3" --eval_mt_bench --compare \
  --max_num_prompts "$PROMPTS" --max_generation_length "$NEW_TOKENS" --beam_width 2 --beam_length 3 \
  --output_file "$OUT/mtbench$PROMPTS.json" \
  > "$OUT/compare.log" 2>&1

if [ -x .venv-vllm/bin/python ]; then
  .venv-vllm/bin/python benchmarks/vllm_serving.py --speculator_path "$OUT/eagle3" --num_prompts "$VLLM_PROMPTS" \
    --max_new_tokens "$NEW_TOKENS" --export_dir "$OUT/eagle3-vllm" --output_file "$OUT/vllm_serving.json" > "$OUT/vllm_serving.log" 2>&1
fi
