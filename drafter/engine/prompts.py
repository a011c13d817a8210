"""The one chat-prompt encoder: messages -> the token ids the base model answers from.

The tokenizer's chat template renders the messages with the generation prompt; the text is tokenized with the
special tokens the template wrote parsed from it and none added. Tokenizers without a chat template use the plain
``"role: content\\n"`` format of `render_plain` (the one training uses too), ending in ``"assistant: "``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple

Span = Tuple[int, int]


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def clean_messages(messages: Sequence[Mapping[str, Any]]) -> List[Dict[str, str]]:
    """role/content string pairs (Arrow rows may carry extra keys or None contents)."""
    return [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in messages]


def render_plain(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> Tuple[str, List[Span]]:
    """Fallback for tokenizers WITHOUT a chat template: a simple ``"role: content\\n"`` join.

    BOS (if any) starts the text and EOS (if any) closes each assistant reply; the spans cover assistant
    content + EOS (with BPE tokenizers the first reply token may absorb the space after the colon and is then
    labelled too). This format is made up, so prefer a base model that ships a chat template.
    """
    bos = getattr(tokenizer, "bos_token", None) or ""
    eos = getattr(tokenizer, "eos_token", None) or ""
    pieces = [bos]
    spans: List[Span] = []
    length = len(bos)
    for message in clean_messages(messages):
        header = f"{message['role']}: "
        body = message["content"] + (eos if message["role"] == "assistant" else "")
        if message["role"] == "assistant":
            spans.append((length + len(header), length + len(header) + len(body)))
        piece = header + body + "\n"
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces), spans


def render_chat_prompt(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> str:
    """The prompt text: the chat rendered with the generation prompt (the assistant's turn opened)."""
    messages = clean_messages(messages)
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text, _ = render_plain(tokenizer, messages)
    return text + "assistant: "


def encode_text(tokenizer: Any, text: str) -> List[int]:
    """Token ids of rendered text: special tokens written in it are parsed, none are added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_chat_prompt(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> List[int]:
    """Token ids of a chat prompt (see the module docstring)."""
    return encode_text(tokenizer, render_chat_prompt(tokenizer, messages))


def encode_chat_prompts(tokenizer: Any, prompts: Sequence[Mapping[str, Any]]) -> List[List[int]]:
    """`encode_chat_prompt` of every ``{"messages": [...]}`` item."""
    return [encode_chat_prompt(tokenizer, prompt["messages"]) for prompt in prompts]
