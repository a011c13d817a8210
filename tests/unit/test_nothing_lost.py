"""Nothing is lost on interruption: a killed --eval_mt_bench run resumes without losing or repeating answers,
Ctrl-C during a chat reply keeps the session; and the presets and formats that used to surprise users."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import train_speculator
from drafter import AutoDrafter, RecurrentDraftingConfig
from drafter.chat import ChatSession
from drafter.data import load_prompts
from drafter.engine import AutoregressiveGenerator
from drafter.evaluation.answers import answer_prompts
from drafter.training.run import build_drafter
from tests.fakes import (
    REPO_ROOT,
    kill_when_written,
    make_chat_llama,
    make_tiny_llama,
    save_with_tokenizer,
    smollm2_tokenizer,
)
from tests.unit.test_benchmark_cli import CharTokenizer

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = smollm2_tokenizer()
    base = save_with_tokenizer(make_chat_llama(tokenizer), tokenizer, root / "base")
    torch.manual_seed(0)
    config = RecurrentDraftingConfig(hidden_size=32, vocab_size=len(tokenizer),
                                     base_model_name_or_path=str(root / "base"),
                                     drafter_num_layers=1, drafter_predict_n_tokens=2)
    AutoDrafter.from_config(config).save_pretrained(root / "drafter")
    questions = root / "question.jsonl"  # the FastChat / Spec-Bench question format
    questions.write_text("".join(json.dumps({"question_id": 100 + i, "category": "demo", "turns": [
        f"Tell me about the number {i}.", f"And about {i + 1}?"]}) + "\n" for i in range(12)))
    return root, base, tokenizer


def run_cli(args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "generate_speculator.py"), *args], env=env,
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)


def test_killed_answer_run_resumes_without_losing_or_repeating(tiny, tmp_path):
    root, _, _ = tiny
    common = ["--speculator_path", str(root / "drafter"), "--eval_mt_bench", "--eval_dataset",
              str(root / "question.jsonl"), "--batch_size", "1", "--max_generation_length", "24", "--beam_width", "2"]
    reference = tmp_path / "reference.json"
    assert run_cli([*common, "--output_file", str(reference)]).wait(300) == 0
    output = tmp_path / "answers.json"
    partial = tmp_path / "answers.json.partial.jsonl"
    kill_when_written(run_cli([*common, "--output_file", str(output)]), partial, 4, 240)  # header + 3 answers
    assert not output.exists() and 3 <= partial.read_bytes().count(b"\n") - 1 < 12
    assert run_cli([*common, "--output_file", str(output)]).wait(300) == 0
    answers = json.loads(output.read_text())["answers"]
    expected = json.loads(reference.read_text())["answers"]
    assert [a["id"] for a in answers] == [str(i) for i in range(100, 112)]  # every question once, in order
    assert [a["answer"] for a in answers] == [a["answer"] for a in expected]
    assert not partial.exists()


def test_question_files_are_prompts_and_all_turns_are_answered(tiny):
    root, base, tokenizer = tiny
    prompts = load_prompts(str(root / "question.jsonl"))
    assert prompts[0]["id"] == "100" and prompts[0]["turns"][1] == "And about 1?"
    assert prompts[0]["messages"] == [{"role": "user", "content": "Tell me about the number 0."}]
    decoder = AutoregressiveGenerator(base)
    rows = answer_prompts(decoder, tokenizer, prompts[:3], 8, batch_size=2, sampling={}, all_turns=True)
    assert [len(r["answers"]) for r in rows] == [2, 2, 2]
    first_only = answer_prompts(decoder, tokenizer, prompts[:3], 8, batch_size=3, sampling={})
    assert [r["answers"] for r in first_only] == [r["answers"][:1] for r in rows]  # turn 1 is the same either way


def test_ctrl_c_during_a_reply_keeps_the_session():
    class InterruptedAfterTwoTokens(AutoregressiveGenerator):
        calls = 0

        def generate(self, prompts, callback=None, **kwargs):
            type(self).calls += 1
            if type(self).calls == 1:
                callback([[5, 6]])
                raise KeyboardInterrupt
            return super().generate(prompts, callback=callback, **kwargs)

    session = ChatSession(InterruptedAfterTwoTokens(make_tiny_llama(seed=1)), CharTokenizer(), 12)
    shown = []
    stats = session.reply("hello", stream=shown.append)
    assert stats.interrupted and stats.tokens == 2 and "interrupted" in stats.line()
    assert "".join(shown) == stats.text and session.messages[-1] == {"role": "assistant", "content": stats.text}
    again = session.reply("and now?")
    assert not again.interrupted and again.tokens > 0
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]


def test_presets_never_override_what_the_user_set(tmp_path):
    _, _, training = train_speculator.parse_arguments(["--quick", "--save_steps", "2"])
    assert training.save_strategy == "steps" and training.save_steps == 2
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 1e-3\nmax_steps: 7\neval_steps: 3\n")  # YAML reads 1e-3 as a string
    _, _, training = train_speculator.parse_arguments([str(recipe), "--max_steps", "3"])
    assert training.learning_rate == pytest.approx(1e-3) and training.max_steps == 3
    assert training.eval_strategy == "steps"


def test_training_further_on_another_base_records_that_base(tiny, tmp_path):
    root, _, tokenizer = tiny
    other = make_tiny_llama(3, vocab_size=len(tokenizer), max_position_embeddings=256)
    from drafter.training.arguments import ModelArguments

    args = ModelArguments(llm_name_or_path="other/base", drafter_name_or_path=str(root / "drafter"))
    drafter = build_drafter(args, other)
    assert drafter.config.base_model_name_or_path == "other/base" and drafter.config.base_model_fingerprint


def test_killed_comparison_resumes_from_its_log(tmp_path):
    from drafter.evaluation.answers import AnswerLog
    from drafter.evaluation.benchmark import BenchmarkConfig
    from drafter.evaluation.compare import TreeShape, compare_drafters
    from tests.fakes import make_tiny_redrafter

    class Tokenizer(CharTokenizer):
        pad_token_id = 0

    base = make_tiny_llama(seed=2)
    drafter = make_tiny_redrafter(base, seed=3)
    prompts = [{"id": str(i), "messages": [{"role": "user", "content": f"question {i}"}]} for i in range(4)]
    config = BenchmarkConfig(max_new_tokens=10, warmup=0)
    args = (base, Tokenizer(), {"d": drafter}, {"d": TreeShape(beam_width=2, beam_length=3)}, prompts, config)
    output = str(tmp_path / "bench.json")

    class KilledAfterTwo(AnswerLog):
        def add(self, row):
            super().add(row)
            if len(self.rows) == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compare_drafters(*args, progress=False, with_answers=True, log=KilledAfterTwo(output, {"s": 1}))
    resumed = compare_drafters(*args, progress=False, with_answers=True, log=AnswerLog(output, {"s": 1}))
    fresh = compare_drafters(*args, progress=False, with_answers=True)
    assert resumed["methods"]["d"]["prompts"] == 4 and resumed["answers"] == fresh["answers"]
    with pytest.raises(ValueError, match="other settings"):
        AnswerLog(output, {"s": 2})
