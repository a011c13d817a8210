"""Speed benchmark: speculative decoding against plain decoding on the same prompts, in one run.

Methods (all greedy, batch 1, same prompts, same max_new_tokens):
  hf_generate    transformers `generate(do_sample=False)`, the reference for speed-up and identity;
  autoregressive this project's own plain loop (same cache and harness as the speculative path);
  speculative    drafter + tree verification.

Definitions follow Spec-Bench: tau is the mean number of tokens a verification step adds, bonus token
included (plain decoding = 1.00); speed-up is tokens/s over hf_generate's; the overhead c = tau / speed-up - 1
is what drafting and verification cost relative to a plain step. Each prompt runs every method in turn
(interleaved, so drift in machine load hits all methods alike), `repeats` times; the median time counts.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..generation import AutoregressiveGenerator, SpeculativeGenerator

METHODS = ("hf_generate", "autoregressive", "speculative")


@dataclass
class PromptRun:
    """One method on one prompt: the answer and its median wall time over the repeats."""

    tokens: list[int]
    seconds: float
    steps: int = 0
    accepted: int = 0
    accepted_by_position: list[int] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)


@dataclass
class BenchmarkConfig:
    max_new_tokens: int = 128
    beam_width: int = 4
    beam_length: Optional[int] = None
    repeats: int = 1
    warmup: int = 1
    methods: Sequence[str] = METHODS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SpeedBenchmark:
    """Times every method on every prompt; `summary()` turns the runs into the reported numbers."""

    def __init__(
        self,
        base_model: PreTrainedModel,
        drafter: Optional[Any],
        eos_token_id: Any,
        pad_token_id: int,
        config: BenchmarkConfig,
    ):
        unknown = set(config.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown benchmark methods {sorted(unknown)}; choose from {METHODS}")
        if "speculative" in config.methods and drafter is None:
            raise ValueError("the speculative method needs a drafter")
        self.base_model = base_model
        self.config = config
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.device = base_model.device
        self.autoregressive = AutoregressiveGenerator(base_model)
        self.speculative = (
            SpeculativeGenerator(base_model, drafter, config.beam_width, config.beam_length) if drafter else None
        )
        self.runs: dict[str, list[PromptRun]] = {m: [] for m in config.methods}

    def _run_once(self, method: str, prompt: list[int]) -> tuple[PromptRun, float]:
        cfg = self.config
        _sync(self.device)
        start = time.perf_counter()
        if method == "hf_generate":
            input_ids = torch.tensor([prompt], device=self.device)
            with torch.inference_mode():
                out = self.base_model.generate(
                    input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=cfg.max_new_tokens,
                    do_sample=False,
                    eos_token_id=self.eos_token_id,
                    pad_token_id=self.pad_token_id,
                )
            _sync(self.device)
            seconds = time.perf_counter() - start
            return PromptRun(tokens=out[0, len(prompt):].tolist(), seconds=seconds), seconds
        generator = self.speculative if method == "speculative" else self.autoregressive
        result = generator.generate([prompt], max_new_tokens=cfg.max_new_tokens, eos_token_id=self.eos_token_id)
        _sync(self.device)
        seconds = time.perf_counter() - start
        timing = result.timing
        run = PromptRun(
            tokens=result.sequences[0],
            seconds=seconds,
            steps=result.steps_per_sequence[0],
            accepted=result.accepted_per_sequence[0],
            accepted_by_position=list(result.accepted_by_position),
            timing={
                "prefill_s": timing.prefill_s,
                "drafting_s": timing.drafting_s,
                "verification_s": timing.verification_s,
                "bookkeeping_s": timing.bookkeeping_s,
            },
        )
        return run, seconds

    def run(self, prompts: Sequence[list[int]], progress: bool = True) -> None:
        for _ in range(self.config.warmup):
            for method in self.config.methods:
                self._run_once(method, prompts[0])
        bar = tqdm(prompts, desc="Benchmark prompts", disable=not progress)
        for prompt in bar:
            for method in self.config.methods:
                repeats = [self._run_once(method, prompt) for _ in range(max(1, self.config.repeats))]
                run = repeats[0][0]
                run.seconds = statistics.median(seconds for _, seconds in repeats)
                self.runs[method].append(run)
            bar.set_postfix(self._postfix())

    def _postfix(self) -> dict[str, str]:
        summary = self.summary()
        postfix = {}
        if "speedup" in summary:
            postfix["speedup"] = f"{summary['speedup']:.2f}x"
        if "tau" in summary:
            postfix["tau"] = f"{summary['tau']:.2f}"
        return postfix

    def summary(self) -> dict[str, Any]:
        """Every reported number; top-level `tau`, `speedup`, `identical_fraction` when measured."""
        methods: dict[str, Any] = {}
        for method, runs in self.runs.items():
            if not runs:
                continue
            tokens = sum(len(r.tokens) for r in runs)
            seconds = sum(r.seconds for r in runs)
            entry: dict[str, Any] = {
                "prompts": len(runs),
                "generated_tokens": tokens,
                "seconds": seconds,
                "tokens_per_second": tokens / seconds if seconds else 0.0,
            }
            steps = sum(r.steps for r in runs)
            if steps:
                entry["tau"] = sum(r.accepted for r in runs) / steps
                entry["verification_steps"] = steps
            if method == "speculative":
                positions = len(runs[0].accepted_by_position)
                by_position = [sum(r.accepted_by_position[k] for r in runs) for k in range(positions)]
                entry["acceptance_by_position"] = [c / steps if steps else 0.0 for c in by_position]
                entry["time_split_s"] = {
                    phase: sum(r.timing.get(phase, 0.0) for r in runs)
                    for phase in ("prefill_s", "drafting_s", "verification_s", "bookkeeping_s")
                }
            methods[method] = entry
        out: dict[str, Any] = {"methods": methods}
        reference = methods.get("hf_generate")
        for method, entry in methods.items():
            if reference and method != "hf_generate" and reference["tokens_per_second"]:
                entry["speedup"] = entry["tokens_per_second"] / reference["tokens_per_second"]
                same = [a.tokens == b.tokens for a, b in zip(self.runs[method], self.runs["hf_generate"])]
                entry["identical"] = sum(same)
                entry["identical_fraction"] = sum(same) / len(same)
        spec = methods.get("speculative")
        if spec:
            out["tau"] = spec.get("tau", 0.0)
            if "speedup" in spec:
                out["speedup"] = spec["speedup"]
                out["identical_fraction"] = spec["identical_fraction"]
                out["overhead_c"] = out["tau"] / out["speedup"] - 1 if out["speedup"] else None
            out["acceptance_by_position"] = spec["acceptance_by_position"]
        return out


def environment() -> dict[str, Any]:
    """Software versions and machine, recorded with every result file."""
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def encode_chat_prompts(tokenizer, prompts: Sequence[dict]) -> list[list[int]]:
    """Token ids of each prompt's messages through the chat template, with the generation prompt added."""
    encoded = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(prompt["messages"], add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        encoded.append(list(ids))
    return encoded
