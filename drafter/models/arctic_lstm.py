"""Arctic LSTM speculator (Snowflake ArcticTraining / ArcticInference) and the MLP speculator it extends
(IBM fms-extras `MLPSpeculator`, "Accelerating Production LLMs with Combined Token/Embedding Speculators",
arXiv:2404.19124).

Unlike ReDrafter, the speculator has its OWN token embeddings, so it reads token ids
(`consumes_token_ids = True`; see `drafter.models.state.iter_teacher_forced_states`).

Head i (0-based, = drafting step i) starts from the state s_i (s_0 = the base model's last hidden state h_t,
optionally scaled) and the id x of the latest token (x_{t+1+i}) and predicts token t+i+2:

    alpha = emb_weight / state_weight, state_weight = 0.5 ** (0.5 / n), emb_weight = sqrt((1 - state_weight^2) * W / 2)

    sum_rnn  (the MLP speculator):
        s_{i+1} = GELU(LN_i(P_i s_i + alpha * E_i[x]))
    sum_lstm (gates and cell candidate from ONE fused projection, gate order forget, input, output, cell):
        [f; g_in; o; c~] = P_i s_i + alpha * E_i[x]            (P_i: in -> 4W; E_i: 4 tables, or 1 repeated 4x)
        f, g_in, o = sigmoid(f), sigmoid(g_in), sigmoid(o)
        c_{i+1} = c_i * f + GELU(LN^cell_i(c~)) * g_in            (c_0 = 0)
        s_{i+1} = GELU(LN^state_i(c_{i+1})) * o
    logits_i = Head_i s_{i+1}

n = n_speculator_heads, W = speculator_width. `scale_input` replaces h_t by LN0(h_t) / sqrt(2) (LN0 without
affine parameters). The weights are applied exactly as the serving code does it (vLLM `MLPSpeculator`,
ArcticInference `ArcticLSTMSpeculator.generate_states`): `proj(s).add(emb(x), alpha=emb_weight / state_weight)`,
i.e. state_weight * proj + emb_weight * emb divided by state_weight; the following LN makes the division
irrelevant (up to its epsilon). fms-extras' training code writes the same sum as `proj(s) * state_weight +
emb(x) * emb_weight`.

"LN" is the speculators' `LayerNormParameterized` / vLLM's `MLPSpeculatorLayerNorm`: x / sqrt(mean(x^2) + 1e-6)
then an elementwise scale and shift -- RMS scaling without re-centering (NOT `torch.nn.LayerNorm`); using the same
function is what makes exported speculators produce the same logits in vLLM.

Weight tying (`tie_weights`, as in the reference): one embedding, one set of norms and one output head for all
heads; one projection for head 0 (from the base hidden size) and one shared by heads 1.. (from W).
`tie_lstm_embs` (sum_lstm): one embedding table feeds all four gates (the serving kernel requires it).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import nn

from .base_drafter import DrafterConfig, DrafterPreTrainedModel

METHODS = ("sum_lstm", "sum_rnn")
SQRT2 = math.sqrt(2.0)


def _as_dim(value: Union[int, str, None], name: str) -> Optional[int]:
    """Dimensions may be written as in ArcticTraining's YAMLs ("4096"); dotted multi-layer dims are not supported."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip()
    if not text.isdigit():
        raise ValueError(
            f"{name}={value!r}: expected one integer (ArcticTraining's dotted multi-layer dims such as "
            "'4096.4096' are not supported)"
        )
    return int(text)


