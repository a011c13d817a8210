"""Lossless speculative decoding: drafting (beam search, per-head top-k trees), token-tree packing, verification
(greedy and recursive rejection sampling) and the speculative decoder on top of the engine's loop."""

from .drafting import BeamSearchOutput, beam_search, topk_tree_candidates
from .speculative import SpeculativeGenerator
from .tree import TokenTree, build_tree, max_tree_size
from .verification import AcceptanceResult, greedy_accept, sampling_accept

__all__ = [
    "AcceptanceResult",
    "BeamSearchOutput",
    "SpeculativeGenerator",
    "TokenTree",
    "beam_search",
    "build_tree",
    "greedy_accept",
    "max_tree_size",
    "sampling_accept",
    "topk_tree_candidates",
]
