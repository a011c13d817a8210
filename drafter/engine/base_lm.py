"""`BaseLM`: the one access path to the frozen base model, for decoding, teacher data and training alike.

The decoder (`model.base_model`, e.g. LlamaModel / GPT2Model) is called directly, so the output layer is applied
only to the positions whose logits are needed (the last prompt position, the tree nodes, the labelled positions
of a training batch), and only to the rows of the vocabulary that are needed (a reduced draft vocabulary).
"""

from __future__ import annotations

import inspect
import weakref
from typing import List, Optional, Sequence, Tuple, Union

import torch
from transformers import Cache, PreTrainedModel

from ..store import fingerprint, fingerprint_bytes
from .attention import grouped_kv_attention
from .dtypes import at_least_float32
from .kernels import small_batch_linear
from .kv_cache import SlotKVCache, empty_slot_cache, prefill_mask

Prompts = Union[Sequence[Sequence[int]], torch.Tensor]
_FINGERPRINT_CONFIG_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                            "intermediate_size", "vocab_size", "max_position_embeddings", "rope_theta",
                            "rms_norm_eps", "layer_norm_epsilon", "tie_word_embeddings", "final_logit_softcapping")
# How `BaseLM.forward` runs a multi-token forward: part of the identity of a measured cost curve (tree_budget),
# so a change of the path re-measures instead of planning with another path's costs.
FORWARD_PATH = "preallocated slot cache, grouped-K/V SDPA on CPU"
# The frozen base model's fingerprint, computed once per model object (hashing the embeddings takes ~0.5 s).
_FINGERPRINTS: "weakref.WeakKeyDictionary[PreTrainedModel, str]" = weakref.WeakKeyDictionary()


def normalize_prompts(prompts: Prompts, attention_mask: Optional[torch.Tensor] = None) -> List[List[int]]:
    """Token-id lists from a list of lists, or from a padded (B, P) tensor with an optional (B, P) 0/1 mask
    (either padding side; masked-out entries are dropped)."""
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() == 1:
            prompts = prompts[None]
        ids = prompts.tolist()
        if attention_mask is None:
            out = ids
        else:
            mask = attention_mask.bool().tolist()
            out = [[t for t, m in zip(row, row_mask) if m] for row, row_mask in zip(ids, mask)]
    else:
        if attention_mask is not None:
            raise ValueError("attention_mask is only meaningful with a padded prompt tensor")
        out = [[int(t) for t in row] for row in prompts]
    if not out or any(len(row) == 0 for row in out):
        raise ValueError("every prompt needs at least one token")
    return out


def stop_token_ids(model: PreTrainedModel, tokenizer: Optional[object] = None) -> List[int]:
    """End-of-answer tokens: the generation config's EOS id(s), then the tokenizer's EOS when a tokenizer is
    given, else the model config's EOS id(s). Duplicates removed, order kept."""
    second = tokenizer if tokenizer is not None else getattr(model, "config", None)
    ids: List[int] = []
    for source in (getattr(model, "generation_config", None), second):
        value = getattr(source, "eos_token_id", None)
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))
    return ids


