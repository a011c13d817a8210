"""Tests of drafter.teacher: teacher regeneration (batched decoding, sharding, resume, cache, CLI).

A tiny random Llama with the real SmolLM2 vocabulary (49152 tokens, hidden size 32) answers the prompts, so the
real tokenizer and chat template are exercised while decoding stays fast. The model computes in float64: the
tests compare sampled answers across batch compositions, shards and resumes, and float32 rounding noise that
depends on the batch shape and the thread count can move a uniform draw across a token boundary of its
near-uniform distributions (a flip rate of about 1e-2 per token); in float64 that noise is ~1e-16.
"""

from __future__ import annotations

import importlib.util
import json
import lzma
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from drafter.data import build_tokenized_datasets, load_conversations
from drafter.store import read_jsonl_rows
from drafter.teacher.backends import load_vllm_engine
from drafter.teacher.config import (
    DATA_FILE,
    METADATA_FILE,
    SKIPPED_REASON,
    TeacherDataMismatchError,
    TeacherGenerationConfig,
)
from drafter.teacher.generate import generate_teacher_data, main
from drafter.teacher.jobs import prepare_prompt, shard_indices
from drafter.teacher.merge import continue_from_merged, merge_teacher_shards
from tests.fakes import REPO_ROOT, kill_when_written, make_tiny_llama, smollm2_tokenizer

MAX_TOKENS = 10


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


def make_model(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    return make_tiny_llama(
        seed, vocab_size=len(tokenizer), max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    ).double()  # see the module docstring


PROMPTS = [
    {"id": f"q{i}", "messages": [{"role": "user", "content": " ".join(["word"] * (1 + 5 * i)) + f" number {i}?"}]}
    for i in range(8)
] + [
    {
        "id": "with-system",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
    }
]


def greedy_reference(model, tokenizer, prompt, stop_ids, max_tokens=MAX_TOKENS):
    """Unbatched greedy answer of `model.generate` (token ids, the stop token included when it stopped)."""
    ids, _, _ = prepare_prompt(tokenizer, prompt["messages"], 512)
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=list(stop_ids),
        pad_token_id=tokenizer.pad_token_id,
    )
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_stopping_model(tokenizer)


def make_stopping_model(tokenizer) -> LlamaForCausalLM:
    """The tiny model, with an extra stop token chosen so that some answers stop early and others run to
    max_tokens: batches then shrink while decoding (the row-dropping path)."""
    tiny = make_model(tokenizer)
    continuation = greedy_reference(tiny, tokenizer, PROMPTS[0], [tokenizer.eos_token_id])
    tiny.generation_config.eos_token_id = [tokenizer.eos_token_id, continuation[3]]
    return tiny


def read_rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def content_of(rows):
    return {row["id"]: (row["messages"][-1]["content"], row["num_tokens"], row["finish_reason"]) for row in rows}


def all_shard_rows(folder):
    return [row for shard in sorted(Path(folder).glob("shard-*.jsonl")) for row in read_jsonl_rows(shard)]


GREEDY = TeacherGenerationConfig(max_tokens=MAX_TOKENS, temperature=0.0)
SAMPLED = TeacherGenerationConfig(max_tokens=MAX_TOKENS, temperature=1.0, top_k=200, top_p=0.95, seed=3)
SAMPLED_PLAIN = TeacherGenerationConfig(max_tokens=MAX_TOKENS, temperature=0.8, seed=5)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DRAFTER_CACHE", str(tmp_path / "drafter-cache"))


# ------------------------------------------------------------------------------------------ decoding correctness


def test_greedy_batched_equals_unbatched_and_generate(model, tokenizer, tmp_path):
    results = {}
    for batch_size in (1, 4):
        result = generate_teacher_data(
            model, tokenizer, PROMPTS, tmp_path / f"b{batch_size}", GREEDY, batch_size=batch_size, progress=False
        )
        assert result.num_generated == len(PROMPTS) and result.data_file is not None
        results[batch_size] = read_rows(result.data_file)
    assert [row["id"] for row in results[1]] == [p["id"] for p in PROMPTS]
    assert content_of(results[1]) == content_of(results[4])
    reasons = Counter(row["finish_reason"] for row in results[4])
    assert reasons["stop"] and reasons["length"], reasons  # the batch shrank mid-decoding

    stop_ids = model.generation_config.eos_token_id
    for prompt, row in zip(PROMPTS, results[4]):
        reference = greedy_reference(model, tokenizer, prompt, stop_ids)
        stopped = reference[-1] in stop_ids
        assert row["num_tokens"] == len(reference)
        assert row["finish_reason"] == ("stop" if stopped else "length")
        answer_ids = reference[:-1] if stopped else reference
        answer = tokenizer.decode(answer_ids, skip_special_tokens=True)
        assert row["messages"][-1] == {"role": "assistant", "content": answer}
        assert row["messages"][:-1] == prompt["messages"]


