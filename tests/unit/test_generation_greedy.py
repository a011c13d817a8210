"""Greedy speculative decoding must reproduce plain greedy decoding token for token."""

from __future__ import annotations

import random

import pytest
import torch

from drafter import DrafterMismatchError
from drafter.engine import AutoregressiveGenerator, use_small_batch_kernels
from drafter.generation import SpeculativeGenerator
from tests.fakes import OracleDrafter, hf_greedy, make_tiny_gpt2, make_tiny_llama, make_tiny_qwen2, make_tiny_redrafter

pytestmark = pytest.mark.usefixtures("single_thread")

FAMILIES = {"llama": make_tiny_llama, "gpt2": make_tiny_gpt2, "qwen2": make_tiny_qwen2}


def random_case(seed: int):
    rng = random.Random(seed)
    family = list(FAMILIES)[seed % len(FAMILIES)]
    base = FAMILIES[family](seed=seed)
    if seed % 4 >= 2:  # half the cases on the small-batch CPU kernels the embedded model runs with
        use_small_batch_kernels(base)
    vocab = base.get_input_embeddings().num_embeddings
    batch = rng.randint(1, 4)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 12))] for _ in range(batch)]
    return rng, base, prompts


def pick_eos(rng: random.Random, continuations) -> int:
    """A token that some reference continuation emits mid-way, so EOS really cuts a sequence short."""
    seq = continuations[rng.randrange(len(continuations))]
    return seq[rng.randrange(1, len(seq) - 1)]


@pytest.mark.parametrize("seed", range(12))
def test_random_drafter_matches_transformers_greedy(seed: int):
    rng, base, prompts = random_case(seed)
    width, length = rng.randint(1, 4), rng.randint(2, 5)
    max_new = rng.randint(6, 20)
    eos = pick_eos(rng, [hf_greedy(base, p, max_new) for p in prompts]) if seed % 2 == 0 else None
    expected = [hf_greedy(base, p, max_new, eos_token_id=eos) for p in prompts]

    plain = AutoregressiveGenerator(base).generate(prompts, max_new_tokens=max_new, eos_token_id=eos)
    assert plain.sequences == expected
    assert plain.accepted_tokens_per_step == 1.0 or plain.num_steps == 0

    drafter = make_tiny_redrafter(base, seed=seed)
    spec = SpeculativeGenerator(base, drafter, beam_width=width, beam_length=length)
    result = spec.generate(prompts, max_new_tokens=max_new, eos_token_id=eos)
    assert result.sequences == expected


@pytest.mark.parametrize("seed", range(12))
def test_oracle_drafter_accepts_many_tokens_and_stays_exact(seed: int):
    """A drafter that mostly knows the answer: long accepted paths, partial acceptance, KV compaction."""
    rng, base, prompts = random_case(100 + seed)
    width, length = rng.randint(1, 4), rng.randint(2, 5)
    max_new = rng.randint(10, 30)
    continuations = [hf_greedy(base, p, max_new + 6) for p in prompts]
    drafter = OracleDrafter(base, [p + c for p, c in zip(prompts, continuations)], wrong_every=rng.choice([0, 2, 3]))
    eos = pick_eos(rng, continuations) if seed % 3 == 0 else None
    expected = [hf_greedy(base, p, max_new, eos_token_id=eos) for p in prompts]

    spec = SpeculativeGenerator(base, drafter, beam_width=width, beam_length=length)
    result = spec.generate(prompts, max_new_tokens=max_new, eos_token_id=eos)
    assert result.sequences == expected
    assert result.accepted_tokens_per_step > 1.3
    assert result.num_steps < max(len(s) for s in expected)
    counts = result.accepted_by_position
    assert len(counts) == length - 1 and all(a >= b for a, b in zip(counts, counts[1:]))


def test_full_oracle_reaches_beam_length():
    base = make_tiny_llama(seed=3)
    prompts = [[5, 6, 7], [9], [10, 11, 12, 13, 14, 15]]
    continuations = [hf_greedy(base, p, 40) for p in prompts]
    drafter = OracleDrafter(base, [p + c for p, c in zip(prompts, continuations)])
    result = SpeculativeGenerator(base, drafter, beam_width=2, beam_length=5).generate(prompts, max_new_tokens=33)
    assert result.sequences == [c[:33] for c in continuations]
    # 1 token from the prefill, then 5 per step: 32 = 6 * 5 + 2 -> 7 steps, the last one truncated.
    assert result.num_steps == 7 and result.accepted_tokens_per_step == 5.0


