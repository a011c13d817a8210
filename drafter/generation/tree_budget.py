"""Hardware-aware tree size (`--tree_budget auto`): the beam width and length that maximise expected tokens/s.

speed(W, L) = tokens per step (W, L) / (draft time (W, L) + verification forward time (nodes (W, L)))

* The forward-cost curve (ms of one verification forward by tree nodes, 1 node = a plain decoding step) is a
  property of the base model and the machine: measured once and cached per model, machine and thread count.
* Tokens per step, tree nodes and draft time are properties of the drafter on this kind of text: a calibration
  decode (prompts not in MT-Bench) records the drafting context of every step; each candidate shape then drafts
  from those same contexts and is scored against the base model's actual greedy continuation, so every shape is
  judged on the same positions, exactly as greedy verification would accept it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from transformers import PreTrainedModel

from ..engine import kernels
from ..engine.base_lm import FORWARD_PATH, BaseLM
from ..engine.decode import DecodingState
from ..engine.result import PhaseTimer
from ..engine.sampling import SamplingConfig
from ..store import cache_root, fingerprint, fingerprint_bytes, write_json
from .drafting import beam_search
from .lookup import ContextLookup, join_candidates, lookup_candidates
from .speculative import SpeculativeGenerator
from .tree import build_tree

CURVE_CONTEXT = 256  # cached tokens under the measured forwards: a typical MT-Bench prompt + half an answer


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `fn` in ms over `repeats` calls, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def chain_beams(root: int, nodes: int) -> torch.Tensor:
    """(1, W, L) beams whose packed tree has exactly `nodes` nodes: two chains of distinct tokens below one root
    (one chain when `nodes` - 1 is odd or 1), the shape of a narrow beam-search tree."""
    width = 2 if nodes > 1 and (nodes - 1) % 2 == 0 else 1
    length = 1 + (nodes - 1) // width
    beams = torch.full((1, width, length), root)
    beams[0, :, 1:] = torch.arange(root + 1, root + 1 + width * (length - 1)).view(width, length - 1)
    return beams


class TreeForwardTimer:
    """Times one verification forward (tree mask, slot cache, output layer on the nodes) over N nodes on top of
    `context` cached tokens, restoring the cache after every call."""

    def __init__(self, base: PreTrainedModel, context: int = CURVE_CONTEXT):
        self.lm = BaseLM(base)
        self.context = context
        vocab = self.lm.vocab_size
        self.cache, _ = self.lm.prefill([[(100 + i) % vocab for i in range(context)]])

    def reset(self) -> None:
        # A forward and its commit write only past the context's slots, which therefore stay as prefilled.
        self.cache.rewind([self.context])

    @torch.inference_mode()
    def forward(self, nodes: int) -> torch.Tensor:
        """One forward over a `nodes`-node tree; returns its logits (1, N, V)."""
        self.reset()
        tree = build_tree(chain_beams(5, nodes).to(self.lm.device))
        mask = self.cache.attention_mask(tree.ancestor_mask, self.lm.mask_dtype)
        hidden = self.lm.forward(tree.tokens, mask, tree.position_ids(self.cache.context_lengths), self.cache)
        return self.lm.logits(hidden)

    def milliseconds(self, nodes: int, repeats: int) -> float:
        return median_ms(lambda: self.forward(nodes), repeats)


def machine_key(base: PreTrainedModel) -> Dict[str, Any]:
    """What the forward-cost curve depends on besides the model: the processor, threads, software, kernels."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    device = next(base.parameters()).device
    switched = any(isinstance(m, kernels.SmallBatchLinear) for m in base.modules())
    return {
        "cpu": cpu, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(next(base.parameters()).dtype),
        # the kernel policy, so that changing it re-measures
        "small_batch_kernels": kernels.kernel_policy() if switched else None,
        "forward_path": FORWARD_PATH,
    }