def test_immediate_stop_gives_an_empty_answer(tokenizer, tmp_path):
    tiny = make_model(tokenizer)
    with torch.no_grad():
        tiny.lm_head.weight.zero_()  # all logits tie: greedy picks token 0
    tiny.generation_config.eos_token_id = [0, tokenizer.eos_token_id]
    result = generate_teacher_data(tiny, tokenizer, PROMPTS[:3], tmp_path, GREEDY, batch_size=2, progress=False)
    rows = read_rows(result.data_file)
    assert [(row["num_tokens"], row["finish_reason"]) for row in rows] == [(1, "stop")] * 3
    assert all(row["messages"][-1] == {"role": "assistant", "content": ""} for row in rows)


def test_sampling_reproducible_across_batches_shards_and_seeds(model, tokenizer, tmp_path):
    whole = generate_teacher_data(model, tokenizer, PROMPTS, tmp_path / "whole", SAMPLED, batch_size=4, progress=False)
    reference = read_rows(whole.data_file)
    for shard in range(3):
        result = generate_teacher_data(
            model, tokenizer, PROMPTS, tmp_path / "sharded", SAMPLED, batch_size=2, num_shards=3, shard_index=shard,
            progress=False,
        )
        assert result.num_prompts == 3
        assert (result.data_file is not None) == (shard == 2)  # merged once the last shard is done
    sharded = read_rows(tmp_path / "sharded" / DATA_FILE)
    assert sharded == reference  # same rows, same order, same samples
    assert sorted(p.name for p in (tmp_path / "sharded").glob("shard-*.jsonl")) == [
        f"shard-0000{i}-of-00003.jsonl" for i in range(3)
    ]

    greedy = read_rows(
        generate_teacher_data(model, tokenizer, PROMPTS, tmp_path / "g", GREEDY, progress=False).data_file
    )
    other_seed = TeacherGenerationConfig(**{**SAMPLED.__dict__, "seed": 4})
    reseeded = read_rows(
        generate_teacher_data(model, tokenizer, PROMPTS, tmp_path / "s4", other_seed, progress=False).data_file
    )
    assert content_of(reseeded) != content_of(reference)
    assert content_of(greedy) != content_of(reference)


# ------------------------------------------------------------------------------------------- sharding and resume


def test_shard_indices_partition():
    shards = [shard_indices(10, 3, i) for i in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(10))
    assert shards[1] == [1, 4, 7]
    with pytest.raises(ValueError, match="shard_index"):
        shard_indices(10, 3, 3)
    with pytest.raises(ValueError, match="num_shards"):
        shard_indices(10, 0, 0)


class Killed(Exception):
    pass


def test_interrupted_shards_resume_without_duplicates_or_losses(model, tokenizer, tmp_path):
    whole = generate_teacher_data(
        model, tokenizer, PROMPTS, tmp_path / "ref", SAMPLED_PLAIN, batch_size=2, progress=False
    )
    reference = read_rows(whole.data_file)
    folder = tmp_path / "run"
    written = []

    def kill_after_three(row):
        written.append(row["id"])
        if len(written) == 3:
            raise Killed

    with pytest.raises(Killed):
        generate_teacher_data(
            model, tokenizer, PROMPTS, folder, SAMPLED_PLAIN, batch_size=2, num_shards=2, shard_index=0,
            progress=False, on_example=kill_after_three,
        )
    shard0 = folder / "shard-00000-of-00002.jsonl"
    assert len(read_jsonl_rows(shard0)) == 3
    with open(shard0, "a") as f:  # the kill also cut a row in the middle of writing it
        f.write('{"id": "q8", "index": 8, "messa')

    other = generate_teacher_data(
        model, tokenizer, PROMPTS, folder, SAMPLED_PLAIN, batch_size=2, num_shards=2, shard_index=1, progress=False
    )
    assert other.data_file is None and not (folder / DATA_FILE).exists()  # shard 0 is not finished
    with pytest.raises(ValueError, match="not generated yet"):
        merge_teacher_shards(folder)

    resumed = generate_teacher_data(
        model, tokenizer, PROMPTS, folder, SAMPLED_PLAIN, batch_size=2, num_shards=2, shard_index=0, progress=False
    )
    assert resumed.num_resumed == 3 and resumed.num_generated == 5 - 3
    assert resumed.data_file is not None
    ids = [row["id"] for row in all_shard_rows(folder)]
    assert sorted(ids) == sorted(p["id"] for p in PROMPTS)  # every prompt exactly once
    assert read_rows(folder / DATA_FILE) == reference

    again = generate_teacher_data(
        model, tokenizer, PROMPTS, folder, SAMPLED_PLAIN, batch_size=2, num_shards=2, shard_index=0, progress=False
    )
    assert again.num_generated == 0 and again.num_resumed == 5


