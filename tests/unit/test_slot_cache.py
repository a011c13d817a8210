"""The slot cache's storage (in-place appends, growth, refusal of layers it cannot compact) and the grouped-K/V
SDPA attention BaseLM runs multi-token forwards with."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config

from drafter.engine import AutoregressiveGenerator, BaseLM, SamplingConfig, attention
from drafter.engine.kv_cache import HEADROOM_SLOTS, SlotLayer, empty_slot_cache
from drafter.engine.result import PhaseTimer
from drafter.generation import build_tree
from tests.fakes import make_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")
GREEDY = SamplingConfig()
TIMER = PhaseTimer(torch.device("cpu"))


def storage_pointers(cache):
    return [(layer._key_storage.data_ptr(), layer._value_storage.data_ptr()) for layer in cache.layers]


def test_decoding_steps_write_into_the_same_storage_until_it_is_full():
    base = make_tiny_llama(seed=3)
    generator = AutoregressiveGenerator(base)
    state = generator.prefill([[5, 6, 7], [8, 9]], GREEDY)
    cache = state.cache
    pointers = storage_pointers(cache)
    capacity = cache.layers[0].capacity
    assert capacity == 3 + HEADROOM_SLOTS
    emitted = []
    for _ in range(capacity - cache.num_slots):  # fill the storage exactly
        emitted.append(generator.decode_step(state, GREEDY, TIMER).new_tokens)
    assert cache.num_slots == capacity and storage_pointers(cache) == pointers  # no step copied the cache
    before = [layer.keys.clone() for layer in cache.layers]
    emitted.append(generator.decode_step(state, GREEDY, TIMER).new_tokens)  # one more slot: the storage grows
    assert storage_pointers(cache) != pointers and cache.layers[0].capacity >= 2 * capacity
    for layer, keys in zip(cache.layers, before):
        assert torch.equal(layer.keys[:, :, :capacity], keys)
    for _ in range(3):
        emitted.append(generator.decode_step(state, GREEDY, TIMER).new_tokens)
    # The tokens are those of one `generate` call (no EOS: it would stop there, the steps above would not).
    reference = generator.generate([[5, 6, 7], [8, 9]], max_new_tokens=len(emitted) + 1, eos_token_id=None)
    tokens = [[row[0] for row in emitted_row] for emitted_row in zip(*emitted)]
    assert all(ref[1 : 1 + len(t)] == t for ref, t in zip(reference.sequences, tokens))


def test_layers_that_cannot_be_compacted_are_refused():
    config = Qwen2Config(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=96, use_sliding_window=True, sliding_window=4,
                         max_window_layers=0)
    with pytest.raises(NotImplementedError, match="DynamicSlidingWindowLayer"):
        empty_slot_cache(config)


def test_a_tree_forward_with_grouped_kv_attention_equals_repeated_kv_heads(monkeypatch):
    base = make_tiny_llama(seed=5, num_layers=3)
    assert base.config.num_key_value_heads < base.config.num_attention_heads
    lm = BaseLM(base)
    calls = []
    original = attention.torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(kwargs.get("enable_gqa", False))
        return original(*args, **kwargs)

    monkeypatch.setattr(attention.torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    beams = torch.tensor([[[11, 12, 13], [11, 14, 15], [11, 12, 16]]])
    tree = build_tree(beams)

    def tree_hidden(grouped: bool) -> torch.Tensor:
        cache, _ = lm.prefill([[3, 4, 5, 6, 7, 8]])
        mask = cache.attention_mask(tree.ancestor_mask, lm.mask_dtype)
        positions = tree.position_ids(cache.context_lengths)
        if grouped:
            return lm.forward(tree.tokens, mask, positions, cache)
        # transformers' own SDPA path (repeat_kv), the same inputs
        return base.base_model(input_ids=tree.tokens, attention_mask=mask, position_ids=positions, use_cache=True,
                               **{lm.cache_argument: cache.cache}).last_hidden_state

    with torch.no_grad():
        calls.clear()
        grouped = tree_hidden(grouped=True)
        assert calls and all(calls)  # every layer of the prefill and of the tree forward took the grouped heads
        repeated = tree_hidden(grouped=False)
    torch.testing.assert_close(grouped, repeated, rtol=1e-6, atol=1e-6)
    assert base.config._attn_implementation == "sdpa"  # the user's model is left as it was


def test_keys_assigned_by_transformers_own_layer_methods_become_the_storage():
    layer = SlotLayer()
    first, second = torch.randn(2, 3, 4, 8), torch.randn(1, 3, 1, 8)
    layer.update(first, first + 1)
    layer.batch_select_indices(torch.tensor([1]))  # DynamicLayer's: assigns new keys / values tensors
    keys, values = layer.update(second, second + 1)
    assert torch.equal(keys, torch.cat([first[1:], second], dim=2))
    assert torch.equal(values, torch.cat([first[1:], second], dim=2) + 1)
