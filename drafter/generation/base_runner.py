"""Thin access layer to a Hugging Face causal LM: its decoder, embeddings, LM head, and the batched prefill.

The decoder (`model.base_model`, e.g. LlamaModel / GPT2Model) is called directly so the LM head is applied
only to the positions whose logits are needed (the last prompt position, the tree nodes), never to a whole
prompt.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from transformers import DynamicCache, PreTrainedModel

from .kv_cache import SlotKVCache, prefill_mask

Prompts = Union[Sequence[Sequence[int]], torch.Tensor]


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


class BaseModelRunner:
    """Calls into the frozen base model with explicit masks, positions and a `SlotKVCache`."""

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.decoder = model.base_model
        if self.decoder is model:
            raise ValueError("Expected a *ForCausalLM model with a separate decoder (model.base_model)")
        self.embed_tokens = model.get_input_embeddings()
        self.lm_head = model.get_output_embeddings()
        config = model.config.get_text_config()
        self.softcap = getattr(config, "final_logit_softcapping", None)
        attn = getattr(model.config, "_attn_implementation", None) or "eager"
        if attn not in ("sdpa", "eager"):
            raise NotImplementedError(
                f"attn_implementation={attn!r}: tree verification needs a custom 4-D attention mask, which only "
                "'sdpa' and 'eager' take; load the base model with attn_implementation='sdpa'"
            )

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def mask_dtype(self) -> torch.dtype:
        """SDPA takes a boolean mask (smaller than a float one for long prompts); eager adds a float mask."""
        return torch.bool if self.model.config._attn_implementation == "sdpa" else self.dtype

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, cache: SlotKVCache
    ) -> torch.Tensor:
        """One decoder pass. input_ids, position_ids (B, Q); attention_mask (B, 1, Q, S + Q) -> hidden (B, Q, H).

        The Q new tokens' K/V are appended to the cache (slots S .. S+Q-1).
        """
        out = self.decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache.cache,
            use_cache=True,
        )
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Base-model logits (..., V) in float32 for last hidden states (..., H)."""
        logits = self.lm_head(hidden).float()
        if self.softcap:  # e.g. Gemma-2
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def prefill(self, prompts: List[List[int]]) -> Tuple[SlotKVCache, torch.Tensor]:
        """Run the left-padded prompts through the decoder.

        Returns:
            The filled cache (sequence b in slots [P - P_b, P)) and the (B, H) hidden state at each prompt's
            last token.
        """
        device, batch = self.device, len(prompts)
        length = max(len(p) for p in prompts)
        starts = [length - len(p) for p in prompts]
        input_ids = torch.zeros(batch, length, dtype=torch.long)
        for row, (prompt, start) in enumerate(zip(prompts, starts)):
            input_ids[row, start:] = torch.tensor(prompt, dtype=torch.long)
        input_ids = input_ids.to(device)
        cache = SlotKVCache(DynamicCache(config=self.model.config), starts, [0] * batch, device)
        cache.check_layers()
        position_ids = (torch.arange(length, device=device)[None, :] - cache.starts[:, None]).clamp(min=0)
        hidden = self.forward(input_ids, prefill_mask(cache.starts, length, self.mask_dtype), position_ids, cache)
        cache.check_layers()  # lazily created layers are only known now
        cache.ends_host = [length] * batch
        cache.ends = torch.full((batch,), length, dtype=torch.long, device=device)
        return cache, hidden[:, -1]
