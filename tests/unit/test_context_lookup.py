"""Context lookup joins the drafter's tree: the n-gram index, ragged trees, and lossless decoding with it."""

from __future__ import annotations

import collections
import random

import pytest
import torch

from drafter.engine.sampling import SamplingConfig
from drafter.evaluation.compare import parse_lookup, parse_tree_shape
from drafter.generation import SpeculativeGenerator, build_tree, greedy_accept
from drafter.generation.lookup import ContextLookup
from drafter.generation.tree_budget import plan_tree_shape
from tests.fakes import ConstantDrafter, hf_greedy, make_tiny_eagle3, make_tiny_llama, make_tiny_redrafter
from tests.unit.test_generation_sampling import chi_square_p_value, exact_sequence_distribution
from tests.unit.test_generation_tree import brute_force_tree, random_beams

pytestmark = pytest.mark.usefixtures("single_thread")


def reference_proposal(tokens, num_tokens: int, max_ngram: int, min_ngram: int):
    """The rule, by brute force: the longest suffix (<= max_ngram) that occurred earlier, its most recent earlier
    occurrence, and what followed it, the followers repeating when they run into the end."""
    for n in range(min(max_ngram, len(tokens)), min_ngram - 1, -1):
        suffix = tokens[-n:]
        for end in range(len(tokens) - 2, n - 2, -1):
            if tokens[end - n + 1 : end + 1] == suffix:
                follow = tokens[end + 1 :]
                return [follow[i % len(follow)] for i in range(num_tokens)]
    return []


@pytest.mark.parametrize("seed", range(20))
def test_lookup_matches_the_brute_force_rule_as_tokens_arrive(seed: int):
    rng = random.Random(seed)
    max_ngram = rng.randint(1, 4)
    min_ngram = rng.randint(1, max_ngram)
    tokens = [rng.randrange(4) for _ in range(rng.randint(1, 6))]
    lookup = ContextLookup(tokens, max_ngram, min_ngram)
    for _ in range(12):
        num = rng.randint(1, 7)
        assert lookup.propose(num) == reference_proposal(tokens, num, max_ngram, min_ngram)
        new = [rng.randrange(4) for _ in range(rng.randint(1, 3))]
        tokens += new
        lookup.extend(new)
        assert lookup.tokens == tokens


def test_lookup_predicts_a_repeating_span_and_refuses_bad_sizes():
    lookup = ContextLookup([7, 1, 2, 3, 9, 1, 2], max_ngram=2)
    assert lookup.propose(4) == [3, 9, 1, 2]
    assert ContextLookup([5, 6, 5], max_ngram=3).propose(5) == [6, 5, 6, 5, 6]  # the loop continues
    assert ContextLookup([1, 2, 3], max_ngram=3).propose(3) == []  # nothing occurred twice
    with pytest.raises(ValueError, match="min_ngram"):
        ContextLookup([1], max_ngram=1, min_ngram=2)


@pytest.mark.parametrize("seed", range(12))
def test_ragged_tree_matches_brute_force_of_the_truncated_beams(seed: int):
    g = torch.Generator().manual_seed(seed)
    batch, width = (int(torch.randint(1, 5, (1,), generator=g)) for _ in range(2))
    length = int(torch.randint(2, 6, (1,), generator=g))
    beams = random_beams(batch, width, length, vocab=3, seed=seed)
    lengths = torch.randint(1, length + 1, (batch, width), generator=g)
    tree = build_tree(beams, lengths=lengths)
    for b, ref in enumerate(brute_force_tree(beams, lengths)):  # the same tree as each beam cut to its length
        n = len(ref["tokens"])
        assert int(tree.num_nodes[b]) == n
        assert tree.tokens[b, :n].tolist() == ref["tokens"]
        assert tree.depths[b, :n].tolist() == ref["depths"]
        assert tree.parents[b, :n].tolist() == ref["parents"]
        assert tree.ancestor_mask[b, :n, :n].tolist() == ref["mask"]
        for w, own in enumerate(ref["beam_nodes"]):
            nodes = tree.beam_nodes[b, w].tolist()
            assert nodes[: len(own)] == own
            assert nodes[len(own) :] == [own[-1]] * (length - len(own))  # past the end: the last node


