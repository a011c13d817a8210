"""After speculative steps the KV cache must hold exactly the K/V of a plain forward over the accepted tokens."""

from __future__ import annotations

import pytest
import torch

from drafter.engine.result import PhaseTimer
from drafter.engine.sampling import SamplingConfig
from drafter.generation import SpeculativeGenerator
from tests.fakes import OracleDrafter, hf_greedy, make_tiny_gpt2, make_tiny_llama, make_tiny_qwen2

pytestmark = pytest.mark.usefixtures("single_thread")


def plain_cache(model, tokens):
    """Per layer (keys, values), each (H_kv, T, D), from one unpadded forward."""
    out = model.base_model(input_ids=torch.tensor([tokens]), use_cache=True)
    return [(layer.keys[0], layer.values[0]) for layer in out.past_key_values.layers]


@pytest.mark.parametrize(
    "make_model,sampling",
    [
        (make_tiny_llama, SamplingConfig()),
        (make_tiny_gpt2, SamplingConfig()),
        (make_tiny_qwen2, SamplingConfig()),
        (make_tiny_llama, SamplingConfig(temperature=0.5)),
    ],
)
def test_cache_after_steps_equals_plain_forward(make_model, sampling):
    base = make_model(seed=4)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15]]
    continuations = [hf_greedy(base, p, 40) for p in prompts]
    # wrong_every makes sequences accept different numbers of tokens, so their cache ends diverge.
    drafter = OracleDrafter(base, [p + c for p, c in zip(prompts, continuations)], wrong_every=3)
    spec = SpeculativeGenerator(base, drafter, beam_width=3, beam_length=5)
    generator = torch.Generator().manual_seed(0)
    timer = PhaseTimer(torch.device("cpu"))
    # prefill / decode_step run in inference mode on their own; the checks below need no gradients either.
    with torch.no_grad():
        state = spec.prefill(prompts, sampling, generator)
        emitted = [[t] for t in state.next_tokens.tolist()]
        accepted = []
        for _ in range(4):
            step = spec.decode_step(state, sampling, timer)
            for seq, new in zip(emitted, step.new_tokens):
                seq.extend(new)
            accepted.append(step.num_drafted_accepted)
        if sampling.greedy:
            assert [e for e in emitted] == [c[: len(e)] for c, e in zip(continuations, emitted)]
            assert len({tuple(a) for a in accepted}) > 1 or len(set(accepted[0])) > 1  # uneven acceptance
        assert max(max(a) for a in accepted) >= 2

        cache = state.cache
        for b, (prompt, seq) in enumerate(zip(prompts, emitted)):
            # Everything decided except the newest token (the next step's tree root) is cached.
            tokens = prompt + seq[:-1]
            start, end = cache.starts_host[b], cache.ends_host[b]
            assert end - start == len(tokens) == int(cache.context_lengths[b])
            assert state.next_tokens[b].item() == seq[-1]
            reference = plain_cache(base, tokens)
            for layer, (keys, values) in zip(cache.cache.layers, reference):
                torch.testing.assert_close(layer.keys[b, :, start:end], keys, rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(layer.values[b, :, start:end], values, rtol=1e-4, atol=1e-5)
            # The drafting context is the hidden state of the last cached token.
            hidden = base.base_model(input_ids=torch.tensor([tokens])).last_hidden_state[0, -1]
            torch.testing.assert_close(state.hidden[b], hidden, rtol=1e-4, atol=1e-5)
        assert all(layer.keys.shape[2] == max(cache.ends_host) for layer in cache.cache.layers)

        # Dropping a finished sequence keeps the others' caches intact.
        state.select([2, 0])
        for b_new, b_old in ((0, 2), (1, 0)):
            tokens = prompts[b_old] + emitted[b_old][:-1]
            start, end = cache.starts_host[b_new], cache.ends_host[b_new]
            keys = plain_cache(base, tokens)[0][0]
            torch.testing.assert_close(cache.cache.layers[0].keys[b_new, :, start:end], keys, rtol=1e-4, atol=1e-5)
        assert min(cache.starts_host) == 0
