"""Batched beam search over a recurrent drafter (ReDrafter's `beam_search_candidates`).

Every sequence of the batch gets `beam_width` candidate continuations of `beam_length` tokens. Index 0 of each
beam is the init token x_{t+1} (already chosen by the base model); indices 1.. are drafted. The drafter is
conditioned on the base model's last verified hidden state h_t and on the tokens fed so far, one step at a time:

    step 0: state = advance_state(initial_state(h_t), e(x_{t+1}), 0); logits = compute_logits(h_t, state, 0)
    step k: state = advance_state(state, e(chosen token k), k);     logits = compute_logits(h_t, state, k)

e() is the base model's input embedding, or the identity (base token ids) for drafters that embed tokens themselves
(`consumes_token_ids = True`, e.g. the Arctic speculators); see `token_inputs`.

`topk_tree_candidates` is the alternative to beam search used by MLP/Arctic speculators: every node expands the
top-k tokens of its own next-token distribution (k per head), and the best `n_candidates` leaves are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from ..models.state import map_state


@dataclass
class BeamSearchOutput:
    """Candidates from one round of drafting.

    Attributes:
        beams: (B, W, L) base-vocabulary token ids; beams[:, :, 0] is the init token.
        token_log_probs: (B, W, L-1) drafter log-probability of each drafted token given its prefix.
        beam_log_probs: (B, W) sum of `token_log_probs` (the beam score; -inf for a beam that never was live).
    """

    beams: torch.Tensor
    token_log_probs: torch.Tensor
    beam_log_probs: torch.Tensor


def token_inputs(
    drafter: Any, embed_tokens: Callable[[torch.Tensor], torch.Tensor], token_ids: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """What `drafter.advance_state` consumes for the base tokens `token_ids`: the ids themselves for drafters with
    `consumes_token_ids = True` (they own their embeddings), else the base model's input embeddings."""
    if getattr(drafter, "consumes_token_ids", False):
        return token_ids
    return embed_tokens(token_ids).to(dtype)


