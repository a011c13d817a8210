"""The EAGLE-3 family: shapes, save/load, the decoding context cache against the training forward, lossless greedy
decoding (beam and top-k trees, batches, continuous batching), exact sampling, and training through the Trainer's
loss from live base states and from a feature cache."""

from __future__ import annotations

import collections
import random

import pytest
import torch

from drafter.engine import BaseLM, SamplingConfig
from drafter.engine.kv_cache import prefill_mask
from drafter.generation import SpeculativeGenerator
from drafter.models import AutoDrafter, Eagle3Drafter
from drafter.models.eagle3 import default_aux_layers
from drafter.models.state import iter_teacher_forced_states, shift_left
from drafter.training.losses import drafter_loss
from tests.fakes import hf_greedy, make_tiny_eagle3, make_tiny_llama, make_tiny_qwen2
from tests.unit.test_generation_sampling import chi_square_p_value, exact_sequence_distribution, flat_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")


def teacher_forced_logits(drafter: Eagle3Drafter, context: torch.Tensor, embeds: torch.Tensor, steps: int):
    with torch.no_grad():
        return [drafter.compute_logits(context, state, k)
                for k, state in iter_teacher_forced_states(drafter, context, embeds, steps)]


def assert_same_logits(a: Eagle3Drafter, b: Eagle3Drafter, context: torch.Tensor, embeds: torch.Tensor) -> None:
    for x, y in zip(teacher_forced_logits(a, context, embeds, 4), teacher_forced_logits(b, context, embeds, 4)):
        assert torch.equal(x, y)


def test_shapes_defaults_and_save_load_round_trip(tmp_path):
    base = make_tiny_llama(seed=0, num_layers=6)
    drafter = make_tiny_eagle3(base, draft_vocab_size=40)
    assert drafter.context_layers == default_aux_layers(6) == [2, 3, 3]
    drafter.set_draft_vocabulary(torch.randperm(96)[:40])
    context, embeds = torch.randn(2, 7, 3 * 32), torch.randn(2, 7, 32)
    logits = drafter(hidden_states=context, input_embeds=embeds)
    assert logits.shape == (4, 2, 7, 40)
    drafter.save_pretrained(tmp_path)
    loaded = AutoDrafter.from_pretrained(str(tmp_path)).eval()
    assert isinstance(loaded, Eagle3Drafter) and loaded.config.eagle3_aux_layers == [2, 3, 3]
    assert torch.equal(loaded.draft_to_base, drafter.draft_to_base)
    assert_same_logits(drafter, loaded, context, embeds)
    with pytest.raises(ValueError, match="eagle3_aux_layers"):
        make_tiny_eagle3(base, eagle3_aux_layers=[1, 2, 9])


def test_context_cache_drafts_what_training_teaches():
    """Decoding's context cache (prefill of left-padded prompts, extension by different counts per row, beams)
    gives the logits the teacher-forced training forward gives at the same positions."""
    torch.manual_seed(0)
    drafter = make_tiny_eagle3(make_tiny_llama(seed=1))
    lengths, total = [5, 3], 12
    context, embeds = torch.randn(2, total, 96), torch.randn(2, total, 32)
    expected = teacher_forced_logits(drafter, context, embeds, 3)  # [k][b, t] predicts token t + k + 2
    # Left-pad each row's first `lengths[b]` positions into a prompt of 5 slots.
    width = max(lengths)
    starts = [width - n for n in lengths]
    slot_context, slot_embeds = torch.zeros(2, width, 96), torch.zeros(2, width, 32)
    for b, n in enumerate(lengths):
        slot_context[b, starts[b]:] = context[b, :n]
        slot_embeds[b, starts[b]:] = embeds[b, 1:n + 1]  # the token after each position
    with torch.no_grad():
        mask = prefill_mask(torch.tensor(starts), width, torch.bool)[:, 0]
        cache, out = drafter.start_context(slot_context, slot_embeds, starts, mask)
        for b, n in enumerate(lengths):
            assert torch.allclose(drafter.compute_logits(None, {"hidden": out[b]}, 0), expected[0][b, n - 1], atol=1e-5)
        # Extend row 0 by 2 positions, row 1 by 3 (queries past a row's count are dropped).
        new = [2, 3]
        ext_context, ext_embeds = torch.zeros(2, 3, 96), torch.zeros(2, 3, 32)
        for b, n in enumerate(lengths):
            ext_context[b, :new[b]] = context[b, n:n + new[b]]
            ext_embeds[b, :new[b]] = embeds[b, n + 1:n + 1 + new[b]]
        out = drafter.extend_context(cache, ext_context, ext_embeds, torch.tensor(new), new)
        last = [n + k - 1 for n, k in zip(lengths, new)]  # each row's last verified position
        view = drafter.drafting_view(cache)
        state = view.advance_state(view.initial_state(out[:, None].expand(2, 2, 32)), None, 0)  # two equal beams
        for step in range(3):
            if step:
                tokens = torch.stack([embeds[b, last[b] + step + 1] for b in range(2)])[:, None]
                state = view.advance_state(state, tokens.expand(2, 2, 32), step)
            logits = view.compute_logits(None, state, step)
            for b in range(2):
                for beam in range(2):
                    assert torch.allclose(logits[b, beam], expected[step][b, last[b]], atol=1e-5)


