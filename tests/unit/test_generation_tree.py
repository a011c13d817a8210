"""Beam search and the packed token tree, checked against brute-force python references."""

from __future__ import annotations

import itertools

import pytest
import torch

from drafter.generation import beam_search, build_tree, max_tree_size
from tests.fakes import make_tiny_llama, make_tiny_redrafter

pytestmark = pytest.mark.usefixtures("single_thread")


def random_beams(batch: int, width: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    """Beams that share prefixes a lot (small vocab, copied prefixes) with a common root per sequence."""
    g = torch.Generator().manual_seed(seed)
    beams = torch.randint(0, vocab, (batch, width, length), generator=g)
    for b, w in itertools.product(range(batch), range(1, width)):
        cut = int(torch.randint(0, length + 1, (1,), generator=g))
        src = int(torch.randint(0, w, (1,), generator=g))
        beams[b, w, :cut] = beams[b, src, :cut]
    beams[:, :, 0] = beams[:, :1, 0]
    return beams


def brute_force_tree(beams: torch.Tensor, lengths: torch.Tensor | None = None):
    """Per sequence: node list (prefix tuples) in breadth-first / first-beam order, and the derived tables; with
    `lengths` (B, W), each beam cut to its length first (beam_nodes then lists only its own positions)."""
    out = []
    for b, full in enumerate(beams.tolist()):
        seq = full if lengths is None else [beam[:n] for beam, n in zip(full, lengths[b].tolist())]
        prefixes = []
        for d in range(max(len(beam) for beam in seq)):
            for beam in seq:
                prefix = tuple(beam[: d + 1])
                if d < len(beam) and prefix not in prefixes:
                    prefixes.append(prefix)
        index = {p: i for i, p in enumerate(prefixes)}
        n = len(prefixes)
        mask = [[prefixes[j] == prefixes[i][: len(prefixes[j])] for j in range(n)] for i in range(n)]
        parents = [index[p[:-1]] if len(p) > 1 else -1 for p in prefixes]
        beam_nodes = [[index[tuple(beam[: d + 1])] for d in range(len(beam))] for beam in seq]
        out.append(
            dict(
                tokens=[p[-1] for p in prefixes],
                depths=[len(p) - 1 for p in prefixes],
                parents=parents,
                mask=mask,
                beam_nodes=beam_nodes,
            )
        )
    return out


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("static_size", [False, True])
def test_tree_matches_brute_force(seed: int, static_size: bool):
    g = torch.Generator().manual_seed(seed)
    batch, width, length = (int(torch.randint(1, 5, (1,), generator=g)) for _ in range(3))
    length += 1
    vocab = int(torch.randint(2, 6, (1,), generator=g))
    beams = random_beams(batch, width, length, vocab, seed)
    tree = build_tree(beams, static_size=static_size)
    reference = brute_force_tree(beams)
    size = tree.size
    assert size == (max_tree_size(width, length) if static_size else max(len(r["tokens"]) for r in reference))
    context_lengths = torch.arange(batch) * 3 + 5
    positions = tree.position_ids(context_lengths)
    for b, ref in enumerate(reference):
        n = len(ref["tokens"])
        assert int(tree.num_nodes[b]) == n
        assert tree.valid[b].tolist() == [True] * n + [False] * (size - n)
        assert tree.tokens[b, :n].tolist() == ref["tokens"]
        assert tree.depths[b, :n].tolist() == ref["depths"]
        assert tree.parents[b, :n].tolist() == ref["parents"]
        assert tree.beam_nodes[b].tolist() == ref["beam_nodes"]
        assert positions[b, :n].tolist() == [int(context_lengths[b]) + d for d in ref["depths"]]
        assert tree.ancestor_mask[b, :n, :n].tolist() == ref["mask"]
        # Padding nodes: see only themselves, are seen by nobody else, and sit at depth 0 with no parent.
        pad = tree.ancestor_mask[b, n:, :]
        assert pad.sum().item() == size - n and pad[:, n:].diagonal().all()
        assert not tree.ancestor_mask[b, :n, n:].any()
        assert (tree.parents[b, n:] == -1).all() and (tree.depths[b, n:] == 0).all()
        # Every beam can be read back from the tree.
        assert (tree.tokens[b].gather(0, tree.beam_nodes[b].flatten()).view_as(beams[b]) == beams[b]).all()


def test_tree_of_identical_beams_is_a_chain():
    beams = torch.tensor([[[4, 5, 6], [4, 5, 6]]])
    tree = build_tree(beams)
    assert tree.size == 3 and tree.parents[0].tolist() == [-1, 0, 1]
    assert tree.ancestor_mask[0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]


@torch.no_grad()
def brute_force_beam_search(drafter, embed, context, init_token, width, length):
    """Exhaustive search over all drafted sequences (tiny vocab) scored with the drafter step by step."""
    vocab = drafter.config.output_vocab_size
    scored = []
    for drafted in itertools.product(range(vocab), repeat=length - 1):
        state = drafter.initial_state(context)
        tokens, total = [init_token], 0.0
        for step, draft_id in enumerate(drafted):
            state = drafter.advance_state(state, embed(torch.tensor(tokens[-1])), step)
            log_probs = torch.log_softmax(drafter.compute_logits(context, state, step).float(), dim=-1)
            total += float(log_probs[draft_id])
            tokens.append(int(drafter.to_base_ids(torch.tensor(draft_id))))
        scored.append((total, tokens))
    scored.sort(key=lambda x: -x[0])
    return scored


@pytest.mark.parametrize("reduced_vocab", [False, True])
def test_beam_search_finds_the_best_sequences(reduced_vocab: bool):
    """Width = vocab and L = 3 keep every one-token prefix, so beam search is exact: it returns the top beams."""
    torch.manual_seed(0)
    vocab = 5
    base = make_tiny_llama(vocab_size=vocab if not reduced_vocab else 9)
    drafter = make_tiny_redrafter(base, **({"draft_vocab_size": vocab} if reduced_vocab else {}))
    if reduced_vocab:
        drafter.set_draft_vocabulary(torch.tensor([8, 0, 3, 6, 2]))
    # Make the drafter's distributions less flat so scores are well separated.
    drafter.lm_head.weight.data *= 20
    embed = base.get_input_embeddings()
    width, length = vocab, 3  # width = vocab keeps all prefixes of length 2: beam search is exhaustive
    context = torch.randn(2, base.config.hidden_size)
    init = torch.tensor([1, 4])
    out = beam_search(drafter, embed, context, init, width, length)
    assert out.beams.shape == (2, width, length) and out.token_log_probs.shape == (2, width, length - 1)
    for b in range(2):
        reference = brute_force_beam_search(drafter, embed, context[b], int(init[b]), width, length)[:width]
        assert out.beams[b].tolist() == [tokens for _, tokens in reference]
        torch.testing.assert_close(out.beam_log_probs[b], torch.tensor([s for s, _ in reference]))
        torch.testing.assert_close(out.token_log_probs[b].sum(-1), out.beam_log_probs[b])


@pytest.mark.parametrize("length", [2, 4])
def test_beams_are_distinct(length: int):
    """Starting from a single live beam, the W beams differ (after one step: in their first drafted token)."""
    base = make_tiny_llama()
    drafter = make_tiny_redrafter(base)
    out = beam_search(drafter, base.get_input_embeddings(), torch.randn(3, 32), torch.tensor([1, 2, 3]), 4, length)
    assert (out.beams[:, :, 0] == torch.tensor([1, 2, 3])[:, None]).all()
    for b in range(3):
        assert len({tuple(beam) for beam in out.beams[b].tolist()}) == 4
    assert torch.isfinite(out.beam_log_probs).all()
    assert (out.beam_log_probs[:, :-1] >= out.beam_log_probs[:, 1:]).all()  # sorted best first
