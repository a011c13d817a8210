"""Lossless speculative decoding with a recurrent drafter: beam search + dynamic tree attention (ReDrafter).

One step, for every running sequence at once:

1. drafting: beam search over the drafter from the last verified hidden state and the next token (or, with
   `top_k_tokens_per_head`, the per-head top-k candidate tree of MLP / Arctic speculators); with `lookup_tokens`,
   one more candidate copied from the sequence's own tokens (`lookup`);
2. verification: the unique beam prefixes form a token tree; ONE decoder pass scores all tree nodes on top of
   the KV cache (4-D mask: the sequence's cached tokens plus the node's own ancestors; positions = tokens so
   far + depth); the base model's choices then accept a path (greedy or rejection sampling) and a bonus token;
3. bookkeeping: the accepted nodes' K/V are moved into place in the cache, everything else is dropped; the
   last accepted node's hidden state and the bonus token seed the next step.

Everything a step needs stays on the device; the only host sync is reading back the accepted tokens at the end
(plus, unless `static_tree_size=True`, the tree size and, in greedy verification, how many nodes have children
and whether a path was accepted to a leaf: the output layer runs only on the nodes whose logits are read).
"""

from __future__ import annotations

import warnings
from typing import Any, List, Optional, Sequence, Tuple

import torch
from transformers import PreTrainedModel

from ..engine.decode import BatchedDecoder, DecodingState, StepOutput
from ..engine.kernels import use_small_batch_kernels
from ..engine.kv_cache import prefill_mask
from ..engine.result import PhaseTimer
from ..engine.sampling import Randomness, RowGenerators, SamplingConfig, select_tokens, warped_probs
from .drafting import beam_search, num_topk_candidates, topk_tree_candidates
from .lookup import ContextLookup, check_ngram_sizes, join_candidates, lookup_candidates
from .tree import build_tree
from .verification import greedy_accept, sampling_accept


