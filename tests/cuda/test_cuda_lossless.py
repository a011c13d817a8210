"""The CUDA tier: the same lossless guarantees on a GPU (skipped cleanly without one; see tests/conftest.py):
greedy speculative = plain greedy for ReDrafter, Arctic LSTM and EAGLE-3 (beam, static and per-head top-k trees) on a
batch of prompts of different lengths, the exact sampling distribution, and a few bf16 training steps per family."""

from __future__ import annotations

import collections

import pytest
import torch

from drafter import ArcticLSTMSpeculator, ArcticLSTMSpeculatorConfig
from drafter.engine import AutoregressiveGenerator, SamplingConfig
from drafter.generation import SpeculativeGenerator
from tests.fakes import BigramDrafter, make_tiny_eagle3, make_tiny_llama, make_tiny_redrafter
from tests.unit.test_generation_sampling import chi_square_p_value, exact_sequence_distribution, flat_tiny_llama
from tests.unit.test_training import make_trainer

pytestmark = pytest.mark.cuda

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15]]  # different lengths: left padding, rows finishing apart


def tiny_models(device: str):
    base = make_tiny_llama(seed=2).to(device)
    return base, make_tiny_redrafter(base, seed=3).to(device)


def tiny_arctic(device: str, **overrides) -> ArcticLSTMSpeculator:
    settings = dict(hidden_size=32, vocab_size=96, n_speculator_heads=3, speculator_width=32)
    settings.update(overrides)
    torch.manual_seed(0)
    return ArcticLSTMSpeculator(ArcticLSTMSpeculatorConfig(**settings)).to(device).eval()


def test_greedy_speculative_equals_plain_greedy_batched(tier_device):
    base, drafter = tiny_models(tier_device)
    plain = AutoregressiveGenerator(base).generate(PROMPTS, max_new_tokens=24)
    for beam_width, beam_length in ((1, 2), (2, 3), (4, 5)):
        spec = SpeculativeGenerator(base, drafter, beam_width=beam_width, beam_length=beam_length)
        assert spec.generate(PROMPTS, max_new_tokens=24).sequences == plain.sequences


def test_greedy_lossless_with_static_tree_and_arctic_topk(tier_device):
    base, _ = tiny_models(tier_device)
    arctic = tiny_arctic(tier_device)
    plain = AutoregressiveGenerator(base).generate(PROMPTS, max_new_tokens=20)
    for kwargs in ({"top_k_tokens_per_head": [2, 2, 1]}, {"beam_width": 3, "static_tree_size": True}):
        spec = SpeculativeGenerator(base, arctic, **kwargs)
        assert spec.generate(PROMPTS, max_new_tokens=20).sequences == plain.sequences


def test_greedy_lossless_with_eagle3_context_cache(tier_device):
    base, _ = tiny_models(tier_device)
    eagle3 = make_tiny_eagle3(base, seed=4).to(tier_device)
    plain = AutoregressiveGenerator(base).generate(PROMPTS, max_new_tokens=20)
    for kwargs in ({"beam_width": 2, "beam_length": 4}, {"top_k_tokens_per_head": [2, 1, 1]}):
        spec = SpeculativeGenerator(base, eagle3, **kwargs)
        assert spec.generate(PROMPTS, max_new_tokens=20, max_batch_size=2).sequences == plain.sequences


def test_sampling_matches_the_exact_model_distribution(tier_device):
    base = flat_tiny_llama()
    sampling = SamplingConfig(temperature=0.9, top_k=8)
    prompt, num_tokens, copies = [3, 9, 4, 11], 3, 4000
    exact = exact_sequence_distribution(base, prompt, num_tokens, sampling)  # enumerated on the CPU
    base = base.to(tier_device)
    spec = SpeculativeGenerator(base, BigramDrafter(base).to(tier_device), beam_width=3, beam_length=3)
    result = spec.generate([prompt] * copies, max_new_tokens=num_tokens, temperature=sampling.temperature,
                           top_k=sampling.top_k, seed=11)
    counts = collections.Counter(tuple(s) for s in result.sequences)
    assert chi_square_p_value(counts, exact, copies) > 1e-4
    assert result.accepted_by_position[0] > 0.2 * copies


@pytest.mark.parametrize("family", ["redrafter", "arctic_lstm", "eagle3"])
def test_a_few_bf16_training_steps(tmp_path, tier_device, family):
    base = make_tiny_llama().to(tier_device)
    drafter = {"redrafter": lambda: make_tiny_redrafter(base), "eagle3": lambda: make_tiny_eagle3(base),
               "arctic_lstm": lambda: tiny_arctic("cpu", n_speculator_heads=2)}[family]()
    trainer = make_trainer(tmp_path, base, drafter.train(), max_steps=12, learning_rate=1e-2, bf16=True,
                           use_cpu=tier_device == "cpu", logging_steps=4)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert torch.isfinite(torch.tensor([before, after])).all()
    assert after < before
    assert all(p.device.type == tier_device for p in trainer.model.parameters())
