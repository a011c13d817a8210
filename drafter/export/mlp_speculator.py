"""vLLM's / IBM fms-extras' MLP speculator format (`MLPSpeculatorPreTrainedModel`), for `sum_rnn` speculators.

config.json (vLLM's `MLPSpeculatorConfig`; note that here `emb_dim` is the BASE model's hidden size, the
projection input, and `inner_dim` the speculator width):

    architectures ["MLPSpeculatorPreTrainedModel"], model_type "mlp_speculator", base_model_name_or_path,
    emb_dim (int, base hidden size), inner_dim (int, W), vocab_size, n_predict, top_k_tokens_per_head (n entries),
    n_candidates, tie_weights, scale_input, torch_dtype, transformers_version; plus, for readers that want them,
    input_hidden_dim (= emb_dim) and method "sum_rnn"[, base_model_archs]

model.safetensors (vLLM's `MLPSpeculator` parameter names):

    emb.{i}.weight (V, W), proj.0.weight (W, H), proj.{j>=1}.weight (W, W), ln.{i}.weight / ln.{i}.bias (W,),
    head.{i}.weight (V, W); with tie_weights: emb.0, proj.0, proj.1, ln.0, head.0 only (vLLM builds one shared
    module per list, so only those names are loaded). `scale_input`'s ln0 has no parameters.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import transformers

from ..engine.dtypes import dtype_name
from ..models.arctic_lstm import ArcticLSTMSpeculator, ArcticLSTMSpeculatorConfig
from .common import ExportError, check_speculator, pick

ARCHITECTURE = "MLPSpeculatorPreTrainedModel"
# ArcticInference's copy of vLLM's MLPSpeculator uses the same names and config.
READ_ARCHITECTURES = (ARCHITECTURE, "ArcticMLPSpeculatorPreTrainedModel")


def check_exportable(drafter) -> ArcticLSTMSpeculator:
    drafter = check_speculator(drafter, "mlp_speculator")
    config = drafter.config
    if config.method != "sum_rnn":
        raise ExportError(
            f"The mlp_speculator format holds MLP (sum_rnn) speculators only; this one is '{config.method}'. "
            "Use --format arctic for sum_lstm speculators."
        )
    if config.tie_weights and config.n_speculator_heads < 2:
        raise ExportError("vLLM's MLPSpeculator cannot tie weights with a single head (it asserts n_predict > 1)")
    return drafter


def mlp_tensors(drafter: ArcticLSTMSpeculator, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    return {name: tensor.to(dtype) for name, tensor in drafter.state_dict().items() if "_to_" not in name}


def mlp_config(
    drafter: ArcticLSTMSpeculator,
    dtype: torch.dtype,
    top_k_tokens_per_head: Optional[List[int]],
    n_candidates: Optional[int],
    base_model_archs: Optional[List[str]],
) -> dict:
    config = drafter.config
    n = config.n_speculator_heads
    out = {
        "architectures": [ARCHITECTURE],
        "model_type": "mlp_speculator",
        "base_model_name_or_path": config.base_model_name_or_path,
        "emb_dim": config.hidden_size,
        "input_hidden_dim": config.hidden_size,
        "inner_dim": config.speculator_width,
        "vocab_size": config.vocab_size,
        "n_predict": n,
        "n_candidates": n if n_candidates is None else n_candidates,
        "top_k_tokens_per_head": [1] * n if top_k_tokens_per_head is None else list(top_k_tokens_per_head),
        "tie_weights": config.tie_weights,
        "scale_input": config.scale_input,
        "method": "sum_rnn",
        "torch_dtype": dtype_name(dtype),
        "transformers_version": transformers.__version__,
    }
    if base_model_archs:
        out["base_model_archs"] = list(base_model_archs)
    return out


def read_mlp(config: dict, weights: Dict[str, torch.Tensor]) -> ArcticLSTMSpeculator:
    hidden = int(config["emb_dim"])
    width = int(config.get("inner_dim") or 0) or hidden
    model = ArcticLSTMSpeculator(
        ArcticLSTMSpeculatorConfig(
            hidden_size=hidden,
            vocab_size=int(config["vocab_size"]),
            base_model_name_or_path=config.get("base_model_name_or_path"),
            n_speculator_heads=int(config["n_predict"]),
            speculator_width=width,
            method="sum_rnn",
            tie_weights=bool(config.get("tie_weights", False)),
            scale_input=bool(config.get("scale_input", False)),
        )
    )
    model.load_state_dict({name: pick(weights, name) for name in model.state_dict()}, strict=True)
    return model
