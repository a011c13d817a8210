"""The one multi-drafter comparison: build a speculative decoder per drafter, time them with the baselines on
the same prompts in one run (`SpeedBenchmark`), and summarise. `generate_speculator.py --compare` and the sweeps
both call `compare_drafters`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from transformers import PreTrainedModel

from ..engine.prompts import encode_chat_prompts
from ..generation import SpeculativeGenerator
from .answers import AnswerLog
from .benchmark import BenchmarkConfig, PromptRun, SpeedBenchmark


@dataclass(frozen=True)
class TreeShape:
    """How a speculator drafts each step: beam search (beam_width x beam_length), or the per-head top-k tree."""

    beam_width: int = 4
    beam_length: Optional[int] = None
    top_k_tokens_per_head: Optional[Sequence[int]] = None
    n_candidates: Optional[int] = None

    def speculator(
        self, base: PreTrainedModel, drafter: Any, allow_base_mismatch: bool = False
    ) -> SpeculativeGenerator:
        return SpeculativeGenerator(
            base, drafter, beam_width=self.beam_width, beam_length=self.beam_length,
            top_k_tokens_per_head=self.top_k_tokens_per_head, n_candidates=self.n_candidates,
            allow_base_mismatch=allow_base_mismatch,
        )


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

    benchmark.run(encode_chat_prompts(tokenizer, prompts), progress=progress, done=done, on_prompt=record)
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
