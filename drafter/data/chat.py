"""Tokenise chats through the tokenizer's chat template, labelling only what the assistant says.

Most chat templates have no ``{% generation %}`` markers, so the assistant spans are found on the rendered
text instead: render the chat, locate each assistant message (by rendering the prefix before it with the
generation prompt, or by searching its content), then tokenise with character offsets and label the tokens
that overlap those spans. The assistant's content plus its end-of-turn token (e.g. ``<|im_end|>``) are
labelled; role headers (``<|im_start|>assistant\\n``), system and user text are not.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..engine.prompts import Span, clean_messages, has_chat_template, render_chat_prompt, render_plain

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def _end_of_turn_candidates(tokenizer: Any) -> List[str]:
    """Special-token strings that may close an assistant turn: EOS first, then other specials except BOS."""
    candidates: List[str] = []
    eos = getattr(tokenizer, "eos_token", None)
    if eos:
        candidates.append(eos)
    bos = getattr(tokenizer, "bos_token", None)
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for token in decoder.values():
        content = getattr(token, "content", str(token))
        if getattr(token, "special", True) and content and content != bos and content not in candidates:
            candidates.append(content)
    # Longest first so that e.g. "<|im_end|>" wins over a shorter special that is its prefix.
    return candidates[:1] + sorted(candidates[1:], key=len, reverse=True)


def _extend_over_end_token(text: str, end: int, candidates: Sequence[str]) -> int:
    """Move `end` past the end-of-turn token that follows assistant content (optionally after spaces)."""
    position = end
    while position < len(text) and text[position] == " ":
        position += 1
    for token in candidates:
        if text.startswith(token, position):
            return position + len(token)
    return end


def render_with_assistant_spans(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> Tuple[str, List[Span]]:
    """Render `messages` with the chat template (no generation prompt) and find each assistant reply.

    Returns the rendered text and one ``(start, end)`` character span per located assistant message, covering
    its content and the end-of-turn token right after it. A reply whose content cannot be found in the
    rendered text (a template that rewrites it) is left out with a debug log.
    """
    messages = clean_messages(messages)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    candidates = _end_of_turn_candidates(tokenizer)
    spans: List[Span] = []
    cursor = 0  # searches go forward only, so a reply quoted in an earlier user turn is not matched
    for index, message in enumerate(messages):
        content = message["content"]
        start = -1
        if message["role"] == "assistant" and index > 0:
            # Exact position when the template renders prefixes consistently (true for most templates).
            try:
                prefix = render_chat_prompt(tokenizer, messages[:index])
            except Exception:  # some templates reject a prefix (e.g. strict role alternation checks)
                prefix = None
            if prefix is not None and len(prefix) >= cursor and text.startswith(prefix + content):
                start = len(prefix)
        if start < 0:
            start = text.find(content, cursor) if content else -1
            if start < 0 and content.strip():
                content = content.strip()  # templates such as Llama-2's strip message content
                start = text.find(content, cursor)
        if start < 0:
            if message["role"] == "assistant":
                logger.debug("assistant message %d not found in the rendered chat; left unlabelled", index)
            continue
        end = start + len(content)
        if message["role"] == "assistant":
            end = _extend_over_end_token(text, end, candidates)
            spans.append((start, end))
        cursor = end
    return text, spans


def _token_mask_from_offsets(offsets: Sequence[Tuple[int, int]], spans: Sequence[Span]) -> List[bool]:
    """True for each token whose character range overlaps an assistant span."""
    mask = []
    span_index = 0
    for start, end in offsets:
        # Spans are sorted and tokens advance monotonically, so skip spans that end before this token.
        while span_index < len(spans) and spans[span_index][1] <= start:
            span_index += 1
        mask.append(span_index < len(spans) and end > start and spans[span_index][0] < end)
    return mask


# Long chats are tokenised from a prefix of the text when only `max_length` tokens are kept; the prefix keeps
# this many extra tokens so the cut (which may split a word) cannot change the tokens that are kept.
_TRUNCATION_MARGIN_TOKENS = 32
_CHARS_PER_TOKEN_GUESS = 6


def _encode_prefix(tokenizer: Any, text: str, max_length: Optional[int]) -> Tuple[List[int], List[Tuple[int, int]]]:
    """Fast-tokenizer ids and offsets of (at least) the first `max_length` tokens of `text`."""
    limit = len(text) if max_length is None else (max_length + _TRUNCATION_MARGIN_TOKENS) * _CHARS_PER_TOKEN_GUESS
    while True:
        cut = limit
        if limit < len(text):
            # Cut after whitespace where possible: pre-tokenizers split there, so earlier tokens are unaffected.
            space = max(text.rfind(" ", 0, limit), text.rfind("\n", 0, limit))
            cut = space + 1 if space > limit // 2 else limit
        encoding = tokenizer(text[:cut], add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(encoding["input_ids"]), list(encoding["offset_mapping"])
        if limit >= len(text):
            return ids, offsets
        if len(ids) >= max_length + _TRUNCATION_MARGIN_TOKENS:
            return ids[:max_length], offsets[:max_length]
        limit *= 2  # the prefix held too few tokens (long tokens, e.g. runs of spaces): take more text


def _tokenize_with_spans(
    tokenizer: Any, text: str, spans: Sequence[Span], max_length: Optional[int] = None
) -> Tuple[List[int], List[bool]]:
    """Token ids of `text` (special tokens written in the text are parsed; none are added) and a span mask.

    With `max_length`, at least the first `max_length` tokens are returned (possibly more); callers truncate.
    """
    spans = sorted(spans)
    if getattr(tokenizer, "is_fast", False):
        input_ids, offsets = _encode_prefix(tokenizer, text, max_length)
        return input_ids, _token_mask_from_offsets(offsets, spans)
    # Slow tokenizers have no offsets: tokenise the pieces between span boundaries separately (may differ
    # slightly from tokenising the whole text at the boundaries).
    input_ids: List[int] = []
    mask: List[bool] = []
    position = 0
    for start, end in spans:
        for piece, inside in ((text[position:start], False), (text[start:end], True)):
            if piece:
                ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                input_ids.extend(ids)
                mask.extend([inside] * len(ids))
        position = end
    if text[position:]:
        ids = tokenizer(text[position:], add_special_tokens=False)["input_ids"]
        input_ids.extend(ids)
        mask.extend([False] * len(ids))
    return input_ids, mask


def tokenize_conversation(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    max_length: int,
    assistant_only: bool = True,
) -> Dict[str, List[int]]:
    """Tokenise a chat for training: ``{"input_ids": [...], "labels": [...]}`` of equal length <= `max_length`.

    The whole chat is rendered with the tokenizer's chat template (no generation prompt) and kept as input.
    With `assistant_only`, labels are -100 except on assistant replies (content + end-of-turn token);
    otherwise every token is labelled. Labels are not shifted (the model shifts them). Tokenizers without a
    chat template use :func:`render_plain`.
    """
    if has_chat_template(tokenizer):
        text, spans = render_with_assistant_spans(tokenizer, messages)
    else:
        text, spans = render_plain(tokenizer, messages)
    input_ids, mask = _tokenize_with_spans(tokenizer, text, spans, max_length)
    if assistant_only:
        labels = [token if inside else IGNORE_INDEX for token, inside in zip(input_ids, mask)]
    else:
        labels = list(input_ids)
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}


def tokenize_text(tokenizer: Any, text: str, max_length: int) -> Dict[str, List[int]]:
    """Tokenise plain text (with the tokenizer's usual special tokens); every token is labelled."""
    input_ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])[:max_length]
    return {"input_ids": input_ids, "labels": list(input_ids)}


def tokenize_example(
    tokenizer: Any, example: Mapping[str, Any], max_length: int, assistant_only: bool = True
) -> Dict[str, List[int]]:
    """Tokenise a normalised source row: a ``messages`` chat or a ``text`` document."""
    messages: Optional[Sequence[Mapping[str, Any]]] = example.get("messages")
    if messages is not None:
        return tokenize_conversation(tokenizer, messages, max_length, assistant_only)
    if example.get("text") is not None:
        return tokenize_text(tokenizer, example["text"], max_length)
    raise KeyError(f"example has neither 'messages' nor 'text': keys {sorted(example)}")
