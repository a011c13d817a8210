"""The EAGLE-3 checkpoint format vLLM serves (``LlamaForCausalLMEagle3`` -> vLLM's ``Eagle3LlamaForCausalLM``):

    config.json   a one-layer Llama config: architectures ["LlamaForCausalLMEagle3"], hidden/intermediate sizes,
                  heads, rotary settings, vocab_size (the base's), draft_vocab_size, target_hidden_size and
                  eagle_config.eagle_aux_hidden_state_layer_ids (the base layers fused, vLLM's numbering = ours)
    model.safetensors
                  fc.weight (H, 3H); midlayer.{input_layernorm, hidden_norm, post_attention_layernorm}.weight;
                  midlayer.self_attn.{q,k,v}_proj.weight (.., 2H), o_proj; midlayer.mlp.{gate,up,down}_proj.weight;
                  norm.weight; lm_head.weight (draft_vocab_size, H); with a reduced vocabulary d2t (draft id ->
                  base id - draft id, int64) and t2d (base vocabulary, bool: in the draft vocabulary)

No token embedding is written: vLLM then shares the base model's, which is what the drafter was trained with.
Served with ``LLM(BASE, speculative_config={"method": "eagle3", "model": OUT, "num_speculative_tokens": k})``.
"""

from __future__ import annotations

from typing import Dict

import torch

from ..models.eagle3 import Eagle3Config, Eagle3Drafter
from .common import ExportError

ARCHITECTURE = "LlamaForCausalLMEagle3"
READ_ARCHITECTURES = (ARCHITECTURE, "Eagle3LlamaForCausalLM")
_PREFIXES = ("fc.", "midlayer.", "norm.", "lm_head.")


def check_exportable(drafter) -> Eagle3Drafter:
    if not isinstance(drafter, Eagle3Drafter):
        family = getattr(getattr(drafter, "config", None), "model_type", type(drafter).__name__)
        raise ExportError(f"The 'eagle3' format holds EAGLE-3 drafters only; this drafter is a '{family}' (export "
                          "Arctic LSTM speculators with --format arctic)")
    return drafter


def eagle3_config(drafter: Eagle3Drafter, dtype: torch.dtype) -> dict:
    config = drafter.config
    rope = dict(config.rope_parameters)
    fields = {
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        "hidden_size": config.hidden_size,
        "target_hidden_size": config.hidden_size,
        "intermediate_size": config.eagle3_intermediate_size,
        "num_hidden_layers": 1,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "max_position_embeddings": config.max_position_embeddings,
        "rope_theta": rope.get("rope_theta", 10000.0),
        "vocab_size": config.vocab_size,
        "draft_vocab_size": config.output_vocab_size,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(config.eagle3_aux_layers),
                         "use_aux_hidden_state": True},
        "base_model_name_or_path": config.base_model_name_or_path,
        "num_speculative_tokens": config.drafter_predict_n_tokens,
    }
    if rope.get("rope_type", "default") != "default":
        fields["rope_scaling"] = rope  # transformers < 5 (vLLM's pin) reads scaled rotary settings from here
    return fields


def eagle3_tensors(drafter: Eagle3Drafter, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    tensors = {name: t.to(dtype) for name, t in drafter.state_dict().items() if name.startswith(_PREFIXES)}
    if drafter.has_reduced_vocabulary:
        draft_to_base = drafter.draft_to_base.cpu()
        tensors["d2t"] = draft_to_base - torch.arange(draft_to_base.numel())
        in_draft = torch.zeros(drafter.config.vocab_size, dtype=torch.bool)
        in_draft[draft_to_base] = True
        tensors["t2d"] = in_draft
    return tensors


def read_eagle3(config: dict, weights: Dict[str, torch.Tensor]) -> Eagle3Drafter:
    """An exported EAGLE-3 checkpoint back as an `Eagle3Drafter` (float32)."""
    layers = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if not layers:
        raise ExportError("config.json has no eagle_config.eagle_aux_hidden_state_layer_ids: the fused base layers "
                          "are unknown")
    if config.get("num_hidden_layers", 1) != 1:
        raise ExportError(f"only one-layer EAGLE-3 drafters are supported, got {config['num_hidden_layers']} layers")
    vocab, draft_vocab = config["vocab_size"], config.get("draft_vocab_size") or config["vocab_size"]
    rope = config.get("rope_scaling") or {"rope_type": "default", "rope_theta": config.get("rope_theta", 10000.0)}
    drafter = Eagle3Drafter(Eagle3Config(
        hidden_size=config["hidden_size"], vocab_size=vocab, draft_vocab_size=draft_vocab if draft_vocab != vocab
        else None, eagle3_aux_layers=layers, eagle3_intermediate_size=config["intermediate_size"],
        drafter_predict_n_tokens=config.get("num_speculative_tokens", 5),
        num_attention_heads=config["num_attention_heads"], num_key_value_heads=config["num_key_value_heads"],
        head_dim=config.get("head_dim"), intermediate_size=config["intermediate_size"],
        rms_norm_eps=config["rms_norm_eps"], rope_parameters=rope,
        max_position_embeddings=config["max_position_embeddings"],
        num_hidden_layers_base=max(max(layers), 3), base_model_name_or_path=config.get("base_model_name_or_path"),
    ))
    state = {name: t.float() for name, t in weights.items() if name.startswith(_PREFIXES)}
    missing = set(drafter.state_dict()) - set(state) - {"draft_to_base", "base_to_draft"}
    if missing:
        raise ExportError(f"the checkpoint lacks {sorted(missing)[:5]}")
    drafter.load_state_dict(state, strict=False)
    if drafter.has_reduced_vocabulary:
        if "d2t" not in weights:
            raise ExportError("draft_vocab_size < vocab_size but the checkpoint has no d2t map")
        drafter.set_draft_vocabulary(weights["d2t"].long() + torch.arange(draft_vocab))
    return drafter.eval()
