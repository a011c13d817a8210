"""The embedded base model: converted once, cached as safetensors, and it answers sensibly."""

from __future__ import annotations

import os

import pytest
import torch

from drafter.engine.loading import EMBEDDED_BASE_MODEL, load_base_model, load_tokenizer, resolve_model_path

pytestmark = pytest.mark.e2e


def test_embedded_model_is_cached_as_safetensors():
    path, kwargs = resolve_model_path(EMBEDDED_BASE_MODEL)
    assert kwargs == {}
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    base = load_base_model(EMBEDDED_BASE_MODEL)
    tokenizer = load_tokenizer(EMBEDDED_BASE_MODEL)
    assert base.config.name_or_path == EMBEDDED_BASE_MODEL
    assert base.config.hidden_size == 576 and base.get_input_embeddings().num_embeddings == 49152
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True,
    )
    with torch.no_grad():
        out = base.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
