"""Command-line / YAML arguments of `train_speculator.py`, as HfArgumentParser dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from transformers import TrainingArguments

from ..engine.dtypes import canonical_dtype_name
from ..engine.loading import EMBEDDED_BASE_MODEL
from ..errors import ArgumentRange, check_ranges
from ..models.registry import FAMILY_NAMES


@dataclass
class ModelArguments:
    llm_name_or_path: str = field(
        default=EMBEDDED_BASE_MODEL,
        metadata={"help": "Base model: hub id, local folder, .gguf file, PEFT adapter folder, or the embedded "
                  f"default '{EMBEDDED_BASE_MODEL}' (offline)."},
    )
    drafter_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "A saved drafter: initial weights for training, or the one to evaluate."}
    )
    drafter_type: str = field(
        default="redrafter", metadata={"help": "Drafter family (the registered ones).", "choices": FAMILY_NAMES}
    )
    drafter_num_layers: int = field(default=2, metadata={"help": "Residual blocks in the ReDrafter head."})
    exit_dim_multiplier: float = field(
        default=2.0, metadata={"help": "Residual width / base hidden size (2.0 = [h; s] width, no projection)."}
    )
    rnn: bool = field(default=True, metadata={"help": "Recurrent state update (else a running embedding sum)."})
    drafter_predict_n_tokens: int = field(default=5, metadata={"help": "Drafting steps trained."})
    # Arctic LSTM / MLP speculator (drafter_type arctic_lstm); see drafter.models.arctic_lstm.
    n_speculator_heads: int = field(default=3, metadata={"help": "arctic_lstm: heads (tokens drafted per step)."})
    speculator_width: Optional[int] = field(
        default=None, metadata={"help": "arctic_lstm: state width (inner_dim); default the base hidden size."}
    )
    proj_dim: Optional[int] = field(default=None, metadata={"help": "arctic_lstm: must equal speculator_width."})
    emb_dim: Optional[int] = field(default=None, metadata={"help": "arctic_lstm: must equal speculator_width."})
    method: str = field(
        default="sum_lstm",
        metadata={"help": "arctic_lstm: sum_lstm (gated LSTM state) or sum_rnn (MLP speculator).",
                  "choices": ["sum_lstm", "sum_rnn"]},
    )
    tie_weights: bool = field(
        default=True, metadata={"help": "arctic_lstm: share embedding, norms, head and projection across heads."}
    )
    scale_input: bool = field(default=True, metadata={"help": "arctic_lstm: feed LN(h)/sqrt(2) instead of h."})
    tie_lstm_embs: bool = field(
        default=True, metadata={"help": "arctic_lstm (sum_lstm): one token embedding for all four gates."}
    )
    # EAGLE-3 (drafter_type eagle3); see drafter.models.eagle3. Attention sizes follow the base model.
    eagle3_aux_layers: Optional[List[int]] = field(
        default=None,
        metadata={"help": "eagle3: the 3 base hidden states fused (transformers' hidden_states indices, vLLM's "
                  "eagle_aux_hidden_state_layer_ids); default vLLM's 2, L/2, L-3."},
    )
    eagle3_intermediate_size: Optional[int] = field(
        default=None, metadata={"help": "eagle3: MLP width of the draft layer (default: the base model's)."}
    )
    draft_vocab_size: Optional[int] = field(
        default=None,
        metadata={"help": "Draft over the N most frequent target tokens of the training data (None: full vocab)."},
    )
    base_dtype: str = field(
        default="auto",
        metadata={"help": "dtype of the frozen base model: auto (bf16/fp16 when those flags are set, else "
                  "float32), float32, bfloat16, float16."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})
    allow_base_mismatch: bool = field(
        default=False,
        metadata={"help": "Continue training a --drafter_name_or_path made for another base model of the same "
                  "shapes (the drafter then records this base)."},
    )


@dataclass
class DataArguments:
    dataset_name: str = field(
        default="sharegpt",
        metadata={"help": "sharegpt (embedded), mtbench, alpaca, wikitext, or a local .json/.jsonl/.parquet file."},
    )
    model_max_length: int = field(default=512, metadata={"help": "Truncate tokenized examples to this length."})
    train_on_assistant_only: bool = field(
        default=True, metadata={"help": "Mask every non-assistant token from the loss (context is kept)."}
    )
    max_train_examples: Optional[int] = field(default=None, metadata={"help": "Use at most this many conversations."})
    num_eval_examples: int = field(default=64, metadata={"help": "Held-out conversations for evaluation."})
    use_distilled_dataset: bool = field(
        default=False,
        metadata={"help": "Train on the base model's own N-token continuations at every assistant position "
                  "(the paper's distilled dataset) instead of the ground-truth tokens."},
    )
    distill_num_future_tokens: int = field(
        default=5, metadata={"help": "Continuation length N; the drafter trains min(its steps, N - 1) steps."}
    )
    distill_temperature: float = field(default=0.0, metadata={"help": "0 = greedy continuations; else sampled."})
    distill_max_examples: Optional[int] = field(
        default=None, metadata={"help": "Distil (and train on) at most this many training conversations."}
    )
    distill_batch_size: int = field(default=8, metadata={"help": "Conversations per distillation forward."})
    features_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Train from a feature cache (python -m drafter.features): the base model's hidden states "
                  "are read, not computed, so the base never runs in the step. The cache defines the data."},
    )


@dataclass
class DrafterTrainingArguments(TrainingArguments):
    output_dir: str = field(default="outputs/drafter", metadata={"help": "Where the drafter and checkpoints go."})
    phase: str = field(default="train", metadata={"help": "train or eval.", "choices": ["train", "eval"]})
    quick: bool = field(
        default=False, metadata={"help": "Embedded model + ShareGPT, sized to finish in 5 minutes on 2 CPU cores."}
    )
    demo: bool = field(default=False, metadata={"help": "Print the resolved configuration and exit."})
    use_knowledge_distillation: bool = field(
        default=False, metadata={"help": "Blend in KL to the base model's softened next-token distributions."}
    )
    kd_temperature: float = field(default=1.0, metadata={"help": "Softening temperature of the KD loss."})
    kd_alpha: float = field(default=0.5, metadata={"help": "Weight of the KD loss (hard loss gets 1 - kd_alpha)."})
    drafter_loss_decay: float = field(
        default=1.0, metadata={"help": "Step k's loss weight is decay**k; 1.0 (plain sum) is the paper's."}
    )
    eval_top_k: int = field(default=5, metadata={"help": "Report top-1..top-k accuracy per step."})
    max_train_minutes: Optional[float] = field(
        default=None,
        metadata={"help": "Time budget: stop after the step that ends past it (then save and evaluate). Counts "
                  "the training loop, over resumes too; max_steps / epochs still cap it."},
    )
    max_run_minutes: Optional[float] = field(
        default=None,
        metadata={"help": "Budget of the whole command (loading, data, training, saving, evaluation): training "
                  "gets what is left when it starts, less a reserve for saving and evaluation."},
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the drafter needs labels."})
    report_to: Optional[list[str]] = field(
        default_factory=lambda: ["none"], metadata={"help": "tensorboard, wandb, ... (default none)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an --output_dir that already holds a drafter or checkpoints (they are "
                  "removed first); otherwise such a run is refused (resume it with --resume_from_checkpoint)."},
    )


# ----------------------------------------------------------------------------- recipe files
# `python train_speculator.py recipe.yaml` accepts the flat shape (every key an argument above) or the nested shape
# of ArcticTraining's speculator recipes:
#
#   model:      {name_or_path, n_speculator_heads, speculator_width, proj_dim, emb_dim, method,
#                tie_weights | speculator_tie_weights, scale_input | speculator_scale_input, tie_lstm_embs, ...}
#   data:       {sources: [name_or_path | {name_or_path: ...}], max_length, ...DataArguments}
#   checkpoint: {output_dir, save_every_n_steps}  or a list of such entries (the first non-deepspeed one wins)
#   training:   {...DrafterTrainingArguments}     (training keys may also sit at the top level)
#   optimizer:  {lr, weight_decay, betas}         scheduler: {name, warmup_ratio}
#
# ArcticTraining-only sections (type, tokenizer, deepspeed, logger, wandb) are ignored; any other unknown key fails.
RECIPE_IGNORED_KEYS = frozenset({"type", "tokenizer", "deepspeed", "logger", "wandb"})
_MODEL_ALIASES = {
    "name_or_path": "llm_name_or_path",
    "speculator_tie_weights": "tie_weights",
    "speculator_scale_input": "scale_input",
    "dtype": "base_dtype",
}
_MODEL_IGNORED = frozenset({"type", "disable_activation_checkpoint", "attn_implementation"})
_DATA_ALIASES = {"max_length": "model_max_length"}
_DATA_IGNORED = frozenset({"type", "cache_dir", "num_proc"})
_TRAINING_ALIASES = {
    "micro_batch_size": "per_device_train_batch_size",
    "train_iters": "max_steps",
    "epochs": "num_train_epochs",
}


def is_nested_recipe(recipe: dict) -> bool:
    """Whether a recipe uses the nested (ArcticTraining) shape rather than flat argument names."""
    return any(isinstance(recipe.get(section), (dict, list)) for section in ("model", "data", "checkpoint", "training"))


def flatten_recipe(recipe: dict) -> dict:
    """Map a nested recipe onto flat `ModelArguments` / `DataArguments` / `DrafterTrainingArguments` names.

    Values are converted to the fields' types where they are strings (YAML reads `1e-3` and ArcticTraining's
    `"4096"` dims as strings). Raises ValueError for what has no counterpart here (several data sources, dotted
    multi-layer dims, conflicting duplicates, unknown sections).
    """
    flat: dict = {}
    origin: dict = {}

    def put(key: str, value, where: str) -> None:
        if key in flat and flat[key] != value:
            raise ValueError(f"Recipe sets '{key}' twice: {flat[key]!r} ({origin[key]}) and {value!r} ({where})")
        flat[key], origin[key] = value, where

    recipe = dict(recipe)
    model = dict(recipe.pop("model", None) or {})
    for key, value in model.items():
        if key in _MODEL_IGNORED:
            continue
        key = _MODEL_ALIASES.get(key, key)
        if key == "base_dtype" and isinstance(value, str):
            value = canonical_dtype_name(value)
        put(key, value, "model")
    if model:
        flat.setdefault("drafter_type", "arctic_lstm")

    data = dict(recipe.pop("data", None) or {})
    sources = data.pop("sources", None)
    if sources is not None:
        sources = sources if isinstance(sources, list) else [sources]
        names = [s.get("name_or_path") if isinstance(s, dict) else s for s in sources]
        if len(names) != 1 or not names[0]:
            raise ValueError(
                f"data.sources must name exactly one dataset (got {names}); merge several into one folder or file "
                "first (e.g. one `python -m drafter.teacher.generate` output folder)"
            )
        put("dataset_name", str(names[0]), "data.sources")
    for key, value in data.items():
        if key not in _DATA_IGNORED:
            put(_DATA_ALIASES.get(key, key), value, "data")

    _put_checkpoint(recipe.pop("checkpoint", None), put)
    _put_optimization(recipe.pop("optimizer", None), recipe.pop("scheduler", None), put)

    training = dict(recipe.pop("training", None) or {})
    for source, section in (("training", training), ("top level", recipe)):
        for key, value in section.items():
            if source == "top level" and key in RECIPE_IGNORED_KEYS:
                continue
            put(_TRAINING_ALIASES.get(key, key), value, source)
    return coerce_argument_types(flat)


def _put_checkpoint(checkpoint, put) -> None:
    """checkpoint: {output_dir, save_every_n_steps} or a list of such entries (the first non-deepspeed one wins)."""
    if checkpoint is not None:
        entries = checkpoint if isinstance(checkpoint, list) else [checkpoint]
        with_dir = [e for e in entries if isinstance(e, dict) and e.get("output_dir")]
        final = [e for e in with_dir if e.get("type") != "deepspeed"] or with_dir
        if final:
            put("output_dir", str(final[0]["output_dir"]), "checkpoint.output_dir")
        every = [e["save_every_n_steps"] for e in entries if isinstance(e, dict) and e.get("save_every_n_steps")]
        if every:
            put("save_strategy", "steps", "checkpoint.save_every_n_steps")
            put("save_steps", int(every[0]), "checkpoint.save_every_n_steps")


def _put_optimization(optimizer, scheduler, put) -> None:
    """optimizer: {lr, weight_decay, betas, ...}; scheduler: {name | type, warmup_ratio, ...}."""
    optimizer = dict(optimizer or {})
    optimizer.pop("type", None)
    optimizer.pop("name", None)
    if "lr" in optimizer:
        put("learning_rate", optimizer.pop("lr"), "optimizer.lr")
    if "betas" in optimizer:
        beta1, beta2 = optimizer.pop("betas")
        put("adam_beta1", beta1, "optimizer.betas")
        put("adam_beta2", beta2, "optimizer.betas")
    for key, value in optimizer.items():
        put(key, value, "optimizer")

    scheduler = dict(scheduler or {})
    for name_key in ("name", "type"):
        if name_key in scheduler:
            put("lr_scheduler_type", scheduler.pop(name_key), f"scheduler.{name_key}")
    if "warmup_ratio" in scheduler:  # transformers: a float warmup_steps in [0, 1) is a ratio
        put("warmup_steps", float(scheduler.pop("warmup_ratio")), "scheduler.warmup_ratio")
    for key, value in scheduler.items():
        put(key, value, "scheduler")


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def coerce_argument_types(flat: dict) -> dict:
    """Recipe values converted to their argument's type (YAML reads `1e-3` and ArcticTraining's `"4096"` dims as
    strings); a value that is not of its argument's type raises a ValueError naming the key."""
    import dataclasses
    import typing

    hints = {}
    for cls in (ModelArguments, DataArguments, DrafterTrainingArguments):
        resolved = typing.get_type_hints(cls)
        hints.update({f.name: resolved.get(f.name) for f in dataclasses.fields(cls)})
    out = {}
    for key, value in flat.items():
        kind = hints.get(key)
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if typing.get_origin(kind) is typing.Union and len(args) == 1:
            kind = args[0]
        if value is not None and kind in (int, float, bool):
            value = _as_type(key, value, kind)
        out[key] = value
    return out