class BaseLM:
    """The frozen base model seen as decoder + input embedding + output layer.

    Args:
        model: a transformers `*ForCausalLM` (Llama / Qwen / SmolLM / GPT-2 style).
    """

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.decoder = model.base_model
        if self.decoder is model:
            raise ValueError("Expected a *ForCausalLM model with a separate decoder (model.base_model)")
        self.embed_tokens = model.get_input_embeddings()
        self.lm_head = model.get_output_embeddings()
        if self.lm_head is None:
            raise NotImplementedError(f"{type(model).__name__} has no output layer (get_output_embeddings)")
        config = model.config.get_text_config()
        for name in ("logit_scale", "output_multiplier_scale"):
            if getattr(config, name, None) not in (None, 1.0):
                raise NotImplementedError(f"base models with `{name}` on their logits are not supported")
        self.softcap = getattr(config, "final_logit_softcapping", None)
        # transformers >= 5.24 names the decoder's cache argument `cache` (`past_key_values` is deprecated there).
        parameters = inspect.signature(self.decoder.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.model.config.get_text_config().hidden_size

    @property
    def vocab_size(self) -> int:
        return self.embed_tokens.num_embeddings

    def require_4d_masks(self) -> None:
        """Tree verification and slot caches pass custom 4-D attention masks, which only SDPA and eager take."""
        attn = getattr(self.model.config, "_attn_implementation", None) or "eager"
        if attn not in ("sdpa", "eager"):
            raise NotImplementedError(
                f"attn_implementation={attn!r}: tree verification needs a custom 4-D attention mask, which only "
                "'sdpa' and 'eager' take; load the base model with attn_implementation='sdpa'"
            )

    @property
    def mask_dtype(self) -> torch.dtype:
        """SDPA takes a boolean mask (smaller than a float one for long prompts); eager adds a float mask."""
        return torch.bool if self.model.config._attn_implementation == "sdpa" else self.dtype

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings (..., H) of base token ids (...)."""
        return self.embed_tokens(token_ids)

    def _decode(self, **inputs):
        """The decoder's output for `inputs` (every decoder call goes through here; see `grouped_kv_attention`)."""
        with grouped_kv_attention(self.decoder.config):
            return self.decoder(**inputs)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Last hidden states (B, T, H) of whole sequences (B, T), no cache (training batches)."""
        return self._decode(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    def layer_hidden_states(
        self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], layers: Sequence[int]
    ) -> List[torch.Tensor]:
        """Hidden states (B, T, H) of whole sequences at `layers`: -1 is the last hidden state (after the final
        norm, what the output layer reads); 0 the input embeddings; i the output of decoder layer i (1-based)."""
        if list(layers) == [-1]:
            return [self.hidden_states(input_ids, attention_mask)]
        out = self._decode(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                           output_hidden_states=True)
        return _select_layers(out, layers)

    def fingerprint(self) -> str:
        """Identifies the base model's weights where drafters touch them: its config (sizes, vocabulary) and a
        hash of the input embedding and output layer (a random model of the same shape differs)."""
        text = self.model.config.get_text_config()
        # The architecture's defining sizes only: saving a model or loading it another way changes other config
        # fields (architectures, attention implementation, dtype) without changing the model.
        config = {key: getattr(text, key, None) for key in _FINGERPRINT_CONFIG_KEYS}
        config["model_type"] = self.model.config.model_type
        cached = _FINGERPRINTS.get(self.model)
        if cached is not None:
            return cached
        # Hashed as bfloat16 (as int16 bits: numpy has no bfloat16), so the same checkpoint loaded in float32 or
        # bfloat16 has one fingerprint.
        tensors = (self.embed_tokens.weight, self.lm_head.weight)
        weights = fingerprint_bytes(
            t.detach().to(torch.bfloat16).view(torch.int16).cpu().contiguous().numpy().tobytes() for t in tensors
        )
        _FINGERPRINTS[self.model] = value = fingerprint({"config": config, "weights": weights})
        return value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: Optional[torch.Tensor],
        cache: Union[SlotKVCache, Cache],
        layers: Optional[Sequence[int]] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """One decoder pass over Q new tokens per row on top of a cache.

        input_ids, position_ids: (B, Q); attention_mask: (B, 1, Q, S + Q) 4-D (or (B, S + Q) 0/1) -> hidden
        (B, Q, H). The new tokens' K/V are appended to the cache (slots S .. S+Q-1).
        layers: also return the hidden states at these `layer_hidden_states` indices, concatenated (B, Q, n * H)
            (what an EAGLE-3 drafter reads); the result is then (hidden, concatenated).
        """
        out = self._decode(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            output_hidden_states=bool(layers),
            **{self.cache_argument: cache.cache if isinstance(cache, SlotKVCache) else cache},
        )
        if not layers:
            return out.last_hidden_state
        return out.last_hidden_state, torch.cat(_select_layers(out, layers), dim=-1)

    def output_rows(self, token_ids: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Weight (V', H) and bias of the output layer, restricted to the vocabulary rows `token_ids` (V',)."""
        weight, bias = self.lm_head.weight, getattr(self.lm_head, "bias", None)
        if token_ids is not None:
            weight = weight[token_ids]
            bias = bias[token_ids] if bias is not None else None
        return weight, bias

    def logits(self, hidden: torch.Tensor, token_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Base-model logits (..., V) for last hidden states (..., H), in float32 (float64 models: float64).

        token_ids: compute only these vocabulary rows (..., V') (e.g. a drafter's draft vocabulary).
        """
        if token_ids is None:
            logits = at_least_float32(self.lm_head(hidden))
        else:
            weight, bias = self.output_rows(token_ids)
            logits = at_least_float32(small_batch_linear(hidden.to(weight.dtype), weight, bias))
        if self.softcap:  # e.g. Gemma-2
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def prefill(
        self, prompts: List[List[int]], layers: Optional[Sequence[int]] = None
    ) -> Tuple[SlotKVCache, torch.Tensor]:
        """Run the left-padded prompts through the decoder.

        Returns:
            The filled cache (sequence b in slots [P - P_b, P)) and the (B, H) hidden state at each prompt's
            last token; with `layers`, also the (B, P, n * H) concatenated hidden states of every slot at those
            layers (see `forward`) and the (B, P) left-padded input ids.
        """
        self.require_4d_masks()
        device, batch = self.device, len(prompts)
        length = max(len(p) for p in prompts)
        starts = [length - len(p) for p in prompts]
        input_ids = torch.zeros(batch, length, dtype=torch.long)
        for row, (prompt, start) in enumerate(zip(prompts, starts)):
            input_ids[row, start:] = torch.tensor(prompt, dtype=torch.long)
        input_ids = input_ids.to(device)
        cache = SlotKVCache(empty_slot_cache(self.model.config), starts, [0] * batch, device)
        position_ids = (torch.arange(length, device=device)[None, :] - cache.starts[:, None]).clamp(min=0)
        hidden = self.forward(input_ids, prefill_mask(cache.starts, length, self.mask_dtype), position_ids, cache,
                              layers)
        cache.ends_host = [length] * batch
        cache.ends = torch.full((batch,), length, dtype=torch.long, device=device)
        if layers:
            hidden, states = hidden
            return cache, hidden[:, -1], states, input_ids
        return cache, hidden[:, -1]


def _select_layers(out, layers: Sequence[int]) -> List[torch.Tensor]:
    """The decoder output's hidden states at `layers` (-1: the last hidden state; i: after decoder layer i)."""
    return [out.last_hidden_state if layer == -1 else out.hidden_states[layer] for layer in layers]
