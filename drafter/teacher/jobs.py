"""Teacher prompts: which shard generates which prompt, the prompt tokens (cut to fit), and answering them into
the shard file."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..engine.prompts import clean_messages, encode_chat_prompt, encode_text
from ..store import ShardAppender
from .config import SKIPPED_REASON, TeacherGenerationConfig

logger = logging.getLogger(__name__)


@dataclass
class TeacherJob:
    """One prompt to answer."""

    index: int  # position in the full prompt list (orders the merged file)
    prompt: Mapping[str, Any]
    messages: List[Dict[str, str]]  # the prompt messages the model saw (last user message maybe cut)
    token_ids: List[int]
    truncated: bool
    seed: int
    turn: Optional[int] = None  # all-turn data: which assistant turn of the conversation this answers

    def row(self, finish_reason: str, num_tokens: int) -> Dict[str, Any]:
        """The shard row of this prompt (``messages`` filled in by the caller)."""
        row: Dict[str, Any] = {
            "id": str(self.prompt["id"]),
            "index": self.index,
            "messages": None,
            "num_prompt_tokens": len(self.token_ids),
            "num_tokens": num_tokens,
            "finish_reason": finish_reason,
            "prompt_truncated": self.truncated,
        }
        for extra in ("question_id", "category"):
            if extra in self.prompt:
                row[extra] = self.prompt[extra]
        if self.turn is not None:
            row["turn"] = self.turn
        return row


def shard_indices(num_prompts: int, num_shards: int = 1, shard_index: int = 0) -> List[int]:
    """Indices of the prompts that shard `shard_index` of `num_shards` generates: ``i % num_shards == shard_index``.

    Round-robin keeps shards balanced in prompt length whatever the source order.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    return list(range(shard_index, num_prompts, num_shards))


def prepare_prompt(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], max_prompt_tokens: int
) -> Tuple[Optional[List[int]], List[Dict[str, str]], bool]:
    """Token ids of the chat prompt (template + generation prompt) and the messages they render.

    A prompt longer than `max_prompt_tokens` keeps the beginning of its last user message. Returns
    ``(token_ids, messages, truncated)``; token_ids is None when even an empty user message does not fit.
    """
    messages = clean_messages(messages)
    ids = encode_chat_prompt(tokenizer, messages)
    if len(ids) <= max_prompt_tokens:
        return ids, messages, False
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    last = users[-1] if users else len(messages) - 1
    content_ids = encode_text(tokenizer, messages[last]["content"])
    budget = len(content_ids) - (len(ids) - max_prompt_tokens)
    while budget > 0:
        cut = [dict(m) for m in messages]
        cut[last]["content"] = tokenizer.decode(content_ids[:budget], skip_special_tokens=False)
        ids = encode_chat_prompt(tokenizer, cut)
        if len(ids) <= max_prompt_tokens:
            return ids, cut, True
        budget -= max(1, len(ids) - max_prompt_tokens)  # re-tokenisation at the cut may merge differently
    return None, messages, True


def write_skipped(shard: ShardAppender, jobs: Sequence[TeacherJob], config: TeacherGenerationConfig) -> None:
    """Rows for prompts that cannot fit: they count as done, and merging leaves them out."""
    for job in jobs:
        logger.warning("prompt %s does not fit max_prompt_tokens=%d; skipped", job.prompt["id"],
                       config.max_prompt_tokens)
        shard.write({**job.row(SKIPPED_REASON, 0), "messages": job.messages})


def answer_jobs(
    model: Any,
    tokenizer: Any,
    jobs: List[TeacherJob],
    config: TeacherGenerationConfig,
    batch_size: int,
    stop_ids: List[int],
    backend_fn: Callable[..., None],
    shard: ShardAppender,
    progress_label: Optional[str],
) -> Tuple[int, int, float]:
    """Answer `jobs`, writing each row as it finishes; returns (answers, tokens, seconds)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), unit="prompt", desc=progress_label, disable=progress_label is None or not jobs)
    stats = {"generated": 0, "tokens": 0}
    start_time = time.perf_counter()

    def emit(job: TeacherJob, tokens: List[int], reason: str) -> None:
        # The stop token ends the answer; it is counted but not written.
        answer = tokenizer.decode(tokens[:-1] if reason == "stop" else tokens, skip_special_tokens=True)
        shard.write({**job.row(reason, len(tokens)),
                     "messages": job.messages + [{"role": "assistant", "content": answer}]})
        stats["generated"] += 1
        stats["tokens"] += len(tokens)
        bar.set_postfix_str(f"{stats['tokens'] / max(time.perf_counter() - start_time, 1e-9):.1f} tok/s",
                            refresh=False)
        bar.update(1)

    try:
        backend_fn(model, jobs, config, batch_size, stop_ids, emit)
    finally:
        bar.close()
    return stats["generated"], stats["tokens"], time.perf_counter() - start_time
