"""What the slot cache's in-place appends and the grouped-K/V attention save per decoding step, measured in one
process with the previous behaviour put back for the "before" runs, the two alternating call by call:

* before: every forward concatenates each layer's whole cache with its new slots (transformers' `DynamicLayer`,
  what `SlotKVCache` sat on until session 8), and a multi-token forward repeats the grouped K/V heads to every
  query head (transformers' SDPA path);
* after: the toolkit as it is (`engine/kv_cache.py`, `engine/attention.py`).

    python benchmarks/cache_attention_ab.py [--context 300 --new_tokens 40 --repeats 6 --output FILE.json]

Plain decoding at batch 1 and 8 and the shipped drafter at W3 L3 and W4 L4; ms per decoding step (prefill
excluded), medians; and whether both produced the same tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from pathlib import Path

import torch

from drafter import AutoDrafter
from drafter.engine import EMBEDDED_BASE_MODEL, AutoregressiveGenerator, base_lm, kv_cache, load_base_model
from drafter.evaluation.benchmark import environment
from drafter.generation import SpeculativeGenerator

DRAFTER = Path(__file__).resolve().parent / "drafters" / "smollm2-redrafter-selfdistill"
IN_PLACE_UPDATE = kv_cache.SlotLayer.update
GROUPED_KV = base_lm.grouped_kv_attention


def concatenating_update(self, key_states, value_states, *args, **kwargs):
    """The previous cost: a new tensor holding the whole cache plus the new slots, every layer, every forward."""
    if not self.is_initialized:
        self.lazy_initialization(key_states, value_states)
    keys, values = torch.cat([self.keys, key_states], 2), torch.cat([self.values, value_states], 2)
    self._store(keys, values, capacity=keys.shape[2])
    return self.keys, self.values


def use_path(after: bool) -> None:
    kv_cache.SlotLayer.update = IN_PLACE_UPDATE if after else concatenating_update
    base_lm.grouped_kv_attention = GROUPED_KV if after else (lambda config: contextlib.nullcontext())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--new_tokens", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    model = load_base_model(EMBEDDED_BASE_MODEL)
    drafter = AutoDrafter.from_pretrained(str(DRAFTER)).eval()
    cases = {
        "plain, batch 1": (AutoregressiveGenerator(model), 1),
        "plain, batch 8": (AutoregressiveGenerator(model), 8),
        "W3 L3, batch 1": (SpeculativeGenerator(model, drafter, beam_width=3, beam_length=3), 1),
        "W4 L4, batch 1": (SpeculativeGenerator(model, drafter, beam_width=4, beam_length=4), 1),
    }
    rows = []
    try:
        for name, (generator, batch) in cases.items():
            # Prompts of different lengths (5 tokens apart), made of ordinary token ids.
            prompts = [[(100 + 7 * i + 13 * b) % 40000 for i in range(args.context - 5 * b)] for b in range(batch)]
            step_ms = {"before": [], "after": []}
            tokens = {}
            for repeat in range(args.repeats + 1):  # the first round warms up
                for path in ("before", "after"):
                    use_path(path == "after")
                    result = generator.generate(prompts, max_new_tokens=args.new_tokens, eos_token_id=None)
                    tokens[path] = result.sequences
                    if repeat:
                        timing = result.timing
                        step_ms[path].append(1000 * (timing.total_s - timing.prefill_s) / result.num_steps)
            before, after = (statistics.median(step_ms[p]) for p in ("before", "after"))
            rows.append({"case": name, "before_ms": round(before, 1), "after_ms": round(after, 1),
                         "speedup": round(before / after, 3), "same_tokens": tokens["before"] == tokens["after"]})
    finally:
        use_path(True)
    print(f"\nms per decoding step, {args.context} prompt tokens, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print("| case | before ms | after ms | speed-up | same tokens |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['before_ms']} | {r['after_ms']} | {r['speedup']:.2f}x | {r['same_tokens']} |")
    if args.output:
        Path(args.output).write_text(json.dumps({"environment": environment(), "args": vars(args), "rows": rows},
                                                indent=2) + "\n")


if __name__ == "__main__":
    main()
