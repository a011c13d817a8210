"""Speculative sampling must keep the base model's (warped) distribution exactly.

Two levels: the acceptance rule on synthetic trees against the exact distribution of the emitted tokens, and
end-to-end generation on a tiny model against exact sequence probabilities computed from the model.
"""

from __future__ import annotations

import collections
import itertools
from typing import Dict, Tuple

import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from drafter.engine import AutoregressiveGenerator, SamplingConfig, warp_logits, warped_probs
from drafter.generation import SpeculativeGenerator, build_tree, greedy_accept, sampling_accept
from tests.fakes import BigramDrafter, make_tiny_llama, make_tiny_redrafter
from tests.unit.test_generation_tree import random_beams

pytestmark = pytest.mark.usefixtures("single_thread")

Distribution = Dict[Tuple[int, ...], float]


def chi_square_p_value(counts: collections.Counter, expected: Distribution, n: int) -> float:
    """Pearson chi-square goodness of fit; cells with expected count < 5 are pooled into one cell."""
    assert set(counts) <= {k for k, p in expected.items() if p > 0}, "sampled an impossible sequence"
    stat, df, pooled_obs, pooled_exp = 0.0, -1, 0.0, 0.0
    for key, p in expected.items():
        e = p * n
        if e < 5:
            pooled_obs, pooled_exp = pooled_obs + counts.get(key, 0), pooled_exp + e
            continue
        stat += (counts.get(key, 0) - e) ** 2 / e
        df += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / max(pooled_exp, 1e-9)
        df += 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0), torch.tensor(stat / 2.0)))


def tree_emission_distribution(tree, probs: torch.Tensor, b: int) -> Distribution:
    """Exact law of (accepted drafts..., bonus) for sequence b: plain sampling from p, token by token, that
    keeps walking while the sampled token is a child of the current node."""
    n = int(tree.num_nodes[b])
    children = collections.defaultdict(dict)
    for node in range(1, n):
        children[int(tree.parents[b, node])][int(tree.tokens[b, node])] = node
    out: Distribution = collections.defaultdict(float)

    def walk(node: int, prefix: Tuple[int, ...], mass: float) -> None:
        for token, p in enumerate(probs[b, node].tolist()):
            if p == 0:
                continue
            if token in children[node]:
                walk(children[node][token], prefix + (token,), mass * p)
            else:
                out[prefix + (token,)] += mass * p

    walk(0, (), 1.0)
    return out


def emitted(result, b: int) -> Tuple[int, ...]:
    a = int(result.num_accepted[b])
    return tuple(result.path_tokens[b, 1 : a + 1].tolist()) + (int(result.bonus_tokens[b]),)


def random_lengths(batch: int, width: int, length: int, seed: int) -> torch.Tensor:
    """(B, W) beam lengths 1..L (ragged candidate sets, as context lookup makes), beam 0 kept full."""
    lengths = torch.randint(1, length + 1, (batch, width), generator=torch.Generator().manual_seed(seed))
    lengths[:, 0] = length
    return lengths


@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_rejection_sampling_is_exact_on_random_trees(seed: int, ragged: bool):
    vocab, width, length, copies = 5, 3, 4, 20000
    beams = random_beams(1, width, length, vocab, seed)
    g = torch.Generator().manual_seed(seed)
    lengths = random_lengths(1, width, length, seed).expand(copies, -1) if ragged else None
    tree = build_tree(beams.expand(copies, -1, -1), lengths=lengths)
    # Peaked-ish random distributions with some exact zeros (as top-k / top-p produce).
    logits = torch.randn(1, tree.size, vocab, generator=g)
    # Drafted children are likely (as with a decent drafter), so second and third children get tried too.
    child_tokens = tree.tokens[:1, 1 : int(tree.num_nodes[0])]
    child_parents = tree.parents[:1, 1 : int(tree.num_nodes[0])]
    logits[0, child_parents[0], child_tokens[0]] += 1.0
    logits[torch.rand(logits.shape, generator=g) < 0.2] = float("-inf")  # exact zeros, as top-k / top-p make
    logits[..., 0] = logits[..., 0].clamp(min=0.0)  # at least one allowed token per node
    probs = logits.softmax(-1).expand(copies, -1, -1)
    exact = tree_emission_distribution(tree, probs, 0)
    result = sampling_accept(tree, probs, torch.Generator().manual_seed(100 + seed))
    counts = collections.Counter(emitted(result, b) for b in range(copies))
    assert chi_square_p_value(counts, exact, copies) > 1e-4
    # The walk did go deep: otherwise this would only test the bonus draw.
    assert int(result.num_accepted.max()) >= 2


@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_greedy_acceptance_walks_the_tree(seed: int, ragged: bool):
    vocab, width, length, batch = 4, 4, 5, 3
    beams = random_beams(batch, width, length, vocab, seed)
    tree = build_tree(beams, lengths=random_lengths(batch, width, length, seed) if ragged else None)
    logits = torch.randn(batch, tree.size, vocab, generator=torch.Generator().manual_seed(seed))
    result = greedy_accept(tree, logits.argmax(dim=-1))
    for b in range(batch):
        node, path = 0, [0]
        while True:
            target = int(logits[b, node].argmax())
            kids = [c for c in range(int(tree.num_nodes[b])) if int(tree.parents[b, c]) == node]
            match = [c for c in kids if int(tree.tokens[b, c]) == target]
            if not match:
                break
            node = match[0]
            path.append(node)
        assert int(result.num_accepted[b]) == len(path) - 1
        assert result.path_nodes[b, : len(path)].tolist() == path
        assert int(result.bonus_tokens[b]) == target
        assert int(result.last_nodes[b]) == node


