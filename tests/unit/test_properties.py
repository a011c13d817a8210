"""Property-based tests (hypothesis) of tree packing and of the two acceptance rules.

The example-based tests in test_generation_tree.py / test_generation_sampling.py compare against brute-force
references on a few seeds; here hypothesis explores the shapes (W = 1, L = 1, vocab 1, identical beams, ...)
and the inputs, and every check is a property stated directly in terms of the beams' prefixes:

* build_tree: nodes are exactly the distinct prefixes, every beam position maps to the node of its prefix,
  parents / depths / the ancestor mask follow from the prefixes, padding nodes are inert, and static_size
  only adds padding.
* greedy_accept: equals a plain greedy walk over the prefixes (argmax at the current node; move on while
  that token extends the current prefix into another drafted one; otherwise it is the bonus token).
* sampling_accept: the first emitted token is distributed exactly as p(. | root), and the whole emission as
  plain token-by-token sampling (chi-square on many copies of one tree, fixed seeds).

Everything is deterministic: hypothesis is derandomized (and keeps no example database) and every torch
random draw comes from a seeded generator. (Hypothesis still caches the constants it collects from the code
under .hypothesis/constants in the working directory.)
"""

from __future__ import annotations

import collections
from typing import Dict, List, Tuple

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drafter.generation import build_tree, greedy_accept, max_tree_size, sampling_accept
from drafter.generation.tree import TokenTree
from tests.unit.test_generation_sampling import chi_square_p_value, tree_emission_distribution

pytestmark = pytest.mark.usefixtures("single_thread")

Prefix = Tuple[int, ...]


