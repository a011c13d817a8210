"""Answering a prompt set (MT-Bench, or any FastChat / Spec-Bench question file) in batches, every turn when
asked, with each finished answer appended to a JSONL file so a killed run resumes where it stopped."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..engine.prompts import encode_chat_prompts
from ..store import ShardAppender, StaleCacheError, fingerprint, read_jsonl_rows


class AnswerLog:
    """`<output>.partial.jsonl`: a header row with the settings' fingerprint, then one row per answered prompt.
    Resuming with other settings is refused; `finish()` removes the file once the final results are written."""

    def __init__(self, output_file: Optional[str], settings: Mapping[str, Any]):
        self.key = fingerprint(dict(settings))
        self.path = Path(f"{output_file}.partial.jsonl") if output_file else None
        self.rows: Dict[str, Dict[str, Any]] = {}
        self._appender: Optional[ShardAppender] = None
        if self.path is None:
            return
        rows = read_jsonl_rows(self.path)
        if rows and rows[0].get("settings_key") != self.key:
            raise StaleCacheError(f"{self.path} holds answers made with other settings; delete it or use another "
                                  "--output_file")
        self.rows = {str(row["id"]): row for row in rows[1:]}
        self._appender = ShardAppender(self.path)
        if not rows:
            self._appender.write({"settings_key": self.key})

    def add(self, row: Dict[str, Any]) -> None:
        self.rows[str(row["id"])] = row
        if self._appender is not None:
            self._appender.write(row)

    def finish(self) -> None:
        if self._appender is not None:
            self._appender.close()
            os.remove(self.path)


def answer_prompts(
    decoder: Any,
    tokenizer: Any,
    prompts: Sequence[Mapping[str, Any]],
    max_new_tokens: int,
    batch_size: int,
    sampling: Mapping[str, Any],
    all_turns: bool = False,
    log: Optional[AnswerLog] = None,
) -> List[Dict[str, Any]]:
    """One row per prompt (in prompt order): its answer(s), tokens, verification steps and accepted tokens.

    With `all_turns`, every user turn of a multi-turn question (``turns``) is answered in order, the decoder's
    own earlier answers in the context, as MT-Bench's second turn is meant to be run. Prompts already in `log`
    are not answered again.
    """
    log = log or AnswerLog(None, {})
    todo = [p for p in prompts if str(p.get("question_id", p["id"])) not in log.rows]
    start, tokens_now = time.perf_counter(), 0
    for begin in range(0, len(todo), batch_size):
        batch = todo[begin : begin + batch_size]
        turns = [list(p.get("turns") or [])[1:] if all_turns else [] for p in batch]
        conversations = [[dict(m) for m in p["messages"]] for p in batch]
        rows = [{"id": p.get("question_id", p["id"]), "category": p.get("category"),
                 "prompt": p["messages"][-1]["content"], "answers": [], "tokens": 0, "steps": 0, "accepted": 0}
                for p in batch]
        for turn in range(1 + max(len(t) for t in turns)):
            active = [i for i in range(len(batch)) if turn == 0 or len(turns[i]) >= turn]
            for i in active if turn else []:
                conversations[i].append({"role": "user", "content": turns[i][turn - 1]})
            result = decoder.generate(encode_chat_prompts(tokenizer, [{"messages": conversations[i]} for i in active]),
                                      max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id, **sampling)
            for j, i in enumerate(active):
                answer = tokenizer.decode(result.sequences[j], skip_special_tokens=True)
                conversations[i].append({"role": "assistant", "content": answer})
                rows[i]["answers"].append(answer)
                rows[i]["tokens"] += len(result.sequences[j])
                rows[i]["steps"] += result.steps_per_sequence[j]
                rows[i]["accepted"] += result.accepted_per_sequence[j]
            tokens_now += result.num_generated_tokens
        for row in rows:
            row["answer"] = row["answers"][0]
            row["tau"] = row["accepted"] / max(row["steps"], 1)
            log.add(row)
        print(f"  {len(prompts) - len(todo) + begin + len(batch)}/{len(prompts)} prompts, "
              f"{tokens_now / (time.perf_counter() - start):.1f} tok/s", file=sys.stderr)
    return [log.rows[str(p.get("question_id", p["id"]))] for p in prompts]