@pytest.mark.parametrize(
    "top_k,top_p,temperature", [(None, None, 0.7), (3, None, 1.3), (None, 0.8, 1.0), (4, 0.9, 0.5)]
)
def test_warping_matches_transformers(top_k, top_p, temperature):
    logits = torch.randn(6, 20, generator=torch.Generator().manual_seed(0)) * 3
    ours = warp_logits(logits, SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p))
    theirs = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        theirs = TopKLogitsWarper(top_k)(None, theirs)
    if top_p:
        theirs = TopPLogitsWarper(top_p)(None, theirs)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    torch.testing.assert_close(ours.softmax(-1), theirs.softmax(-1))


# ----------------------------------------------------------------------------- end to end


def flat_tiny_llama():
    """16-token model with moderately flat next-token distributions (so rejections really happen)."""
    base = make_tiny_llama(seed=7, vocab_size=16)
    base.lm_head.weight.data *= 0.15
    return base


@torch.no_grad()
def exact_sequence_distribution(base, prompt, num_tokens: int, sampling: SamplingConfig) -> Distribution:
    """P(x_1..x_n | prompt) under sampling from the warped distribution, by enumerating every prefix."""
    vocab = base.get_input_embeddings().num_embeddings
    dist: Distribution = {(): 1.0}
    for _ in range(num_tokens):
        prefixes = [k for k, p in dist.items() if p > 0]
        ids = torch.tensor([list(prompt) + list(k) for k in prefixes])
        probs = warped_probs(base(input_ids=ids).logits[:, -1], sampling).tolist()
        dist = {k + (x,): dist[k] * probs[i][x] for i, k in enumerate(prefixes) for x in range(vocab)}
    return dist


@pytest.mark.parametrize(
    "sampling,width,length",
    [(SamplingConfig(temperature=1.0), 4, 3), (SamplingConfig(temperature=0.8, top_k=6, top_p=0.9), 3, 4)],
)
def test_speculative_sampling_matches_exact_model_distribution(sampling, width, length):
    base = flat_tiny_llama()
    drafter = BigramDrafter(base)
    prompt, num_tokens, copies = [3, 9, 4, 11], 3, 4000
    exact = exact_sequence_distribution(base, prompt, num_tokens, sampling)
    spec = SpeculativeGenerator(base, drafter, beam_width=width, beam_length=length)
    result = spec.generate(
        [prompt] * copies,
        max_new_tokens=num_tokens,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        seed=11,
    )
    counts = collections.Counter(tuple(s) for s in result.sequences)
    assert chi_square_p_value(counts, exact, copies) > 1e-4
    # Marginals of each position separately (sharper for the frequent tokens).
    for position in range(num_tokens):
        marginal: Distribution = collections.defaultdict(float)
        for key, p in exact.items():
            marginal[key[position : position + 1]] += p
        marginal_counts = collections.Counter(tuple(s[position : position + 1]) for s in result.sequences)
        assert chi_square_p_value(marginal_counts, marginal, copies) > 1e-4
    # Drafts are accepted often enough, also at depth 2, for the test to check the acceptance path.
    assert result.accepted_by_position[0] > 0.2 * copies and result.accepted_by_position[1] > 0.02 * copies


def test_autoregressive_sampling_matches_exact_model_distribution():
    """The baseline sampler, through the same statistical check (validates the harness too)."""
    base = flat_tiny_llama()
    sampling = SamplingConfig(temperature=1.0)
    prompt, copies = [3, 9, 4, 11], 4000
    exact = exact_sequence_distribution(base, prompt, 2, sampling)
    result = AutoregressiveGenerator(base).generate([prompt] * copies, max_new_tokens=2, temperature=1.0, seed=5)
    counts = collections.Counter(tuple(s) for s in result.sequences)
    assert chi_square_p_value(counts, exact, copies) > 1e-4


def test_sampling_is_reproducible_and_respects_eos():
    base = flat_tiny_llama()
    spec = SpeculativeGenerator(base, make_tiny_redrafter(base, seed=3), beam_width=3, beam_length=3)
    prompts = [[3, 9, 4], [5], [6, 7, 8, 9, 10]]
    kwargs = dict(max_new_tokens=12, temperature=1.0, top_p=0.95, eos_token_id=[2, 5])
    first = spec.generate(prompts, seed=1, **kwargs).sequences
    assert first == spec.generate(prompts, seed=1, **kwargs).sequences
    g = torch.Generator().manual_seed(1)
    assert first == spec.generate(prompts, generator=g, **kwargs).sequences
    for seq in first:
        stops = [i for i, t in enumerate(seq) if t in (2, 5)]
        assert len(seq) == 12 or (stops and stops[0] == len(seq) - 1)
        assert not stops or stops[0] == len(seq) - 1
    assert any(len(s) < 12 for s in first) or not any(t in (2, 5) for s in first for t in s)


def test_exact_distribution_enumeration_is_normalized():
    base = flat_tiny_llama()
    dist = exact_sequence_distribution(base, [1, 2], 2, SamplingConfig(temperature=1.0, top_k=5))
    assert abs(sum(dist.values()) - 1.0) < 1e-5
    assert sum(1 for p in dist.values() if p > 0) <= 25
    assert all(len(k) == 2 for k in itertools.islice(dist, 5))