def forward_cost_curve(
    base: PreTrainedModel, max_nodes: int, repeats: int = 7, cache: bool = True, log: Callable[[str], None] = print
) -> Dict[int, float]:
    """ms of one verification forward for 1 .. max_nodes tree nodes on this machine (cached per model and
    machine under the cache root; pass cache=False to re-measure)."""
    key = {"model": BaseLM(base).fingerprint(), "machine": machine_key(base), "context": CURVE_CONTEXT,
           "repeats": repeats}
    path = cache_root() / "tree_budget" / f"forward-cost-{fingerprint(key)}.json"
    curve: Dict[int, float] = {}
    if cache and path.is_file():
        curve = {int(n): ms for n, ms in json.loads(path.read_text())["milliseconds"].items()}
    missing = [n for n in range(1, max_nodes + 1) if n not in curve]
    if missing:
        log(f"tree_budget: measuring this machine's verification cost for {missing[0]}..{missing[-1]} tree nodes "
            f"(once; cached in {path.parent})")
        timer = TreeForwardTimer(base)
        # Round-robin over the node counts, so drift in machine load spreads over all of them.
        samples: Dict[int, List[float]] = {n: [] for n in missing}
        for _ in range(repeats):
            for n in missing:
                samples[n].append(timer.milliseconds(n, 1))
        curve.update({n: statistics.median(times) for n, times in samples.items()})
        curve = dict(zip(sorted(curve), nondecreasing([curve[n] for n in sorted(curve)])))
        if cache:
            write_json(path, {"key": key, "milliseconds": {str(n): curve[n] for n in sorted(curve)}})
    return {n: curve[n] for n in range(1, max_nodes + 1)}


