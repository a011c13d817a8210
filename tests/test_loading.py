"""Base-model loading: local folders, PEFT adapters, GGUF paths, the embedded default."""

from __future__ import annotations

import os

import pytest
import torch
from peft import LoraConfig, get_peft_model

from drafter.models.loading import (
    EMBEDDED_BASE_MODEL,
    base_model_config,
    load_base_model,
    load_tokenizer,
    resolve_model_path,
)
from tests.tiny_models import make_tiny_llama


def test_local_folder_loads_frozen(tmp_path):
    tiny = make_tiny_llama()
    tiny.save_pretrained(tmp_path / "base")
    base = load_base_model(str(tmp_path / "base"))
    assert not any(p.requires_grad for p in base.parameters())
    assert not base.training
    ids = torch.randint(0, 96, (1, 7))
    torch.testing.assert_close(base(ids).logits, tiny(ids).logits)
    assert base_model_config(str(tmp_path / "base")).hidden_size == 32


def test_peft_adapter_is_merged_into_its_base(tmp_path):
    tiny = make_tiny_llama()
    tiny.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(
        make_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(0, 96, (1, 7))
    with torch.no_grad():
        expected = peft_model(ids).logits
        merged = load_base_model(str(tmp_path / "adapter"))
        assert not torch.allclose(expected, tiny(ids).logits)  # the adapter really changes the model
        torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-4, atol=1e-4)
    assert base_model_config(str(tmp_path / "adapter")).hidden_size == 32


def test_gguf_paths_resolve_and_missing_files_fail_clearly(tmp_path):
    gguf = tmp_path / "model.Q4.gguf"
    gguf.write_bytes(b"")
    assert resolve_model_path(str(gguf)) == (str(tmp_path), {"gguf_file": "model.Q4.gguf"})
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match="Unknown dtype"):
        load_base_model(str(tmp_path), dtype="float8")


@pytest.mark.e2e
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
