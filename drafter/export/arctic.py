"""ArcticInference's speculator format (`--speculative-config '{"method": "arctic", ...}'`).

config.json (what ArcticTraining's `ArcticLSTMSpeculatorConfig.save` writes, plus `base_model_archs`, which
recent ArcticInference versions check against the served model unless ARCTIC_INFERENCE_SKIP_SPEC_MODEL_CHECK=1):

    architectures ["ArcticLSTMSpeculatorPreTrainedModel"], model_type "mlp_speculator", base_model_name_or_path,
    input_hidden_dim (int, base hidden size), inner_dim / proj_dim / emb_dim (STRINGS such as "4096": ArcticInference
    parses them with str.split(".")), vocab_size, n_predict, n_candidates, top_k_tokens_per_head, tie_weights,
    scale_input, tie_lstm_embs, method, torch_dtype, transformers_version[, base_model_archs]

model.safetensors, names as ArcticTraining's `ArcticLSTMSpeculator` state dict (the serving model's
`load_weights` reads them; k = heads with own weights, 1 when tied):

    sum_lstm (ArcticInference serves it only with tie_weights and tie_lstm_embs):
        forget_emb.0.weight, input_emb.0.weight, cell_emb.0.weight, output_emb.0.weight  (V, W)  all four required
            by the loader (it pops them); with tie_lstm_embs they are copies of one table
        {forget,input,output,cell}_proj.0.weight (W, H), {forget,input,output,cell}_proj.1.weight (W, W)
            the loader concatenates them in the order forget, input, output, cell into `projs.{0,1}`
        cell_ln.0.weight/bias, state_ln.0.weight/bias (W,);  head.0.weight (V, W)
    sum_rnn (each entry is an nn.Sequential there, hence the extra ".0"):
        emb.{i}.0.weight (V, W), proj.0.0.weight (W, H), proj.{j>=1}.0.weight (W, W),
        ln.{i}.0.weight/bias (W,), head.{i}.weight (V, W)

Tied heads are written once (head.0): the serving model holds one shared head module, so only head.0 is loaded.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import transformers

from ..engine.dtypes import dtype_name
from ..models.arctic_lstm import ArcticLSTMSpeculator, ArcticLSTMSpeculatorConfig
from .common import ExportError, check_speculator, parse_dim, pick

ARCHITECTURE = "ArcticLSTMSpeculatorPreTrainedModel"
# Read-only aliases: ArcticInference registers the same class under this name too.
READ_ARCHITECTURES = (ARCHITECTURE, "MLPVariantSpeculatorPreTrainedModel")
LSTM_GATES = ("forget", "input", "output", "cell")  # the order of the fused projection's row blocks


def check_exportable(drafter) -> ArcticLSTMSpeculator:
    drafter = check_speculator(drafter, "arctic")
    config = drafter.config
    if config.method == "sum_lstm" and not (config.tie_weights and config.tie_lstm_embs):
        raise ExportError(
            "ArcticInference serves sum_lstm speculators only with tie_weights=True and tie_lstm_embs=True (its "
            f"model asserts both); this one has tie_weights={config.tie_weights}, "
            f"tie_lstm_embs={config.tie_lstm_embs}. Retrain with both set."
        )
    return drafter


def arctic_tensors(drafter: ArcticLSTMSpeculator, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """The drafter's weights under ArcticInference's names (see the module docstring)."""
    config = drafter.config
    width = config.speculator_width
    state = {name: tensor.to(dtype) for name, tensor in drafter.state_dict().items() if "_to_" not in name}
    out: Dict[str, torch.Tensor] = {}
    if config.method == "sum_lstm":
        for gate in LSTM_GATES:
            out[f"{gate}_emb.0.weight"] = state["emb.0.weight"]
        for j in range(2):
            fused = state.get(f"proj.{j}.weight")
            if fused is None:  # one head: ArcticInference still builds (and loads) the W -> W projections
                fused = torch.zeros(4 * width, width, dtype=dtype)
            for gate, block in zip(LSTM_GATES, fused.split(width, dim=0)):
                out[f"{gate}_proj.{j}.weight"] = block
        for norm in ("cell_ln", "state_ln"):
            out[f"{norm}.0.weight"] = state[f"{norm}.0.weight"]
            out[f"{norm}.0.bias"] = state[f"{norm}.0.bias"]
        out["head.0.weight"] = state["head.0.weight"]
        return out
    for name, tensor in state.items():
        module, index, param = name.split(".")
        out[f"{module}.{index}.weight" if module == "head" else f"{module}.{index}.0.{param}"] = tensor
    return out


def arctic_config(
    drafter: ArcticLSTMSpeculator,
    dtype: torch.dtype,
    top_k_tokens_per_head: Optional[List[int]],
    n_candidates: Optional[int],
    base_model_archs: Optional[List[str]],
) -> dict:
    config = drafter.config
    n = config.n_speculator_heads
    width = str(config.speculator_width)
    out = {
        "architectures": [ARCHITECTURE],
        "model_type": "mlp_speculator",
        "base_model_name_or_path": config.base_model_name_or_path,
        "input_hidden_dim": config.hidden_size,
        "inner_dim": width,
        "proj_dim": width,
        "emb_dim": width,
        "vocab_size": config.vocab_size,
        "n_predict": n,
        "n_candidates": n if n_candidates is None else n_candidates,
        "top_k_tokens_per_head": [1] * n if top_k_tokens_per_head is None else list(top_k_tokens_per_head),
        "tie_weights": config.tie_weights,
        "scale_input": config.scale_input,
        "tie_lstm_embs": config.tie_lstm_embs,
        "method": config.method,
        "torch_dtype": dtype_name(dtype),
        "transformers_version": transformers.__version__,
    }
    if base_model_archs:
        out["base_model_archs"] = list(base_model_archs)
    return out


def read_arctic(config: dict, weights: Dict[str, torch.Tensor]) -> ArcticLSTMSpeculator:
    """An `ArcticLSTMSpeculator` from an arctic-format config and weights (ours or ArcticTraining's)."""
    method = config.get("method", "sum_rnn")
    n = int(config["n_predict"])
    tie = bool(config.get("tie_weights", False))
    tie_lstm_embs = bool(config.get("tie_lstm_embs", False))
    model_config = ArcticLSTMSpeculatorConfig(
        hidden_size=int(config["input_hidden_dim"]),
        vocab_size=int(config["vocab_size"]),
        base_model_name_or_path=config.get("base_model_name_or_path"),
        n_speculator_heads=n,
        speculator_width=parse_dim(config["inner_dim"], "inner_dim"),
        proj_dim=parse_dim(config.get("proj_dim", config["inner_dim"]), "proj_dim"),
        emb_dim=parse_dim(config.get("emb_dim", config["inner_dim"]), "emb_dim"),
        method=method,
        tie_weights=tie,
        scale_input=bool(config.get("scale_input", False)),
        tie_lstm_embs=tie_lstm_embs,
    )
    model = ArcticLSTMSpeculator(model_config)
    expected = model.state_dict()
    state: Dict[str, torch.Tensor] = {}
    for name in expected:
        module, index, param = name.split(".")
        if method == "sum_lstm" and module == "emb":
            if tie_lstm_embs:
                state[name] = pick(weights, f"forget_emb.{index}.weight")
            else:
                state[name] = torch.cat([pick(weights, f"{gate}_emb.{index}.weight") for gate in LSTM_GATES], dim=1)
        elif method == "sum_lstm" and module == "proj":
            if f"projs.{index}.weight" in weights:  # already fused (ArcticInference's in-memory names)
                state[name] = weights[f"projs.{index}.weight"]
            else:
                state[name] = torch.cat([pick(weights, f"{gate}_proj.{index}.weight") for gate in LSTM_GATES], dim=0)
        elif module == "head":
            state[name] = pick(weights, f"head.{index}.weight")
        else:
            state[name] = pick(weights, f"{module}.{index}.0.{param}", f"{module}.{index}.{param}")
    model.load_state_dict(state, strict=True)
    return model