def test_input_formats_streaming_and_options():
    base = make_tiny_llama(seed=1)
    drafter = make_tiny_redrafter(base, seed=1)
    prompts = [[4, 5, 6, 7, 8], [9, 10], [11, 12, 13]]
    expected = [hf_greedy(base, p, 12) for p in prompts]
    spec = SpeculativeGenerator(base, drafter, beam_width=3, beam_length=4)

    # Right-padded tensor + mask, and left-padded tensor + mask.
    right = torch.zeros(3, 5, dtype=torch.long)
    left = torch.zeros(3, 5, dtype=torch.long)
    mask_r, mask_l = torch.zeros(3, 5, dtype=torch.long), torch.zeros(3, 5, dtype=torch.long)
    for i, p in enumerate(prompts):
        right[i, : len(p)], mask_r[i, : len(p)] = torch.tensor(p), 1
        left[i, 5 - len(p) :], mask_l[i, 5 - len(p) :] = torch.tensor(p), 1
    assert spec.generate(right, attention_mask=mask_r, max_new_tokens=12).sequences == expected
    assert spec.generate(left, attention_mask=mask_l, max_new_tokens=12).sequences == expected

    # Streaming: the callback sees every token exactly once, in order.
    streamed = [[] for _ in prompts]
    calls = []

    def on_step(new_tokens):
        calls.append(new_tokens)
        for acc, new in zip(streamed, new_tokens):
            acc.extend(new)

    result = spec.generate(prompts, max_new_tokens=12, callback=on_step)
    assert streamed == expected == result.sequences
    assert len(calls) == result.num_steps + 1 and len(calls[0]) == len(prompts)

    # Fixed-size trees, a list of EOS ids, and tiny budgets.
    static = SpeculativeGenerator(base, drafter, beam_width=3, beam_length=4, static_tree_size=True)
    assert static.generate(prompts, max_new_tokens=12).sequences == expected
    eos = [expected[0][3], expected[2][5]]
    expected_eos = [hf_greedy(base, p, 12, eos_token_id=eos) for p in prompts]
    assert spec.generate(prompts, max_new_tokens=12, eos_token_id=eos).sequences == expected_eos
    first_eos = expected[1][0]  # sequence 1 ends right after the prefill
    expected_first = [hf_greedy(base, p, 12, eos_token_id=first_eos) for p in prompts]
    assert expected_first[1] == [first_eos]
    assert spec.generate(prompts, max_new_tokens=12, eos_token_id=first_eos).sequences == expected_first
    assert spec.generate(prompts, max_new_tokens=0).sequences == [[], [], []]
    one = spec.generate(prompts, max_new_tokens=1)
    assert one.sequences == [e[:1] for e in expected] and one.num_steps == 0
    assert one.timing.total_s >= one.timing.prefill_s > 0


@pytest.mark.parametrize("make_model", [make_tiny_llama, make_tiny_gpt2])
def test_eager_attention(make_model):
    """The float additive mask path (eager attention) is as exact as the boolean one (SDPA)."""
    base = make_model(seed=5)
    base.set_attn_implementation("eager")
    prompts = [[4, 5, 6], [7], [8, 9, 10, 11, 12]]
    continuations = [hf_greedy(base, p, 20) for p in prompts]
    drafter = OracleDrafter(base, [p + c for p, c in zip(prompts, continuations)], wrong_every=2)
    result = SpeculativeGenerator(base, drafter, beam_width=2, beam_length=4).generate(prompts, max_new_tokens=14)
    assert result.sequences == [c[:14] for c in continuations]
    assert AutoregressiveGenerator(base).generate(prompts, max_new_tokens=14).sequences == result.sequences


def test_reduced_vocabulary_drafter():
    base = make_tiny_llama(seed=2)
    drafter = make_tiny_redrafter(base, seed=2, draft_vocab_size=24)
    drafter.set_draft_vocabulary(torch.randperm(96, generator=torch.Generator().manual_seed(0))[:24])
    prompts = [[7, 8, 9], [20]]
    result = SpeculativeGenerator(base, drafter, beam_width=4, beam_length=3).generate(prompts, max_new_tokens=15)
    assert result.sequences == [hf_greedy(base, p, 15) for p in prompts]


def test_configuration_errors():
    base = make_tiny_llama()
    drafter = make_tiny_redrafter(base)  # 4 draft steps
    with pytest.raises(ValueError, match="draft steps"):
        SpeculativeGenerator(base, drafter, beam_length=6)
    with pytest.raises(ValueError):
        SpeculativeGenerator(base, drafter, beam_width=0)
    with pytest.raises(DrafterMismatchError):
        SpeculativeGenerator(make_tiny_llama(vocab_size=64), drafter)
    with pytest.raises(ValueError, match="at least one token"):
        SpeculativeGenerator(base, drafter).generate([[1], []])
