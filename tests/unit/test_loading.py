"""Base-model loading: local folders, PEFT adapters, GGUF paths, the embedded default."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from drafter.engine.loading import (
    base_model_config,
    load_base_model,
    resolve_model_path,
)
from tests.fakes import make_tiny_llama


def test_local_folder_loads_frozen(tmp_path):
    tiny = make_tiny_llama()
    tiny.save_pretrained(tmp_path / "base")
    base = load_base_model(str(tmp_path / "base"))
    assert not any(p.requires_grad for p in base.parameters())
    assert not base.training
    ids = torch.randint(0, 96, (1, 7))
    # The loaded model runs the few-row CPU kernels (engine/kernels.py): the same products, other rounding.
    torch.testing.assert_close(base(ids).logits, tiny(ids).logits, rtol=1e-4, atol=1e-4)
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


