"""Plain autoregressive decoding through the same loop, cache and sampling code: the baseline that speculative
decoding must match (greedy: token for token; sampling: in distribution) and beat in speed, and the decoder
behind teacher data."""

from __future__ import annotations

import torch

from .decode import BatchedDecoder, DecodingState, StepOutput
from .result import GenerationResult, PhaseTimer
from .sampling import SamplingConfig, select_tokens


class AutoregressiveGenerator(BatchedDecoder):
    """One base-model token per sequence per step (see `BatchedDecoder.generate` for the arguments)."""

    @torch.inference_mode()
    def decode_step(self, state: DecodingState, sampling: SamplingConfig, timer: PhaseTimer) -> StepOutput:
        lm, cache = self.lm, state.cache
        with timer.phase("verification"):
            batch = state.next_tokens.shape[0]
            self_only = torch.ones(batch, 1, 1, dtype=torch.bool, device=state.next_tokens.device)
            hidden = lm.forward(
                state.next_tokens[:, None],
                cache.attention_mask(self_only, lm.mask_dtype),
                cache.context_lengths[:, None],
                cache,
            )[:, 0]
            tokens = select_tokens(lm.logits(hidden), sampling, state.rng)
        with timer.phase("bookkeeping"):
            # All running sequences advance together, so their cache ends stay aligned.
            cache.append_all(1)
            state.hidden, state.next_tokens = hidden, tokens
            new_tokens = [[t] for t in tokens.tolist()]
        return StepOutput(new_tokens=new_tokens, num_drafted_accepted=[0] * batch)


def autoregressive_generate(model, prompts, **kwargs) -> GenerationResult:
    """Shorthand for `AutoregressiveGenerator(model).generate(prompts, **kwargs)`."""
    return AutoregressiveGenerator(model).generate(prompts, **kwargs)
