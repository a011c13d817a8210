"""EAGLE-3 drafter (Li et al. 2025, "EAGLE-3: Scaling up Inference Acceleration of Large Language Models via
Training-Time Test", arXiv:2503.01840), in the checkpoint layout vLLM serves (``LlamaForCausalLMEagle3``).

The base model's hidden states at three layers (low, middle, high; by default vLLM's choice 2, L/2, L-3, counted
as transformers' ``hidden_states`` index: the residual stream after that many decoder layers) are concatenated
and fused, ``fc: 3H -> H``. Drafting step k at context position t feeds one decoder layer (`eagle3_layer`):

    step 0: input [e(x_{t+1}); fc(aux_t)]          at position t,     attending to the context's step-0 keys <= t
    step k: input [e(token k); out_{k-1}]          at position t + k, attending to those and to steps 1..k's keys
    logits_k = lm_head(norm(out_k))  predicts x_{t+k+2}

e() is the base model's (frozen, shared) input embedding. Training feeds the drafter its own outputs for every
step (training-time test): step k of position t sees the step-0 keys of positions <= t and its own chain's keys.

Decoding keeps a cache of the step-0 keys/values of every verified position (`start_context`,
`extend_context`, in the same slot layout as the base model's cache); `drafting_view` is what beam search and the
top-k tree then call, with one state per beam.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from ..engine.kv_cache import SlotKVCache, empty_slot_cache
from .base_drafter import DrafterConfig, DrafterPreTrainedModel
from .eagle3_layer import Eagle3DecoderLayer, attend


def default_aux_layers(num_hidden_layers: int) -> List[int]:
    """vLLM's default EAGLE-3 layers for a base of `num_hidden_layers` decoder layers (low, middle, high: 2, L/2,
    L-3), kept within [0, L] for bases of fewer than 3 layers."""
    return [min(2, num_hidden_layers), num_hidden_layers // 2, max(num_hidden_layers - 3, 0)]


class Eagle3Config(DrafterConfig):
    """Configuration of an EAGLE-3 drafter; attention sizes and rotary settings follow the base model.

    Args:
        eagle3_aux_layers: the base hidden states fused (transformers' ``hidden_states`` indices, vLLM's
            ``eagle_aux_hidden_state_layer_ids``); None: `default_aux_layers` of the base.
        eagle3_intermediate_size: the draft layer's MLP width (None: the base's).
        drafter_predict_n_tokens: drafting steps trained (training-time test length).
        num_attention_heads, num_key_value_heads, head_dim, intermediate_size, rms_norm_eps, rope_parameters,
        max_position_embeddings, num_hidden_layers_base: copied from the base model (`base_fields`).
    """

    model_type = "eagle3_drafter"

    def __init__(
        self,
        eagle3_aux_layers: Optional[Sequence[int]] = None,
        eagle3_intermediate_size: Optional[int] = None,
        drafter_predict_n_tokens: int = 5,
        num_attention_heads: int = 9,
        num_key_value_heads: int = 3,
        head_dim: Optional[int] = None,
        intermediate_size: int = 1536,
        rms_norm_eps: float = 1e-5,
        rope_parameters: Optional[Dict[str, Any]] = None,
        max_position_embeddings: int = 8192,
        num_hidden_layers_base: int = 30,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_hidden_layers_base = int(num_hidden_layers_base)
        layers = list(eagle3_aux_layers) if eagle3_aux_layers else default_aux_layers(self.num_hidden_layers_base)
        if len(layers) != 3 or not all(0 <= int(x) <= self.num_hidden_layers_base for x in layers):
            raise ValueError(f"eagle3_aux_layers must be 3 base hidden-state indices in [0, "
                             f"{self.num_hidden_layers_base}], got {layers}")
        self.eagle3_aux_layers = [int(x) for x in layers]
        self.eagle3_intermediate_size = int(eagle3_intermediate_size or intermediate_size)
        self.drafter_predict_n_tokens = int(drafter_predict_n_tokens)
        self.num_attention_heads = int(num_attention_heads)
        self.num_key_value_heads = int(num_key_value_heads)
        self.head_dim = int(head_dim or self.hidden_size // self.num_attention_heads)
        self.intermediate_size = int(intermediate_size)
        self.rms_norm_eps = float(rms_norm_eps)
        self.rope_parameters = dict(rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
        self.max_position_embeddings = int(max_position_embeddings)

    def layer_config(self) -> LlamaConfig:
        """The draft layer as a one-layer Llama (sizes, norm epsilon, rotary embedding)."""
        return LlamaConfig(
            hidden_size=self.hidden_size, intermediate_size=self.eagle3_intermediate_size, num_hidden_layers=1,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim, rms_norm_eps=self.rms_norm_eps, rope_parameters=dict(self.rope_parameters),
            max_position_embeddings=self.max_position_embeddings, vocab_size=self.vocab_size,
        )


def base_fields(base_config: Any) -> Dict[str, Any]:
    """What an EAGLE-3 config copies from the base model's (text) config."""
    rope = getattr(base_config, "rope_parameters", None)
    if not rope:
        rope = {"rope_type": "default", "rope_theta": float(getattr(base_config, "rope_theta", 10000.0))}
    heads = base_config.num_attention_heads
    return dict(
        num_attention_heads=heads,
        num_key_value_heads=getattr(base_config, "num_key_value_heads", None) or heads,
        head_dim=getattr(base_config, "head_dim", None) or base_config.hidden_size // heads,
        intermediate_size=getattr(base_config, "intermediate_size", None) or 4 * base_config.hidden_size,
        rms_norm_eps=getattr(base_config, "rms_norm_eps", 1e-5),
        rope_parameters=dict(rope),
        max_position_embeddings=getattr(base_config, "max_position_embeddings", 8192),
        num_hidden_layers_base=base_config.num_hidden_layers,
    )


