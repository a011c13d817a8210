"""Everything about the frozen base model: loading (one dtype table), the `BaseLM` access path (decoder,
embeddings, output-layer rows, softcap, hidden states), chat prompt encoding, KV caches and masks, the sampling
stack, and the one batched decode loop that plain decoding, speculative decoding, teacher data and distilled
continuations share."""

from .autoregressive import AutoregressiveGenerator, autoregressive_generate
from .base_lm import BaseLM, normalize_prompts, stop_token_ids
from .decode import BatchedDecoder, DecodingState, StepOutput
from .dtypes import DTYPES, torch_dtype
from .kernels import SmallBatchLinear, small_batch_linear, stock_kernels, use_small_batch_kernels
from .kv_cache import SlotKVCache
from .loading import EMBEDDED_BASE_MODEL, base_model_config, load_base_model, load_tokenizer, resolve_model_path
from .prompts import encode_chat_prompt, encode_chat_prompts, render_chat_prompt
from .result import GenerationResult, GenerationTiming, StepCallback
from .sampling import RowGenerators, SamplingConfig, row_seed, select_tokens, warp_logits, warped_probs

__all__ = [
    "DTYPES",
    "EMBEDDED_BASE_MODEL",
    "AutoregressiveGenerator",
    "BaseLM",
    "BatchedDecoder",
    "DecodingState",
    "GenerationResult",
    "GenerationTiming",
    "RowGenerators",
    "SamplingConfig",
    "SlotKVCache",
    "SmallBatchLinear",
    "StepCallback",
    "StepOutput",
    "autoregressive_generate",
    "base_model_config",
    "encode_chat_prompt",
    "encode_chat_prompts",
    "load_base_model",
    "load_tokenizer",
    "normalize_prompts",
    "render_chat_prompt",
    "resolve_model_path",
    "row_seed",
    "select_tokens",
    "small_batch_linear",
    "stock_kernels",
    "stop_token_ids",
    "torch_dtype",
    "use_small_batch_kernels",
    "warp_logits",
    "warped_probs",
]
