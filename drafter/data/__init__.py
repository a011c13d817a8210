"""Data pipeline: conversation sources, chat-template tokenisation with assistant-only labels, cached
tokenised datasets and the padding collator; teacher regeneration (`generate`) and distilled targets (`distill`)."""

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
    first_turn_prompts,
    load_conversations,
    load_prompts,
    normalize_messages,
)

# Imported on first use: keeps `python -m drafter.data.generate` free of runpy's double-import warning.
_LAZY_EXPORTS = {
    "TeacherGenerationConfig": "generate",
    "generate_teacher_data": "generate",
    "merge_teacher_shards": "generate",
    "add_distill_targets": "distill",
    "compute_distill_targets": "distill",
}


def __getattr__(name):
    if name in _LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUILTIN_NAMES",
    "TeacherGenerationConfig",
    "add_distill_targets",
    "compute_distill_targets",
    "generate_teacher_data",
    "merge_teacher_shards",
    "DataCollatorForDrafter",
    "DataSourceError",
    "IGNORE_INDEX",
    "build_tokenized_datasets",
    "default_cache_dir",
    "first_turn_prompts",
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