class SpeculativeGenerator(BatchedDecoder):
    """Speculative decoding of a frozen base model with a drafter (see `BatchedDecoder.generate`).

    Args:
        base_model: a transformers causal LM (Llama / Qwen / SmolLM / GPT-2 style, full attention).
        drafter: drafter implementing initial_state / advance_state / compute_logits / to_base_ids.
        beam_width: W, beams drafted per step.
        beam_length: L, tokens per beam including the init token (L - 1 drafted); defaults to the drafter's
            num_draft_steps + 1.
        static_tree_size: verify max_tree_size(W, L) nodes every step instead of the batch's unique-prefix
            count, which saves a host sync per step (for accelerators) at the cost of extra nodes.
        top_k_tokens_per_head: draft a per-head top-k candidate tree instead of beam search (MLP / Arctic
            speculators' candidates, see `drafting.topk_tree_candidates`): e.g. [4, 3, 2] drafts 3 tokens, every
            node expanding its own top-k, 24 candidates; [1] * n is a single greedy chain. Sets
            beam_length = len + 1 and beam_width = the number of candidates (beam_width/beam_length are ignored).
        n_candidates: with top_k_tokens_per_head, keep only the best this many candidates (default: all).
        allow_base_mismatch: accept a base whose weights differ from those the drafter recorded (same shapes);
            decoding stays lossless, only acceptance suffers.
        lookup_tokens: K > 0 adds one more candidate to every step's tree: up to K tokens copied from the
            sequence's own prompt and output after the last occurrence of its current suffix (see `lookup`);
            0: the drafter's candidates only.
        lookup_max_ngram / lookup_min_ngram: the suffix lengths the lookup tries, longest first.
    """

    def __init__(
        self,
        base_model: PreTrainedModel,
        drafter: Any,
        beam_width: int = 4,
        beam_length: Optional[int] = None,
        static_tree_size: bool = False,
        top_k_tokens_per_head: Optional[Sequence[int]] = None,
        n_candidates: Optional[int] = None,
        allow_base_mismatch: bool = False,
        lookup_tokens: int = 0,
        lookup_max_ngram: int = 3,
        lookup_min_ngram: int = 1,
    ):
        super().__init__(base_model)
        drafter.check_base_model(base_model, allow_weight_mismatch=allow_base_mismatch)
        use_small_batch_kernels(drafter)  # beam search runs its heads on W rows
        self.top_k_tokens_per_head = None
        self.n_candidates = n_candidates
        if top_k_tokens_per_head is not None:
            top_k = [int(k) for k in top_k_tokens_per_head]
            if not top_k or min(top_k) < 1:
                raise ValueError(f"top_k_tokens_per_head needs >= 1 entries, all >= 1; got {top_k}")
            if n_candidates is not None and n_candidates < 1:
                raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
            self.top_k_tokens_per_head = top_k
            beam_length = len(top_k) + 1
            beam_width = num_topk_candidates(top_k, n_candidates)
        elif n_candidates is not None:
            raise ValueError("n_candidates needs top_k_tokens_per_head")
        if beam_length is None:
            beam_length = drafter.num_draft_steps + 1
        if beam_length < 2:
            raise ValueError(f"beam_length must be >= 2, got {beam_length}")
        if beam_length - 1 > drafter.num_draft_steps:
            raise ValueError(
                f"beam_length {beam_length} drafts {beam_length - 1} tokens but the drafter has only "
                f"{drafter.num_draft_steps} draft steps"
            )
        if beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {beam_width}")
        self.drafter = drafter
        self.beam_width = beam_width
        self.beam_length = beam_length
        self.static_tree_size = static_tree_size
        if lookup_tokens < 0:
            raise ValueError(f"lookup_tokens must be >= 0, got {lookup_tokens}")
        if lookup_tokens and static_tree_size:
            raise ValueError("lookup_tokens changes the tree's shape every step; it cannot be combined with "
                             "static_tree_size")
        check_ngram_sizes(lookup_max_ngram, lookup_min_ngram)  # now, not at a first step
        self.lookup_tokens = lookup_tokens
        self.lookup_ngrams = (lookup_max_ngram, lookup_min_ngram)
        self.num_draft_steps = max(beam_length - 1, lookup_tokens)
        params = list(drafter.parameters()) if hasattr(drafter, "parameters") else []
        self._drafter_dtype = params[0].dtype if params else None
        # Drafters with their own cache over the verified context (EAGLE-3) read several base layers at every
        # verified position, not just the last hidden state.
        self.context_cache = bool(getattr(drafter, "keeps_context_cache", False))
        self.context_layers = list(drafter.context_layers) if self.context_cache else None

    def _check_modes(self) -> None:
        super()._check_modes()
        if getattr(self.drafter, "training", False):
            warnings.warn("drafter is in training mode: call .eval() (output stays lossless)", stacklevel=3)

    def _as_drafter_dtype(self, x: torch.Tensor) -> torch.Tensor:
        return x if self._drafter_dtype is None else x.to(self._drafter_dtype)

    @torch.inference_mode()
    def prefill(self, prompts: List[List[int]], sampling: SamplingConfig, rng: Randomness = None) -> DecodingState:
        state = self._prefill_with_context(prompts, sampling, rng) if self.context_cache else super().prefill(
            prompts, sampling, rng)
        if self.lookup_tokens:
            state.row_context = [ContextLookup(prompt + [first], *self.lookup_ngrams)
                                 for prompt, first in zip(prompts, state.next_tokens.tolist())]
        return state

    def _prefill_with_context(self, prompts: List[List[int]], sampling: SamplingConfig, rng: Randomness
                              ) -> DecodingState:
        """The prefill of drafters with their own context cache (EAGLE-3): it also starts that cache."""
        cache, hidden, states, input_ids = self.lm.prefill(prompts, self.context_layers)
        first = select_tokens(self.lm.logits(hidden), sampling, rng)
        following = torch.cat([input_ids[:, 1:], first[:, None]], dim=1)  # the token after each prompt slot
        causal = prefill_mask(cache.starts, input_ids.shape[1], torch.bool)[:, 0]
        drafter_cache, context = self.drafter.start_context(
            self._as_drafter_dtype(states), self._as_drafter_dtype(self.lm.embed(following)), cache.starts_host, causal
        )
        return DecodingState(cache=cache, hidden=context, next_tokens=first, rows=list(range(len(prompts))), rng=rng,
                             drafter_cache=drafter_cache)

    def drafting_inputs(self, state: DecodingState) -> Tuple[Any, torch.Tensor]:
        """What this step's drafting reads: the drafter (for drafters with a context cache, its view of that
        cache) and the (B, H) drafting context."""
        context = self._as_drafter_dtype(state.hidden)
        if self.context_cache:
            return self.drafter.drafting_view(state.drafter_cache), context
        return self.drafter, context

    @torch.inference_mode()
    def decode_step(self, state: DecodingState, sampling: SamplingConfig, timer: PhaseTimer) -> StepOutput:
        lm, cache = self.lm, state.cache
        if isinstance(state.rng, RowGenerators):
            raise ValueError("speculative sampling draws from one generator for the batch; row_seeds are for plain "
                             "decoding (AutoregressiveGenerator)")
        with timer.phase("drafting"):
            drafter, context = self.drafting_inputs(state)
            if self.top_k_tokens_per_head is not None:
                beams = topk_tree_candidates(
                    drafter, lm.embed_tokens, context, state.next_tokens, self.top_k_tokens_per_head,
                    self.n_candidates,
                ).beams
            else:
                beams = beam_search(
                    drafter, lm.embed_tokens, context, state.next_tokens, self.beam_width, self.beam_length
                ).beams
            lengths = None
            if self.lookup_tokens:
                beams, lengths = join_candidates(beams, *lookup_candidates(state.row_context, self.lookup_tokens,
                                                                           beams.device))

        with timer.phase("verification"):
            tree = build_tree(beams, static_size=self.static_tree_size, lengths=lengths)
            mask = cache.attention_mask(tree.ancestor_mask, lm.mask_dtype)
            positions = tree.position_ids(cache.context_lengths)
            hidden = lm.forward(tree.tokens, mask, positions, cache, self.context_layers)  # (B, N, H)
            if self.context_cache:
                hidden, layer_states = hidden  # (B, N, 3H) too
            if sampling.greedy:
                accepted = self._greedy_verify(tree, hidden)
            else:
                accepted = sampling_accept(tree, warped_probs(lm.logits(hidden), sampling), state.rng)

        with timer.phase("bookkeeping"):
            # The step's single read-back: per row [num_accepted, path tokens (L), bonus].
            packed = torch.cat(
                [accepted.num_accepted[:, None], accepted.path_tokens, accepted.bonus_tokens[:, None]], dim=1
            ).tolist()
            num_accepted = [row[0] for row in packed]
            cache.commit(accepted.path_nodes, accepted.num_accepted + 1, [n + 1 for n in num_accepted])
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            if not self.context_cache:
                state.hidden = hidden[rows, accepted.last_nodes]
            state.next_tokens = accepted.bonus_tokens
            # path token 0 is the root, emitted by the previous step; then the accepted drafts and the bonus.
            new_tokens = [row[2 : 2 + n] + [row[-1]] for row, n in zip(packed, num_accepted)]
            if self.lookup_tokens:
                for lookup, tokens in zip(state.row_context, new_tokens):
                    lookup.extend(tokens)
        if self.context_cache:
            with timer.phase("drafting"):
                state.hidden = self._extend_context(state, accepted, layer_states[rows[:, None], accepted.path_nodes],
                                                    [n + 1 for n in num_accepted])
        return StepOutput(new_tokens=new_tokens, num_drafted_accepted=num_accepted)

    def _greedy_verify(self, tree, hidden: torch.Tensor):
        """Greedy acceptance with the output layer (the costliest part of a wide tree's forward on a CPU) applied
        only where it is read: the nodes with children, and a leaf only when a path is accepted to it (for the
        bonus token; one more host sync). With `static_tree_size` (fixed shapes, no extra syncs) every node's
        logits are computed."""
        lm = self.lm
        if self.static_tree_size:
            return greedy_accept(tree, lm.logits(hidden).argmax(dim=-1))
        num_children = torch.zeros_like(tree.parents).scatter_add_(
            1, tree.parents.clamp(min=0), (tree.parents >= 0).long())
        has_children = num_children > 0  # (B, N)
        # Nodes with children first, in tree order (for full beams: the nodes above the leaves, already first).
        order = torch.argsort((~has_children).to(torch.int8), dim=1, stable=True)
        inner = order[:, : int(has_children.sum(dim=-1).max())]  # (B, M)
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        target = torch.full_like(tree.tokens, -1)
        target[rows, inner] = lm.logits(hidden[rows, inner]).argmax(dim=-1)
        accepted = greedy_accept(tree, target)
        to_leaf = (~has_children.gather(1, accepted.last_nodes[:, None]).squeeze(1)).nonzero().squeeze(1)
        if to_leaf.numel():
            leaves = hidden[to_leaf, accepted.last_nodes[to_leaf]]  # (R, H)
            accepted.bonus_tokens[to_leaf] = lm.logits(leaves).argmax(dim=-1)
        return accepted

    def _extend_context(self, state: DecodingState, accepted, path_states: torch.Tensor,
                        num_new_host: List[int]) -> torch.Tensor:
        """Add the accepted path (root + accepted drafts; path_states (B, L, 3H)) to the drafter's context cache;
        returns the next drafting context (B, H). Each position is paired with the token after it: the next path
        token, and the bonus token after the last accepted one."""
        following = torch.cat([accepted.path_tokens[:, 1:], accepted.bonus_tokens[:, None]], dim=1)
        following = following.scatter(1, accepted.num_accepted[:, None], accepted.bonus_tokens[:, None])
        return self.drafter.extend_context(
            state.drafter_cache, self._as_drafter_dtype(path_states), self._as_drafter_dtype(self.lm.embed(following)),
            accepted.num_accepted + 1, num_new_host,
        )