def nondecreasing(values: Sequence[float]) -> List[float]:
    """The closest non-decreasing sequence in least squares (pool adjacent violators): a forward over more nodes
    never costs less, so a dip is measurement noise."""
    blocks: List[List[float]] = []  # [mean, count]
    for value in values:
        blocks.append([value, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, c1), (m2, c2) = blocks.pop(-2), blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return [mean for mean, count in blocks for _ in range(int(count))]


def shape_label(beam_width: int, beam_length: Optional[int], lookup_tokens: int = 0) -> str:
    """A tree shape as `--tree_shapes` writes it: WxL, or WxL+K with K context-lookup tokens."""
    return f"{beam_width}x{beam_length}" + (f"+{lookup_tokens}" if lookup_tokens else "")


@dataclass
class ShapeEstimate:
    """One candidate shape, scored on the calibration positions."""

    beam_width: int
    beam_length: int
    tokens_per_step: float  # accepted drafts + the bonus token
    tree_nodes: float  # mean verified nodes per step
    draft_ms: float
    verify_ms: float
    lookup_tokens: int = 0  # context-lookup tokens joined to the beams (`SpeculativeGenerator.lookup_tokens`)

    @property
    def label(self) -> str:
        return shape_label(self.beam_width, self.beam_length, self.lookup_tokens)

    @property
    def step_ms(self) -> float:
        return self.draft_ms + self.verify_ms

    def speedup(self, plain_step_ms: float) -> float:
        """Expected tokens/s relative to plain decoding (one token per `plain_step_ms`)."""
        return self.tokens_per_step / self.step_ms * plain_step_ms


@dataclass
class TreePlan:
    best: ShapeEstimate
    plain_step_ms: float
    candidates: List[ShapeEstimate]
    calibration_steps: int
    cached: bool = False  # read back from the plan cache (measured by an earlier run on this machine)

    def explain(self, top: int = 5) -> str:
        """The chosen shape and why, with the runners-up."""
        b = self.best
        lookup = f" --lookup_tokens {b.lookup_tokens}" if b.lookup_tokens else ""
        lines = [f"tree_budget auto: --beam_width {b.beam_width} --beam_length {b.beam_length}{lookup}: "
                 f"{b.tokens_per_step:.2f} tokens/step for {b.tree_nodes:.1f} nodes (draft {b.draft_ms:.1f} ms + "
                 f"verify {b.verify_ms:.1f} ms vs a {self.plain_step_ms:.1f} ms plain step) -> expected "
                 f"{b.speedup(self.plain_step_ms):.2f}x plain decoding ({self.calibration_steps} calibration steps"
                 f"{', cached' if self.cached else ''})"]
        ranked = sorted(self.candidates, key=lambda c: -c.speedup(self.plain_step_ms))
        for c in ranked[1:top]:
            lines.append(f"  runner-up {c.label}: {c.tokens_per_step:.2f} tokens/step, "
                         f"{c.tree_nodes:.1f} nodes, {c.step_ms:.1f} ms/step -> {c.speedup(self.plain_step_ms):.2f}x")
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        return {"best": asdict(self.best), "plain_step_ms": self.plain_step_ms,
                "calibration_steps": self.calibration_steps, "candidates": [asdict(c) for c in self.candidates]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TreePlan":
        return cls(best=ShapeEstimate(**data["best"]), plain_step_ms=data["plain_step_ms"],
                   candidates=[ShapeEstimate(**c) for c in data["candidates"]],
                   calibration_steps=data["calibration_steps"], cached=True)


class _RecordingSpeculator(SpeculativeGenerator):
    """Records each step's drafting inputs (the drafter or its context-cache view, the context, the init token) and
    how many tokens were emitted before it (batch 1)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.records: List[tuple] = []
        self.emitted = 1  # the prefill's first token

    def decode_step(self, state: DecodingState, sampling: SamplingConfig, timer: PhaseTimer):
        # A drafter's context-cache view stays valid after the step: the cache appends by concatenation (new
        # tensors), never in place (tests/unit/test_tree_budget.py checks the re-drafted estimate).
        drafter, context = self.drafting_inputs(state)
        self.records.append((drafter, context.clone(), state.next_tokens.clone(), self.emitted))
        out = super().decode_step(state, sampling, timer)
        self.emitted += len(out.new_tokens[0])
        return out


def _accepted_drafts(beams: torch.Tensor, lengths: Optional[torch.Tensor], continuation: Sequence[int]) -> int:
    """Drafted tokens greedy verification accepts: the longest beam prefix (after the init token, within the
    beam's length) that matches the base model's continuation. beams (1, W, L); lengths (1, W) or None."""
    best = 0
    ends = lengths[0].tolist() if lengths is not None else [beams.shape[-1]] * beams.shape[1]
    for beam, end in zip(beams[0].tolist(), ends):
        matched = 0
        for drafted, actual in zip(beam[1:end], continuation):
            if drafted != actual:
                break
            matched += 1
        best = max(best, matched)
    return best


@torch.inference_mode()
def plan_tree_shape(
    base: PreTrainedModel,
    drafter: Any,
    prompts: Sequence[Sequence[int]],
    widths: Sequence[int] = (1, 2, 3, 4),
    lengths: Optional[Sequence[int]] = None,
    max_new_tokens: int = 64,
    eos_token_id: Any = None,
    log: Callable[[str], None] = print,
    cost_curve: Optional[Dict[int, float]] = None,
    cache: bool = True,
    lookup_tokens: Sequence[int] = (0,),
) -> TreePlan:
    """Choose the beam shape with the highest expected tokens/s for `drafter` on this machine.

    prompts: calibration prompts (token ids), decoded greedily at the widest, longest shape; lengths default to
    2 .. the drafter's draft steps + 1. lookup_tokens: the context-lookup sizes tried with every beam shape (0 =
    none; see `lookup`). cost_curve: ms per forward by node count (default: this machine's,
    `forward_cost_curve`). The plan is cached per base model, machine, drafter weights and calibration (unless
    `cache` is False or a `cost_curve` is given).
    """
    lengths = list(lengths or range(2, drafter.num_draft_steps + 2))
    widths = list(widths)
    path = None
    if cache and cost_curve is None:
        key = {"model": BaseLM(base).fingerprint(), "machine": machine_key(base), "drafter": _weights(drafter),
               "prompts": fingerprint([list(p) for p in prompts]), "widths": widths, "lengths": lengths,
               "max_new_tokens": max_new_tokens, "eos": eos_token_id, "lookup_tokens": list(lookup_tokens)}
        path = cache_root() / "tree_budget" / f"plan-{fingerprint(key)}.json"
        if path.is_file():
            return TreePlan.from_dict(json.loads(path.read_text()))
    plan = _plan(base, drafter, prompts, widths, lengths, list(lookup_tokens), max_new_tokens, eos_token_id, log,
                 cost_curve)
    if path is not None:
        write_json(path, plan.to_dict())
    return plan


def _weights(drafter: Any) -> str:
    """Fingerprint of a drafter's weights (what its acceptance depends on)."""
    state = drafter.state_dict() if hasattr(drafter, "state_dict") else {}
    return fingerprint_bytes(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                             for t in state.values())


def _plan(base: PreTrainedModel, drafter: Any, prompts: Sequence[Sequence[int]], widths: List[int],
          lengths: List[int], lookup_sizes: List[int], max_new_tokens: int, eos_token_id: Any,
          log: Callable[[str], None], cost_curve: Optional[Dict[int, float]]) -> TreePlan:
    """The calibration decode and the scoring of every shape (see `plan_tree_shape`)."""
    recorder = _RecordingSpeculator(base, drafter, beam_width=max(widths), beam_length=max(lengths))
    horizon = max(max(lengths) - 1, *lookup_sizes)  # continuation tokens a candidate can be scored on
    steps = []  # (drafter or its view, context, init token, the base model's next tokens after the init token,
    #             {lookup size: that step's lookup branch (tokens, lengths)})
    for prompt in prompts:
        recorder.records, recorder.emitted = [], 1
        output = recorder.generate([list(prompt)], max_new_tokens=max_new_tokens,
                                   eos_token_id=eos_token_id).sequences[0]
        for drafting, context, init, emitted in recorder.records:
            if emitted + horizon <= len(output):
                lookup = ContextLookup(list(prompt) + output[:emitted])
                branches = {k: lookup_candidates([lookup], k, init.device) for k in lookup_sizes if k}
                steps.append((drafting, context, init, output[emitted:emitted + horizon], branches))
    if not steps:
        raise ValueError("tree_budget: the calibration prompts produced no complete drafting step; give longer "
                         "prompts or more new tokens")
    embed = recorder.lm.embed_tokens
    stats = {}
    for width in widths:
        for length in lengths:
            totals = {k: [0, 0] for k in lookup_sizes}  # lookup size -> accepted drafts, tree nodes
            seconds = 0.0
            for drafting, context, init, continuation, branches in steps:
                start = time.perf_counter()
                beams = beam_search(drafting, embed, context, init, width, length).beams
                seconds += time.perf_counter() - start
                for k, total in totals.items():
                    candidates, candidate_lengths = beams, None
                    if k:
                        candidates, candidate_lengths = join_candidates(beams, *branches[k])
                    total[0] += _accepted_drafts(candidates, candidate_lengths, continuation)
                    total[1] += build_tree(candidates, lengths=candidate_lengths).size
            for k, (accepted, nodes) in totals.items():
                stats[width, length, k] = (1 + accepted / len(steps), nodes / len(steps), 1000 * seconds / len(steps))
    most_nodes = max(int(nodes) + 1 for _, nodes, _ in stats.values())
    curve = cost_curve if cost_curve is not None else forward_cost_curve(base, most_nodes, log=log)
    if max(curve) < most_nodes - 1 or 1 not in curve:
        raise ValueError(f"cost curve needs node counts 1 .. {most_nodes - 1}")

    def verify_ms(nodes: float) -> float:  # linear between the measured integer node counts
        low = min(max(1, int(nodes)), max(curve))
        high = min(low + 1, max(curve))
        return curve[low] + (nodes - low) * (curve[high] - curve[low])

    candidates = [ShapeEstimate(w, n_len, tokens, nodes, draft, verify_ms(nodes), k)
                  for (w, n_len, k), (tokens, nodes, draft) in stats.items()]
    best = max(candidates, key=lambda c: c.speedup(curve[1]))
    return TreePlan(best=best, plain_step_ms=curve[1], candidates=candidates, calibration_steps=len(steps))