def test_greedy_acceptance_stops_at_a_beams_end():
    """A short beam whose padding happens to equal the base's choice must not be accepted past its length."""
    beams = torch.tensor([[[5, 6, 7, 8], [5, 9, 9, 9]]])
    lengths = torch.tensor([[4, 2]])
    tree = build_tree(beams, lengths=lengths)
    node = {tuple(p): i for i, p in enumerate([[5], [5, 6], [5, 9], [5, 6, 7], [5, 6, 7, 8]])}
    target = torch.full((1, tree.size), 1)
    target[0, node[(5,)]] = 9  # the base continues 5 -> 9 -> 9 -> 9: the short beam's first token only
    target[0, node[(5, 9)]] = 9
    accepted = greedy_accept(tree, target)
    assert int(accepted.num_accepted) == 1 and int(accepted.bonus_tokens) == 9


def lookup_only_steps(prompt, output, num_tokens: int) -> int:
    """Decoding steps when only context lookup is ever right: each step accepts the proposal's matching prefix,
    then the base's bonus token."""
    lookup = ContextLookup(prompt + output[:1])
    done, steps = 1, 0
    while done < len(output):
        proposal = lookup.propose(num_tokens)
        matched = 0
        while matched < len(proposal) and done + matched < len(output) and proposal[matched] == output[done + matched]:
            matched += 1
        lookup.extend(output[done : done + matched + 1])
        done += matched + 1
        steps += 1
    return steps


@pytest.mark.parametrize("num_tokens", [2, 6])
def test_lookup_alone_accepts_what_the_rule_predicts_and_stays_exact(num_tokens: int):
    base = make_tiny_llama(seed=3)
    vocab = base.get_input_embeddings().num_embeddings
    prompts = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [9, 10, 11, 9, 10, 11], [12, 13, 14]]
    expected = [hf_greedy(base, p, 40) for p in prompts]
    never = next(t for t in range(vocab) if all(t not in e for e in expected))  # a draft that is always wrong
    spec = SpeculativeGenerator(base, ConstantDrafter(vocab, never), beam_width=1, beam_length=2,
                                lookup_tokens=num_tokens)
    predicted = [lookup_only_steps(p, e, num_tokens) for p, e in zip(prompts, expected)]
    assert sum(predicted) < sum(len(e) - 1 for e in expected)  # the tiny model repeats itself: lookup fires
    for prompt, want, steps in zip(prompts, expected, predicted):
        result = spec.generate([prompt], max_new_tokens=40)
        assert result.sequences == [want]
        assert result.num_steps == steps