def test_a_kept_compressed_set_is_extended_not_regenerated(model, tokenizer, tmp_path):
    reference = read_rows(generate_teacher_data(model, tokenizer, PROMPTS, tmp_path / "ref", GREEDY,
                                                progress=False).data_file)
    partial = tmp_path / "partial"  # half the prompts, merged and kept compressed, as in benchmarks/teacher/
    generate_teacher_data(model, tokenizer, PROMPTS, partial, GREEDY, num_shards=2, shard_index=0, progress=False)
    merge_teacher_shards(partial, allow_partial=True)
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / METADATA_FILE).write_bytes((partial / METADATA_FILE).read_bytes())
    (kept / (DATA_FILE + ".xz")).write_bytes(lzma.compress((partial / DATA_FILE).read_bytes()))
    kept_ids = [row["id"] for row in read_rows(partial / DATA_FILE)]
    assert read_jsonl_rows(kept / (DATA_FILE + ".xz")) == read_rows(partial / DATA_FILE)
    with pytest.raises(ValueError, match="compressed"):
        read_jsonl_rows(kept / (DATA_FILE + ".xz"), repair=True)

    folder = tmp_path / "run"  # continued with another shard count than the kept set was made with
    assert continue_from_merged(kept, folder, num_shards=3) == len(kept_ids) == 5
    assert continue_from_merged(kept, folder, num_shards=3) == 0  # seeded once: a rerun resumes
    results = [generate_teacher_data(model, tokenizer, PROMPTS, folder, GREEDY, num_shards=3, shard_index=i,
                                     progress=False) for i in range(3)]
    assert sum(r.num_resumed for r in results) == len(kept_ids)  # none of the kept answers is generated again
    assert sum(r.num_generated for r in results) == len(PROMPTS) - len(kept_ids)
    assert read_rows(folder / DATA_FILE) == reference
    assert sorted(row["id"] for row in all_shard_rows(folder)) == sorted(p["id"] for p in PROMPTS)

    other = tmp_path / "other"
    continue_from_merged(kept, other, num_shards=1)
    with pytest.raises(TeacherDataMismatchError, match="generation"):  # the kept set's settings, or none
        generate_teacher_data(model, tokenizer, PROMPTS, other, SAMPLED, progress=False)
    with pytest.raises(FileNotFoundError, match="not a merged teacher-data folder"):
        continue_from_merged(tmp_path / "ref-missing", tmp_path / "x", num_shards=1)


def test_refuses_to_resume_with_other_settings(model, tokenizer, tmp_path):
    generate_teacher_data(model, tokenizer, PROMPTS[:2], tmp_path, GREEDY, progress=False)
    with pytest.raises(TeacherDataMismatchError, match="generation"):
        generate_teacher_data(model, tokenizer, PROMPTS[:2], tmp_path, SAMPLED, progress=False)
    with pytest.raises(TeacherDataMismatchError, match="prompts"):
        generate_teacher_data(model, tokenizer, PROMPTS[:3], tmp_path, GREEDY, progress=False)
    with pytest.raises(ValueError, match="unique"):
        generate_teacher_data(model, tokenizer, PROMPTS[:2] * 2, tmp_path / "dup", GREEDY, progress=False)


def test_shard_lock_rejects_a_second_writer(model, tokenizer, tmp_path):
    from filelock import FileLock

    with FileLock(str(tmp_path / "shard-00000-of-00001.jsonl.lock")):
        with pytest.raises(RuntimeError, match="another process"):
            generate_teacher_data(model, tokenizer, PROMPTS[:2], tmp_path, GREEDY, progress=False)


def test_read_jsonl_rows_repairs_a_cut_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "mess')
    assert [row["id"] for row in read_jsonl_rows(path)] == ["a", "b"]
    assert path.read_text().endswith('"mess')  # reading alone leaves the file alone
    read_jsonl_rows(path, repair=True)
    assert path.read_text() == '{"id": "a"}\n{"id": "b"}\n'


# ---------------------------------------------------------------------------------------------- prompt handling


def test_long_prompts_are_cut_or_skipped(model, tokenizer, tmp_path):
    long_prompt = {"id": "long", "messages": [{"role": "user", "content": "alpha beta gamma " * 100}]}
    ids, messages, truncated = prepare_prompt(tokenizer, long_prompt["messages"], 60)
    assert truncated and len(ids) <= 60
    assert long_prompt["messages"][0]["content"].startswith(messages[0]["content"])

    huge_system = {
        "id": "nofit",
        "messages": [{"role": "system", "content": "rule " * 200}, {"role": "user", "content": "hi"}],
    }
    config = TeacherGenerationConfig(max_tokens=4, temperature=0.0, max_prompt_tokens=60)
    result = generate_teacher_data(model, tokenizer, [long_prompt, huge_system, PROMPTS[0]], tmp_path, config,
                                   progress=False)
    rows = read_rows(result.data_file)
    assert [row["id"] for row in rows] == ["long", "q0"]
    assert rows[0]["prompt_truncated"] and rows[0]["num_prompt_tokens"] <= 60
    assert [row["finish_reason"] for row in all_shard_rows(tmp_path) if row["id"] == "nofit"] == [SKIPPED_REASON]
    assert json.loads((tmp_path / METADATA_FILE).read_text())["merged"]["complete"]


