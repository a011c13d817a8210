#!/usr/bin/env bash
# Arctic LSTM speculator, end to end: teacher data -> training -> evaluation -> vLLM export -> serving command.
#
#   bash scripts/arctic_pipeline.sh                                            # Llama-3.1-8B-Instruct recipe
#   DATA_GEN=0 bash scripts/arctic_pipeline.sh configs/smollm2-135m-arctic-lstm.yaml
#   total_num_of_scripts=8 vllm_tensor_parallel=1 bash scripts/arctic_pipeline.sh   # 8 generation shards, 1 GPU each
#
# Knobs (environment variables):
#   DATA_GEN=1/0              generate the training data with the base model (python -m drafter.teacher.generate)
#   TRAIN=1/0                 train the speculator (python train_speculator.py CONFIG)
#   EVAL=1/0                  evaluate it on held-out data (train_speculator.py --phase eval)
#   EXPORT=1/0                export for vLLM + ArcticInference and print the `vllm serve` command
#   total_num_of_scripts=N    generation shards (run in waves of GPUs / vllm_tensor_parallel at once; 1 at a time
#                             without GPUs)
#   vllm_tensor_parallel=T    GPUs per generation shard (vLLM tensor parallelism)
#   CONFIG (or $1)            the training recipe; the base model, data folder, output folder and head count are
#                             read from it
#   DATA_DIR                  the teacher-data folder (default: the recipe's data source); training reads it
#   GEN_DATASET GEN_MAX_EXAMPLES GEN_MAX_TOKENS GEN_TEMP GEN_SEED GEN_BATCH_SIZE GEN_BACKEND   generation settings
#   EXPORT_FORMAT=arctic|mlp_speculator   EXPORT_DIR   EXPORT_DTYPE   SERVE_TENSOR_PARALLEL   ACCELERATE ("accelerate
#   launch" to train on several GPUs)   PYTHON
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${CONFIG:-${1:-configs/llama-3.1-8b-instruct-arctic-lstm.yaml}}
DATA_GEN=${DATA_GEN:-1}
TRAIN=${TRAIN:-1}
EVAL=${EVAL:-1}
EXPORT=${EXPORT:-1}
total_num_of_scripts=${total_num_of_scripts:-8}
vllm_tensor_parallel=${vllm_tensor_parallel:-1}
GEN_DATASET=${GEN_DATASET:-sharegpt}
GEN_MAX_EXAMPLES=${GEN_MAX_EXAMPLES:-}
GEN_MAX_TOKENS=${GEN_MAX_TOKENS:-256}
GEN_TEMP=${GEN_TEMP:-1.0}
GEN_SEED=${GEN_SEED:-0}
GEN_BATCH_SIZE=${GEN_BATCH_SIZE:-64}
PYTHON=${PYTHON:-python}
EXPORT_FORMAT=${EXPORT_FORMAT:-arctic}
EXPORT_DTYPE=${EXPORT_DTYPE:-bfloat16}
ACCELERATE=${ACCELERATE:-}

[ -f "$CONFIG" ] || { echo "No recipe at $CONFIG" >&2; exit 1; }

# What the recipe says (nested or flat shape), as shell variables.
eval "$("$PYTHON" - "$CONFIG" <<'EOF'
import shlex
import sys

from drafter.engine.loading import EMBEDDED_BASE_MODEL
from train_speculator import load_recipe

recipe = load_recipe(sys.argv[1])
values = {
    "MODEL": recipe.get("llm_name_or_path", EMBEDDED_BASE_MODEL),
    "RECIPE_DATA": recipe.get("dataset_name", "sharegpt"),
    "OUTPUT_DIR": recipe.get("output_dir", "outputs/drafter"),
    "NUM_HEADS": recipe.get("n_speculator_heads", 3),
    "DRAFT_VOCAB": recipe.get("draft_vocab_size") or "",
}
for key, value in values.items():
    print(f"{key}={shlex.quote(str(value))}")
EOF
)"
DATA_DIR=${DATA_DIR:-$RECIPE_DATA}
EXPORT_DIR=${EXPORT_DIR:-${OUTPUT_DIR%/}-${EXPORT_FORMAT}}
GEN_BACKEND=${GEN_BACKEND:-$(command -v nvidia-smi >/dev/null 2>&1 && echo vllm || echo transformers)}
echo "recipe $CONFIG: base $MODEL, data $DATA_DIR, speculator -> $OUTPUT_DIR ($NUM_HEADS heads)"

