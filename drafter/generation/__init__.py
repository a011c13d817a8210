"""Lossless speculative decoding (ReDrafter beam search + dynamic tree attention) and the plain baseline."""

from .autoregressive import AutoregressiveGenerator, autoregressive_generate
from .drafting import BeamSearchOutput, beam_search, topk_tree_candidates
from .generator import SpeculativeGenerator
from .kv_cache import SlotKVCache
from .loop import DecodingState
from .result import GenerationResult, GenerationTiming, StepCallback
from .sampling import SamplingConfig, select_tokens, warp_logits, warped_probs
from .tree import TokenTree, build_tree, max_tree_size
from .verification import AcceptanceResult, greedy_accept, sampling_accept

__all__ = [
    "AcceptanceResult",
    "AutoregressiveGenerator",
    "BeamSearchOutput",
    "DecodingState",
    "GenerationResult",
    "GenerationTiming",
    "SamplingConfig",
    "SlotKVCache",
    "SpeculativeGenerator",
    "StepCallback",
    "TokenTree",
    "autoregressive_generate",
    "beam_search",
    "build_tree",
    "greedy_accept",
    "max_tree_size",
    "sampling_accept",
    "select_tokens",
    "topk_tree_candidates",
    "warp_logits",
    "warped_probs",
]