# ----------------------------------------------------------------------------------- loading, training, the CLI


def test_teacher_folder_is_a_training_dataset(model, tokenizer, tmp_path):
    folder = tmp_path / "teacher"
    generate_teacher_data(model, tokenizer, PROMPTS, folder, GREEDY, num_shards=2, shard_index=0, progress=False)
    with pytest.raises(FileNotFoundError, match="--merge"):
        load_conversations(str(folder))
    generate_teacher_data(model, tokenizer, PROMPTS, folder, GREEDY, num_shards=2, shard_index=1, progress=False)
    dataset = load_conversations(str(folder))
    assert len(dataset) == len(PROMPTS)
    assert dataset[0]["id"] == "q0"
    assert dataset[0]["messages"][-1]["role"] == "assistant" or dataset[0]["messages"][-1]["content"] == ""
    answered = [row for row in dataset if row["messages"][-1]["role"] == "assistant"]
    assert answered, "some answers must be non-empty"
    tokenized = build_tokenized_datasets(tokenizer, str(folder), model_max_length=128, eval_examples=1)
    assert len(tokenized["train"]) >= 1


def save_tiny_model(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_chat_file(path: Path, prompts) -> Path:
    with open(path, "w") as f:
        for prompt in prompts:
            f.write(json.dumps({"id": prompt["id"], "messages": prompt["messages"]}) + "\n")
    return path


def test_cli_default_cache_folder_and_reuse(model, tokenizer, tmp_path, capsys):
    model_dir = save_tiny_model(model, tokenizer, tmp_path / "model")
    data = write_chat_file(tmp_path / "chats.jsonl", PROMPTS)
    args = ["--dataset_name", str(data), "--llm_name_or_path", str(model_dir), "--max_tokens", "6",
            "--gen_temp", "0", "--batch_size", "3", "--no_progress"]
    first = main(args)
    assert first.num_generated == len(PROMPTS)
    folder = first.output_dir
    assert folder.parent == Path(os.environ["DRAFTER_CACHE"]) / "teacher" and folder.name.startswith("chats-")
    metadata = json.loads((folder / METADATA_FILE).read_text())
    assert metadata["identity"]["generation"]["max_tokens"] == 6
    assert metadata["source"]["dataset_name"] == str(data)
    second = main(args)  # same settings: the cached data is reused
    assert second.output_dir == folder and second.num_generated == 0 and second.data_file is not None
    other = main(args[:-1] + ["--seed", "1", "--gen_temp", "0.7", "--no_progress"])
    assert other.output_dir != folder and other.num_generated == len(PROMPTS)
    assert main(["--merge", "--output_dir", str(folder)]) == folder / DATA_FILE
    assert "Teacher data" in capsys.readouterr().out


def test_cli_killed_process_resumes(model, tokenizer, tmp_path):
    """A real kill (SIGKILL) of a CLI process mid-run, then a resume: every prompt exactly once."""
    model_dir = save_tiny_model(model, tokenizer, tmp_path / "model")
    prompts = [{"id": f"k{i}", "messages": [{"role": "user", "content": f"question {i} " * (1 + i % 7)}]}
               for i in range(60)]
    data = write_chat_file(tmp_path / "many.jsonl", prompts)
    out = tmp_path / "out"
    args = ["--dataset_name", str(data), "--llm_name_or_path", str(model_dir), "--output_dir", str(out),
            "--max_tokens", "16", "--gen_temp", "0.8", "--batch_size", "1", "--no_progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-m", "drafter.teacher.generate", *args], env=env, cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shard = out / "shard-00000-of-00001.jsonl"
    kill_when_written(process, shard, 3, 120)
    done_before = len(read_jsonl_rows(shard))
    assert 3 <= done_before < len(prompts) and not (out / DATA_FILE).exists()

    result = main(args)
    assert result.num_resumed == done_before and result.num_generated == len(prompts) - done_before
    ids = [row["id"] for row in read_jsonl_rows(shard)]
    assert len(ids) == len(set(ids)) == len(prompts)
    assert [row["id"] for row in read_rows(out / DATA_FILE)] == [p["id"] for p in prompts]


def test_vllm_backend_needs_vllm():
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    with pytest.raises(ImportError, match="pip install vllm"):
        load_vllm_engine("some/model")
