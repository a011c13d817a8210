"""SDPA attention for multi-token forwards over a masked cache, without repeating grouped K/V heads.

transformers' SDPA path repeats the K/V of grouped-query models (Llama, Qwen, SmolLM) to every query head
(`repeat_kv`: a copy of the whole cache, every layer) whenever a forward has more than one query and a mask, i.e.
every tree verification and every left-padded prefill. On a CPU, torch's SDPA takes the grouped heads as they are
(`enable_gqa=True`) with the same result: one query head's scores against its group's K/V are the same
operations either way. That saves ~8-12 % of a tree-verification step of the embedded model at 300 cached tokens.

`grouped_kv_attention(config)` switches a model to that function for the duration of one forward (BaseLM's own
calls), so the user's model object is left as it was for everything else (`model.generate`, training).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

import torch
from transformers import AttentionInterface, PretrainedConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

GROUPED_KV_SDPA = "drafter_grouped_kv_sdpa"


def grouped_kv_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    is_causal: Optional[bool] = None,
    **kwargs,
) -> Tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (B, H, Q, D), key / value (B, H_kv, S, D), a 4-D mask
    -> ((B, Q, H, D), None). Everything but a masked multi-query forward of a grouped model on a CPU goes to
    transformers' own SDPA function (it already avoids the copy for a single query, and on CUDA a mask with
    `enable_gqa` would leave the fused kernels)."""
    groups = getattr(module, "num_key_value_groups", 1)
    own_case = (groups > 1 and query.shape[2] > 1 and attention_mask is not None and query.device.type == "cpu"
                and kwargs.get("softcap") is None and kwargs.get("position_bias") is None
                and not kwargs.get("output_attentions", False))
    if not own_case:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(GROUPED_KV_SDPA, grouped_kv_sdpa_attention)
# transformers builds the masks of a 2-D attention mask by implementation name (and, for a name it does not know,
# silently builds none): the same masks as SDPA's.
AttentionMaskInterface.register(GROUPED_KV_SDPA, sdpa_mask)


@contextmanager
def grouped_kv_attention(config: PretrainedConfig) -> Iterator[None]:
    """Within the block, a model whose (decoder) `config` selects SDPA uses `grouped_kv_sdpa_attention`."""
    if config._attn_implementation != "sdpa":
        yield
        return
    # The internal field, not the property: its setter re-validates the choice and walks the sub-configs.
    config._attn_implementation_internal = GROUPED_KV_SDPA
    try:
        yield
    finally:
        config._attn_implementation_internal = "sdpa"
