"""Drafter training losses: ground truth (hard labels) and knowledge distillation from the base model."""

from __future__ import annotations

from typing import Iterator, Tuple

import torch


def shift_left(x: torch.Tensor, shift: int) -> torch.Tensor:
    """x[:, t] <- x[:, t + shift] along dim 1, zero-filled past the end. x: (batch, seq, ...)."""
    if shift == 0:
        return x
    out = torch.zeros_like(x)
    out[:, :-shift] = x[:, shift:]
    return out


def iter_teacher_forced_states(
    drafter, hidden_states: torch.Tensor, input_embeds: torch.Tensor, num_steps: int
) -> Iterator[Tuple[int, torch.Tensor]]:
    """Drafter states at every position for steps 0..num_steps-1 with the true tokens fed in.

    Step k's state at position t has consumed tokens t+1..t+k+1 and predicts token t+k+2.
    hidden_states, input_embeds: (batch, seq, hidden). Yields (step, state (batch, seq, state_dim)).
    """
    state = drafter.initial_state(hidden_states)
    for step in range(num_steps):
        state = drafter.advance_state(state, shift_left(input_embeds, step + 1), step)
        yield step, state
