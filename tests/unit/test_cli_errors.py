"""Every bad input a user can give the command lines ends in exit status 2 and one line naming the problem (no
traceback), before anything is written."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import experiment_paper_reproduction
import generate_speculator
import train_speculator
from drafter import AutoDrafter, RecurrentDraftingConfig
from drafter.engine.base_lm import BaseLM
from drafter.errors import run_main
from drafter.teacher import generate as teacher_cli
from tests.fakes import make_chat_llama, save_with_tokenizer, smollm2_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base (64 positions) with the real tokenizer, a drafter for it (with its fingerprint), broken copies
    of that drafter, another base of the same shapes, and small data files."""
    root = tmp_path_factory.mktemp("cli")
    tokenizer = smollm2_tokenizer()

    base = save_with_tokenizer(make_chat_llama(tokenizer, 0, 64), tokenizer, root / "base")
    save_with_tokenizer(make_chat_llama(tokenizer, 1, 64), tokenizer, root / "other-base")
    config = RecurrentDraftingConfig(hidden_size=32, vocab_size=len(tokenizer),
                                     base_model_name_or_path=str(root / "base"),
                                     base_model_fingerprint=BaseLM(base).fingerprint(), drafter_num_layers=1,
                                     drafter_predict_n_tokens=2, draft_vocab_size=64)
    torch.manual_seed(0)
    AutoDrafter.from_config(config).save_pretrained(root / "drafter")
    for name, damage in (("no-key", "config"), ("no-head", "tensor"), ("truncated", "truncate"),
                         ("no-map", "map")):
        folder = root / name
        folder.mkdir()
        for file in ("config.json", "model.safetensors"):
            (folder / file).write_bytes((root / "drafter" / file).read_bytes())
        if damage == "config":
            data = json.loads((folder / "config.json").read_text())
            del data["drafter_predict_n_tokens"]
            (folder / "config.json").write_text(json.dumps(data))
        elif damage in ("tensor", "map"):
            tensors = load_file(folder / "model.safetensors")
            del tensors["lm_head.weight" if damage == "tensor" else "draft_to_base"]
            save_file(tensors, folder / "model.safetensors")
        else:
            data = (folder / "model.safetensors").read_bytes()
            (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    chats = root / "chats.jsonl"
    chats.write_text("".join(json.dumps({"id": f"c{i}", "messages": [
        {"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}"}]}) + "\n"
        for i in range(12)))
    (root / "latin1.jsonl").write_bytes(b'{"id": "a", "text": "caf\xe9"}\n')
    long_prompt = "word " * 3000
    (root / "long.jsonl").write_text(json.dumps({"id": "l", "messages": [{"role": "user", "content": long_prompt}]})
                                     + "\n")
    (root / "long-chats.jsonl").write_text("".join(json.dumps({"id": f"x{i}", "messages": [
        {"role": "user", "content": long_prompt}, {"role": "assistant", "content": "ok"}]}) + "\n" for i in range(4)))
    (root / "bad-types.yaml").write_text(yaml.safe_dump({"dataset_name": str(chats), "max_steps": "two"}))
    (root / "grid.yaml").write_text(yaml.safe_dump({
        "name": "g", "output_dir": str(root / "grid-out"), "base_model": str(root / "base"),
        "axes": {"method": ["ground_truth"], "family": ["redrafter"], "train_dataset": [str(chats)],
                 "eval_dataset": [str(chats)]},
        "training": {"max_steps": "two", "learning_rate": "1e-3"},
    }))
    (root / "used").mkdir()
    (root / "used" / "config.json").write_text("{}")
    return root


def cases(root):
    d, b = str(root / "drafter"), str(root / "base")
    gen = [generate_speculator.main, "--base_model", b, "--speculator_path"]
    train = [train_speculator.main, "--llm_name_or_path", b, "--dataset_name", str(root / "chats.jsonl"),
             "--model_max_length", "32", "--num_eval_examples", "2", "--output_dir", str(root / "out")]
    return {
        "negative temperature": ([*gen, d, "--prompt", "hi", "--temperature", "-1"], "--temperature -1"),
        "zero new tokens": ([*gen, d, "--prompt", "hi", "--max_generation_length", "0"], "--max_generation_length 0"),
        "negative new tokens": ([*gen, d, "--prompt", "hi", "--max_generation_length", "-5"], "must be >= 1"),
        "zero batch": ([*gen, d, "--eval_mt_bench", "--batch_size", "0"], "--batch_size 0"),
        "negative lookup": ([*gen, d, "--prompt", "hi", "--lookup_tokens", "-2"], "--lookup_tokens -2"),
        "bad lookup in a shape": ([*gen, d, "--eval_mt_bench", "--compare", "--tree_shapes", "2x2+x"],
                                  "context-lookup tokens"),
        "config key missing": ([*gen, str(root / "no-key"), "--prompt", "hi"], "lacks drafter_predict_n_tokens"),
        "tensor missing": ([*gen, str(root / "no-head"), "--prompt", "hi"], "lm_head.weight"),
        "truncated weights": ([*gen, str(root / "truncated"), "--prompt", "hi"], "cannot be read"),
        "draft map missing": ([*gen, str(root / "no-map"), "--prompt", "hi"], "draft_to_base"),
        "other base, same shapes": ([generate_speculator.main, "--base_model", str(root / "other-base"),
                                     "--speculator_path", d, "--prompt", "hi"], "--allow_base_mismatch"),
        "prompt past the positions": ([*gen, d, "--eval_mt_bench", "--eval_dataset", str(root / "long.jsonl")],
                                      "positions"),
        "no such base": ([generate_speculator.main, "--base_model", "/nope", "--autoregressive", "--prompt", "hi"],
                         "No model at '/nope'"),
        "abbreviated flag": ([*train, "--max_step", "3"], "max_step"),
        "zero draft vocabulary": ([*train, "--draft_vocab_size", "0"], "--draft_vocab_size 0"),
        "draft vocabulary too large": ([*train, "--draft_vocab_size", "100000"], "exceeds the base model's vocabulary"),
        "zero drafting steps": ([*train, "--drafter_predict_n_tokens", "0"], "--drafter_predict_n_tokens 0"),
        "untyped recipe": ([train_speculator.main, str(root / "bad-types.yaml"), "--demo"], "max_steps='two'"),
        "used output dir": ([*train[:-1], str(root / "used")], "--overwrite_output_dir"),
        "not UTF-8": ([*train[:4], str(root / "latin1.jsonl"), *train[5:]], "line 1 is not UTF-8"),
        "replies cut by truncation": ([*train[:4], str(root / "long-chats.jsonl"), *train[5:]],
                                      "raise --model_max_length"),
        "untyped sweep grid": ([experiment_paper_reproduction.main, str(root / "grid.yaml"), "--dry_run"],
                               "max_steps='two'"),
        "teacher batch 0": ([teacher_cli.main, "--llm_name_or_path", b, "--dataset_name", str(root / "chats.jsonl"),
                             "--batch_size", "0", "--output_dir", str(root / "teacher")], "--batch_size 0"),
    }


CASES = sorted(cases(__import__("pathlib").Path("/")).keys())


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(world, case, capsys):
    argv, expected = cases(world)[case]
    main, args = argv[0], [str(a) for a in argv[1:]]
    code = run_main(main, args)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # (progress bars may precede it)
    assert code == 2, err
    assert len(errors) == 1 and expected in errors[0], err
    assert "Traceback" not in err, err
    for written in ("out", "teacher", "grid-out"):  # nothing is written where the input was refused
        assert not (world / written).exists(), written
    assert list((world / "used").iterdir()) == [world / "used" / "config.json"]
