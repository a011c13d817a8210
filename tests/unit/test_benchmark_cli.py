"""The speed benchmark, its reports, the chat session and the generate_speculator CLI."""

from __future__ import annotations

import pytest
import torch

from drafter.chat import ChatSession
from drafter.engine import AutoregressiveGenerator
from drafter.evaluation.benchmark import BenchmarkConfig, SpeedBenchmark
from drafter.evaluation.report import markdown_table, plot_summary
from drafter.generation import SpeculativeGenerator
from tests.fakes import OracleDrafter, hf_greedy, make_tiny_llama, make_tiny_redrafter, run_cli


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_benchmark_summary_reports_identity_tau_and_speedup(tmp_path):
    base = make_tiny_llama(seed=3)
    prompts = [[5, 17, 33, 8], [9, 4, 61, 22, 13, 7]]
    references = [prompt + hf_greedy(base, prompt, 24) for prompt in prompts]
    drafter = OracleDrafter(base, references, num_steps=3, wrong_every=4)
    config = BenchmarkConfig(max_new_tokens=20, repeats=2, warmup=1)
    speculators = {"speculative": SpeculativeGenerator(base, drafter, beam_width=2, beam_length=4)}
    bench = SpeedBenchmark(base, speculators, eos_token_id=None, pad_token_id=0, config=config)
    bench.run(prompts, progress=False)
    summary = bench.summary()
    assert summary["identical_fraction"] == 1.0
    assert summary["methods"]["autoregressive"]["identical"] == 2
    assert summary["methods"]["hf_generate"]["generated_tokens"] == 40
    assert summary["tau"] > 1.5  # the oracle is right most of the time
    assert summary["methods"]["autoregressive"]["tau"] == pytest.approx(1.0)
    assert len(summary["acceptance_by_position"]) == 3
    assert summary["overhead_c"] == pytest.approx(summary["tau"] / summary["speedup"] - 1)
    table = markdown_table(summary)
    assert "speculative" in table and "2/2" in table
    plot_summary(summary, str(tmp_path / "chart.png"))
    assert (tmp_path / "chart.png").stat().st_size > 1000


def test_benchmark_compares_several_drafters_in_one_run(tmp_path):
    base = make_tiny_llama(seed=3)
    prompts = [[5, 17, 33, 8], [9, 4, 61, 22, 13, 7]]
    references = [prompt + hf_greedy(base, prompt, 24) for prompt in prompts]
    good = OracleDrafter(base, references, num_steps=3, wrong_every=6)
    poor = OracleDrafter(base, references, num_steps=3, wrong_every=1)  # every drafted token wrong
    speculators = {
        "good": SpeculativeGenerator(base, good, beam_width=1, beam_length=4),
        "poor": SpeculativeGenerator(base, poor, beam_width=1, beam_length=4),
    }
    config = BenchmarkConfig(max_new_tokens=20, warmup=0, baselines=("hf_generate",))
    bench = SpeedBenchmark(base, speculators, eos_token_id=None, pad_token_id=0, config=config)
    bench.run(prompts, progress=False)
    summary = bench.summary()
    assert summary["speculators"] == ["good", "poor"]
    assert set(summary["methods"]) == {"hf_generate", "good", "poor"}
    assert "tau" not in summary  # no single headline number when several drafters compete
    good_entry, poor_entry = summary["methods"]["good"], summary["methods"]["poor"]
    assert good_entry["identical"] == poor_entry["identical"] == 2
    assert poor_entry["tau"] == pytest.approx(1.0)
    assert good_entry["tau"] > 1.5
    assert good_entry["acceptance_by_position"][0] > poor_entry["acceptance_by_position"][0] == 0.0
    table = markdown_table(summary)
    assert "| good |" in table and "| poor |" in table and "(good)" in table
    plot_summary(summary, str(tmp_path / "chart.png"))
    assert (tmp_path / "chart.png").stat().st_size > 1000


def test_benchmark_rejects_bad_method_sets():
    base = make_tiny_llama()
    with pytest.raises(ValueError, match="unknown baseline methods"):
        SpeedBenchmark(base, {}, None, 0, BenchmarkConfig(baselines=("hf_generate", "magic")))
    with pytest.raises(ValueError, match="reference"):
        SpeedBenchmark(base, {}, None, 0, BenchmarkConfig(baselines=("autoregressive",)))
    with pytest.raises(ValueError, match="nothing to compare"):
        SpeedBenchmark(base, {}, None, 0, BenchmarkConfig(baselines=("hf_generate",)))
    with pytest.raises(ValueError, match="clash"):
        SpeedBenchmark(base, {"hf_generate": AutoregressiveGenerator(base)}, None, 0, BenchmarkConfig())


