#!/usr/bin/env bash
# The recipe for the shipped default drafter of the embedded model (SmolLM2-135M-Instruct), in four resumable
# stages; re-running skips what is done. Every stage can be stopped and run again.
#   1. teacher data: the base model's own greedy answers to ShareGPT prompts (MT-Bench's questions excluded),
#      vLLM when .venv-vllm exists (bash scripts/bootstrap_vllm.sh), else the toolkit's own decoder;
#      TEACHER_SHARDS processes, one per core. The data set is kept compressed in benchmarks/teacher/ and used as
#      it is; EXTEND_TEACHER=1 answers the rest of its TEACHER_EXAMPLES prompts (continuing it: no kept answer is
#      generated again; stopped early, merge what is there with `python -m drafter.teacher.generate --merge
#      --allow_partial --output_dir $TEACHER`), REGENERATE_TEACHER=1 starts over (or TEACHER names another folder);
#   2. feature cache of those chats (the base runs once);
#   3. training from the cache, TRAIN_EPOCHS epochs within TRAIN_MINUTES (resumed where it stopped);
#   4. the 80-prompt MT-Bench comparison against transformers generate, at the --tree_budget auto shape.
# Environment: OUT (outputs/strong-drafter), TEACHER, EXTEND_TEACHER, REGENERATE_TEACHER, TEACHER_EXAMPLES (8000), TEACHER_SHARDS
# (2), TRAIN_EPOCHS (4), TRAIN_MINUTES (120).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/strong-drafter}
TEACHER=${TEACHER:-outputs/teacher/smollm2-sharegpt-greedy-256}
TEACHER_EXAMPLES=${TEACHER_EXAMPLES:-8000}
TEACHER_SHARDS=${TEACHER_SHARDS:-2}
TRAIN_EPOCHS=${TRAIN_EPOCHS:-4}
TRAIN_MINUTES=${TRAIN_MINUTES:-120}
KEPT_TEACHER=benchmarks/teacher/smollm2-sharegpt-greedy-256
CONTINUE=()
if [ -n "${EXTEND_TEACHER:-}" ]; then
  CONTINUE=(--continue_from "$KEPT_TEACHER")
elif [ -z "${REGENERATE_TEACHER:-}" ] && [ ! -f "$TEACHER/data.jsonl" ] && [ -f "$KEPT_TEACHER/data.jsonl.xz" ]; then
  TEACHER=$KEPT_TEACHER
fi
PY=.venv/bin/python
GEN_PY=$PY
[ -x .venv-vllm/bin/python ] && GEN_PY=.venv-vllm/bin/python
mkdir -p "$OUT"

if [ -n "${EXTEND_TEACHER:-}" ] || { [ ! -f "$TEACHER/data.jsonl" ] && [ ! -f "$TEACHER/data.jsonl.xz" ]; }; then
  for ((shard = 0; shard < TEACHER_SHARDS; shard++)); do
    VLLM_CPU_OMP_THREADS_BIND=$shard "$GEN_PY" -m drafter.teacher.generate --dataset_name sharegpt \
      --max_examples "$TEACHER_EXAMPLES" --data_seed 0 --exclude_dataset mtbench --max_tokens 256 --gen_temp 0 \
      --batch_size 64 --num_threads 1 --num_shards "$TEACHER_SHARDS" --shard_index "$shard" \
      --output_dir "$TEACHER" ${CONTINUE[@]+"${CONTINUE[@]}"} --no_progress > "$OUT/teacher-$shard.log" 2>&1 &
  done
  wait
fi

"$PY" -m drafter.features --dataset_name "$TEACHER" --output_dir "$OUT/features" --model_max_length 512 \
  --num_eval_examples 64 --hidden_dtype bfloat16 --batch_size 8

# Training resumes from its last checkpoint when stopped (killed, or out of time: raise TRAIN_MINUTES, which counts
# all its runs together), and is skipped once it has run all its epochs.
if ! "$PY" -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["stopped_by_time_budget"])' \
    "$OUT/drafter/drafter_eval.json" 2> /dev/null; then
  RESUME=()
  if compgen -G "$OUT/drafter/checkpoint-*" > /dev/null; then RESUME=(--resume_from_checkpoint True); fi
  "$PY" train_speculator.py --features_dir "$OUT/features" --drafter_predict_n_tokens 4 --exit_dim_multiplier 1.0 \
    --draft_vocab_size 4096 --per_device_train_batch_size 16 --learning_rate 2e-3 --lr_scheduler_type cosine \
    --warmup_steps 50 --num_train_epochs "$TRAIN_EPOCHS" --max_train_minutes "$TRAIN_MINUTES" --logging_steps 20 \
    --save_strategy steps --save_steps 200 --save_total_limit 2 --output_dir "$OUT/drafter" --report_to tensorboard \
    ${RESUME[@]+"${RESUME[@]}"}
fi

# at the drafter's fastest shape on this machine (the issue's acceptance measure), chosen and printed by the planner,
# and the drafter's beams alone (no context lookup) beside it
"$PY" generate_speculator.py --speculator_path "$OUT/drafter" --eval_mt_bench --compare --tree_shapes auto+0 auto \
  --output_file "$OUT/mtbench80.json"