def _gather_beams(x: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """x (B, W, ...) reindexed along the beam axis by parent (B, W') -> (B, W', ...)."""
    index = parent.view(*parent.shape, *([1] * (x.dim() - 2))).expand(*parent.shape, *x.shape[2:])
    return x.gather(1, index)


@torch.no_grad()
def beam_search(
    drafter: Any,
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
    context: torch.Tensor,
    init_tokens: torch.Tensor,
    beam_width: int,
    beam_length: int,
) -> BeamSearchOutput:
    """Draft `beam_width` beams of `beam_length` tokens per sequence.

    Args:
        drafter: object with `initial_state`, `advance_state`, `compute_logits`, `to_base_ids` (and optionally
            `consumes_token_ids`).
        embed_tokens: the base model's input embedding (base ids (...) -> (..., H)).
        context: (B, H) base last hidden state at the last verified position.
        init_tokens: (B,) base ids of the next token x_{t+1} (chosen by the base model).
        beam_width: W, number of beams kept.
        beam_length: L >= 2, tokens per beam including the init token.

    Returns:
        BeamSearchOutput with beams sorted best first (by cumulative drafter log-probability).
    """
    if beam_length < 2:
        raise ValueError(f"beam_length must be >= 2 (init token + at least one draft), got {beam_length}")
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    batch, width = context.shape[0], beam_width

    ctx = context[:, None, :]  # (B, 1, H): one live beam at step 0
    state = drafter.initial_state(ctx)
    state = drafter.advance_state(state, token_inputs(drafter, embed_tokens, init_tokens[:, None], ctx.dtype), 0)
    log_probs = torch.log_softmax(drafter.compute_logits(ctx, state, 0).float(), dim=-1)  # (B, 1, Vd)

    # Widen to W beams of which only beam 0 is live: otherwise the first top-k would pick the same
    # token W times (one per identical beam) and all beams would coincide.
    ctx = ctx.expand(batch, width, ctx.shape[-1])
    state = map_state(state, lambda s: s.expand(batch, width, *s.shape[2:]))
    log_probs = log_probs.expand(batch, width, log_probs.shape[-1])
    score = torch.full((batch, width), float("-inf"), device=context.device)
    score[:, 0] = 0.0

    beams = init_tokens[:, None, None].expand(batch, width, 1)
    token_log_probs = score.new_zeros(batch, width, 0)
    for step in range(beam_length - 1):
        if step > 0:
            state = drafter.advance_state(state, token_inputs(drafter, embed_tokens, beams[:, :, -1], ctx.dtype), step)
            log_probs = torch.log_softmax(drafter.compute_logits(ctx, state, step).float(), dim=-1)
        vocab = log_probs.shape[-1]
        candidates = (score[:, :, None] + log_probs).reshape(batch, width * vocab)
        # With Vd < W some picks extend -inf (never live) beams: valid token sequences all the same.
        score, flat = candidates.topk(width, dim=-1)  # (B, W), sorted best first
        parent, draft_ids = flat // vocab, flat % vocab
        chosen_log_probs = log_probs.reshape(batch, width * vocab).gather(1, flat)[:, :, None]  # (B, W, 1)
        beams = torch.cat([_gather_beams(beams, parent), drafter.to_base_ids(draft_ids)[:, :, None]], dim=-1)
        token_log_probs = torch.cat([_gather_beams(token_log_probs, parent), chosen_log_probs], dim=-1)
        state = map_state(state, lambda s, parent=parent: _gather_beams(s, parent))
    return BeamSearchOutput(beams=beams, token_log_probs=token_log_probs, beam_log_probs=score)


def num_topk_candidates(top_k_tokens_per_head: Sequence[int], n_candidates: Optional[int] = None) -> int:
    """Candidates `topk_tree_candidates` returns: all prod(k) leaves, or the best `n_candidates` of them."""
    leaves = math.prod(top_k_tokens_per_head)
    return leaves if n_candidates is None else min(n_candidates, leaves)


@torch.no_grad()
def topk_tree_candidates(
    drafter: Any,
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
    context: torch.Tensor,
    init_tokens: torch.Tensor,
    top_k_tokens_per_head: Sequence[int],
    n_candidates: Optional[int] = None,
) -> BeamSearchOutput:
    """Candidate tree from the per-head top-k (MLPSpeculator's `generate_suffixes`, vLLM's
    `top_k_tokens_per_head` / `n_candidates`).

    Head i expands EVERY candidate by the top `top_k_tokens_per_head[i]` tokens of that candidate's own
    distribution (each branch feeds its own token to the next head), so the full tree has prod(k) leaves, e.g.
    [4, 3, 2] -> 24 candidates of 3 drafted tokens. The candidates are ranked by their summed drafter
    log-probability and the best `n_candidates` (default: all) are returned; [1, 1, ..., 1] is a single greedy
    chain. The output has the shape of `beam_search`'s, so `build_tree` and verification are unchanged.

    Args:
        context: (B, H) base last hidden state; init_tokens: (B,) the base model's next token.
        top_k_tokens_per_head: k per drafting step (its length is the number of drafted tokens).
    Returns:
        BeamSearchOutput with W = num_topk_candidates(...) candidates of L = len(top_k_tokens_per_head) + 1 tokens.
    """
    if not top_k_tokens_per_head or min(top_k_tokens_per_head) < 1:
        raise ValueError(f"top_k_tokens_per_head needs >= 1 entries, all >= 1; got {list(top_k_tokens_per_head)}")
    if n_candidates is not None and n_candidates < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
    batch = context.shape[0]
    ctx = context[:, None, :]  # (B, 1, H)
    state = drafter.initial_state(ctx)
    last_tokens = init_tokens[:, None]  # (B, C): the newest token of each candidate (C = 1 before head 0)
    beams = init_tokens[:, None, None]  # (B, C, 1 + step)
    token_log_probs = torch.zeros(batch, 1, 0, device=context.device)
    score = torch.zeros(batch, 1, device=context.device)
    for step, k in enumerate(top_k_tokens_per_head):
        num = last_tokens.shape[1]
        state = drafter.advance_state(state, token_inputs(drafter, embed_tokens, last_tokens, ctx.dtype), step)
        logits = drafter.compute_logits(ctx.expand(batch, num, ctx.shape[-1]), state, step)
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B, C, Vd)
        k = min(k, log_probs.shape[-1])
        top_log_probs, top_ids = log_probs.topk(k, dim=-1)  # (B, C, k)
        last_tokens = drafter.to_base_ids(top_ids).reshape(batch, num * k)
        beams = torch.cat([beams.repeat_interleave(k, dim=1), last_tokens[:, :, None]], dim=-1)
        token_log_probs = torch.cat(
            [token_log_probs.repeat_interleave(k, dim=1), top_log_probs.reshape(batch, num * k, 1)], dim=-1
        )
        score = score.repeat_interleave(k, dim=1) + top_log_probs.reshape(batch, num * k)
        state = map_state(state, lambda s, k=k: s.repeat_interleave(k, dim=1))
    keep = min(num_topk_candidates(top_k_tokens_per_head, n_candidates), score.shape[-1])  # (Vd < k: fewer)
    score, order = score.topk(keep, dim=-1)  # best first
    return BeamSearchOutput(
        beams=_gather_beams(beams, order),
        token_log_probs=_gather_beams(token_log_probs, order),
        beam_log_probs=score,
    )
