"""`python -m drafter.export`: write a trained speculator in a vLLM / ArcticInference format.

    python -m drafter.export --format arctic --speculator_path outputs/arctic --output_dir outputs/arctic-vllm
    python -m drafter.export --format mlp_speculator --speculator_path outputs/mlp --output_dir outputs/mlp-vllm
    python -m drafter.export --format eagle3 --speculator_path outputs/eagle3 --output_dir outputs/eagle3-vllm
    python -m drafter.export --read OUT        # load an exported folder back and print its summary
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

from ..errors import run_main
from . import FORMATS, ExportError, export_speculator, load_exported


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.replace(" ", "").split(",") if part]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m drafter.export", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--format", choices=FORMATS, default="arctic")
    parser.add_argument("--speculator_path", help="a speculator saved by train_speculator.py (save_pretrained)")
    parser.add_argument("--output_dir", help="folder to write config.json + model.safetensors into")
    parser.add_argument("--dtype", default="auto", help="auto (the speculator's), float32, bfloat16 or float16")
    parser.add_argument("--top_k_tokens_per_head", type=_int_list, default=None, help="e.g. 4,3,2 (one per head)")
    parser.add_argument("--n_candidates", type=int, default=None)
    parser.add_argument("--base_model_archs", type=lambda s: s.split(","), default=None,
                        help="the base model's architectures, e.g. LlamaForCausalLM (default: read its config)")
    parser.add_argument("--serve_base_model", default=None, help="base model named in the printed vllm command")
    parser.add_argument("--tensor_parallel_size", type=int, default=None, help="for the printed vllm command")
    parser.add_argument("--read", metavar="EXPORTED_DIR", default=None,
                        help="instead of exporting: load an exported folder and print what it holds")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.read:
            model = load_exported(args.read)
            fields = (("eagle3_aux_layers", "drafter_predict_n_tokens", "hidden_size", "vocab_size",
                       "draft_vocab_size", "eagle3_intermediate_size") if model.config.model_type == "eagle3_drafter"
                      else ("method", "n_speculator_heads", "speculator_width", "hidden_size", "vocab_size",
                            "tie_weights", "scale_input", "tie_lstm_embs"))
            summary = {k: getattr(model.config, k) for k in (*fields, "base_model_name_or_path")}
            print(json.dumps(summary, indent=2))
            return 0
        if not args.speculator_path or not args.output_dir:
            parser.error("--speculator_path and --output_dir are required (or --read)")
        result = export_speculator(
            args.speculator_path,
            args.output_dir,
            format=args.format,
            dtype=args.dtype,
            top_k_tokens_per_head=args.top_k_tokens_per_head,
            n_candidates=args.n_candidates,
            base_model_archs=args.base_model_archs,
            serve_base_model=args.serve_base_model,
            tensor_parallel_size=args.tensor_parallel_size,
        )
    except (ExportError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {args.format} drafter ({len(result.tensors)} tensors) to {result.output_dir}")
    for note in result.notes:
        print(f"note: {note}")
    print("Serve it with:")
    print(result.serving_command)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
