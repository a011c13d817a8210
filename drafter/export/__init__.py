"""Export Arctic LSTM / MLP speculators and EAGLE-3 drafters for vLLM (+ ArcticInference), and read such checkpoints
back.

    python -m drafter.export --format arctic --speculator_path DIR --output_dir OUT
    python -m drafter.export --format mlp_speculator --speculator_path DIR --output_dir OUT   # sum_rnn only
    python -m drafter.export --format eagle3 --speculator_path DIR --output_dir OUT          # EAGLE-3 drafters

Formats (names and config fields are documented in the format modules):

* ``arctic`` (`drafter.export.arctic`): ArcticInference's ``ArcticLSTMSpeculatorPreTrainedModel``, served with
  ``vllm serve BASE --speculative-config '{"method": "arctic", "model": OUT, "num_speculative_tokens": n}'``;
  sum_lstm (tied weights and LSTM embeddings) and sum_rnn speculators.
* ``mlp_speculator`` (`drafter.export.mlp_speculator`): vLLM's / fms-extras' ``MLPSpeculatorPreTrainedModel``
  (sum_rnn speculators), served with ``--speculative-config '{"method": "mlp_speculator", ...}'``.
* ``eagle3`` (`drafter.export.eagle3`): the EAGLE-3 checkpoint layout (``LlamaForCausalLMEagle3``), served with
  ``--speculative-config '{"method": "eagle3", ...}'``; reduced draft vocabularies are written as d2t / t2d.

`load_exported(path)` reads any of them back, also ArcticTraining's own ``pytorch_model.bin`` checkpoints, and
reproduces the exported drafter's logits exactly (same dtype). Arctic speculators with a reduced draft vocabulary
and ReDrafter drafters cannot be exported (`ExportError`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch

from ..models.arctic_lstm import ArcticLSTMSpeculator
from ..models.eagle3 import Eagle3Drafter
from . import arctic, eagle3, mlp_speculator
from .common import (
    ExportError,
    ExportResult,
    base_model_architectures,
    read_folder,
    resolve_dtype,
    save_folder,
    serving_base,
    vllm_serve_command,
)

FORMATS = ("arctic", "mlp_speculator", "eagle3")
SKIP_ARCH_CHECK_ENV = "ARCTIC_INFERENCE_SKIP_SPEC_MODEL_CHECK=1"

__all__ = ["FORMATS", "ExportError", "ExportResult", "export_speculator", "load_exported"]


def _load_drafter(drafter_or_path):
    if isinstance(drafter_or_path, (str, os.PathLike)):
        from ..models import AutoDrafter

        return AutoDrafter.from_pretrained(str(drafter_or_path))
    return drafter_or_path


def export_speculator(
    drafter_or_path: Union[ArcticLSTMSpeculator, str, os.PathLike],
    output_dir: Union[str, os.PathLike],
    format: str = "arctic",
    dtype: Union[str, torch.dtype, None] = "auto",
    top_k_tokens_per_head: Optional[Sequence[int]] = None,
    n_candidates: Optional[int] = None,
    base_model_archs: Optional[Sequence[str]] = None,
    serve_base_model: Optional[str] = None,
    tensor_parallel_size: Optional[int] = None,
) -> ExportResult:
    """Write a speculator (a model or a `save_pretrained` folder) in a serving format.

    Args:
        format: "arctic" or "mlp_speculator".
        dtype: tensor dtype written ("auto": the speculator's own); also recorded as config `torch_dtype`.
        top_k_tokens_per_head, n_candidates: recorded in the config (one entry per head; default [1] * n and n,
            ArcticTraining's values). The serving engines draft a greedy chain regardless.
        base_model_archs: the base model's `architectures`, checked by ArcticInference; default: read from the
            base model's config, omitted (with a note) when it cannot be read.
        serve_base_model: the base model named in the printed `vllm serve` command (default: the drafter's).
    """
    if format not in FORMATS:
        raise ExportError(f"Unknown format '{format}': choose one of {FORMATS}")
    if format == "eagle3":
        return _export_eagle3(_load_drafter(drafter_or_path), output_dir, dtype, serve_base_model,
                              tensor_parallel_size)
    module = arctic if format == "arctic" else mlp_speculator
    drafter = module.check_exportable(_load_drafter(drafter_or_path))
    n = drafter.config.n_speculator_heads
    if top_k_tokens_per_head is not None:
        top_k_tokens_per_head = [int(k) for k in top_k_tokens_per_head]
        if len(top_k_tokens_per_head) != n or min(top_k_tokens_per_head) < 1:
            raise ExportError(f"top_k_tokens_per_head needs {n} entries (one per head), each >= 1")
    if n_candidates is not None and n_candidates < 1:
        raise ExportError("n_candidates must be >= 1")
    notes: List[str] = []
    base_name = drafter.config.base_model_name_or_path
    if base_model_archs is None:
        base_model_archs = base_model_architectures(base_name)
    env = []
    if not base_model_archs:
        env.append(SKIP_ARCH_CHECK_ENV)
        notes.append(
            f"base_model_archs unknown (could not read the config of base model '{base_name}'): ArcticInference "
            f"checks it unless {SKIP_ARCH_CHECK_ENV} is set (pass --base_model_archs to record it)."
        )
    torch_dtype = resolve_dtype(dtype, drafter)
    if format == "arctic":
        config = arctic.arctic_config(drafter, torch_dtype, top_k_tokens_per_head, n_candidates, base_model_archs)
        tensors = arctic.arctic_tensors(drafter, torch_dtype)
        method = "arctic"
    else:
        config = mlp_speculator.mlp_config(drafter, torch_dtype, top_k_tokens_per_head, n_candidates, base_model_archs)
        tensors = mlp_speculator.mlp_tensors(drafter, torch_dtype)
        method = "mlp_speculator"
    shapes = save_folder(output_dir, config, tensors)
    output_dir = Path(output_dir)
    speculative_config = {"method": method, "model": str(output_dir.resolve()), "num_speculative_tokens": n}
    command = vllm_serve_command(
        serving_base(base_name, serve_base_model), speculative_config, env, tensor_parallel_size
    )
    return ExportResult(output_dir, format, config, shapes, command, notes)


def _export_eagle3(drafter, output_dir, dtype, serve_base_model: Optional[str],
                   tensor_parallel_size: Optional[int]) -> ExportResult:
    drafter = eagle3.check_exportable(drafter)
    torch_dtype = resolve_dtype(dtype, drafter)
    config = eagle3.eagle3_config(drafter, torch_dtype)
    shapes = save_folder(output_dir, config, eagle3.eagle3_tensors(drafter, torch_dtype))
    output_dir = Path(output_dir)
    speculative_config = {"method": "eagle3", "model": str(output_dir.resolve()),
                          "num_speculative_tokens": drafter.num_draft_steps}
    base = serving_base(drafter.config.base_model_name_or_path, serve_base_model)
    command = vllm_serve_command(base, speculative_config, (), tensor_parallel_size)
    python = f"from vllm import LLM; LLM({base!r}, speculative_config={speculative_config!r})"
    return ExportResult(output_dir, "eagle3", config, shapes, command, [f"in Python: {python}"])


def load_exported(
    path: Union[str, os.PathLike], dtype: Optional[torch.dtype] = None
) -> Union[ArcticLSTMSpeculator, Eagle3Drafter]:
    """Read an exported drafter (any format; safetensors or ArcticTraining's pytorch_model.bin) back into an
    `ArcticLSTMSpeculator` or `Eagle3Drafter` (float32 unless `dtype`), in eval mode."""
    config, weights = read_folder(path)
    archs = config.get("architectures") or []
    if len(archs) == 1 and archs[0] in eagle3.READ_ARCHITECTURES:
        model = eagle3.read_eagle3(config, weights)
        return (model.to(dtype) if dtype is not None else model).eval()
    if config.get("model_type") != "mlp_speculator" or len(archs) != 1:
        raise ExportError(
            f"'{path}' is not an exported speculator: expected model_type 'mlp_speculator' and one architecture, "
            f"got {config.get('model_type')!r} / {archs}"
        )
    if archs[0] in arctic.READ_ARCHITECTURES:
        model = arctic.read_arctic(config, weights)
    elif archs[0] in mlp_speculator.READ_ARCHITECTURES:
        model = mlp_speculator.read_mlp(config, weights)
    else:
        raise ExportError(f"Unsupported speculator architecture '{archs[0]}' in '{path}'")
    if dtype is not None:
        model.to(dtype)
    return model.eval()
