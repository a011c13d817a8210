"""Command-line / YAML arguments of `train_speculator.py`, as HfArgumentParser dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from transformers import TrainingArguments

from ..models.loading import EMBEDDED_BASE_MODEL


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
    drafter_type: str = field(default="redrafter", metadata={"help": "Drafter family.", "choices": ["redrafter"]})
    drafter_num_layers: int = field(default=2, metadata={"help": "Residual blocks in the ReDrafter head."})
    exit_dim_multiplier: float = field(
        default=2.0, metadata={"help": "Residual width / base hidden size (2.0 = [h; s] width, no projection)."}
    )
    rnn: bool = field(default=True, metadata={"help": "Recurrent state update (else a running embedding sum)."})
    drafter_predict_n_tokens: int = field(default=5, metadata={"help": "Drafting steps trained."})
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
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the drafter needs labels."})
    report_to: Optional[list[str]] = field(
        default_factory=lambda: ["none"], metadata={"help": "tensorboard, wandb, ... (default none)."}
    )
