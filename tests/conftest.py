"""Shared fixtures and markers: `single_thread` for the tiny-model tests, and the `cuda` tier, skipped cleanly
where no GPU is present (DRAFTER_CUDA_TIER_ON_CPU=1 runs that tier on the CPU instead: a dry run of the tests
themselves on a machine without a GPU)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

CUDA_TIER_ON_CPU = os.environ.get("DRAFTER_CUDA_TIER_ON_CPU") == "1"


def pytest_collection_modifyitems(config, items):
    skip_cuda = not (torch.cuda.is_available() or CUDA_TIER_ON_CPU)
    skip_vllm = importlib.util.find_spec("vllm") is None
    for item in items:
        if skip_cuda and "cuda" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (the `cuda` tier)"))
        if skip_vllm and "vllm" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs vLLM (the `vllm` tier: .venv-vllm/bin/python -m pytest)"))


@pytest.fixture(scope="session")
def tier_device() -> str:
    """The `cuda` tier's device: cuda, or cpu for its dry run."""
    return "cpu" if CUDA_TIER_ON_CPU and not torch.cuda.is_available() else "cuda"


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models run fastest (and least noisily on a shared machine) on one intra-op thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def embedded_random_drafter(tmp_path_factory):
    """An untrained drafter for the embedded model (the CLI's behaviour, not its speed, is under test)."""
    from drafter import AutoDrafter, RecurrentDraftingConfig
    from drafter.engine.loading import EMBEDDED_BASE_MODEL

    path = tmp_path_factory.mktemp("drafter")
    config = RecurrentDraftingConfig(
        hidden_size=576, vocab_size=49152, base_model_name_or_path=EMBEDDED_BASE_MODEL,
        exit_dim_multiplier=1.0, drafter_num_layers=1, drafter_predict_n_tokens=2, draft_vocab_size=512,
    )
    AutoDrafter.from_config(config).save_pretrained(path)
    return str(path)
