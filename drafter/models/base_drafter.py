"""What every drafter family shares: base-model bookkeeping and the optional reduced draft vocabulary."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from transformers import PretrainedConfig, PreTrainedModel

from ..engine.base_lm import BaseLM
from .state import iter_teacher_forced_states


class DrafterConfig(PretrainedConfig):
    """Fields common to all drafter families.

    Args:
        hidden_size: hidden size of the base model's last hidden state (the drafter's input).
        vocab_size: the base model's vocabulary size (token ids the drafter emits are base ids).
        base_model_name_or_path: the base model the drafter was trained against.
        draft_vocab_size: when set, the drafter predicts over this many base tokens only; the
            draft-to-base map is stored with the weights (``draft_to_base`` buffer).
        base_model_fingerprint: `BaseLM.fingerprint()` of the base trained against (config + embedding and
            output weights); a base of the same shapes with other weights is refused.
    """

    def __init__(
        self,
        hidden_size: int = 576,
        vocab_size: int = 49152,
        base_model_name_or_path: Optional[str] = None,
        draft_vocab_size: Optional[int] = None,
        base_model_fingerprint: Optional[str] = None,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size
        self.base_model_name_or_path = base_model_name_or_path
        self.draft_vocab_size = draft_vocab_size
        self.base_model_fingerprint = base_model_fingerprint
        super().__init__(**kwargs)

    @property
    def output_vocab_size(self) -> int:
        """Width of the drafter's output layer: the draft vocabulary if reduced, else the base one."""
        return self.draft_vocab_size or self.vocab_size


class DrafterMismatchError(ValueError):
    """A drafter was paired with a base model it was not built for."""