def test_decoding_context_matches_the_base_layers_training_reads():
    """The drafting context at every decoding step equals the training forward's step-0 output over the final
    sequence: the base layers the generator hands the drafter are those training reads."""
    base = make_tiny_llama(seed=4, num_layers=4)
    drafter = make_tiny_eagle3(base, seed=4)
    contexts = []

    class Recording(SpeculativeGenerator):
        def decode_step(self, state, sampling, timer):
            contexts.append((state.cache.context_lengths[0].item(), state.hidden[0].clone()))
            return super().decode_step(state, sampling, timer)

    prompt = [5, 17, 33, 8]
    sequence = Recording(base, drafter, beam_width=2, beam_length=3).generate([prompt], max_new_tokens=12).sequences[0]
    ids = torch.tensor([prompt + sequence])
    lm = BaseLM(base)
    with torch.no_grad():
        context = torch.cat(lm.layer_hidden_states(ids, None, drafter.context_layers), dim=-1)
        state = drafter.advance_state(drafter.initial_state(context), shift_left(lm.embed(ids), 1), 0)
    assert len(contexts) >= 4
    for held, hidden in contexts:
        assert torch.allclose(hidden, state["hidden"][0, held - 1], atol=1e-4)


@pytest.mark.parametrize("seed", range(8))
def test_greedy_decoding_is_lossless(seed: int):
    rng = random.Random(seed)
    make_base = make_tiny_llama if seed % 2 == 0 else make_tiny_qwen2
    base = make_base(seed=seed, vocab_size=12)  # a small vocabulary: random drafts are often accepted
    prompts = [[rng.randrange(3, 12) for _ in range(rng.randint(1, 9))] for _ in range(rng.randint(1, 4))]
    max_new = rng.randint(8, 20)
    expected = [hf_greedy(base, p, max_new) for p in prompts]
    drafter = make_tiny_eagle3(base, seed=seed)
    if seed % 4 == 3:
        kwargs = dict(top_k_tokens_per_head=[2, 2, 1])
    else:
        kwargs = dict(beam_width=rng.randint(1, 4), beam_length=rng.randint(2, 5))
    result = SpeculativeGenerator(base, drafter, **kwargs).generate(prompts, max_new_tokens=max_new)
    assert result.sequences == expected
    assert sum(result.accepted_by_position) > 0  # the acceptance path (context extension by > 1) ran
    batched = SpeculativeGenerator(base, drafter, beam_width=2, beam_length=3).generate(
        prompts, max_new_tokens=max_new, max_batch_size=max(1, len(prompts) - 1))
    assert batched.sequences == expected


def test_sampling_keeps_the_base_distribution():
    base = flat_tiny_llama()
    drafter = make_tiny_eagle3(base, seed=3)
    sampling = SamplingConfig(temperature=1.0)
    prompt, num_tokens, copies = [3, 9, 4, 11], 3, 3000
    exact = exact_sequence_distribution(base, prompt, num_tokens, sampling)
    result = SpeculativeGenerator(base, drafter, beam_width=3, beam_length=3).generate(
        [prompt] * copies, max_new_tokens=num_tokens, temperature=1.0, seed=5)
    counts = collections.Counter(tuple(s) for s in result.sequences)
    assert chi_square_p_value(counts, exact, copies) > 1e-4
    assert result.accepted_by_position[0] > 0


def test_training_loss_learns_and_reads_teacher_logits_from_the_last_layer():
    base = make_tiny_llama(seed=2, num_layers=4)
    lm = BaseLM(base)
    drafter = make_tiny_eagle3(base, seed=2, drafter_predict_n_tokens=3).train()
    ids = torch.randint(3, 96, (3, 16))
    with torch.no_grad():
        last, *layers = lm.layer_hidden_states(ids, None, [-1, *drafter.context_layers])
        context, embeds = torch.cat(layers, dim=-1), lm.embed(ids)
    labels = ids.clone()
    teacher_rows = []

    def teacher(hidden):
        teacher_rows.append(hidden.shape[-1])
        return lm.logits(hidden)

    optimizer = torch.optim.Adam(drafter.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = drafter_loss(drafter, context, embeds, labels, 3, teacher_head=teacher, kd_alpha=0.5,
                           teacher_hidden_states=last)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert set(teacher_rows) == {32}  # the base's last hidden state, not the 96-wide fused context
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is not None for p in drafter.parameters())


def test_export_round_trip_in_the_vllm_layout(tmp_path):
    from drafter.export import export_speculator, load_exported
    from drafter.export.common import read_folder

    base = make_tiny_llama(seed=5, num_layers=6)
    drafter = make_tiny_eagle3(base, seed=5, draft_vocab_size=30)
    drafter.set_draft_vocabulary(torch.randperm(96)[:30])
    result = export_speculator(drafter, tmp_path / "out", format="eagle3")
    config, weights = read_folder(tmp_path / "out")
    assert config["architectures"] == ["LlamaForCausalLMEagle3"] and config["draft_vocab_size"] == 30
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == drafter.context_layers
    assert weights["fc.weight"].shape == (32, 96) and weights["midlayer.self_attn.q_proj.weight"].shape[1] == 64
    assert torch.equal(weights["d2t"] + torch.arange(30), drafter.draft_to_base)
    assert int(weights["t2d"].sum()) == 30 and "embed_tokens.weight" not in weights
    assert '"method": "eagle3"' in result.serving_command
    loaded = load_exported(tmp_path / "out")
    context, embeds = torch.randn(1, 6, 96), torch.randn(1, 6, 32)
    assert_same_logits(drafter, loaded, context, embeds)
    assert torch.equal(loaded.to_base_ids(torch.arange(30)), drafter.draft_to_base)
