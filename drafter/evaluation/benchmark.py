"""Speed benchmark: speculative decoding against plain decoding on the same prompts, in one run.

Methods (all greedy, batch 1, same prompts, same max_new_tokens):
  hf_generate    transformers `generate(do_sample=False)` on the loaded base model (same linear kernels as the
                 speculative path), the reference for speed-up and identity;
  autoregressive this project's own plain loop (same cache and harness as the speculative path);
  peers a user would pick instead, on request (`baselines`):
  stock_generate `generate` with torch's stock linear kernels (`engine.kernels.stock_kernels`), i.e. plain
                 transformers as installed;
  prompt_lookup  transformers' prompt-lookup decoding (`prompt_lookup_num_tokens=10`);
  static_compile `generate` with a static cache and a compiled forward (`cache_implementation="static"`);
  vllm_plain, vllm_ngram  vLLM (CPU build or CUDA) plain and n-gram speculative decoding (`vllm_peers.py`);
  vllm_eagle3    vLLM serving the run's EAGLE-3 drafter (exported; a chain of the speculator's drafting steps),
                 with vLLM's own acceptance as its tau;
  one method per named speculator (drafter + tree verification), so several drafters are compared in ONE run.

Definitions follow Spec-Bench: tau is the mean number of tokens a verification step adds, bonus token
included (plain decoding = 1.00); speed-up is tokens/s over hf_generate's; the overhead c = tau / speed-up - 1
is what drafting and verification cost relative to a plain step. Each prompt runs every method in turn
(interleaved, so drift in machine load hits all methods alike), `repeats` times; the median time counts.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from tqdm.auto import tqdm
from transformers import CompileConfig, PreTrainedModel

from ..engine.autoregressive import AutoregressiveGenerator
from ..engine.kernels import stock_kernels
from ..generation import SpeculativeGenerator
from ..models import Eagle3Drafter
from .vllm_peers import VLLM_PEERS, VllmPeer, eagle3_speculative_config

DEFAULT_BASELINES = ("hf_generate", "autoregressive")
# Method name -> extra `generate` keyword arguments (and whether it runs with torch's stock kernels).
GENERATE_PEERS: dict[str, tuple[dict[str, Any], bool]] = {
    "hf_generate": ({}, False),
    "stock_generate": ({}, True),
    "prompt_lookup": ({"prompt_lookup_num_tokens": 10}, False),
    "static_compile": ({"cache_implementation": "static"}, False),  # + a compile config, see `_generate_kwargs`
}
BASELINE_METHODS = (*GENERATE_PEERS, "autoregressive", *VLLM_PEERS)


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
    repeats: int = 1
    warmup: int = 1
    baselines: Sequence[str] = DEFAULT_BASELINES


def _generate_kwargs(method: str) -> dict[str, Any]:
    """The extra `generate` arguments of a transformers peer (one compile config for all of static_compile's
    calls)."""
    kwargs = dict(GENERATE_PEERS[method][0])
    if kwargs.get("cache_implementation") == "static":
        compile_config = CompileConfig(mode="default")
        compile_config._compile_all_devices = True  # transformers compiles only on accelerators unless told
        kwargs["compile_config"] = compile_config
    return kwargs


def _vllm_config(method: str, speculators: Mapping[str, SpeculativeGenerator]) -> Optional[dict]:
    """The vLLM peer's speculative_config: fixed, or (vllm_eagle3) the run's first EAGLE-3 drafter exported."""
    if method != "vllm_eagle3":
        return VLLM_PEERS[method]
    for generator in speculators.values():
        if isinstance(generator.drafter, Eagle3Drafter):
            return eagle3_speculative_config(generator.drafter, generator.num_draft_steps)
    raise ValueError("the vllm_eagle3 baseline serves the run's EAGLE-3 drafter in vLLM: give one with "
                     "--speculator_path")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SpeedBenchmark:
    """Times every method on every prompt; `summary()` turns the runs into the reported numbers.

    Args:
        speculators: name -> speculative generator (each with its own drafter and tree settings); every name
            becomes a method. The single-drafter CLI names its one speculator "speculative".
    """

    def __init__(
        self,
        base_model: PreTrainedModel,
        speculators: Mapping[str, SpeculativeGenerator],
        eos_token_id: Any,
        pad_token_id: int,
        config: BenchmarkConfig,
    ):
        unknown = set(config.baselines) - set(BASELINE_METHODS)
        if unknown:
            raise ValueError(f"unknown baseline methods {sorted(unknown)}; choose from {BASELINE_METHODS}")
        if "hf_generate" not in config.baselines:
            raise ValueError("hf_generate is the reference for speed-up and identity; keep it in the baselines")
        clashes = set(speculators) & set(BASELINE_METHODS)
        if clashes:
            raise ValueError(f"speculator names {sorted(clashes)} clash with the baseline methods")
        if not speculators and len(config.baselines) < 2:
            raise ValueError("nothing to compare: give at least one speculator or two baselines")
        self.base_model = base_model
        self.config = config
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.device = base_model.device
        self.generators = {"autoregressive": AutoregressiveGenerator(base_model), **speculators}
        self.generate_kwargs = {method: _generate_kwargs(method) for method in config.baselines
                                if method in GENERATE_PEERS}
        self.vllm_peers = {method: VllmPeer(base_model.config.name_or_path, _vllm_config(method, speculators))
                           for method in config.baselines if method in VLLM_PEERS}
        self.speculator_names = list(speculators)
        self.methods = [*config.baselines, *self.speculator_names]
        self.runs: dict[str, list[PromptRun]] = {m: [] for m in self.methods}

    def _run_once(self, method: str, prompt: list[int]) -> tuple[PromptRun, float]:
        cfg = self.config
        _sync(self.device)
        start = time.perf_counter()
        if method in self.generate_kwargs or method in self.vllm_peers:
            if method in self.generate_kwargs:
                tokens = self._generate(prompt, self.generate_kwargs[method], stock=GENERATE_PEERS[method][1])
            else:
                peer = self.vllm_peers[method]
                drafts, accepted = peer.draft_counters()
                tokens = peer.generate(prompt, cfg.max_new_tokens, self.eos_token_id)
            _sync(self.device)
            seconds = time.perf_counter() - start
            run = PromptRun(tokens=tokens, seconds=seconds)
            if method in self.vllm_peers and self.vllm_peers[method].speculative_config:
                after_drafts, after_accepted = self.vllm_peers[method].draft_counters()
                # Each draft step emits its accepted tokens plus one of the base model's (tau counts both).
                run.steps = after_drafts - drafts
                run.accepted = after_accepted - accepted + run.steps
            return run, seconds
        result = self.generators[method].generate(
            [prompt], max_new_tokens=cfg.max_new_tokens, eos_token_id=self.eos_token_id
        )
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

    def _generate(self, prompt: list[int], extra: dict[str, Any], stock: bool) -> list[int]:
        input_ids = torch.tensor([prompt], device=self.device)
        with torch.inference_mode(), stock_kernels(self.base_model) if stock else nullcontext():
            out = self.base_model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=self.config.max_new_tokens,
                do_sample=False,
                eos_token_id=self.eos_token_id,
                pad_token_id=self.pad_token_id,
                **extra,
            )
        return out[0, len(prompt):].tolist()

    def run(
        self,
        prompts: Sequence[list[int]],
        progress: bool = True,
        done: Sequence[dict[str, PromptRun]] = (),
        on_prompt: Optional[Callable[[int, dict[str, PromptRun]], None]] = None,
    ) -> None:
        """Time every method on every prompt, interleaved. `done`: the runs of the first prompts from an earlier,
        interrupted invocation (kept, not timed again); `on_prompt(index, runs)` after each prompt's methods."""
        for runs in done:
            for method in self.methods:
                self.runs[method].append(runs[method])
        todo = list(prompts)[len(done):]
        for _ in range(self.config.warmup if todo else 0):
            for method in self.methods:
                self._run_once(method, todo[0])
        bar = tqdm(todo, desc="Benchmark prompts", disable=not progress, initial=len(done), total=len(prompts))
        for index, prompt in enumerate(bar, start=len(done)):
            for method in self.methods:
                repeats = [self._run_once(method, prompt) for _ in range(max(1, self.config.repeats))]
                run = repeats[0][0]
                run.seconds = statistics.median(seconds for _, seconds in repeats)
                self.runs[method].append(run)
            if on_prompt is not None:
                on_prompt(index, {method: self.runs[method][-1] for method in self.methods})
            bar.set_postfix(self._postfix())

    def close(self) -> None:
        """Stop the vLLM peers' engines (no-op without them)."""
        for peer in self.vllm_peers.values():
            peer.close()

    def _postfix(self) -> dict[str, str]:
        methods = self.summary()["methods"]
        postfix = {}
        for name in self.speculator_names[:3]:  # the bar has room for a few
            entry = methods.get(name, {})
            if "speedup" in entry:
                label = "" if len(self.speculator_names) == 1 else f"{name[:12]} "
                postfix[f"{label}speedup"] = f"{entry['speedup']:.2f}x"
                postfix[f"{label}tau"] = f"{entry.get('tau', 0.0):.2f}"
        return postfix

    def summary(self) -> dict[str, Any]:
        """Every reported number per method; with exactly one speculator also top-level `tau`, `speedup`,
        `identical_fraction`, `overhead_c` and `acceptance_by_position` (the single-drafter report)."""
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
            if method in self.speculator_names:
                positions = len(runs[0].accepted_by_position)
                by_position = [sum(r.accepted_by_position[k] for r in runs) for k in range(positions)]
                entry["acceptance_by_position"] = [c / steps if steps else 0.0 for c in by_position]
                entry["time_split_s"] = {
                    phase: sum(r.timing.get(phase, 0.0) for r in runs)
                    for phase in ("prefill_s", "drafting_s", "verification_s", "bookkeeping_s")
                }
            methods[method] = entry
        reference = methods.get("hf_generate")
        for method, entry in methods.items():
            if reference and method != "hf_generate" and reference["tokens_per_second"]:
                entry["speedup"] = entry["tokens_per_second"] / reference["tokens_per_second"]
                same = [a.tokens == b.tokens for a, b in zip(self.runs[method], self.runs["hf_generate"])]
                entry["identical"] = sum(same)
                entry["identical_fraction"] = sum(same) / len(same)
                if method in self.speculator_names and entry["speedup"]:
                    entry["overhead_c"] = entry.get("tau", 0.0) / entry["speedup"] - 1
        out: dict[str, Any] = {"methods": methods, "speculators": list(self.speculator_names)}
        if len(self.speculator_names) == 1 and self.speculator_names[0] in methods:
            spec = methods[self.speculator_names[0]]
            out["tau"] = spec.get("tau", 0.0)
            for key in ("speedup", "identical_fraction", "overhead_c", "acceptance_by_position"):
                if key in spec:
                    out[key] = spec[key]
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
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
