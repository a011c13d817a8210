"""Interactive multi-turn chat over any generator, streaming tokens as they are accepted."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

from .engine.decode import BatchedDecoder
from .engine.prompts import encode_chat_prompt


@dataclass
class ReplyStats:
    text: str
    tokens: int
    seconds: float
    tau: float
    interrupted: bool = False

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        if self.interrupted:
            return f"[interrupted after {self.tokens} tokens, {self.seconds:.2f} s]"
        return (f"[{self.tokens} tokens, {self.seconds:.2f} s, {self.tokens_per_second:.1f} tok/s, "
                f"{self.tau:.2f} tokens/step]")


class ChatSession:
    """Keeps the conversation, renders it with the chat template, and streams each answer."""

    def __init__(
        self,
        generator: BatchedDecoder,
        tokenizer,
        max_new_tokens: int = 256,
        system_prompt: Optional[str] = None,
        **generate_kwargs,
    ):
        self.generator = generator
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self.generate_kwargs = generate_kwargs
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []

    def reply(self, user_text: str, stream: Callable[[str], None] = lambda text: None) -> ReplyStats:
        self.messages.append({"role": "user", "content": user_text})
        prompt = encode_chat_prompt(self.tokenizer, self.messages)
        produced: list[int] = []
        shown = ""

        def on_tokens(new_tokens: list[list[int]]) -> None:
            nonlocal shown
            produced.extend(new_tokens[0])
            # Decode the whole answer each time: token boundaries can split multi-byte characters.
            text = self.tokenizer.decode(produced, skip_special_tokens=True)
            if len(text) > len(shown) and not text.endswith("\ufffd"):
                stream(text[len(shown):])
                shown = text

        start = time.perf_counter()
        try:
            result = self.generator.generate(
                [prompt],
                max_new_tokens=self.max_new_tokens,
                eos_token_id=self.tokenizer.eos_token_id,
                callback=on_tokens,
                **self.generate_kwargs,
            )
            tokens, tau, interrupted = result.sequences[0], result.accepted_tokens_per_step, False
        except KeyboardInterrupt:  # Ctrl-C stops this reply; the session (and what was shown) stays
            tokens, tau, interrupted = produced, 0.0, True
        seconds = time.perf_counter() - start
        answer = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if len(answer) > len(shown):
            stream(answer[len(shown):])
        self.messages.append({"role": "assistant", "content": answer})
        return ReplyStats(text=answer, tokens=len(tokens), seconds=seconds, tau=tau, interrupted=interrupted)