@pytest.mark.parametrize("seed", range(8))
def test_drafter_plus_lookup_matches_transformers_greedy(seed: int):
    rng = random.Random(seed)
    base = make_tiny_llama(seed=seed)
    vocab = base.get_input_embeddings().num_embeddings
    pattern = [rng.randrange(3, vocab) for _ in range(rng.randint(2, 5))]
    prompts = [(pattern * 4)[: rng.randint(3, 16)] + [rng.randrange(3, vocab) for _ in range(rng.randint(0, 3))]
               for _ in range(rng.randint(1, 4))]
    max_new = rng.randint(8, 30)
    eos = hf_greedy(base, prompts[0], max_new)[max_new // 2] if seed % 2 else None
    expected = [hf_greedy(base, p, max_new, eos_token_id=eos) for p in prompts]
    drafter = make_tiny_eagle3(base, seed=seed) if seed % 4 == 3 else make_tiny_redrafter(base, seed=seed)
    # A quarter of the cases draft the per-head top-k tree of MLP / Arctic speculators instead of beam search.
    top_k = [rng.randint(1, 3) for _ in range(rng.randint(1, 3))] if seed % 4 == 1 else None
    spec = SpeculativeGenerator(base, drafter, beam_width=rng.randint(1, 3), beam_length=rng.randint(2, 4),
                                top_k_tokens_per_head=top_k, lookup_tokens=rng.randint(1, 8),
                                lookup_max_ngram=rng.randint(1, 3))
    result = spec.generate(prompts, max_new_tokens=max_new, eos_token_id=eos,
                           max_batch_size=2 if seed % 3 == 0 else None)
    assert result.sequences == expected
    assert len(result.accepted_by_position) == spec.num_draft_steps


def test_lookup_sampling_matches_exact_model_distribution():
    """Lookup candidates are deterministic children like the beams: sampling still draws from the base model."""
    base = make_tiny_llama(seed=7, vocab_size=16)
    base.lm_head.weight.data *= 0.5  # flat enough that drafts are rejected often
    # After "3 9 4" the lookup proposes "3 15 15", the base model's own likeliest continuation here.
    prompt, num_tokens, copies = [3, 9, 4, 3, 15, 15, 3, 9, 4], 3, 4000
    sampling = SamplingConfig(temperature=1.0)
    exact = exact_sequence_distribution(base, prompt, num_tokens, sampling)
    spec = SpeculativeGenerator(base, make_tiny_redrafter(base, seed=1, draft_vocab_size=16), beam_width=2,
                                beam_length=2, lookup_tokens=3)
    result = spec.generate([prompt] * copies, max_new_tokens=num_tokens, seed=3, temperature=sampling.temperature)
    counts = collections.Counter(tuple(s) for s in result.sequences)
    assert chi_square_p_value(counts, exact, copies) > 1e-4
    assert result.accepted_by_position[1] > 0.05 * copies  # past the drafter's one token: lookup was accepted


def test_lookup_configuration_errors():
    base = make_tiny_llama(seed=0)
    drafter = make_tiny_redrafter(base)
    with pytest.raises(ValueError, match="lookup_tokens must be"):
        SpeculativeGenerator(base, drafter, lookup_tokens=-1)
    with pytest.raises(ValueError, match="static_tree_size"):
        SpeculativeGenerator(base, drafter, lookup_tokens=3, static_tree_size=True)
    with pytest.raises(ValueError, match="min_ngram"):
        SpeculativeGenerator(base, drafter, lookup_tokens=3, lookup_max_ngram=0)


def test_tree_budget_plans_with_and_without_lookup():
    """The planner scores each shape with the lookup joined to its beams: here only the lookup is ever right, so
    with free verification the plan takes it, and its estimate is close to the tau decoding then achieves."""
    base = make_tiny_llama(seed=3)
    vocab = base.get_input_embeddings().num_embeddings
    prompts = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [9, 10, 11, 9, 10, 11], [12, 13, 14]]
    never = next(t for t in range(vocab) if all(t not in hf_greedy(base, p, 40) for p in prompts))
    drafter = ConstantDrafter(vocab, never)
    plan = plan_tree_shape(base, drafter, prompts, widths=[1], lengths=[2], max_new_tokens=40,
                           cost_curve={n: 10.0 for n in range(1, 20)}, log=lambda _: None, lookup_tokens=[0, 4])
    by_lookup = {c.lookup_tokens: c for c in plan.candidates}
    assert by_lookup[0].tokens_per_step == 1.0  # the drafter is never right
    assert by_lookup[4].tokens_per_step > 1.03 and by_lookup[4].tree_nodes > by_lookup[0].tree_nodes
    assert plan.best.lookup_tokens == 4 and "--lookup_tokens 4" in plan.explain()
    decoder = SpeculativeGenerator(base, drafter, beam_width=1, beam_length=2, lookup_tokens=4)
    results = [decoder.generate([p], max_new_tokens=40) for p in prompts]
    tau = sum(r.accepted_per_sequence[0] for r in results) / sum(r.steps_per_sequence[0] for r in results)
    assert tau > 1.03 and by_lookup[4].tokens_per_step == pytest.approx(tau, abs=0.05)


def test_tree_shape_strings_carry_the_lookup():
    assert parse_tree_shape("2x3").lookup_tokens == 0 and parse_tree_shape("2x3", lookup_tokens=8).label == "2x3+8"
    shape = parse_tree_shape("4x3+6", lookup_tokens=8)
    assert (shape.beam_width, shape.beam_length, shape.lookup_tokens, shape.label) == (4, 3, 6, "4x3+6")
    assert parse_tree_shape("4x3+0", lookup_tokens=8).label == "4x3"
    assert parse_tree_shape("auto+8") is None and parse_lookup("auto+8") == 8 and parse_lookup("auto", 5) == 5
    for bad in ("2x3+", "2x3+a", "2x+3", "auto+-1"):
        with pytest.raises(ValueError, match="tree shape"):
            parse_tree_shape(bad)