class Eagle3Drafter(DrafterPreTrainedModel):
    """EAGLE-3 drafter. In the training protocol (`initial_state` / `advance_state` / `compute_logits` over
    (batch, seq) tensors) dimension 1 is the sequence: step 0 is causal self-attention over it."""

    config_class = Eagle3Config
    # The decoder keeps a cache of this drafter's keys/values over the verified context (see `start_context`).
    keeps_context_cache = True

    def __init__(self, config: Eagle3Config):
        super().__init__(config)
        hidden = config.hidden_size
        self.fc = torch.nn.Linear(3 * hidden, hidden, bias=False)
        self.midlayer = Eagle3DecoderLayer(config.layer_config(), config.eagle3_intermediate_size)
        self.norm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.lm_head = torch.nn.Linear(hidden, config.output_vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LlamaRMSNorm):
            torch.nn.init.ones_(module.weight)

    @property
    def num_draft_steps(self) -> int:
        return self.config.drafter_predict_n_tokens

    @property
    def context_layers(self) -> List[int]:
        """The base hidden states this drafter reads, concatenated in this order (its context is (..., 3H))."""
        return list(self.config.eagle3_aux_layers)

    # ----------------------------------------------------------------- training protocol (dim 1 = sequence)
    def initial_state(self, context: torch.Tensor) -> Dict[str, Any]:
        """context: (B, T, 3H) fused base hidden states -> {"hidden": (B, T, H)}."""
        return {"hidden": self.fc(context)}

    def advance_state(self, state: Dict[str, Any], token_embeds: torch.Tensor, step: int) -> Dict[str, Any]:
        """One drafting step at every position t of the sequence, fed token t + step + 1 (B, T, H)."""
        batch, length = token_embeds.shape[:2]
        positions = (torch.arange(length, device=token_embeds.device) + step)[None].expand(batch, length)
        q, k, v = self.midlayer.project(token_embeds, state["hidden"], positions)
        if step == 0:
            prefix_k, prefix_v, chain_k, chain_v = k, v, (), ()
        else:
            prefix_k, prefix_v = state["prefix_k"], state["prefix_v"]
            chain_k, chain_v = state["chain_k"] + (k,), state["chain_v"] + (v,)
        causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        out = attend(q, prefix_k, prefix_v, causal[None].expand(batch, -1, -1), chain_k, chain_v)
        return {"hidden": self.midlayer.finish(out, state["hidden"]), "prefix_k": prefix_k, "prefix_v": prefix_v,
                "chain_k": chain_k, "chain_v": chain_v}

    def compute_logits(self, context: torch.Tensor, state: Dict[str, Any], step: int) -> torch.Tensor:
        """(..., output_vocab_size) from the state's hidden output (..., H); `context` is not read again."""
        return self.lm_head(self.norm(state["hidden"]))

    # ----------------------------------------------------------------- decoding: the context cache
    def _context_step(
        self, cache: SlotKVCache, context: torch.Tensor, token_embeds: torch.Tensor, query_mask: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """Step 0 over Q new context positions: their keys/values are appended to `cache` (slots S .. S+Q-1)
        and their outputs (B, Q, H) returned. context: (B, Q, 3H); token_embeds: (B, Q, H) of the token after
        each position; query_mask: (B, Q, Q) bool among the new positions; positions: (B, Q)."""
        hidden_in = self.fc(context)
        q, k, v = self.midlayer.project(token_embeds, hidden_in, positions)
        allowed = cache.attention_mask(query_mask, torch.bool)[:, 0]  # (B, Q, S + Q)
        keys, values = cache.cache.update(k.transpose(1, 2), v.transpose(1, 2), 0)  # (B, heads, S + Q, D)
        out = attend(q, keys.transpose(1, 2), values.transpose(1, 2), allowed)
        return self.midlayer.finish(out, hidden_in)

    def start_context(
        self, context: torch.Tensor, token_embeds: torch.Tensor, starts: Sequence[int], prompt_mask: torch.Tensor,
    ) -> tuple:
        """The context cache of left-padded prompts (prompt b in slots [starts[b], P)).

        context: (B, P, 3H) fused base hidden states of every prompt slot; token_embeds: (B, P, H) of each slot's
        next token (the prompt shifted by one, then the first generated token); prompt_mask: (B, P, P) bool, the
        prompts' causal mask. Returns (cache, (B, H) output at the last slot: the first drafting context).
        """
        cache = SlotKVCache(empty_slot_cache(num_layers=1), starts, [0] * len(starts), context.device)
        length = context.shape[1]
        positions = (torch.arange(length, device=context.device)[None] - cache.starts[:, None]).clamp(min=0)
        out = self._context_step(cache, context, token_embeds, prompt_mask, positions)
        cache.ends_host = [length] * len(starts)
        cache.ends = torch.full((len(starts),), length, dtype=torch.long, device=context.device)
        return cache, out[:, -1]

    def extend_context(
        self, cache: SlotKVCache, context: torch.Tensor, token_embeds: torch.Tensor, num_new: torch.Tensor,
        num_new_host: Sequence[int],
    ) -> torch.Tensor:
        """Append each row's first num_new of Q verified positions to the cache. context: (B, Q, 3H) at those
        positions; token_embeds: (B, Q, H) of the token after each. Returns the (B, H) output at each row's last
        new position (the next drafting context)."""
        batch, queries = context.shape[:2]
        offsets = torch.arange(queries, device=context.device)
        positions = cache.context_lengths[:, None] + offsets
        causal = torch.ones(queries, queries, dtype=torch.bool, device=context.device).tril()
        out = self._context_step(cache, context, token_embeds, causal[None].expand(batch, -1, -1), positions)
        cache.commit(offsets[None].expand(batch, -1), num_new, num_new_host)
        return out[torch.arange(batch, device=out.device), num_new - 1]

    def drafting_view(self, cache: SlotKVCache) -> "Eagle3DraftingView":
        return Eagle3DraftingView(self, cache)


class Eagle3DraftingView:
    """The drafter as beam search and the top-k tree see it while decoding: dimension 1 of every state is the
    beam (candidate) axis. All beams of a row attend to the row's context cache and to their own drafted chain.

    The drafting context passed to `initial_state` is the step-0 output at the last verified position, which
    already consumed the init token; step 0's `advance_state` therefore returns the state unchanged."""

    consumes_token_ids = False

    def __init__(self, drafter: Eagle3Drafter, cache: SlotKVCache):
        self.drafter = drafter
        layer = cache.cache.layers[0]
        self.keys, self.values = layer.keys.transpose(1, 2), layer.values.transpose(1, 2)  # (B, S, kv_heads, D)
        slots = torch.arange(cache.num_slots, device=cache.ends.device)
        self.visible = (slots[None] >= cache.starts[:, None]) & (slots[None] < cache.ends[:, None])  # (B, S)
        self.last_position = cache.context_lengths - 1  # (B,)

    @property
    def num_draft_steps(self) -> int:
        return self.drafter.num_draft_steps

    def to_base_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return self.drafter.to_base_ids(draft_ids)

    def initial_state(self, context: torch.Tensor) -> Dict[str, Any]:
        return {"hidden": context, "chain_k": (), "chain_v": ()}

    def advance_state(self, state: Dict[str, Any], token_embeds: torch.Tensor, step: int) -> Dict[str, Any]:
        if step == 0:
            return state
        batch, beams = token_embeds.shape[:2]
        positions = (self.last_position + step)[:, None].expand(batch, beams)
        layer = self.drafter.midlayer
        q, k, v = layer.project(token_embeds, state["hidden"], positions)
        chain_k, chain_v = state["chain_k"] + (k,), state["chain_v"] + (v,)
        visible = self.visible[:, None].expand(batch, beams, -1)
        out = attend(q, self.keys, self.values, visible, chain_k, chain_v)
        return {"hidden": layer.finish(out, state["hidden"]), "chain_k": chain_k, "chain_v": chain_v}

    def compute_logits(self, context: torch.Tensor, state: Dict[str, Any], step: int) -> torch.Tensor:
        return self.drafter.compute_logits(context, state, step)
