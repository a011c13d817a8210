"""Tiny random base models and drafters built from configs (no downloads), shared by the tests."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from drafter import RecurrentDraftingConfig, RecurrentDraftingModel


def make_tiny_llama(
    seed: int = 0, vocab_size: int = 96, hidden_size: int = 32, num_layers: int = 2, **config_overrides
) -> LlamaForCausalLM:
    """`config_overrides` replace LlamaConfig fields (e.g. a real tokenizer's pad/eos ids)."""
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        # a wide init makes next-token distributions peaked, so greedy ties are practically impossible
        initializer_range=0.5,
    )
    config = LlamaConfig(**{**fields, **config_overrides})
    return LlamaForCausalLM(config).eval()


def make_tiny_gpt2(seed: int = 0, vocab_size: int = 96, hidden_size: int = 32, num_layers: int = 2) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=4,
        n_positions=512,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.5,
    )
    return GPT2LMHeadModel(config).eval()


def make_tiny_redrafter(base_model, seed: int = 0, **config_overrides) -> RecurrentDraftingModel:
    torch.manual_seed(seed)
    config = RecurrentDraftingConfig(
        hidden_size=base_model.config.get_text_config().hidden_size,
        vocab_size=base_model.get_input_embeddings().num_embeddings,
        base_model_name_or_path="tiny-random",
        **{"drafter_num_layers": 1, "drafter_predict_n_tokens": 4, **config_overrides},
    )
    return RecurrentDraftingModel(config).eval()