class DrafterPreTrainedModel(PreTrainedModel):
    """Base class of drafter heads: holds the draft<->base vocabulary maps and checks the base model."""

    config_class = DrafterConfig
    base_model_prefix = "drafter"
    supports_gradient_checkpointing = False
    # True: advance_state receives base token ids instead of base input embeddings (the drafter embeds them).
    consumes_token_ids = False
    # True: the drafting at position t reads position t's context and the tokens after it only (no attention across
    # positions), so training may compute the teacher-forced states at the positions that have targets alone.
    independent_positions = False

    def __init__(self, config: DrafterConfig):
        super().__init__(config)
        if config.draft_vocab_size:
            # Filled by `set_draft_vocabulary`; saved with the weights so a checkpoint is self-contained.
            self.register_buffer(
                "draft_to_base", torch.arange(config.draft_vocab_size, dtype=torch.long), persistent=True
            )
            self.register_buffer(
                "base_to_draft", _inverse_map(self.draft_to_base, config.vocab_size), persistent=True
            )

    def _init_weights(self, module: torch.nn.Module) -> None:
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.LayerNorm):
            torch.nn.init.ones_(module.weight)
            torch.nn.init.zeros_(module.bias)

    # ----------------------------------------------------------------- the drafter protocol
    # Every family implements these; beam search, the tree drafter and the losses use nothing else. `step` is
    # the 0-based drafting step; shapes are (..., dim) with any leading dimensions.
    @property
    def num_draft_steps(self) -> int:
        """Tokens the drafter proposes per verification step at most (the steps it was trained for)."""
        raise NotImplementedError

    def initial_state(self, context: torch.Tensor) -> Any:
        """Drafter state before the first drafted token, from the base model's last hidden state (..., H)."""
        raise NotImplementedError

    def advance_state(self, state: Any, token_inputs: torch.Tensor, step: int) -> Any:
        """Fold the latest token into the state: its base input embedding (..., H), or its base id (...) when
        `consumes_token_ids`."""
        raise NotImplementedError

    def compute_logits(self, context: torch.Tensor, state: Any, step: int) -> torch.Tensor:
        """Next-token logits (..., output_vocab_size) over the draft vocabulary."""
        raise NotImplementedError

    # ----------------------------------------------------------------- teacher-forced forward
    def forward(
        self,
        hidden_states: torch.Tensor,
        input_embeds: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        num_steps: Optional[int] = None,
        input_ids: Optional[torch.Tensor] = None,
        loss_fn: Optional[Callable[..., Any]] = None,
        **loss_kwargs,
    ):
        """Teacher-forced drafting at every position of a sequence (training and evaluation).

        Args:
            hidden_states: (batch, seq, hidden) base last hidden states.
            input_embeds: (batch, seq, hidden) base input embeddings of the same sequence's tokens.
            input_ids: (batch, seq) the sequence's token ids; required by drafters that embed tokens themselves
                (`consumes_token_ids = True`), ignored by the others.
            labels, loss_fn: with labels, returns ``loss_fn(self, hidden_states, input_embeds, labels, num_steps,
                input_ids=input_ids, **loss_kwargs)`` (the training objective, `drafter.training.losses.drafter_loss`,
                is passed in by the trainer). The loss is computed inside forward so that distributed wrappers
                (DDP/FSDP) see the computation.
        Returns:
            without labels: (num_steps, batch, seq, output_vocab_size), entry [k, b, t] predicting token
            t + k + 2; positions whose inputs run past the sequence end see zero embeddings.
        """
        num_steps = num_steps or self.num_draft_steps
        if labels is not None:
            if loss_fn is None:
                raise ValueError("forward(labels=...) needs the training objective as loss_fn")
            return loss_fn(self, hidden_states, input_embeds, labels, num_steps, input_ids=input_ids, **loss_kwargs)
        return torch.stack(
            [
                self.compute_logits(hidden_states, state, step)
                for step, state in iter_teacher_forced_states(self, hidden_states, input_embeds, num_steps, input_ids)
            ]
        )

    # ----------------------------------------------------------------- draft vocabulary
    @property
    def has_reduced_vocabulary(self) -> bool:
        return bool(self.config.draft_vocab_size)

    def set_draft_vocabulary(self, draft_to_base: torch.Tensor) -> None:
        """Install the draft-to-base token map (draft id i predicts base token draft_to_base[i])."""
        if not self.has_reduced_vocabulary:
            raise ValueError("This drafter was built without draft_vocab_size; it uses the full vocabulary.")
        draft_to_base = draft_to_base.to(dtype=torch.long, device=self.draft_to_base.device)
        if draft_to_base.shape != self.draft_to_base.shape:
            raise ValueError(
                f"draft_to_base has {draft_to_base.numel()} entries, expected {self.config.draft_vocab_size}"
            )
        if draft_to_base.unique().numel() != draft_to_base.numel():
            raise ValueError("draft_to_base must not repeat a base token")
        self.draft_to_base.copy_(draft_to_base)
        self.base_to_draft.copy_(_inverse_map(draft_to_base, self.config.vocab_size))

    def to_base_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Map ids of the drafter's output layer to base-model token ids."""
        return self.draft_to_base[draft_ids] if self.has_reduced_vocabulary else draft_ids

    def to_draft_ids(self, base_ids: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Map base token ids (e.g. training labels) to draft ids; tokens outside the draft vocabulary
        and `ignore_index` entries become `ignore_index`."""
        if not self.has_reduced_vocabulary:
            return base_ids
        valid = base_ids != ignore_index
        mapped = self.base_to_draft[base_ids.clamp(min=0)]
        return torch.where(valid & (mapped >= 0), mapped, torch.full_like(mapped, ignore_index))

    # ----------------------------------------------------------------- base compatibility
    def check_base_model(self, base_model: PreTrainedModel, allow_weight_mismatch: bool = False) -> None:
        """Fail with a clear message when `base_model` is not the model this drafter was built for: other
        shapes always, other weights (a recorded fingerprint that differs) unless `allow_weight_mismatch`."""
        lm = BaseLM(base_model)
        problems = []
        if lm.hidden_size != self.config.hidden_size:
            problems.append(f"hidden size {lm.hidden_size} != drafter's {self.config.hidden_size}")
        if lm.vocab_size != self.config.vocab_size:
            problems.append(f"vocabulary size {lm.vocab_size} != drafter's {self.config.vocab_size}")
        recorded = getattr(self.config, "base_model_fingerprint", None)
        if not problems and recorded and not allow_weight_mismatch and lm.fingerprint() != recorded:
            problems.append("its weights differ from those the drafter was trained on (another checkpoint of the "
                            "same shapes); pass --allow_base_mismatch to use it anyway")
        if problems:
            raise DrafterMismatchError(
                f"Drafter trained for base model '{self.config.base_model_name_or_path}' cannot run on "
                f"'{base_model.config.name_or_path}': " + "; ".join(problems)
            )

    def record_base_model(self, name_or_path: str, fingerprint: str) -> None:
        """The base this drafter is (further) trained against, saved with it."""
        self.config.base_model_name_or_path = name_or_path
        self.config.base_model_fingerprint = fingerprint


def _inverse_map(draft_to_base: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) long: draft id of each base token, -1 for tokens outside the draft vocabulary."""
    inverse = torch.full((vocab_size,), -1, dtype=torch.long, device=draft_to_base.device)
    inverse[draft_to_base] = torch.arange(draft_to_base.numel(), device=draft_to_base.device)
    return inverse