class CharTokenizer:
    """Just enough of a tokenizer for ChatSession: one token per character (ids 3..95)."""

    eos_token_id = 2
    chat_template = "<role>content, one token per character"

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + (ord(c) % 90) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + (i % 26)) for i in ids if i != self.eos_token_id)


def test_chat_session_streams_the_same_answer_as_plain_decoding():
    base = make_tiny_llama(seed=1)
    drafter = make_tiny_redrafter(base, seed=2)
    tokenizer = CharTokenizer()
    speculative = ChatSession(SpeculativeGenerator(base, drafter, beam_width=3, beam_length=3), tokenizer, 24)
    plain = ChatSession(AutoregressiveGenerator(base), tokenizer, 24)
    for turn in ["hello there", "and again"]:
        pieces: list[str] = []
        stats = speculative.reply(turn, stream=pieces.append)
        reference = plain.reply(turn)
        assert "".join(pieces) == stats.text == reference.text
        assert stats.tokens == reference.tokens > 0
    assert [m["role"] for m in speculative.messages] == ["user", "assistant", "user", "assistant"]
    speculative.reset()
    assert speculative.messages == []


def test_cli_rejects_inconsistent_arguments(embedded_random_drafter):
    result = run_cli(["--speculator_path", embedded_random_drafter, "--compare"])
    assert result.returncode != 0 and "--compare is part of --eval_mt_bench" in result.stderr
    result = run_cli(["--speculator_path", embedded_random_drafter, embedded_random_drafter, "--prompt", "Hi"])
    assert result.returncode != 0 and "only for --eval_mt_bench --compare" in result.stderr


def test_without_a_drafter_the_embedded_model_gets_the_shipped_one():
    """`python generate_speculator.py --interactive` works out of the box: the shipped drafter is filled in and
    is a drafter of the embedded model; another base model still needs --speculator_path."""
    import generate_speculator
    from drafter import AutoDrafter
    from drafter.cli.generate import GenerationArguments, check_modes
    from drafter.engine import EMBEDDED_BASE_MODEL
    from drafter.errors import UsageError

    args = GenerationArguments(interactive=True)
    check_modes(args, generate_speculator.DEFAULT_DRAFTER)
    assert args.speculator_path == [str(generate_speculator.DEFAULT_DRAFTER)]
    drafter = AutoDrafter.from_pretrained(args.speculator_path[0])
    assert drafter.config.base_model_name_or_path == EMBEDDED_BASE_MODEL and drafter.config.hidden_size == 576
    assert drafter.config.base_model_fingerprint  # checked against the embedded base when it loads
    with pytest.raises(UsageError, match="--speculator_path is required"):
        check_modes(GenerationArguments(interactive=True, base_model="x/y"), generate_speculator.DEFAULT_DRAFTER)


def test_drafting_shape_is_planned_unless_the_arguments_fix_it(monkeypatch):
    """No --beam_width / --beam_length / --top_k_tokens_per_head: the shape planned for this machine (the plan is
    recorded); any of them: exactly that shape, the planner not run; --tree_budget auto with a fixed shape: refused."""
    from drafter.cli import generate
    from drafter.errors import UsageError
    from drafter.evaluation.compare import TreeShape

    calls = []

    class Plan:
        def to_dict(self):
            return {"planned": True}

    def fake_planner(base, tokenizer, drafter, lookup_tokens=0):
        calls.append(lookup_tokens)
        return TreeShape(beam_width=3, beam_length=3, lookup_tokens=min(4, lookup_tokens)), Plan()

    monkeypatch.setattr(generate, "auto_tree_shape", fake_planner)

    def shape_of(**kwargs):
        args = generate.GenerationArguments(prompt="hi", **kwargs)
        plans: dict = {}
        return generate.resolve_tree_shape(args, None, None, None, plans, "speculative"), plans

    shape, plans = shape_of()
    assert (shape.label, calls, plans) == ("3x3+4", [8], {"speculative": {"planned": True}})
    for fixed in ({"beam_width": 2}, {"beam_length": 3}, {"beam_width": 2, "beam_length": 3, "lookup_tokens": 0}):
        shape, plans = shape_of(**fixed)
        assert (shape.beam_width, shape.beam_length, shape.lookup_tokens, plans) == (
            fixed.get("beam_width", 4), fixed.get("beam_length"), fixed.get("lookup_tokens", 8), {})
    assert shape_of(top_k_tokens_per_head=[2, 1])[0].top_k_tokens_per_head == [2, 1]
    assert calls == [8]  # the planner ran for the default only

    with pytest.raises(UsageError, match="--tree_budget auto plans the beam shape"):
        generate.check_modes(generate.GenerationArguments(
            prompt="hi", tree_budget="auto", beam_width=2, speculator_path=["d"]))
