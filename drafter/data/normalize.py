"""Normalising raw rows into the two shapes every source becomes: chats (`id`, `messages` of system / user /
assistant turns) and plain text (`id`, `text`)."""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import datasets

logger = logging.getLogger(__name__)

# ShareGPT dumps use several speaker names; anything else (tool, function, ...) is dropped.
ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
}

# (prompt column(s), response column) pairs accepted for simple instruction files, tried in order.
_PROMPT_RESPONSE_COLUMNS = (
    ("instruction", "output"),
    ("instruction", "response"),
    ("prompt", "response"),
    ("prompt", "completion"),
    ("question", "answer"),
    ("input", "output"),
)


class DataSourceError(ValueError):
    """A dataset name, file or hub dataset that cannot be turned into conversations."""


def _content_text(content: Any) -> str:
    """Message content as a string (multi-part contents keep their text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") if isinstance(p, dict) else str(p) for p in content]
        return "".join(p for p in parts if p)
    return str(content)


def normalize_messages(
    turns: Iterable[Dict[str, Any]], require_assistant: bool = True
) -> Optional[List[Dict[str, str]]]:
    """Map ShareGPT-style (`from`/`value`) or chat-style (`role`/`content`) turns to clean chat messages.

    Speaker names go through :data:`ROLE_ALIASES` (unknown speakers are dropped), empty turns are dropped, and
    assistant turns before the first user turn are dropped (ShareGPT V3 splits long chats, so many chunks start
    mid-conversation with a reply to nothing). Returns None when nothing usable is left, or when
    `require_assistant` and no assistant turn remains.
    """
    messages: List[Dict[str, str]] = []
    seen_user = False
    for turn in turns or []:
        if not isinstance(turn, dict):
            continue
        speaker = turn.get("role", turn.get("from"))
        role = ROLE_ALIASES.get(str(speaker).strip().lower()) if speaker is not None else None
        content = _content_text(turn.get("content", turn.get("value")))
        if role is None or not content.strip():
            continue
        if role == "assistant" and not seen_user:
            continue
        seen_user = seen_user or role == "user"
        messages.append({"role": role, "content": content})
    if not messages or not seen_user:
        return None
    if require_assistant and not any(m["role"] == "assistant" for m in messages):
        return None
    return messages


def _detect_format(rows: List[Dict[str, Any]], source: str) -> Tuple[str, Optional[Tuple[str, str]]]:
    """Decide how rows are laid out from the keys of the first rows."""
    keys = set()
    for row in rows[:100]:
        if isinstance(row, dict):
            keys.update(row.keys())
    if "messages" in keys:
        return "messages", None
    if "conversations" in keys:
        return "conversations", None
    if "text" in keys:
        return "text", None
    if "turns" in keys:  # FastChat / Spec-Bench question files: question_id, category, turns (user messages)
        return "turns", None
    for prompt_col, response_col in _PROMPT_RESPONSE_COLUMNS:
        if prompt_col in keys and response_col in keys:
            return "prompt_response", (prompt_col, response_col)
    raise DataSourceError(
        f"Cannot read conversations from '{source}': found columns {sorted(keys)}, expected 'messages' "
        "(list of role/content), 'conversations' (ShareGPT from/value), 'text', 'turns' (FastChat / Spec-Bench "
        "questions), or prompt/response columns "
        f"{[list(pair) for pair in _PROMPT_RESPONSE_COLUMNS]}."
    )


def _row_id(row: Dict[str, Any], index: int) -> str:
    for key in ("id", "question_id", "conversation_id"):
        if row.get(key) is not None:
            return str(row[key])
    return str(index)


def _normalize_rows(rows: List[Dict[str, Any]], source: str, require_assistant: bool) -> Iterator[Dict[str, Any]]:
    """Yield normalised rows (``id`` + ``messages`` or ``text``; question files also ``turns`` and
    ``category``, their first turn as ``messages``); unusable rows are skipped."""
    fmt, columns = _detect_format(rows, source)
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            continue
        if fmt == "text":
            text = row.get("text")
            if isinstance(text, str) and text.strip():
                yield {"id": _row_id(row, index), "text": text}
            continue
        if fmt == "turns":
            questions = [_content_text(t) for t in row.get("turns") or [] if _content_text(t).strip()]
            if questions:
                yield {"id": _row_id(row, index), "messages": [{"role": "user", "content": questions[0]}],
                       "turns": questions, "category": str(row.get("category") or "")}
            continue
        if fmt in ("messages", "conversations"):
            turns = row.get(fmt)
        else:
            assert columns is not None
            prompt = _content_text(row.get(columns[0]))
            # Alpaca-style rows put extra context in `input` next to the `instruction`.
            if columns[0] == "instruction" and _content_text(row.get("input")).strip():
                prompt = f"{prompt}\n\n{_content_text(row['input'])}"
            turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row.get(columns[1])}]
        messages = normalize_messages(turns, require_assistant=require_assistant)
        if messages is not None:
            yield {"id": _row_id(row, index), "messages": messages}


CHAT_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
    }
)
QUESTION_FEATURES = datasets.Features(
    {**CHAT_FEATURES, "turns": [datasets.Value("string")], "category": datasets.Value("string")}
)
_TEXT_FEATURES = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string")})


def rows_to_dataset(rows: List[Dict[str, Any]], source: str, require_assistant: bool) -> datasets.Dataset:
    """Normalise raw rows into a Dataset; errors if nothing usable is left."""
    if not rows:
        raise DataSourceError(f"'{source}' contains no rows.")
    normalized = list(_normalize_rows(rows, source, require_assistant))
    if not normalized:
        raise DataSourceError(f"'{source}' has no usable rows (all empty, or without user/assistant turns).")
    dropped = len(rows) - len(normalized)
    if dropped:
        logger.info("%s: dropped %d of %d rows (empty, or no usable turns)", source, dropped, len(rows))
    if "text" in normalized[0]:
        features = _TEXT_FEATURES
    elif "turns" in normalized[0]:
        features = QUESTION_FEATURES
    else:
        features = CHAT_FEATURES
    return datasets.Dataset.from_list(normalized, features=features)
