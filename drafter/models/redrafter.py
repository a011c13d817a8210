"""Recurrent Drafting (ReDrafter, Cheng et al. 2024, arXiv:2403.09919): an RNN drafter conditioned on the
base model's last hidden state.

Drafting step k (k = 1, 2, ...) for a context position t, whose base hidden state is h_t:

    s_0 = 0
    s_k = SiLU(W e(x_{t+k}) + U s_{k-1} + b)      (rnn=True; rnn=False uses s_k = s_{k-1} + e(x_{t+k}))
    logits_k = LMHead(ResBlocks(Proj([h_t ; s_k])))  predicts x_{t+k+1}

where e() is the base model's (frozen) input embedding, x_{t+1} is the base model's own next token, and
x_{t+2..} are the drafted tokens. Proj is present only when exit_dim != 2 * hidden_size.
"""

from __future__ import annotations

import torch
from torch import nn

from .base_drafter import DrafterConfig, DrafterPreTrainedModel


class RecurrentDraftingConfig(DrafterConfig):
    """Configuration of a ReDrafter head.

    Args:
        drafter_num_layers: number of residual SiLU blocks before the vocabulary projection.
        exit_dim_multiplier: width of the residual blocks as a multiple of the base hidden size
            (2.0 = the concatenated [h; s] width, so no input projection).
        rnn: recurrent state update (True) or a running sum of token embeddings (False).
        drafter_predict_n_tokens: drafting steps trained (the longest beam the drafter is trained for).
    """

    model_type = "recurrent_drafter"

    def __init__(
        self,
        drafter_num_layers: int = 2,
        exit_dim_multiplier: float = 2.0,
        rnn: bool = True,
        drafter_predict_n_tokens: int = 5,
        **kwargs,
    ):
        self.drafter_num_layers = drafter_num_layers
        self.exit_dim_multiplier = exit_dim_multiplier
        self.rnn = rnn
        self.drafter_predict_n_tokens = drafter_predict_n_tokens
        super().__init__(**kwargs)

    @property
    def exit_dim(self) -> int:
        return int(round(self.exit_dim_multiplier * self.hidden_size))


class ResidualBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + nn.functional.silu(self.linear(x))


class RecurrentDraftingModel(DrafterPreTrainedModel):
    config_class = RecurrentDraftingConfig
    independent_positions = True

    def __init__(self, config: RecurrentDraftingConfig):
        super().__init__(config)
        hidden, exit_dim = config.hidden_size, config.exit_dim
        self.input_proj = nn.Linear(2 * hidden, exit_dim, bias=True) if exit_dim != 2 * hidden else None
        self.res_blocks = nn.ModuleList(ResidualBlock(exit_dim) for _ in range(config.drafter_num_layers))
        self.lm_head = nn.Linear(exit_dim, config.output_vocab_size, bias=False)
        if config.rnn:
            self.rnn_u = nn.Linear(hidden, hidden, bias=True)
            self.rnn_w = nn.Linear(hidden, hidden, bias=False)
        self.post_init()

    @property
    def num_draft_steps(self) -> int:
        return self.config.drafter_predict_n_tokens

    # The three operations every drafter family provides; `step` is 0-based.
    def initial_state(self, context: torch.Tensor) -> torch.Tensor:
        """Drafter state before the first drafted token. context: (..., hidden) -> (..., hidden)."""
        return torch.zeros_like(context)

    def advance_state(self, state: torch.Tensor, token_embeds: torch.Tensor, step: int) -> torch.Tensor:
        """Fold the embedding of the latest token into the state. All shapes (..., hidden)."""
        if self.config.rnn:
            return nn.functional.silu(self.rnn_w(token_embeds) + self.rnn_u(state))
        return state + token_embeds

    def compute_logits(self, context: torch.Tensor, state: torch.Tensor, step: int) -> torch.Tensor:
        """Next-token logits over the draft vocabulary. (..., hidden) x2 -> (..., output_vocab_size)."""
        x = torch.cat([context, state], dim=-1)
        if self.input_proj is not None:
            x = self.input_proj(x)
        for block in self.res_blocks:
            x = block(x)
        return self.lm_head(x)
