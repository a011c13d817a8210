"""Data pipeline: conversation sources, chat-template tokenisation with assistant-only labels, cached
tokenised datasets and the padding collator."""

from .chat import (
    IGNORE_INDEX,
    has_chat_template,
    render_plain,
    render_with_assistant_spans,
    tokenize_conversation,
    tokenize_example,
    tokenize_text,
)
from .dataset import DataCollatorForDrafter, build_tokenized_datasets, split_train_eval, tokenized_cache_key
from .sources import (
    BUILTIN_NAMES,
    DataSourceError,
    default_cache_dir,
    load_conversations,
    load_prompts,
    normalize_messages,
)

__all__ = [
    "BUILTIN_NAMES",
    "DataCollatorForDrafter",
    "DataSourceError",
    "IGNORE_INDEX",
    "build_tokenized_datasets",
    "default_cache_dir",
    "has_chat_template",
    "load_conversations",
    "load_prompts",
    "normalize_messages",
    "render_plain",
    "render_with_assistant_spans",
    "split_train_eval",
    "tokenize_conversation",
    "tokenize_example",
    "tokenize_text",
    "tokenized_cache_key",
]
