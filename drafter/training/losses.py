"""Drafter training losses: ground truth (hard labels) and knowledge distillation from the base model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch

from ..models.state import iter_teacher_forced_states, map_state, shift_left


def shifted_labels(labels: torch.Tensor, shift: int, ignore_index: int = -100) -> torch.Tensor:
    """labels[:, t + shift] at position t, `ignore_index` past the end. labels: (batch, seq)."""
    out = torch.full_like(labels, ignore_index)
    out[:, : labels.shape[1] - shift] = labels[:, shift:]
    return out


def step_weights(num_steps: int, decay: float = 1.0) -> List[float]:
    """Weight of each drafting step in the total loss: decay ** step.

    decay = 1.0 is what Apple's ReDrafter training uses (the per-step cross-entropies are simply summed,
    `recurrent_drafting/train/loss.py`); Medusa-style training decays later heads, e.g. 0.8.
    """
    return [decay**step for step in range(num_steps)]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of temperature-softened distributions, times T^2 (Hinton et al.).

    Both (n, vocab). Mean over the n positions; 0 when the student equals the teacher.
    """
    teacher_log_probs = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    student_log_probs = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = torch.nn.functional.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="none")
    return kl.sum(-1).mean() * temperature**2


@dataclass
class DrafterLossOutput:
    loss: torch.Tensor
    step_losses: List[torch.Tensor]
    # per step: (targets counted, targets outside the draft vocabulary, correct@k for k = 1..top_k)
    step_counts: List[Tuple[int, int, List[int]]] = field(default_factory=list)


def drafter_loss(
    drafter,
    hidden_states: torch.Tensor,
    input_embeds: torch.Tensor,
    labels: torch.Tensor,
    num_steps: int,
    loss_decay: float = 1.0,
    teacher_head: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    kd_temperature: float = 1.0,
    kd_alpha: float = 0.0,
    top_k: int = 0,
    ignore_index: int = -100,
    input_ids: Optional[torch.Tensor] = None,
    distill_targets: Optional[torch.Tensor] = None,
    distill_embeds: Optional[torch.Tensor] = None,
    teacher_hidden_states: Optional[torch.Tensor] = None,
) -> DrafterLossOutput:
    """Training loss of a drafter over every position of a batch, with the true tokens fed in.

    Step k (0-based) at position t predicts token t + k + 2 (the base model itself supplies t + 1).
    Only positions with a valid target go through the vocabulary projection, which dominates the cost.

    Args:
        hidden_states, input_embeds: (batch, seq, hidden) from the frozen base model.
        labels: (batch, seq) token ids, `ignore_index` where no loss is wanted (padding, non-assistant).
        teacher_head: maps base hidden states (n, hidden) to the base model's logits over the drafter's
            output vocabulary (n, output_vocab_size); required when kd_alpha > 0. The teacher for step k
            at position t is the base model's next-token distribution at position t + k + 1.
        kd_alpha: weight of the distillation loss; the hard cross-entropy gets 1 - kd_alpha.
        top_k: also count top-1..top_k correct predictions (for metrics; no gradient).
        input_ids: (batch, seq) the tokens of the sequence; needed by drafters that read token ids.
        distill_targets: (batch, seq, N) the paper's distilled dataset: at position t, the base model's own
            N-token continuation of the sequence up to t (`drafter.teacher.distill`), `ignore_index` where
            absent. When given, step k feeds continuation tokens 0..k and targets continuation token k + 1
            instead of the sequence's tokens; `labels` is then unused. Trains min(num_steps, N - 1) steps.
        distill_embeds: (batch, seq, N, hidden) base input embeddings of distill_targets (for drafters that
            read embeddings).
        teacher_hidden_states: (batch, seq, hidden) the base's last hidden states, which `teacher_head` reads, when
            `hidden_states` is another context (EAGLE-3's fused layers); default `hidden_states`.
    """
    if kd_alpha > 0 and teacher_head is None:
        raise ValueError("knowledge distillation needs a teacher_head (the base model's output layer)")
    if distill_targets is not None:
        if kd_alpha > 0:
            raise ValueError("knowledge distillation and the distilled dataset cannot be combined")
        num_steps = min(num_steps, distill_targets.shape[-1] - 1)
    weights = step_weights(num_steps, loss_decay)
    total = hidden_states.new_zeros((), dtype=torch.float32)
    if kd_alpha > 0:
        teacher_rows, teacher_logits_all = _teacher_logits(
            teacher_head, hidden_states if teacher_hidden_states is None else teacher_hidden_states, labels,
            ignore_index,
        )
    step_losses, step_counts = [], []
    continuation = (distill_targets.clamp(min=0), distill_embeds) if distill_targets is not None else None
    step_targets = [  # (batch, seq) the base token each step predicts at each position, or ignore_index
        _step_targets(labels, distill_targets, step, ignore_index) for step in range(num_steps)
    ]
    positions, at = None, (lambda x: x)  # noqa: E731
    if getattr(drafter, "independent_positions", False):
        # Only positions with a target in some step are drafted from (prompts and padding are skipped).
        positions = torch.stack(step_targets).ne(ignore_index).any(0)  # (batch, seq)
        at = lambda x: x[positions]  # noqa: E731
    context = at(hidden_states)  # (batch, seq, H), or (n, H) at the positions
    states = iter_teacher_forced_states(drafter, hidden_states, input_embeds, num_steps, input_ids, continuation,
                                        positions)
    for step, state in states:
        base_targets = at(step_targets[step])
        in_sequence = base_targets != ignore_index
        targets = drafter.to_draft_ids(base_targets, ignore_index)[in_sequence]  # (n,)
        selected = map_state(state, lambda s, rows=in_sequence: s[rows])
        logits = drafter.compute_logits(context[in_sequence], selected, step)  # (n, vocab)
        in_vocab = targets != ignore_index
        if in_vocab.any():
            hard = torch.nn.functional.cross_entropy(logits[in_vocab].float(), targets[in_vocab])
        else:  # keeps the graph connected so every rank runs the same backward
            hard = logits.sum() * 0.0
        step_loss = hard
        if kd_alpha > 0:
            teacher_logits = teacher_logits_all[at(shift_left(teacher_rows, step + 1))[in_sequence]]
            soft = distillation_loss(logits, teacher_logits, kd_temperature)
            step_loss = kd_alpha * soft + (1.0 - kd_alpha) * hard
        total = total + weights[step] * step_loss
        step_losses.append(step_loss.detach())
        if top_k:
            step_counts.append(_topk_counts(logits.detach(), targets, in_vocab, top_k))
    return DrafterLossOutput(loss=total, step_losses=step_losses, step_counts=step_counts)


