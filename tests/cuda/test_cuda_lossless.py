"""The CUDA tier: the same lossless guarantees on a GPU (skipped cleanly without one; see tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from drafter import ArcticLSTMSpeculator, ArcticLSTMSpeculatorConfig
from drafter.engine import AutoregressiveGenerator
from drafter.generation import SpeculativeGenerator
from tests.fakes import make_tiny_llama, make_tiny_redrafter

pytestmark = pytest.mark.cuda

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15]]


def cuda_models():
    base = make_tiny_llama(seed=2).to("cuda")
    return base, make_tiny_redrafter(base, seed=3).to("cuda")


def test_greedy_speculative_equals_plain_greedy_on_cuda_batched():
    base, drafter = cuda_models()
    plain = AutoregressiveGenerator(base).generate(PROMPTS, max_new_tokens=24)
    for beam_width, beam_length in ((1, 2), (2, 3), (4, 5)):
        spec = SpeculativeGenerator(base, drafter, beam_width=beam_width, beam_length=beam_length)
        assert spec.generate(PROMPTS, max_new_tokens=24).sequences == plain.sequences


def test_greedy_lossless_with_static_tree_and_arctic_topk_on_cuda():
    base, _ = cuda_models()
    config = ArcticLSTMSpeculatorConfig(hidden_size=32, vocab_size=96, n_speculator_heads=3, speculator_width=32)
    torch.manual_seed(0)
    arctic = ArcticLSTMSpeculator(config).to("cuda").eval()
    plain = AutoregressiveGenerator(base).generate(PROMPTS, max_new_tokens=20)
    for kwargs in ({"top_k_tokens_per_head": [2, 2, 1]}, {"beam_width": 3, "static_tree_size": True}):
        spec = SpeculativeGenerator(base, arctic, **kwargs)
        assert spec.generate(PROMPTS, max_new_tokens=20).sequences == plain.sequences


def test_sampling_runs_on_cuda_and_is_seeded():
    base, drafter = cuda_models()
    spec = SpeculativeGenerator(base, drafter, beam_width=2, beam_length=3)
    first = spec.generate(PROMPTS, max_new_tokens=16, temperature=0.8, seed=1).sequences
    again = spec.generate(PROMPTS, max_new_tokens=16, temperature=0.8, seed=1).sequences
    assert first == again and all(len(s) == 16 for s in first)
