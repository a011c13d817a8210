"""The EAGLE-3 draft layer (Li et al. 2025, arXiv:2503.01840): one Llama decoder layer whose attention reads the
concatenation [RMSNorm(token embedding); RMSNorm(hidden input)] of width 2H, laid out (module and weight names,
norm placement) exactly as the EAGLE-3 checkpoints that vLLM's ``LlamaForCausalLMEagle3`` loads:

    residual = h_in
    x = [input_layernorm(e) ; hidden_norm(h_in)]              (2H)
    residual = residual + o_proj(attention(q_proj x, k_proj x, v_proj x))
    out = residual + mlp(post_attention_layernorm(residual))  (the "pre-norm" output, fed to the next step)

`attend` is the one attention function of the family: a query sees a prefix of keys (the verified context, under
a boolean mask) and, in drafting steps >= 1, the keys of its own drafted chain (training-time test's "diagonal"
keys, and the beams' drafted tokens while decoding).
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRMSNorm, rotate_half


def attend(
    query: torch.Tensor,
    prefix_keys: torch.Tensor,
    prefix_values: torch.Tensor,
    prefix_allowed: torch.Tensor,
    chain_keys: Sequence[torch.Tensor] = (),
    chain_values: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """Softmax attention over a masked prefix plus per-query chain keys (grouped-query heads).

    Args:
        query: (B, Q, heads, D), rotary embedding applied.
        prefix_keys, prefix_values: (B, S, kv_heads, D).
        prefix_allowed: (B, Q, S) bool, which prefix keys each query sees (every query must see at least one key:
            its own, or a prefix key).
        chain_keys, chain_values: per chain entry (B, Q, kv_heads, D): a key only query q of the same row sees.
    Returns:
        (B, Q, heads * D)
    """
    batch, queries, heads, dim = query.shape
    kv_heads = prefix_keys.shape[2]
    grouped = query.reshape(batch, queries, kv_heads, heads // kv_heads, dim) / math.sqrt(dim)
    scores = torch.einsum("bqhgd,bshd->bhgqs", grouped, prefix_keys)
    scores = scores.masked_fill(~prefix_allowed[:, None, None], float("-inf"))
    if chain_keys:
        chain_k = torch.stack(list(chain_keys), dim=2)  # (B, Q, C, kv_heads, D)
        chain_v = torch.stack(list(chain_values), dim=2)
        scores = torch.cat([scores, torch.einsum("bqhgd,bqchd->bhgqc", grouped, chain_k)], dim=-1)
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    prefix_len = prefix_keys.shape[1]
    out = torch.einsum("bhgqs,bshd->bqhgd", probs[..., :prefix_len], prefix_values)
    if chain_keys:
        out = out + torch.einsum("bhgqc,bqchd->bqhgd", probs[..., prefix_len:], chain_v)
    return out.reshape(batch, queries, heads * dim)


class Eagle3Attention(nn.Module):
    """q/k/v projections from the 2H-wide concatenation, o projection back to H (no biases, as in the paper)."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(2 * hidden_size, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(2 * hidden_size, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(2 * hidden_size, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)


class Eagle3MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Eagle3DecoderLayer(nn.Module):
    """The ``midlayer`` of an EAGLE-3 checkpoint, split in two halves around the attention so that the caller
    decides which keys a query sees (`attend`)."""

    def __init__(self, rope_config: LlamaConfig, intermediate_size: int):
        super().__init__()
        hidden, eps = rope_config.hidden_size, rope_config.rms_norm_eps
        self.input_layernorm = LlamaRMSNorm(hidden, eps=eps)
        self.hidden_norm = LlamaRMSNorm(hidden, eps=eps)
        self.self_attn = Eagle3Attention(hidden, rope_config.num_attention_heads, rope_config.num_key_value_heads,
                                         rope_config.head_dim)
        self.post_attention_layernorm = LlamaRMSNorm(hidden, eps=eps)
        self.mlp = Eagle3MLP(hidden, intermediate_size)
        self.rope_config = rope_config
        self._inv_freq: dict = {}  # per device; computed, never saved (nothing of the rotary embedding is stored)

    def project(
        self, token_embeds: torch.Tensor, hidden_in: torch.Tensor, positions: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value of new tokens. token_embeds, hidden_in: (B, Q, H); positions: (B, Q) long ->
        q (B, Q, heads, D), k and v (B, Q, kv_heads, D), rotary embedding applied to q and k."""
        attn = self.self_attn
        x = torch.cat([self.input_layernorm(token_embeds), self.hidden_norm(hidden_in)], dim=-1)
        batch, queries = x.shape[:2]
        q = attn.q_proj(x).view(batch, queries, attn.num_heads, attn.head_dim)
        k = attn.k_proj(x).view(batch, queries, attn.num_kv_heads, attn.head_dim)
        v = attn.v_proj(x).view(batch, queries, attn.num_kv_heads, attn.head_dim)
        cos, sin = self.rotary(positions, q.dtype)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, Q, 1, D) of the base model's rotary embedding (rope type and scaling included)."""
        device = positions.device
        if device not in self._inv_freq:
            config = self.rope_config
            rope_type = config.rope_parameters.get("rope_type", "default")
            init = ROPE_INIT_FUNCTIONS.get(rope_type) if rope_type != "default" else None
            if init is None:
                base, dim = config.rope_parameters["rope_theta"], config.head_dim
                inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
                self._inv_freq[device] = (inv_freq, 1.0)
            else:
                self._inv_freq[device] = init(config, device)
        inv_freq, scaling = self._inv_freq[device]
        angles = positions[..., None].float() * inv_freq  # (B, Q, D / 2)
        angles = torch.cat([angles, angles], dim=-1)
        return ((angles.cos() * scaling).to(dtype)[:, :, None], (angles.sin() * scaling).to(dtype)[:, :, None])

    def finish(self, attention_out: torch.Tensor, hidden_in: torch.Tensor) -> torch.Tensor:
        """The layer's pre-norm output (B, Q, H) from the attention output (B, Q, heads * D)."""
        residual = hidden_in + self.self_attn.o_proj(attention_out)
        return residual + self.mlp(self.post_attention_layernorm(residual))
