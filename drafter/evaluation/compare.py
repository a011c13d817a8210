"""The one multi-drafter comparison: build a speculative decoder per drafter, time them with the baselines on
the same prompts in one run (`SpeedBenchmark`), and summarise. `generate_speculator.py --compare` and the sweeps
both call `compare_drafters`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from transformers import PreTrainedModel

from ..data.calibration import CALIBRATION_PROMPTS
from ..engine.prompts import encode_chat_prompts
from ..generation import SpeculativeGenerator
from ..generation.tree_budget import TreePlan, plan_tree_shape, shape_label
from .answers import AnswerLog
from .benchmark import BenchmarkConfig, PromptRun, SpeedBenchmark


@dataclass(frozen=True)
class TreeShape:
    """How a speculator drafts each step: beam search (beam_width x beam_length), or the per-head top-k tree."""

    beam_width: int = 4
    beam_length: Optional[int] = None
    top_k_tokens_per_head: Optional[Sequence[int]] = None
    n_candidates: Optional[int] = None
    lookup_tokens: int = 0

    @property
    def label(self) -> str:
        return shape_label(self.beam_width, self.beam_length, self.lookup_tokens)

    def speculator(
        self, base: PreTrainedModel, drafter: Any, allow_base_mismatch: bool = False
    ) -> SpeculativeGenerator:
        return SpeculativeGenerator(
            base, drafter, beam_width=self.beam_width, beam_length=self.beam_length,
            top_k_tokens_per_head=self.top_k_tokens_per_head, n_candidates=self.n_candidates,
            allow_base_mismatch=allow_base_mismatch, lookup_tokens=self.lookup_tokens,
        )


def parse_tree_shape(text: str, lookup_tokens: int = 0) -> Optional[TreeShape]:
    """"WxL" (beam width x beam length, e.g. 2x3) -> TreeShape with `lookup_tokens`; "WxL+K" -> with K context-lookup
    tokens (+0: none); "auto" / "auto+K" -> None (planned by `auto_tree_shape`; see `parse_lookup`)."""
    shape, lookup = _split_lookup(text)
    if shape == "auto":
        return None
    width, sep, length = shape.lower().partition("x")
    if not (sep and width.isdigit() and length.isdigit()) or int(width) < 1 or int(length) < 2:
        raise ValueError(f"tree shape {text!r}: expected WxL with W >= 1, L >= 2 (e.g. 2x3), WxL+K with K "
                         "context-lookup tokens, or auto")
    return TreeShape(beam_width=int(width), beam_length=int(length),
                     lookup_tokens=lookup_tokens if lookup is None else lookup)


def parse_lookup(text: str, lookup_tokens: int = 0) -> int:
    """The context-lookup tokens a `--tree_shapes` entry asks for: its "+K", else `lookup_tokens`."""
    lookup = _split_lookup(text)[1]
    return lookup_tokens if lookup is None else lookup


def _split_lookup(text: str) -> tuple[str, Optional[int]]:
    shape, sep, lookup = text.partition("+")
    if sep and not lookup.isdigit():
        raise ValueError(f"tree shape {text!r}: after '+' comes the number of context-lookup tokens (e.g. 2x3+8)")
    return shape, int(lookup) if sep else None


def auto_tree_shape(
    base: PreTrainedModel, tokenizer: Any, drafter: Any, max_width: int = 4, log: Callable[[str], None] = print,
    lookup_tokens: int = 0,
) -> tuple[TreeShape, TreePlan]:
    """`--tree_budget auto`: the beam shape with the highest expected tokens/s for `drafter` on this machine,
    calibrated on the project's calibration prompts (see `generation.tree_budget`); prints the choice and why.
    With `lookup_tokens` K, every shape is also scored with a context lookup of 2, 4, ... up to K tokens joined to
    its beams (a longer lookup branch is accepted further but costs more nodes where it is wrong)."""
    chats = [{"messages": [{"role": "user", "content": text}]} for text in CALIBRATION_PROMPTS]
    prompts = encode_chat_prompts(tokenizer, chats)
    plan = plan_tree_shape(base, drafter, prompts, widths=range(1, max_width + 1),
                           eos_token_id=tokenizer.eos_token_id, log=log, lookup_tokens=lookup_sizes(lookup_tokens))
    log(plan.explain())
    best = plan.best
    return TreeShape(beam_width=best.beam_width, beam_length=best.beam_length, lookup_tokens=best.lookup_tokens), plan


def lookup_sizes(lookup_tokens: int) -> list[int]:
    """The context-lookup sizes `auto_tree_shape` weighs for `lookup_tokens` K: none, and every even size up to K."""
    return sorted({0, *range(2, lookup_tokens + 1, 2), lookup_tokens})


def compare_drafters(
    base: PreTrainedModel,
    tokenizer: Any,
    drafters: Mapping[str, Any],
    shapes: Mapping[str, TreeShape],
    prompts: Sequence[Mapping[str, Any]],
    config: BenchmarkConfig,
    progress: bool = True,
    with_answers: bool = False,
    allow_base_mismatch: bool = False,
    log: Optional[AnswerLog] = None,
) -> dict[str, Any]:
    """Benchmark every drafter (name -> drafter, drafted with `shapes[name]`) against the baselines.

    Returns `SpeedBenchmark.summary()`; with `with_answers`, also per prompt the reference answer and, per
    drafter, whether its answer was identical and its tau. With `log`, every prompt's runs are appended to it as
    they finish, and the prompts it already holds (from a killed run) are not run again.
    """
    speculators = {name: shapes[name].speculator(base, drafter, allow_base_mismatch)
                   for name, drafter in drafters.items()}
    benchmark = SpeedBenchmark(base, speculators, tokenizer.eos_token_id, tokenizer.pad_token_id, config)
    log = log or AnswerLog(None, {})
    done = []  # an interrupted run's prompts, in order, up to the first one it did not finish
    while str(len(done)) in log.rows:
        done.append({m: PromptRun(**r) for m, r in log.rows[str(len(done))]["runs"].items()})

    def record(index: int, runs: dict) -> None:
        log.add({"id": index, "runs": {method: dataclasses.asdict(run) for method, run in runs.items()}})

    try:
        benchmark.run(encode_chat_prompts(tokenizer, prompts), progress=progress, done=done, on_prompt=record)
    finally:
        benchmark.close()
    summary = benchmark.summary()
    if with_answers:
        summary["answers"] = [
            {
                "id": prompt.get("question_id", prompt["id"]),
                "generate": tokenizer.decode(reference.tokens, skip_special_tokens=True),
                **{name: _answer_record(benchmark.runs[name][i], reference) for name in speculators},
            }
            for i, (prompt, reference) in enumerate(zip(prompts, benchmark.runs["hf_generate"]))
        ]
    return summary


def _answer_record(run, reference) -> dict[str, Any]:
    return {"identical_to_generate": run.tokens == reference.tokens, "tau": run.accepted / max(run.steps, 1)}
