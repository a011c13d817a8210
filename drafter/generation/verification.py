"""Acceptance of drafted tokens against the base model's own choices, walking the token tree from the root.

The root (the init token) was already chosen by the base model. At an accepted node n the base model's
distribution p_n (logits of the tree forward at n) decides what comes next:

* greedy: the child whose token is argmax p_n is accepted (children have distinct tokens, so at most one);
  otherwise the walk stops and argmax p_n is the bonus token.
* sampling: recursive rejection sampling over the deterministic drafts. The distinct children x_1, x_2, ...
  are tried in order; x_i is accepted with probability p(x_i) / (mass left), and on rejection p(x_i) is set
  to 0. If every child is rejected (or there are none), the bonus token is drawn from what is left of p.
  P(emit x) = p(x) for every x, so the output is distributed exactly as plain sampling from p.

Both return the accepted path (node indices from the root), the number of drafted tokens accepted, and the
bonus token, all as device tensors: no host synchronization happens here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..engine.sampling import sample_from
from .tree import TokenTree


@dataclass
class AcceptanceResult:
    """Outcome of verifying one tree per sequence.

    Attributes:
        num_accepted: (B,) drafted tokens accepted (0 .. L-1), not counting the root or the bonus token.
        path_nodes: (B, L) tree nodes of the accepted path: root at 0, then accepted nodes; entries past
            num_accepted repeat the last accepted node.
        path_tokens: (B, L) tokens of path_nodes.
        bonus_tokens: (B,) next token chosen by the base model after the last accepted node.
    """

    num_accepted: torch.Tensor
    path_nodes: torch.Tensor
    path_tokens: torch.Tensor
    bonus_tokens: torch.Tensor

    @property
    def last_nodes(self) -> torch.Tensor:
        """(B,) the last accepted node (its hidden state is the next drafting context)."""
        return self.path_nodes.gather(1, self.num_accepted[:, None]).squeeze(1)


def greedy_accept(tree: TokenTree, target: torch.Tensor) -> AcceptanceResult:
    """Longest beam prefix that matches the base model's argmax at every step.

    Args:
        tree: packed candidates (B, N nodes; beam_nodes (B, W, L)).
        target: (B, N) the base model's greedy next token after each node (its logits' argmax). Only nodes with
            children are compared with their children; a leaf's entry is read only as the bonus token of a path
            that ends there (so a caller may fill leaves afterwards, see `SpeculativeGenerator`).
    """
    beam_nodes = tree.beam_nodes
    batch, width, length = beam_nodes.shape
    flat = beam_nodes.reshape(batch, -1)
    beam_tokens = tree.tokens.gather(1, flat).view(batch, width, length)
    beam_targets = target.gather(1, flat).view(batch, width, length)
    # Walking down beam w, drafted token d is accepted iff it equals the target of its parent (position d-1)
    # and every earlier one was accepted. Children are unique, so the longest match is the tree walk.
    within = torch.arange(1, length, device=flat.device)[None, None, :] < tree.beam_lengths[:, :, None]
    matches = ((beam_tokens[:, :, 1:] == beam_targets[:, :, :-1]) & within).long().cumprod(dim=-1)
    accepted_per_beam = matches.sum(dim=-1)  # (B, W)
    num_accepted, best = accepted_per_beam.max(dim=-1)
    path_nodes = beam_nodes.gather(1, best[:, None, None].expand(batch, 1, length)).squeeze(1)
    path_nodes = _repeat_last(path_nodes, num_accepted)
    last = path_nodes.gather(1, num_accepted[:, None])
    return AcceptanceResult(
        num_accepted=num_accepted,
        path_nodes=path_nodes,
        path_tokens=tree.tokens.gather(1, path_nodes),
        bonus_tokens=target.gather(1, last).squeeze(1),
    )


def sampling_accept(
    tree: TokenTree, probs: torch.Tensor, generator: Optional[torch.Generator] = None
) -> AcceptanceResult:
    """Multi-draft recursive rejection sampling down the tree.

    Args:
        tree: packed candidates (B, N nodes; beam_nodes (B, W, L)).
        probs: (B, N, V) warped base probabilities at every node (rows sum to 1).
        generator: random source, for reproducibility.
    """
    batch, width, length = tree.beam_nodes.shape
    device = probs.device
    rows = torch.arange(batch, device=device)

    current = torch.zeros(batch, dtype=torch.long, device=device)  # the root
    walking = torch.ones(batch, dtype=torch.bool, device=device)
    num_accepted = torch.zeros(batch, dtype=torch.long, device=device)
    path_nodes = torch.zeros(batch, length, dtype=torch.long, device=device)
    residual = probs[:, 0].clone()  # (B, V) what is left of p at the current node
    # A fixed number of rounds (depths x children) with masking keeps this free of host syncs.
    for depth in range(length - 1):
        is_child = (tree.parents == current[:, None]) & tree.valid  # (B, N)
        child_rank = is_child.long().cumsum(dim=-1)
        accepted_here = torch.zeros(batch, dtype=torch.bool, device=device)
        for k in range(1, width + 1):
            selected = is_child & (child_rank == k)
            trying = selected.any(dim=-1) & walking & ~accepted_here
            child = selected.long().argmax(dim=-1)
            token = tree.tokens.gather(1, child[:, None])  # (B, 1)
            p_token = residual.gather(1, token).squeeze(1)
            mass = residual.sum(dim=-1)
            uniform = torch.rand(batch, device=device, generator=generator)
            accept = trying & (uniform * mass < p_token)  # probability p(x) / mass
            reject = trying & ~accept
            residual = torch.where(reject[:, None], residual.scatter(1, token, 0.0), residual)
            accepted_here |= accept
            current = torch.where(accept, child, current)
        walking = walking & accepted_here
        num_accepted += walking.long()
        path_nodes[:, depth + 1] = current
        # A sequence that moved to a child starts afresh from p at that child.
        residual = torch.where(walking[:, None], probs[rows, current], residual)

    # Guard against an all-zero residual from rounding (cannot happen in exact arithmetic).
    empty = residual.sum(dim=-1, keepdim=True) <= 0
    residual = torch.where(empty, probs[rows, current], residual)
    return AcceptanceResult(
        num_accepted=num_accepted,
        path_nodes=path_nodes,
        path_tokens=tree.tokens.gather(1, path_nodes),
        bonus_tokens=sample_from(residual, generator),
    )


def _repeat_last(path_nodes: torch.Tensor, num_accepted: torch.Tensor) -> torch.Tensor:
    """Replace entries past num_accepted (B,) in path_nodes (B, L) with the last accepted node."""
    positions = torch.arange(path_nodes.shape[1], device=path_nodes.device)
    last = path_nodes.gather(1, num_accepted[:, None])
    return torch.where(positions[None, :] > num_accepted[:, None], last, path_nodes)