def property_settings(max_examples: int) -> settings:
    """Deterministic, no example database, no per-example deadline (shared, busy CPUs)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ----------------------------------------------------------------------------- strategies


@st.composite
def beam_batches(draw, max_batch: int = 3, max_width: int = 4, max_length: int = 5, max_vocab: int = 4):
    """(B, W, L) beams with a common root per sequence that share prefixes a lot: a small vocabulary, and
    (as `random_beams` in test_generation_tree.py) beam w > 0 copies a prefix of an earlier beam."""
    batch = draw(st.integers(1, max_batch))
    width = draw(st.integers(1, max_width))
    length = draw(st.integers(1, max_length))
    vocab = draw(st.integers(1, max_vocab))
    token = st.integers(0, vocab - 1)
    beams = [[draw(st.lists(token, min_size=length, max_size=length)) for _ in range(width)] for _ in range(batch)]
    for seq in beams:
        for w in range(1, width):
            cut = draw(st.integers(0, length))
            src = draw(st.integers(0, w - 1))
            seq[w][:cut] = seq[src][:cut]
        for beam in seq:
            beam[0] = seq[0][0]
    return torch.tensor(beams, dtype=torch.long)


# ----------------------------------------------------------------------------- prefix helpers


def prefix_nodes(beams: torch.Tensor, tree: TokenTree, b: int) -> Dict[Prefix, int]:
    """Prefix -> node of sequence b, read from beam_nodes (asserting it is a function of the prefix)."""
    out: Dict[Prefix, int] = {}
    seq, nodes = beams[b].tolist(), tree.beam_nodes[b].tolist()
    for w, beam in enumerate(seq):
        for d in range(len(beam)):
            node = out.setdefault(tuple(beam[: d + 1]), nodes[w][d])
            assert node == nodes[w][d], "one prefix mapped to two nodes"
    return out


def children_tokens(nodes: Dict[Prefix, int]) -> Dict[int, Dict[int, int]]:
    """node -> {child token: child node}, from the prefixes alone."""
    out: Dict[int, Dict[int, int]] = collections.defaultdict(dict)
    for prefix, node in nodes.items():
        if len(prefix) > 1:
            out[nodes[prefix[:-1]]][prefix[-1]] = node
    return out


# ----------------------------------------------------------------------------- 1. tree packing


def check_tree(beams: torch.Tensor, tree: TokenTree) -> None:
    batch, width, length = beams.shape
    size = tree.size
    for name in ("tokens", "parents", "depths", "valid"):
        assert getattr(tree, name).shape == (batch, size), name
    assert tree.ancestor_mask.shape == (batch, size, size) and tree.beam_nodes.shape == beams.shape
    # Every beam position maps to a node that holds its token.
    assert torch.equal(tree.tokens.gather(1, tree.beam_nodes.flatten(1)), beams.flatten(1))
    eye = torch.eye(size, dtype=torch.bool)
    for b in range(batch):
        nodes = prefix_nodes(beams, tree, b)
        n = len(nodes)
        tokens, depths, parents = tree.tokens[b].tolist(), tree.depths[b].tolist(), tree.parents[b].tolist()
        mask = tree.ancestor_mask[b].tolist()
        # Nodes are unique prefixes: as many real nodes as distinct prefixes, and distinct prefixes get
        # distinct nodes, which are exactly the real nodes 0 .. n-1.
        assert int(tree.num_nodes[b]) == n
        assert sorted(nodes.values()) == list(range(n))
        assert tree.valid[b].tolist() == [True] * n + [False] * (size - n)
        prefix_of = {node: prefix for prefix, node in nodes.items()}
        assert prefix_of[0] == (int(beams[b, 0, 0]),), "the root is node 0"
        for node in range(n):
            prefix = prefix_of[node]
            assert tokens[node] == prefix[-1]
            assert depths[node] == len(prefix) - 1
            if len(prefix) == 1:
                assert parents[node] == -1
            else:
                assert parents[node] == nodes[prefix[:-1]] < node, "the parent is the shorter prefix, earlier"
            # Ancestor mask row: exactly the node and its ancestors (the node's prefixes), nothing else.
            ancestors = {nodes[prefix[: k + 1]] for k in range(len(prefix))}
            assert [j for j in range(size) if mask[node][j]] == sorted(ancestors)
            # Following parents from the node visits the same set and ends at the root.
            chain, walk = [node], node
            while parents[walk] >= 0:
                walk = parents[walk]
                chain.append(walk)
            assert walk == 0 and set(chain) == ancestors and len(chain) == len(prefix)
        # Breadth-first order: depths never decrease along the node order, and beam 0 leads every depth.
        assert depths[:n] == sorted(depths[:n])
        assert tree.beam_nodes[b, 0].tolist() == [depths[:n].index(d) for d in range(length)]
        # Padding nodes: the root token, depth 0, no parent, attend only to themselves, seen by nobody else.
        assert tokens[n:] == [int(beams[b, 0, 0])] * (size - n)
        assert depths[n:] == [0] * (size - n) and parents[n:] == [-1] * (size - n)
        assert torch.equal(tree.ancestor_mask[b, n:], eye[n:])
        assert torch.equal(tree.ancestor_mask[b, :, n:], eye[:, n:])
    assert size == int(tree.num_nodes.max()) <= max_tree_size(width, length)
    context_lengths = torch.arange(batch) * 7 + 3
    assert torch.equal(tree.position_ids(context_lengths), context_lengths[:, None] + tree.depths)


@property_settings(max_examples=50)
@given(beams=beam_batches())
def test_tree_nodes_are_the_unique_prefixes(beams: torch.Tensor):
    check_tree(beams, build_tree(beams))


@property_settings(max_examples=25)
@given(beams=beam_batches())
def test_static_tree_only_adds_padding(beams: torch.Tensor):
    _, width, length = beams.shape
    dynamic, static = build_tree(beams), build_tree(beams, static_size=True)
    size, n = static.size, dynamic.size
    assert size == max_tree_size(width, length)
    assert torch.equal(static.num_nodes, dynamic.num_nodes) and torch.equal(static.beam_nodes, dynamic.beam_nodes)
    for name in ("tokens", "parents", "depths", "valid"):
        assert torch.equal(getattr(static, name)[:, :n], getattr(dynamic, name)), name
    assert torch.equal(static.ancestor_mask[:, :n, :n], dynamic.ancestor_mask)
    assert not static.valid[:, n:].any()
    # The extra nodes are padding too; the static tree satisfies every property on its own, except that its
    # size is the static maximum instead of the largest tree.
    assert torch.equal(static.ancestor_mask[:, n:], torch.eye(size, dtype=torch.bool)[n:].expand(len(beams), -1, -1))
    assert not static.ancestor_mask[:, :n, n:].any()
    assert (static.parents[:, n:] == -1).all() and (static.depths[:, n:] == 0).all()
    assert (static.tokens[:, n:] == beams[:, :1, 0]).all()


# ----------------------------------------------------------------------------- 2. greedy acceptance


def first_argmax(row: List[float]) -> int:
    """argmax with torch's documented tie-break: the first maximal index."""
    return max(range(len(row)), key=lambda v: (row[v], -v))


