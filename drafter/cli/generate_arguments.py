"""The arguments of `generate_speculator.py` (an `HfArgumentParser` dataclass), each checked before a model loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

from ..errors import ArgumentRange, check_ranges
from ..evaluation.benchmark import BASELINE_METHODS, DEFAULT_BASELINES
from ..evaluation.compare import TreeShape, parse_tree_shape

# Every bounded numeric argument (`check_ranges`).
_RANGES: Tuple[ArgumentRange, ...] = (
    ("max_generation_length", lambda v: v >= 1, ">= 1"),
    ("batch_size", lambda v: v >= 1, ">= 1"),
    ("beam_width", lambda v: v >= 1, ">= 1"),
    ("beam_length", lambda v: v >= 2, ">= 2 (the base token + 1 draft)"),
    ("temperature", lambda v: v >= 0, ">= 0 (0 = greedy)"),
    ("top_k", lambda v: v >= 1, ">= 1"),
    ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("max_num_prompts", lambda v: v >= 1, ">= 1"),
    ("n_candidates", lambda v: v >= 1, ">= 1"),
    ("repeats", lambda v: v >= 1, ">= 1"),
    ("warmup", lambda v: v >= 0, ">= 0"),
    ("threads", lambda v: v >= 1, ">= 1"),
    ("lookup_tokens", lambda v: v >= 0, ">= 0 (0 = no context lookup)"),
)


@dataclass
class GenerationArguments:
    speculator_path: list[str] = field(
        default_factory=list,
        metadata={"help": "A drafter saved by train_speculator.py; with --compare, several (compared in one run)."},
    )
    base_model: Optional[str] = field(
        default=None, metadata={"help": "Base model (default: the one recorded in the drafter's config)."}
    )
    interactive: bool = field(default=False, metadata={"help": "Multi-turn chat on the terminal (stdin)."})
    prompt: Optional[str] = field(default=None, metadata={"help": "Answer one prompt and exit."})
    system_prompt: Optional[str] = field(default=None, metadata={"help": "System message for chat/prompt."})
    eval_mt_bench: bool = field(default=False, metadata={"help": "Answer MT-Bench first turns."})
    eval_dataset: str = field(
        default="mtbench",
        metadata={"help": "Prompt source for --eval_mt_bench: mtbench, sharegpt, or a chat / FastChat-Spec-Bench "
                  "question.jsonl file."},
    )
    compare: bool = field(
        default=False,
        metadata={"help": "With --eval_mt_bench: time transformers generate, the autoregressive loop and "
                  "speculative decoding on the same prompts (greedy, batch 1)."},
    )
    max_num_prompts: Optional[int] = field(default=None, metadata={"help": "Use the first N prompts."})
    all_turns: bool = field(
        default=False,
        metadata={"help": "--eval_mt_bench: answer every turn of multi-turn questions (MT-Bench's second turn), "
                  "the model's own earlier answers in the context."},
    )
    autoregressive: bool = field(default=False, metadata={"help": "Plain decoding through the same harness."})
    output_file: Optional[str] = field(default=None, metadata={"help": "JSON with every answer and metric."})
    chart_file: Optional[str] = field(default=None, metadata={"help": "PNG chart (--compare); default beside JSON."})
    beam_width: Optional[int] = field(
        default=None,
        metadata={"help": "Beams drafted per step (default: the planned shape, see --tree_budget; "
                  f"{TreeShape.beam_width} with --beam_length)."},
    )
    beam_length: Optional[int] = field(
        default=None,
        metadata={"help": "Tokens per beam incl. the base model's own (default: the planned shape, see "
                  "--tree_budget; drafter steps + 1 with --beam_width)."},
    )
    top_k_tokens_per_head: Optional[list[int]] = field(
        default=None,
        metadata={"help": "Draft the per-head top-k candidate tree (Arctic / MLP speculators), e.g. 4 3 2, instead "
                  "of beam search; 1 1 1 is a single greedy chain."},
    )
    n_candidates: Optional[int] = field(
        default=None, metadata={"help": "With --top_k_tokens_per_head: keep only the best N candidates."}
    )
    tree_budget: Optional[str] = field(
        default=None,
        metadata={"help": "auto (what is done when no --beam_width, --beam_length or --top_k_tokens_per_head is "
                  "given): pick the beam width/length (and lookup size) with the highest expected tokens/s on this "
                  "machine (measures the verification cost once per model and machine, and the drafter's acceptance "
                  "on calibration prompts, both cached; prints the shape and why). Beam search drafting only."},
    )
    lookup_tokens: int = field(
        default=8,
        metadata={"help": "Every step also verifies up to K tokens copied from the conversation itself (what "
                  "followed the last occurrence of its newest tokens: prompt lookup), as one more branch of the "
                  "drafter's tree; lossless. 0: the drafter's candidates only. With --tree_budget auto: the lookup "
                  "size (none, 2, 4, ... K) is planned with the beam shape."},
    )
    tree_shapes: list[str] = field(
        default_factory=list,
        metadata={"help": "--compare: several beam shapes per drafter in one run, as WxL, WxL+K (K context-lookup "
                  "tokens; plain WxL takes --lookup_tokens) or auto, e.g. 2x2 2x3 4x3+8 auto (default: the one "
                  "shape of --beam_width/--beam_length/--lookup_tokens/--tree_budget)."},
    )
    batch_size: int = field(default=1, metadata={"help": "Prompts decoded together (--eval_mt_bench)."})
    max_generation_length: Optional[int] = field(
        default=None, metadata={"help": "New tokens per answer (default 128 on CPU, 256 on GPU)."}
    )
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy; else sampling temperature."})
    top_k: Optional[int] = field(default=None, metadata={"help": "Sampling: keep the k most likely tokens."})
    top_p: Optional[float] = field(default=None, metadata={"help": "Sampling: nucleus probability mass."})
    seed: int = field(default=0, metadata={"help": "Random seed for sampling."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16."})
    baselines: list[str] = field(
        default_factory=lambda: list(DEFAULT_BASELINES),
        metadata={"help": f"--compare: plain methods timed beside the drafters, from {', '.join(BASELINE_METHODS)} "
                  "(hf_generate, the reference, is always included)."},
    )
    repeats: int = field(default=1, metadata={"help": "--compare: timed runs per prompt and method (median)."})
    warmup: int = field(default=1, metadata={"help": "--compare: untimed warm-up runs."})
    threads: Optional[int] = field(default=None, metadata={"help": "torch CPU threads (default: torch's)."})
    allow_base_mismatch: bool = field(
        default=False,
        metadata={"help": "Use a base whose weights differ from those the drafter was trained on (same shapes)."},
    )

    def __post_init__(self) -> None:
        """Every numeric argument in range, before any model loads."""
        check_ranges(vars(self), _RANGES)
        if self.tree_budget not in (None, "auto"):
            raise ValueError(f"--tree_budget {self.tree_budget}: the only budget is auto")
        for shape in self.tree_shapes:
            parse_tree_shape(shape, self.lookup_tokens)
        unknown = [b for b in self.baselines if b not in BASELINE_METHODS]
        if unknown:
            raise ValueError(f"--baselines {' '.join(unknown)}: choose from {', '.join(BASELINE_METHODS)}")
        self.baselines = ["hf_generate", *dict.fromkeys(b for b in self.baselines if b != "hf_generate")]
        if self.top_k_tokens_per_head is not None and (not self.top_k_tokens_per_head
                                                       or min(self.top_k_tokens_per_head) < 1):
            raise ValueError(f"--top_k_tokens_per_head {self.top_k_tokens_per_head}: one k >= 1 per drafted token")