class ArcticLSTMSpeculatorConfig(DrafterConfig):
    """Configuration of an Arctic LSTM / MLP speculator.

    Args:
        n_speculator_heads: heads, i.e. tokens drafted per step (ArcticInference's `n_predict`).
        speculator_width: W, the state width (`inner_dim`); defaults to the base hidden size.
        proj_dim, emb_dim: widths of the state projection and token embedding (`proj_dim`, `emb_dim`); both are
            added to the state elementwise, so they must equal `speculator_width` (default: equal).
        method: "sum_lstm" (LSTM-style gated state, default) or "sum_rnn" (the MLP speculator).
        tie_weights: share embedding, norms, head, and the W->W projection across heads.
        scale_input: feed LN0(h) / sqrt(2) instead of the base hidden state h.
        tie_lstm_embs: (sum_lstm) one embedding table for all four gates.
    """

    model_type = "arctic_lstm_speculator"

    def __init__(
        self,
        n_speculator_heads: int = 3,
        speculator_width: Union[int, str, None] = None,
        proj_dim: Union[int, str, None] = None,
        emb_dim: Union[int, str, None] = None,
        method: str = "sum_lstm",
        tie_weights: bool = True,
        scale_input: bool = True,
        tie_lstm_embs: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if int(n_speculator_heads) < 1:
            raise ValueError(f"n_speculator_heads must be >= 1, got {n_speculator_heads}")
        width = _as_dim(speculator_width, "speculator_width") or self.hidden_size
        for name, value in (("proj_dim", proj_dim), ("emb_dim", emb_dim)):
            dim = _as_dim(value, name)
            if dim is not None and dim != width:
                raise ValueError(
                    f"{name}={dim} != speculator_width={width}: the {method} state adds the projection and the "
                    "token embedding elementwise, so proj_dim and emb_dim must equal speculator_width"
                )
        self.n_speculator_heads = int(n_speculator_heads)
        self.speculator_width = width
        self.proj_dim = width
        self.emb_dim = width
        self.method = method
        self.tie_weights = bool(tie_weights)
        self.scale_input = bool(scale_input)
        self.tie_lstm_embs = bool(tie_lstm_embs)

    @property
    def state_weight(self) -> float:
        return 0.5 ** (0.5 / self.n_speculator_heads)

    @property
    def emb_weight(self) -> float:
        return math.sqrt((1 - self.state_weight**2) * (self.speculator_width / 2))


class SpeculatorLayerNorm(nn.Module):
    """fms-extras `LayerNormParameterized(use_mean=False)` = vLLM `MLPSpeculatorLayerNorm`:
    x * rsqrt(mean(x^2) + eps), then `weight * x + bias` when `elementwise_affine`."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(dim))
            self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.elementwise_affine:
            x = self.weight * x
            x = x + self.bias
        return x


LSTMState = Tuple[torch.Tensor, torch.Tensor]


class ArcticLSTMSpeculator(DrafterPreTrainedModel):
    """Arctic LSTM (`sum_lstm`) or MLP (`sum_rnn`) speculator implementing the generic drafter interface.

    Parameters (n heads, W width, H base hidden size, V base vocabulary, Vd output vocabulary; k = 1 if tied
    else n, p = min(n, 2) if tied else n):
        emb.{0..k-1}: Embedding(V, W), or (V, 4W) for sum_lstm without tie_lstm_embs (gates f, i, o, c)
        proj.0: Linear(H, W or 4W); proj.{1..p-1}: Linear(W, W or 4W)         (no bias)
        sum_rnn: ln.{0..k-1}; sum_lstm: cell_ln.{0..k-1}, state_ln.{0..k-1}   (SpeculatorLayerNorm(W))
        head.{0..k-1}: Linear(W, Vd)                                          (no bias)
    `drafter.export` renames these to the serving formats.
    """

    config_class = ArcticLSTMSpeculatorConfig
    # advance_state receives base token ids, not base input embeddings (the speculator embeds them itself).
    consumes_token_ids = True
    independent_positions = True

    def __init__(self, config: ArcticLSTMSpeculatorConfig):
        super().__init__(config)
        n, width, hidden = config.n_speculator_heads, config.speculator_width, config.hidden_size
        lstm = config.method == "sum_lstm"
        gates = 4 if lstm else 1
        num_shared = 1 if config.tie_weights else n
        num_proj = min(n, 2) if config.tie_weights else n
        emb_width = width if (not lstm or config.tie_lstm_embs) else gates * width
        self.emb = nn.ModuleList(nn.Embedding(config.vocab_size, emb_width) for _ in range(num_shared))
        self.proj = nn.ModuleList(
            nn.Linear(hidden if i == 0 else width, gates * width, bias=False) for i in range(num_proj)
        )
        if lstm:
            self.cell_ln = nn.ModuleList(SpeculatorLayerNorm(width) for _ in range(num_shared))
            self.state_ln = nn.ModuleList(SpeculatorLayerNorm(width) for _ in range(num_shared))
        else:
            self.ln = nn.ModuleList(SpeculatorLayerNorm(width) for _ in range(num_shared))
        self.head = nn.ModuleList(
            nn.Linear(width, config.output_vocab_size, bias=False) for _ in range(num_shared)
        )
        self.ln0 = SpeculatorLayerNorm(hidden, elementwise_affine=False) if config.scale_input else None
        self.alpha = config.emb_weight / config.state_weight
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # ArcticTraining's reset_parameters: N(0, 1/sqrt(min(shape))) for embeddings and projections.
        if isinstance(module, (nn.Embedding, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, 1.0 / math.sqrt(min(module.weight.shape)))
        elif isinstance(module, SpeculatorLayerNorm) and module.elementwise_affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def num_draft_steps(self) -> int:
        return self.config.n_speculator_heads

    @property
    def is_lstm(self) -> bool:
        return self.config.method == "sum_lstm"

    def _shared_index(self, step: int) -> int:
        return 0 if self.config.tie_weights else step

    def _proj_index(self, step: int) -> int:
        return min(step, 1) if self.config.tie_weights else step

    # ----------------------------------------------------------------- generic drafter interface
    def initial_state(self, context: torch.Tensor) -> Union[torch.Tensor, LSTMState]:
        """context (..., H) -> the (scaled) context; sum_lstm: (context, zero cell (..., W))."""
        state = self.ln0(context) / SQRT2 if self.ln0 is not None else context
        if self.is_lstm:
            return state, state.new_zeros(*state.shape[:-1], self.config.speculator_width)
        return state

    def advance_state(
        self, state: Union[torch.Tensor, LSTMState], token_ids: torch.Tensor, step: int
    ) -> Union[torch.Tensor, LSTMState]:
        """Head `step`'s state update with the latest token. token_ids: (...) base ids."""
        shared, proj = self._shared_index(step), self._proj_index(step)
        z = self.emb[shared](token_ids)
        if not self.is_lstm:
            pre = torch.add(self.proj[proj](state), z, alpha=self.alpha)
            return nn.functional.gelu(self.ln[shared](pre))
        hidden, cell = state
        width = self.config.speculator_width
        if self.config.tie_lstm_embs:
            z = torch.cat([z, z, z, z], dim=-1)
        pre = torch.add(self.proj[proj](hidden), z, alpha=self.alpha)
        gates, candidate = pre.split([3 * width, width], dim=-1)
        forget_gate, input_gate, output_gate = torch.sigmoid(gates).split(width, dim=-1)
        candidate = nn.functional.gelu(self.cell_ln[shared](candidate)) * input_gate
        cell = cell * forget_gate + candidate
        hidden = nn.functional.gelu(self.state_ln[shared](cell)) * output_gate
        return hidden, cell

    def compute_logits(
        self, context: torch.Tensor, state: Union[torch.Tensor, LSTMState], step: int
    ) -> torch.Tensor:
        """Head `step`'s logits over the draft vocabulary (the context is already folded into the state)."""
        hidden = state[0] if self.is_lstm else state
        return self.head[self._shared_index(step)](hidden)