@st.composite
def trees_with_logits(draw):
    """A tree from random beams, and (B, N, V) logits: small integers (many ties), with a drafted child's
    token boosted at some nodes so that long accepted paths are common."""
    beams = draw(beam_batches())
    tree = build_tree(beams)
    batch, size = tree.tokens.shape
    vocab = int(beams.max()) + 1 + draw(st.integers(0, 2))
    values = draw(st.lists(st.integers(-2, 2), min_size=batch * size * vocab, max_size=batch * size * vocab))
    logits = torch.tensor(values, dtype=torch.float32).view(batch, size, vocab)
    for b in range(batch):
        kids = children_tokens(prefix_nodes(beams, tree, b))
        for node in range(size):
            if kids[node] and draw(st.booleans()):
                logits[b, node, draw(st.sampled_from(sorted(kids[node])))] += 5.0
    return beams, tree, logits


@property_settings(max_examples=50)
@given(case=trees_with_logits())
def test_greedy_acceptance_is_the_plain_greedy_walk(case):
    beams, tree, logits = case
    _, _, length = beams.shape
    result = greedy_accept(tree, logits.argmax(dim=-1))
    for b in range(len(beams)):
        nodes = prefix_nodes(beams, tree, b)
        prefix, path = (int(beams[b, 0, 0]),), [0]
        while True:
            target = first_argmax(logits[b, path[-1]].tolist())
            if prefix + (target,) not in nodes:
                break
            prefix += (target,)
            path.append(nodes[prefix])
        accepted = len(path) - 1
        assert int(result.num_accepted[b]) == accepted
        assert result.path_nodes[b].tolist() == path + [path[-1]] * (length - len(path))
        assert result.path_tokens[b].tolist() == list(prefix) + [prefix[-1]] * (length - len(path))
        assert int(result.bonus_tokens[b]) == target
        assert int(result.last_nodes[b]) == path[-1]
        assert target not in children_tokens(nodes)[path[-1]], "the bonus never repeats a drafted child"
    # A static-size tree (any logits at its extra padding nodes) gives the same result: padding is never reached.
    static = build_tree(beams, static_size=True)
    padded = torch.cat([logits, logits.flip(1)[:, :1].expand(-1, static.size - tree.size, -1) + 9.0], dim=1)
    static_result = greedy_accept(static, padded.argmax(dim=-1))
    for name in ("num_accepted", "path_nodes", "path_tokens", "bonus_tokens"):
        assert torch.equal(getattr(static_result, name), getattr(result, name)), name


# ----------------------------------------------------------------------------- 3. rejection sampling


COPIES = 2000
P_VALUE = 1e-4


def assert_fits(counts: collections.Counter, expected: Dict, n: int) -> None:
    """Chi-square goodness of fit at P_VALUE; a one-cell law (no degrees of freedom) must be hit every time."""
    support = [key for key, p in expected.items() if p > 0]
    assert set(counts) <= set(support), "sampled an impossible outcome"
    if len(support) > 1:
        assert chi_square_p_value(counts, expected, n) > P_VALUE, (counts, dict(expected))


