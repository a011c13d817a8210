"""Continuous batching (`generate(..., max_batch_size=K)`): at most K sequences decode together and waiting prompts
join as rows finish; every answer is what decoding that prompt alone gives (greedy: token for token, plain and
speculative; seeded sampling: the same draws, in float64)."""

from __future__ import annotations

import random

import pytest
import torch

from drafter.engine import AutoregressiveGenerator
from drafter.generation import SpeculativeGenerator
from tests.fakes import hf_greedy, make_tiny_llama, make_tiny_redrafter

pytestmark = pytest.mark.usefixtures("single_thread")


def ragged_prompts(count: int, seed: int = 0):
    rng = random.Random(seed)
    return [[rng.randrange(3, 96) for _ in range(rng.randint(1, 20))] for _ in range(count)]


def pick_eos(base, prompts):
    """A token that ends some answers early, so rows finish at different steps and others join."""
    return hf_greedy(base, prompts[0], 8)[4]


@pytest.mark.parametrize("max_batch_size", [1, 3, 5])
def test_plain_greedy_equals_each_prompt_alone(max_batch_size: int):
    base = make_tiny_llama(seed=4)
    prompts = ragged_prompts(11)
    eos = pick_eos(base, prompts)
    expected = [hf_greedy(base, p, 14, eos_token_id=eos) for p in prompts]
    assert len({len(e) for e in expected}) > 1  # rows really finish apart
    result = AutoregressiveGenerator(base).generate(prompts, max_new_tokens=14, eos_token_id=eos,
                                                    max_batch_size=max_batch_size)
    assert result.sequences == expected


def test_speculative_greedy_with_joining_rows_is_lossless():
    base = make_tiny_llama(seed=5)
    prompts = ragged_prompts(9, seed=1)
    eos = pick_eos(base, prompts)
    expected = [hf_greedy(base, p, 16, eos_token_id=eos) for p in prompts]
    spec = SpeculativeGenerator(base, make_tiny_redrafter(base, seed=2), beam_width=3, beam_length=4)
    result = spec.generate(prompts, max_new_tokens=16, eos_token_id=eos, max_batch_size=4)
    assert result.sequences == expected


def test_seeded_sampling_does_not_depend_on_batching():
    base = make_tiny_llama(seed=6).double()  # float64: batch-shape rounding noise cannot move a draw
    prompts = ragged_prompts(10, seed=2)
    seeds = list(range(100, 110))
    kwargs = dict(max_new_tokens=12, temperature=1.0, row_seeds=seeds)
    alone = [AutoregressiveGenerator(base).generate([p], **{**kwargs, "row_seeds": [s]}).sequences[0]
             for p, s in zip(prompts, seeds)]
    continuous = AutoregressiveGenerator(base).generate(prompts, max_batch_size=3, **kwargs).sequences
    assert continuous == alone


def test_finish_callback_sees_every_prompt_once_and_bad_sizes_fail():
    base = make_tiny_llama(seed=4)
    prompts = ragged_prompts(7)
    finished = []
    AutoregressiveGenerator(base).generate(prompts, max_new_tokens=6, max_batch_size=2,
                                           on_finish=lambda row, tokens: finished.append((row, len(tokens))))
    assert sorted(finished) == [(i, 6) for i in range(7)]
    with pytest.raises(ValueError, match="max_batch_size"):
        AutoregressiveGenerator(base).generate(prompts, max_batch_size=0)


def test_merged_cache_keeps_every_rows_slots():
    from drafter.engine import BaseLM

    base = make_tiny_llama(seed=4)
    lm = BaseLM(base)
    short, long_ = [[5, 6]], [[7, 8, 9, 10, 11]]
    a, _ = lm.prefill(short)
    b, _ = lm.prefill(long_)
    keys_a = a.cache.layers[0].keys.clone()
    a.merge(b)
    assert a.num_slots == 5 and a.starts_host == [3, 0] and a.ends_host == [5, 5]
    assert torch.equal(a.cache.layers[0].keys[0, :, 3:], keys_a[0])
    assert torch.equal(a.cache.layers[0].keys[1], b.cache.layers[0].keys[0])
