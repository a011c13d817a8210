"""An EAGLE-3 drafter trained here, served by vLLM, beside the project's own decoder with the same drafter.

    .venv-vllm/bin/python benchmarks/vllm_serving.py --speculator_path DIR [--num_prompts 24]
        [--max_new_tokens 128] [--export_dir OUT] [--output_file FILE.json]

1. exports the drafter in vLLM's EAGLE-3 layout (`python -m drafter.export --format eagle3`) to --export_dir and
   prints the `vllm serve` line;
2. runs ONE `generate_speculator.py --compare` on the first MT-Bench turns, every method interleaved per prompt:
   transformers `generate` (the reference for speed-up and identity), the project's decoder with the drafter as a
   chain of its k drafting steps (the shape vLLM drafts) and at W2 L3, vLLM's plain decoding (`vllm_plain`), and
   vLLM with the drafter (`vllm_eagle3`, k speculative tokens; its tau from vLLM's acceptance counters).
   The table is printed and the JSON (every answer, identity per method) written to --output_file.

Needs vLLM (on a CPU: `bash scripts/bootstrap_vllm.sh`, then this script under .venv-vllm/bin/python).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import generate_speculator  # noqa: E402
from drafter.export import export_speculator  # noqa: E402
from drafter.models import AutoDrafter  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speculator_path", required=True, help="an EAGLE-3 drafter (train_speculator.py output)")
    parser.add_argument("--num_prompts", type=int, default=24)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--export_dir", default=None, help="where the vLLM checkpoint goes (default: beside it)")
    parser.add_argument("--output_file", default=None)
    args = parser.parse_args()
    drafter = AutoDrafter.from_pretrained(args.speculator_path)
    steps = drafter.num_draft_steps
    export_dir = args.export_dir or str(Path(args.speculator_path).resolve()) + "-vllm"
    exported = export_speculator(drafter, export_dir, format="eagle3", dtype="float32")
    print(f"Exported to {export_dir}; serve it with:\n  {exported.serving_command}")
    argv = ["--speculator_path", args.speculator_path, "--eval_mt_bench", "--compare",
            "--max_num_prompts", str(args.num_prompts), "--max_generation_length", str(args.max_new_tokens),
            "--tree_shapes", f"1x{steps + 1}", "2x3", "--baselines", "vllm_plain", "vllm_eagle3"]
    if args.output_file:
        argv += ["--output_file", args.output_file]
    generate_speculator.main(argv)


if __name__ == "__main__":
    main()