@st.composite
def tree_with_probs(draw):
    """One tree (repeated COPIES times in the batch) and per-node distributions from small integer weights,
    with exact zeros (as top-k / top-p make) and at least one allowed token per node."""
    beams = draw(beam_batches(max_batch=1, max_width=4, max_length=4, max_vocab=5))
    vocab = max(2, int(beams.max()) + 1 + draw(st.integers(0, 1)))
    size = build_tree(beams).size
    weights = st.lists(st.integers(0, 4), min_size=vocab, max_size=vocab).filter(any)
    rows = draw(st.lists(weights, min_size=size, max_size=size))
    probs = torch.tensor(rows, dtype=torch.float32)
    probs = probs / probs.sum(-1, keepdim=True)
    seed = draw(st.integers(0, 2**31 - 1))
    return beams, probs, seed


@property_settings(max_examples=15)
@given(case=tree_with_probs())
def test_rejection_sampling_first_token_is_the_base_distribution(case):
    beams, node_probs, seed = case
    length = beams.shape[2]
    tree = build_tree(beams.expand(COPIES, -1, -1))
    probs = node_probs.expand(COPIES, -1, -1)
    result = sampling_accept(tree, probs, torch.Generator().manual_seed(seed))
    num_accepted = result.num_accepted.tolist()
    path_nodes, path_tokens = result.path_nodes.tolist(), result.path_tokens.tolist()
    bonus_tokens = result.bonus_tokens.tolist()
    emissions = collections.Counter(
        tuple(path_tokens[b][1 : a + 1]) + (bonus_tokens[b],) for b, a in enumerate(num_accepted)
    )

    # Marginal of the first emitted token after the root (the first accepted draft, else the bonus): p(. | root).
    root = node_probs[0].tolist()
    first = collections.Counter()
    for key, count in emissions.items():
        first[key[0]] += count
    assert_fits(first, dict(enumerate(root)), COPIES)

    # The whole emission (accepted drafts + bonus) is distributed as plain token-by-token sampling.
    exact = tree_emission_distribution(tree, probs, 0)
    assert abs(sum(exact.values()) - 1.0) < 1e-5
    assert_fits(emissions, exact, COPIES)

    # The accepted path is a path of the tree (padded with its last node), and the bonus is never one of the
    # last node's drafted children (those were all rejected, or there are none).
    kids = children_tokens(prefix_nodes(beams, tree, 0))
    parents = tree.parents[0].tolist()
    for path, a, bonus in set(zip(map(tuple, path_nodes), num_accepted, bonus_tokens)):
        assert 0 <= a <= length - 1 and path[0] == 0 and set(path[a:]) == {path[a]}
        assert all(parents[path[d]] == path[d - 1] for d in range(1, a + 1))
        assert bonus not in kids[path[a]]


def test_strategies_reach_the_interesting_cases():
    """Guard against vacuous properties: the strategies do produce shared prefixes, padding, and deep walks."""
    seen = collections.Counter()

    @property_settings(max_examples=30)
    @given(case=trees_with_logits())
    def probe(case):
        beams, tree, logits = case
        seen["padding"] += int((~tree.valid).any())
        seen["shared"] += int(int(tree.num_nodes.min()) < max_tree_size(*beams.shape[1:]))
        seen["deep"] += int(int(greedy_accept(tree, logits.argmax(dim=-1)).num_accepted.max()) >= 2)

    @property_settings(max_examples=15)
    @given(case=tree_with_probs())
    def probe_sampling(case):
        beams, node_probs, seed = case
        copies = 200
        tree = build_tree(beams.expand(copies, -1, -1))
        result = sampling_accept(tree, node_probs.expand(copies, -1, -1), torch.Generator().manual_seed(seed))
        seen["sampled_deep"] += int(int(result.num_accepted.max()) >= 2)
        seen["sampled_rejection"] += int(bool(((result.num_accepted == 0) & (tree.num_nodes > 1)).any()))

    probe()
    probe_sampling()
    assert all(seen[k] > 0 for k in ("padding", "shared", "deep", "sampled_deep", "sampled_rejection")), seen

