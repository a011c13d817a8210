"""Batched beam search over a recurrent drafter (ReDrafter's `beam_search_candidates`).

Every sequence of the batch gets `beam_width` candidate continuations of `beam_length` tokens. Index 0 of each
beam is the init token x_{t+1} (already chosen by the base model); indices 1.. are drafted. The drafter is
conditioned on the base model's last verified hidden state h_t and on the tokens fed so far, one step at a time:

    step 0: state = advance_state(initial_state(h_t), e(x_{t+1}), 0); logits = compute_logits(h_t, state, 0)
    step k: state = advance_state(state, e(chosen token k), k);     logits = compute_logits(h_t, state, k)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch


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


def _map_state(state: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply `fn` to every tensor of a drafter state (a tensor, or a tuple/list/dict of them)."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        return type(state)(_map_state(s, fn) for s in state)
    if isinstance(state, dict):
        return {k: _map_state(v, fn) for k, v in state.items()}
    raise TypeError(f"Unsupported drafter state type {type(state).__name__}")


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
        drafter: object with `initial_state`, `advance_state`, `compute_logits`, `to_base_ids`.
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
    state = drafter.advance_state(state, embed_tokens(init_tokens[:, None]).to(ctx.dtype), 0)
    log_probs = torch.log_softmax(drafter.compute_logits(ctx, state, 0).float(), dim=-1)  # (B, 1, Vd)

    # Widen to W beams of which only beam 0 is live: otherwise the first top-k would pick the same
    # token W times (one per identical beam) and all beams would coincide.
    ctx = ctx.expand(batch, width, ctx.shape[-1])
    state = _map_state(state, lambda s: s.expand(batch, width, *s.shape[2:]))
    log_probs = log_probs.expand(batch, width, log_probs.shape[-1])
    score = torch.full((batch, width), float("-inf"), device=context.device)
    score[:, 0] = 0.0

    beams = init_tokens[:, None, None].expand(batch, width, 1)
    token_log_probs = score.new_zeros(batch, width, 0)
    for step in range(beam_length - 1):
        if step > 0:
            state = drafter.advance_state(state, embed_tokens(beams[:, :, -1]).to(ctx.dtype), step)
            log_probs = torch.log_softmax(drafter.compute_logits(ctx, state, step).float(), dim=-1)
        vocab = log_probs.shape[-1]
        candidates = (score[:, :, None] + log_probs).reshape(batch, width * vocab)
        # With Vd < W some picks extend -inf (never live) beams: valid token sequences all the same.
        score, flat = candidates.topk(width, dim=-1)  # (B, W), sorted best first
        parent, draft_ids = flat // vocab, flat % vocab
        chosen_log_probs = log_probs.reshape(batch, width * vocab).gather(1, flat)[:, :, None]  # (B, W, 1)
        beams = torch.cat([_gather_beams(beams, parent), drafter.to_base_ids(draft_ids)[:, :, None]], dim=-1)
        token_log_probs = torch.cat([_gather_beams(token_log_probs, parent), chosen_log_probs], dim=-1)
        state = _map_state(state, lambda s, parent=parent: _gather_beams(s, parent))
    return BeamSearchOutput(beams=beams, token_log_probs=token_log_probs, beam_log_probs=score)
