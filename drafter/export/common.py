"""Shared pieces of the serving-format writers and readers."""

from __future__ import annotations

import json
import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch

from ..engine.dtypes import torch_dtype
from ..models.arctic_lstm import ArcticLSTMSpeculator

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Checkpoints written by ArcticTraining / fms-extras use torch.save.
LEGACY_WEIGHTS_FILE = "pytorch_model.bin"


class ExportError(ValueError):
    """The drafter cannot be written in (or read from) the requested serving format."""


@dataclass
class ExportResult:
    """What `export_speculator` wrote: the folder, its config.json content and tensor names -> shapes."""

    output_dir: Path
    format: str
    config: dict
    tensors: Dict[str, List[int]]
    serving_command: str
    notes: List[str] = field(default_factory=list)


def resolve_dtype(dtype: Union[str, torch.dtype, None], drafter: torch.nn.Module) -> torch.dtype:
    """'auto' / None: the drafter's own parameter dtype; else a name of the engine's dtype table."""
    if dtype is None or dtype == "auto":
        return next(drafter.parameters()).dtype
    try:
        return torch_dtype(dtype)
    except ValueError as error:
        raise ExportError(str(error)) from None


def check_speculator(drafter, format_name: str) -> ArcticLSTMSpeculator:
    """The checks every format shares: an Arctic speculator over the full base vocabulary."""
    if not isinstance(drafter, ArcticLSTMSpeculator):
        family = getattr(getattr(drafter, "config", None), "model_type", type(drafter).__name__)
        raise ExportError(
            f"The '{format_name}' format holds Arctic LSTM / MLP speculators only; this drafter is a '{family}' "
            "(ReDrafter heads have no vLLM / ArcticInference speculator format). Serve it with "
            "drafter.generation.SpeculativeGenerator instead."
        )
    if drafter.has_reduced_vocabulary:
        raise ExportError(
            f"The '{format_name}' format cannot express a reduced draft vocabulary: its output heads must cover the "
            f"whole base vocabulary ({drafter.config.vocab_size} tokens), but this speculator predicts "
            f"{drafter.config.draft_vocab_size} tokens through a draft-to-base map. Train with draft_vocab_size unset "
            "(null) to export."
        )
    return drafter


def save_folder(output_dir: Union[str, os.PathLike], config: dict, tensors: Dict[str, torch.Tensor]) -> Dict[str, list]:
    """Write config.json and model.safetensors (every tensor contiguous and unshared)."""
    from safetensors.torch import save_file

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stale = output_dir / LEGACY_WEIGHTS_FILE
    if stale.exists():  # vLLM would load whichever it finds; never leave an older checkpoint beside ours
        stale.unlink()
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    save_file(tensors, str(output_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    with open(output_dir / CONFIG_FILE, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    return {name: list(t.shape) for name, t in tensors.items()}


def read_folder(path: Union[str, os.PathLike]) -> tuple[dict, Dict[str, torch.Tensor]]:
    """config.json and the weights (model.safetensors, else pytorch_model.bin), 'speculator.' prefixes removed."""
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"No exported speculator at '{path}': {config_file} does not exist")
    config = json.loads(config_file.read_text())
    if (path / WEIGHTS_FILE).is_file():
        from safetensors.torch import load_file

        weights = load_file(str(path / WEIGHTS_FILE))
    elif (path / LEGACY_WEIGHTS_FILE).is_file():
        weights = torch.load(path / LEGACY_WEIGHTS_FILE, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"'{path}' has neither {WEIGHTS_FILE} nor {LEGACY_WEIGHTS_FILE}")
    weights = {name.removeprefix("speculator."): tensor for name, tensor in weights.items()}
    return config, weights


def parse_dim(value, name: str) -> int:
    """ArcticInference writes dims as strings ("4096"); dotted multi-layer dims ("4096.4096") are not supported."""
    if isinstance(value, int):
        return value
    parts = str(value).split(".")
    if len(parts) != 1 or not parts[0].strip().isdigit():
        raise ExportError(f"{name}={value!r}: only single-layer dims are supported (no dotted multi-layer dims)")
    return int(parts[0])


def pick(weights: Dict[str, torch.Tensor], *names: str) -> torch.Tensor:
    """The first of `names` present in `weights` (formats differ in naming)."""
    for name in names:
        if name in weights:
            return weights[name]
    raise ExportError(f"Missing tensor: none of {list(names)} is in the checkpoint")


def base_model_architectures(base_model_name_or_path: Optional[str]) -> Optional[List[str]]:
    """The base model's `architectures` from its locally available config (no weights, no network), or None."""
    if not base_model_name_or_path:
        return None
    try:
        from transformers import AutoConfig

        from ..engine.loading import resolve_model_path

        path, kwargs = resolve_model_path(base_model_name_or_path)
        # Local files only (a folder, a cached hub download, the embedded model): no network round trips.
        archs = getattr(AutoConfig.from_pretrained(path, local_files_only=True, **kwargs), "architectures", None)
    except Exception as error:  # uncached hub id, adapter folder, deleted folder, ...: the caller explains
        logger.info("Could not read the base model config of '%s': %s", base_model_name_or_path, error)
        return None
    return list(archs) if archs else None


def serving_base(base_model_name_or_path: Optional[str], override: Optional[str] = None) -> str:
    """What `vllm serve` should load: the override, the converted folder of the embedded model, or the name."""
    if override:
        return override
    if not base_model_name_or_path:
        return "BASE_MODEL"
    from ..engine.loading import EMBEDDED_BASE_MODEL

    if base_model_name_or_path == EMBEDDED_BASE_MODEL:
        from ..engine.loading import embedded_model_dir

        return str(embedded_model_dir())
    return base_model_name_or_path


def vllm_serve_command(
    base: str,
    speculative_config: dict,
    env: Sequence[str] = (),
    tensor_parallel_size: Optional[int] = None,
) -> str:
    parts = list(env) + ["vllm", "serve", shlex.quote(base)]
    if tensor_parallel_size and tensor_parallel_size > 1:
        parts += ["--tensor-parallel-size", str(tensor_parallel_size)]
    parts += ["--speculative-config", shlex.quote(json.dumps(speculative_config))]
    return " ".join(parts)
