"""Training data: conversation sources, chat-template tokenisation with assistant-only labels, cached
tokenised datasets and the padding collator."""

from .chat import IGNORE_INDEX, render_with_assistant_spans, tokenize_conversation, tokenize_example, tokenize_text
from .dataset import DataCollatorForDrafter, build_tokenized_datasets, split_train_eval, tokenized_cache_key
from .normalize import DataSourceError, normalize_messages
from .sources import BUILTIN_NAMES, first_turn_prompts, load_conversations, load_prompts, source_fingerprint

__all__ = [
    "BUILTIN_NAMES",
    "DataCollatorForDrafter",
    "DataSourceError",
    "IGNORE_INDEX",
    "build_tokenized_datasets",
    "first_turn_prompts",
    "load_conversations",
    "load_prompts",
    "normalize_messages",
    "render_with_assistant_spans",
    "source_fingerprint",
    "split_train_eval",
    "tokenize_conversation",
    "tokenize_example",
    "tokenize_text",
    "tokenized_cache_key",
]