# ------------------------------------------------------------------------------------------------ data generation
if [ "$DATA_GEN" = "1" ]; then
  case "$DATA_DIR" in
    sharegpt|mtbench|alpaca|wikitext|*.json|*.jsonl|*.parquet)
      echo "DATA_GEN=1 writes a folder: set DATA_DIR (or the recipe's data source) to one, not '$DATA_DIR'" >&2
      exit 1;;
  esac
  NGPU=0
  if command -v nvidia-smi >/dev/null 2>&1; then NGPU=$(nvidia-smi -L | wc -l); fi
  SLOTS=1
  if [ "$NGPU" -ge "$vllm_tensor_parallel" ] && [ "$vllm_tensor_parallel" -ge 1 ]; then
    SLOTS=$(( NGPU / vllm_tensor_parallel ))
  fi
  LOG_DIR=${LOG_DIR:-${DATA_DIR%/}-logs}
  mkdir -p "$DATA_DIR" "$LOG_DIR"
  echo "generating $total_num_of_scripts shards into $DATA_DIR ($SLOTS at a time, logs in $LOG_DIR)"
  shard=0
  while [ "$shard" -lt "$total_num_of_scripts" ]; do
    pids=()
    for (( slot = 0; slot < SLOTS && shard < total_num_of_scripts; slot++, shard++ )); do
      devices=""
      if [ "$NGPU" -gt 0 ]; then
        devices=$(seq -s, $(( slot * vllm_tensor_parallel )) $(( slot * vllm_tensor_parallel + vllm_tensor_parallel - 1 )))
      fi
      args=(--dataset_name "$GEN_DATASET" --output_dir "$DATA_DIR" --llm_name_or_path "$MODEL"
            --max_tokens "$GEN_MAX_TOKENS" --gen_temp "$GEN_TEMP" --seed "$GEN_SEED" --batch_size "$GEN_BATCH_SIZE"
            --backend "$GEN_BACKEND" --tensor_parallel "$vllm_tensor_parallel"
            --num_shards "$total_num_of_scripts" --shard_index "$shard")
      if [ -n "$GEN_MAX_EXAMPLES" ]; then args+=(--max_examples "$GEN_MAX_EXAMPLES"); fi
      CUDA_VISIBLE_DEVICES=${devices:-${CUDA_VISIBLE_DEVICES:-}} \
        "$PYTHON" -m drafter.teacher.generate "${args[@]}" > "$LOG_DIR/shard-$shard.log" 2>&1 &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do
      wait "$pid" || { echo "a generation shard failed: see $LOG_DIR" >&2; exit 1; }
    done
  done
  "$PYTHON" -m drafter.teacher.generate --output_dir "$DATA_DIR" --merge
fi

# ------------------------------------------------------------------------------------------------ training
if [ "$TRAIN" = "1" ]; then
  # shellcheck disable=SC2086  # ACCELERATE is a command prefix such as "accelerate launch"
  $ACCELERATE "$PYTHON" train_speculator.py "$CONFIG" --dataset_name "$DATA_DIR" --output_dir "$OUTPUT_DIR"
fi

# ------------------------------------------------------------------------------------------------ evaluation
if [ "$EVAL" = "1" ]; then
  "$PYTHON" train_speculator.py "$CONFIG" --phase eval --dataset_name "$DATA_DIR" \
    --drafter_name_or_path "$OUTPUT_DIR" --output_dir "${OUTPUT_DIR%/}/eval"
fi

# ------------------------------------------------------------------------------------------------ export + serving
if [ "$EXPORT" = "1" ]; then
  if [ -n "$DRAFT_VOCAB" ]; then
    echo "Not exporting: this recipe trains a reduced draft vocabulary ($DRAFT_VOCAB tokens), which the vLLM /"
    echo "ArcticInference formats cannot express. Remove draft_vocab_size from $CONFIG and retrain to serve it."
    exit 0
  fi
  serve_args=()
  if [ -n "${SERVE_TENSOR_PARALLEL:-}" ]; then serve_args+=(--tensor_parallel_size "$SERVE_TENSOR_PARALLEL"); fi
  "$PYTHON" -m drafter.export --format "$EXPORT_FORMAT" --speculator_path "$OUTPUT_DIR" --output_dir "$EXPORT_DIR" \
    --dtype "$EXPORT_DTYPE" "${serve_args[@]}"
  echo "(vLLM with ArcticInference installed: pip install arctic-inference[vllm])"
fi
