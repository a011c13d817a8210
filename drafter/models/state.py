"""Drafter states (what `initial_state` / `advance_state` return: a tensor, or a tuple/list/dict of tensors,
e.g. the Arctic LSTM's (hidden, cell)), and the teacher-forced states at every position of a sequence."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Tuple

import torch


def map_state(state: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply `fn` to every tensor of a drafter state (a tensor, or a tuple/list/dict of them)."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(s, fn) for s in state)
    if isinstance(state, dict):
        return {k: map_state(v, fn) for k, v in state.items()}
    raise TypeError(f"Unsupported drafter state type {type(state).__name__}")


def shift_left(x: torch.Tensor, shift: int) -> torch.Tensor:
    """x[:, t] <- x[:, t + shift] along dim 1, zero-filled past the end. x: (batch, seq, ...)."""
    if shift == 0:
        return x
    out = torch.zeros_like(x)
    out[:, :-shift] = x[:, shift:]
    return out


def iter_teacher_forced_states(
    drafter,
    hidden_states: torch.Tensor,
    input_embeds: Optional[torch.Tensor],
    num_steps: int,
    input_ids: Optional[torch.Tensor] = None,
    continuation: Optional[Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]] = None,
    positions: Optional[torch.Tensor] = None,
) -> Iterator[Tuple[int, Any]]:
    """Drafter states at every position for steps 0..num_steps-1 with the true tokens fed in.

    Step k's state at position t has consumed tokens t+1..t+k+1 and predicts token t+k+2.
    hidden_states, input_embeds: (batch, seq, hidden); input_ids: (batch, seq), fed instead of the embeddings to
    drafters with `consumes_token_ids = True` (which own their token embeddings).
    continuation: (ids (batch, seq, N), embeds (batch, seq, N, hidden)) of a per-position continuation (the
    distilled dataset); when given, step k feeds continuation token k instead of the sequence's token t+k+1.
    positions: (batch, seq) bool, only for drafters with `independent_positions`: the states are computed at
    these positions only (training skips padding, prompts and positions without a target).
    Yields (step, state): (batch, seq, state_dim), or (n, state_dim) with `positions`; or a tuple/dict of such.
    """
    reads_ids = getattr(drafter, "consumes_token_ids", False)
    if continuation is not None:
        stream = continuation[0] if reads_ids else continuation[1]
        step_tokens = lambda step: stream[:, :, step]  # noqa: E731
    else:
        stream = input_ids if reads_ids else input_embeds
        step_tokens = lambda step: shift_left(stream, step + 1)  # noqa: E731
    if stream is None:
        wanted = "input_ids" if reads_ids else "input_embeds"
        raise ValueError(f"{type(drafter).__name__} reads {wanted}: pass {wanted} to its forward / drafter_loss")
    if positions is not None and not getattr(drafter, "independent_positions", False):
        raise ValueError(f"{type(drafter).__name__} attends across positions: its states need the whole sequence")
    at = (lambda x: x) if positions is None else (lambda x: x[positions])  # noqa: E731
    state = drafter.initial_state(at(hidden_states))
    for step in range(num_steps):
        state = drafter.advance_state(state, at(step_tokens(step)), step)
        yield step, state
