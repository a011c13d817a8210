"""Dynamic tree attention: pack the beams of each sequence into one prefix tree of unique tokens.

Beams of one sequence share prefixes (all share the init token, and beam search makes siblings out of one
parent). Verifying the unique prefixes once, as nodes of a tree whose tokens attend only to their ancestors,
costs N <= 1 + W * (L - 1) base-model positions instead of W * L.

Node order is breadth first: by depth, then by the index of the first beam that has the node's prefix. So the
root (the init token) is node 0, every parent comes before its children, and beam 0's path is the first at
each depth. Sequences with fewer unique prefixes than the batch maximum N get padding nodes at the end: they
carry the root token, depth 0, no parent, and attend only to themselves, so they are harmless.

Beams may be ragged (`lengths`): candidates from context lookup are longer or shorter than the drafter's beams.
A position past a beam's length creates no node; its `beam_nodes` entry repeats the beam's last node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class TokenTree:
    """A batch of packed prefix trees.

    Attributes:
        tokens: (B, N) base token id of each node (padding nodes repeat the root token).
        parents: (B, N) parent node index, -1 for the root and for padding nodes.
        depths: (B, N) depth of each node (root 0; padding nodes 0).
        valid: (B, N) False for padding nodes.
        ancestor_mask: (B, N, N) bool, [b, i, j] = node j is node i or one of its ancestors.
        beam_nodes: (B, W, L) node index of each beam position: beams[b, w, d] == tokens[b, beam_nodes[b, w, d]]
            for d < the beam's length; later positions repeat its last node.
        num_nodes: (B,) number of real (non-padding) nodes per sequence.
        beam_lengths: (B, W) tokens of each beam, root included (all L unless the beams were ragged).
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    depths: torch.Tensor
    valid: torch.Tensor
    ancestor_mask: torch.Tensor
    beam_nodes: torch.Tensor
    num_nodes: torch.Tensor
    beam_lengths: torch.Tensor

    @property
    def size(self) -> int:
        """N, the padded number of nodes."""
        return self.tokens.shape[1]

    def position_ids(self, context_lengths: torch.Tensor) -> torch.Tensor:
        """(B, N) position of each node when the sequence already holds context_lengths (B,) tokens."""
        return context_lengths[:, None] + self.depths


def max_tree_size(beam_width: int, beam_length: int) -> int:
    """Largest possible number of unique prefixes: the root plus W distinct tokens at each later depth."""
    return 1 + beam_width * (beam_length - 1)


def build_tree(beams: torch.Tensor, static_size: bool = False, lengths: Optional[torch.Tensor] = None) -> TokenTree:
    """Deduplicate beam prefixes into one packed tree per sequence.

    Args:
        beams: (B, W, L) token ids; beams[:, :, 0] must be the same (root) token within a sequence.
        static_size: pad every tree to `max_tree_size(W, L)` nodes instead of the batch's largest tree.
            This avoids reading the tree size back to the host (one device sync per step) at the cost of
            verifying padding nodes; useful on accelerators when shapes must stay fixed.
        lengths: (B, W) tokens of each beam (1..L, root included); positions past it are ignored. None: all L.

    Returns:
        TokenTree with N = max unique prefixes over the batch (or the static maximum).
    """
    batch, width, length = beams.shape
    device = beams.device
    beam_range = torch.arange(width, device=device)
    depth_range = torch.arange(length, device=device)
    if lengths is None:
        lengths = torch.full((batch, width), length, dtype=torch.long, device=device)
    in_beam = depth_range[None, None, :] < lengths[:, :, None]  # (B, W, L)
    last_position = (lengths - 1)[:, :, None].expand(batch, width, length)

    # same_prefix[b, w, v, d]: beams w and v agree on positions 0..d, and v reaches d.
    same_prefix = (beams[:, :, None, :] == beams[:, None, :, :]).long().cumprod(dim=-1).bool()
    same_prefix &= in_beam[:, None, :, :]
    # The first beam with the same prefix owns the node (argmax returns the first maximum; v == w always matches
    # within w's length).
    owner = same_prefix.long().argmax(dim=2)  # (B, W, L)
    is_new = (owner == beam_range[None, :, None]) & in_beam  # (B, W, L)

    # Breadth-first numbering of the owned prefixes: depth-major, then beam index.
    new_by_depth = is_new.transpose(1, 2).reshape(batch, length * width)
    rank_by_depth = new_by_depth.long().cumsum(dim=-1) - 1
    own_node = rank_by_depth.view(batch, length, width).transpose(1, 2)  # valid where is_new
    beam_nodes = own_node.gather(1, owner)  # (B, W, L): the owner's node for every beam position
    # Past a beam's end: its last node (so a path read anywhere along the beam stays on the beam).
    beam_nodes = torch.where(in_beam, beam_nodes, beam_nodes.gather(2, last_position))

    num_nodes = is_new.sum(dim=(1, 2))
    size = max_tree_size(width, length) if static_size else int(num_nodes.max())

    # Writes from positions past a beam's end would repeat its last node with wrong values: send them to the
    # beam's own position 0 instead (the root: its token, depth 0 and no parent), which is always correct.
    flat_nodes = torch.where(in_beam, beam_nodes, beam_nodes[:, :, :1]).reshape(batch, width * length)
    depth_grid = torch.where(in_beam, depth_range, 0)
    tokens = beams[:, :1, 0].expand(batch, size).clone()
    tokens.scatter_(1, flat_nodes, torch.where(in_beam, beams, beams[:, :, :1]).reshape(batch, -1))
    depths = torch.zeros(batch, size, dtype=torch.long, device=device)
    depths.scatter_(1, flat_nodes, depth_grid.reshape(batch, -1))
    parents = torch.full((batch, size), -1, dtype=torch.long, device=device)
    child_nodes = torch.where(in_beam[:, :, 1:], beam_nodes[:, :, 1:], beam_nodes[:, :, :1])
    parent_nodes = torch.where(in_beam[:, :, 1:], beam_nodes[:, :, :-1], -1)
    parents.scatter_(1, child_nodes.reshape(batch, -1), parent_nodes.reshape(batch, -1))
    valid = torch.arange(size, device=device)[None, :] < num_nodes[:, None]

    # A node at depth d of beam w sees the nodes of beam w at depths 0..d (lower triangle of each beam's path).
    # Duplicate writes (shared prefixes) write the same True, so scatter order does not matter.
    rows, cols = torch.tril_indices(length, length, device=device)
    row_nodes = beam_nodes[:, :, rows].reshape(batch, -1)
    col_nodes = beam_nodes[:, :, cols].reshape(batch, -1)
    batch_index = torch.arange(batch, device=device)[:, None].expand_as(row_nodes)
    ancestor_mask = torch.zeros(batch, size, size, dtype=torch.bool, device=device)
    ancestor_mask[batch_index, row_nodes, col_nodes] = True
    ancestor_mask |= torch.eye(size, dtype=torch.bool, device=device)  # padding nodes see themselves only

    return TokenTree(
        tokens=tokens,
        parents=parents,
        depths=depths,
        valid=valid,
        ancestor_mask=ancestor_mask,
        beam_nodes=beam_nodes,
        num_nodes=num_nodes,
        beam_lengths=lengths,
    )