def _as_type(key: str, value, kind: type):
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(f"{key}={value!r} is not true/false")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{key}={value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{key}={value!r} is not a number") from None
    if kind is float:
        return number
    if not number.is_integer():
        hint = " (ArcticTraining's dotted multi-layer dims are not supported)" if "." in str(value) else ""
        raise ValueError(f"{key}={value!r} is not an integer{hint}")
    return int(number)


# Every bounded numeric argument (`check_ranges`).
_RANGES: Tuple[ArgumentRange, ...] = (
    ("drafter_num_layers", lambda v: v >= 0, ">= 0"),
    ("exit_dim_multiplier", lambda v: v > 0, "> 0"),
    ("drafter_predict_n_tokens", lambda v: v >= 1, ">= 1"),
    ("n_speculator_heads", lambda v: v >= 1, ">= 1"),
    ("speculator_width", lambda v: v >= 1, ">= 1"),
    ("eagle3_intermediate_size", lambda v: v >= 1, ">= 1"),
    ("draft_vocab_size", lambda v: v >= 1, ">= 1 (unset for the full vocabulary)"),
    ("model_max_length", lambda v: v >= 2, ">= 2"),
    ("max_train_examples", lambda v: v >= 1, ">= 1"),
    ("num_eval_examples", lambda v: v >= 0, ">= 0"),
    ("distill_num_future_tokens", lambda v: v >= 2, ">= 2 (the base's next token and at least one to draft)"),
    ("distill_temperature", lambda v: v >= 0, ">= 0 (0 = greedy)"),
    ("distill_max_examples", lambda v: v >= 1, ">= 1"),
    ("distill_batch_size", lambda v: v >= 1, ">= 1"),
    ("kd_temperature", lambda v: v > 0, "> 0"),
    ("kd_alpha", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("drafter_loss_decay", lambda v: v > 0, "> 0"),
    ("eval_top_k", lambda v: v >= 1, ">= 1"),
    ("max_train_minutes", lambda v: v > 0, "> 0"),
    ("max_run_minutes", lambda v: v > 0, "> 0"),
    ("per_device_train_batch_size", lambda v: v >= 1, ">= 1"),
    ("per_device_eval_batch_size", lambda v: v >= 1, ">= 1"),
    ("gradient_accumulation_steps", lambda v: v >= 1, ">= 1"),
    ("learning_rate", lambda v: v > 0, "> 0"),
)


def validate_arguments(*argument_sets) -> None:
    """Refuse, before anything loads, a numeric argument out of its range (ValueError naming it and the rule)."""
    values = {k: v for args in argument_sets for k, v in vars(args).items()}
    check_ranges(values, _RANGES)
    if values.get("base_dtype") is not None:
        canonical_dtype_name(values["base_dtype"])  # an unknown name fails here
