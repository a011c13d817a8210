#!/usr/bin/env python
"""Train (or evaluate) a drafter head for a frozen base LLM.

    python train_speculator.py --quick                      # embedded SmolLM2 + ShareGPT, <= 5 min on 2 CPU cores
    python train_speculator.py --llm_name_or_path meta-llama/Llama-3.1-8B-Instruct --bf16 ...
    accelerate launch train_speculator.py ...               # multi-GPU through the HF Trainer engines
    python train_speculator.py recipe.yaml                  # arguments from a YAML/JSON file (flat, or nested
                                                            #   model:/data:/checkpoint: as ArcticTraining's)
    python train_speculator.py recipe.yaml --max_steps 10   # ... with command-line overrides
    python train_speculator.py --phase eval --drafter_name_or_path outputs/drafter
"""

from __future__ import annotations

import sys

from drafter.errors import run_main
from drafter.training.cli import QUICK_PRESET, load_recipe, main, parse_arguments

__all__ = ["QUICK_PRESET", "load_recipe", "main", "parse_arguments"]

if __name__ == "__main__":
    sys.exit(run_main(main))