def _step_targets(labels: torch.Tensor, distill_targets: Optional[torch.Tensor], step: int,
                  ignore_index: int) -> torch.Tensor:
    """(batch, seq) what drafting step `step` predicts at each position: the sequence's token t + step + 2, or with
    the distilled dataset continuation token step + 1, usable up to the continuation's first missing token."""
    if distill_targets is None:
        return shifted_labels(labels, step + 2, ignore_index)
    return distill_targets[:, :, step + 1].masked_fill(
        (distill_targets[:, :, : step + 2] == ignore_index).any(-1), ignore_index
    )


def _teacher_logits(teacher_head, hidden_states, labels, ignore_index):
    """Every step's teacher is the base distribution at some position p whose next token is a target: compute
    each such row once (the output layer is the expensive part). Returns (row index of each position (batch,
    seq), logits (rows, vocab))."""
    needed = shifted_labels(labels, 1, ignore_index) != ignore_index  # (batch, seq)
    teacher_rows = torch.zeros_like(labels)
    teacher_rows[needed] = torch.arange(int(needed.sum()), device=labels.device)
    return teacher_rows, teacher_head(hidden_states[needed])


def _topk_counts(logits: torch.Tensor, targets: torch.Tensor, in_vocab: torch.Tensor, top_k: int):
    """(targets, out-of-vocabulary targets, [correct@1..top_k]); OOV targets count as misses."""
    top = logits.topk(min(top_k, logits.shape[-1]), dim=-1).indices  # (n, k)
    hits = (top == targets.unsqueeze(-1)) & in_vocab.unsqueeze(-1)
    correct_at = hits.cumsum(-1).clamp(max=1).sum(0).tolist()
    correct_at += [correct_at[-1]] * (top_k - len(correct_at))
    return targets.numel(), int((~in_vocab).sum()), correct_at
