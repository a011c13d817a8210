"""Tests of drafter.data: sources, assistant-only chat tokenisation, cached tokenised datasets, collator."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import drafter.data.builtin as builtin_module
import drafter.data.dataset as dataset_module
from drafter.data import (
    IGNORE_INDEX,
    DataCollatorForDrafter,
    DataSourceError,
    build_tokenized_datasets,
    load_conversations,
    load_prompts,
    tokenize_conversation,
    tokenize_text,
)
from drafter.data.builtin import iter_json_array
from tests.fakes import REPO_ROOT, smollm2_tokenizer

MTBENCH_PATH = Path(builtin_module.__file__).parent / "files" / "mt_bench_questions.jsonl"


# The one place that decides which real tokenizer the data tests use (swap for a cached copy here).
@pytest.fixture(scope="session")
def tokenizer():
    return smollm2_tokenizer()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own drafter cache so nothing leaks between tests or into ~/.cache."""
    monkeypatch.setenv("DRAFTER_CACHE", str(tmp_path / "drafter-cache"))


@pytest.fixture(scope="module")
def sharegpt_cache(tmp_path_factory):
    """One ShareGPT conversion shared by this module's ShareGPT tests."""
    return str(tmp_path_factory.mktemp("sharegpt-cache"))


MULTI_TURN = [
    {"role": "system", "content": "You are terse. SYSTEMTEXT"},
    {"role": "user", "content": "Say exactly: yes. USERTEXT1"},
    {"role": "assistant", "content": "yes"},
    {"role": "user", "content": "Now list two colours.\nUSERTEXT2"},
    {"role": "assistant", "content": "Red and\n\nblue  (two colours)."},
]


def labelled_runs(tokenizer, out) -> List[str]:
    """Decoded text of each contiguous run of labelled tokens."""
    runs, current = [], []
    for token, label in zip(out["input_ids"], out["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


# ------------------------------------------------------------------------------------------------ tokenisation


def test_assistant_only_labels_on_smollm2_template(tokenizer):
    out = tokenize_conversation(tokenizer, MULTI_TURN, max_length=4096, assistant_only=True)
    rendered = tokenizer.apply_chat_template(MULTI_TURN, tokenize=False)
    # The whole conversation stays as input.
    assert out["input_ids"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert len(out["labels"]) == len(out["input_ids"])
    # Exactly the assistant contents + their end-of-turn token are labelled.
    assert labelled_runs(tokenizer, out) == ["yes<|im_end|>", "Red and\n\nblue  (two colours).<|im_end|>"]
    unlabelled = tokenizer.decode([t for t, label in zip(out["input_ids"], out["labels"]) if label == IGNORE_INDEX])
    for text in ("SYSTEMTEXT", "USERTEXT1", "USERTEXT2", "<|im_start|>assistant\n"):
        assert text in unlabelled


def test_assistant_only_default_system_prompt_and_tricky_contents(tokenizer):
    # No system message: the template inserts its own; the reply "assistant" also occurs in role headers and
    # the user turn quotes the reply, so a naive text search would mislabel.
    messages = [
        {"role": "user", "content": "assistant"},
        {"role": "assistant", "content": "assistant"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "\nassistant\n"},
    ]
    out = tokenize_conversation(tokenizer, messages, max_length=4096, assistant_only=True)
    assert labelled_runs(tokenizer, out) == ["assistant<|im_end|>", "\nassistant\n<|im_end|>"]
    assert "SmolLM" in tokenizer.decode(out["input_ids"])  # default system prompt rendered, not labelled


def test_all_tokens_labelled_without_assistant_only(tokenizer):
    out = tokenize_conversation(tokenizer, MULTI_TURN, max_length=4096, assistant_only=False)
    assert out["labels"] == out["input_ids"]


def test_truncation(tokenizer):
    full = tokenize_conversation(tokenizer, MULTI_TURN, max_length=4096, assistant_only=True)
    short = tokenize_conversation(tokenizer, MULTI_TURN, max_length=20, assistant_only=True)
    assert len(short["input_ids"]) == len(short["labels"]) == 20
    assert short["input_ids"] == full["input_ids"][:20]
    assert short["labels"] == full["labels"][:20]


def test_plain_text(tokenizer):
    out = tokenize_text(tokenizer, "The quick brown fox jumps over the lazy dog.", max_length=5)
    assert out["labels"] == out["input_ids"] and len(out["input_ids"]) == 5


def test_fallback_without_chat_template(tokenizer, monkeypatch):
    monkeypatch.setattr(tokenizer, "chat_template", None)
    out = tokenize_conversation(tokenizer, MULTI_TURN[1:3], max_length=4096, assistant_only=True)
    assert tokenizer.decode(out["input_ids"]).startswith("<|im_start|>user: Say exactly")
    # BPE merges the separating space into the reply's first token (" yes"), which is therefore labelled.
    assert labelled_runs(tokenizer, out) == [" yes<|im_end|>"]


def test_slow_tokenizer_path_matches_offsets_path(tokenizer, monkeypatch):
    fast = tokenize_conversation(tokenizer, MULTI_TURN, max_length=4096, assistant_only=True)
    monkeypatch.setattr(type(tokenizer), "is_fast", property(lambda self: False))
    slow = tokenize_conversation(tokenizer, MULTI_TURN, max_length=4096, assistant_only=True)
    assert labelled_runs(tokenizer, slow) == labelled_runs(tokenizer, fast)


# ---------------------------------------------------------------------------------------------------- sources


def test_mtbench_rows_and_prompts():
    file_rows = [json.loads(line) for line in MTBENCH_PATH.read_text().splitlines() if line.strip()]
    dataset = load_conversations("mtbench")
    assert len(dataset) == 80 == len(file_rows)
    assert {"id", "messages", "question_id", "category", "turns"} <= set(dataset.column_names)
    for row, expected in zip(dataset, file_rows):
        assert row["question_id"] == expected["question_id"]
        assert row["messages"] == [{"role": "user", "content": expected["turns"][0]}]
    prompts = load_prompts("mtbench")
    assert [p["question_id"] for p in prompts] == [r["question_id"] for r in file_rows]
    assert prompts[0]["messages"][0]["content"] == file_rows[0]["turns"][0]
    assert [p["id"] for p in load_prompts("mt-bench", max_examples=3)] == [str(r["question_id"]) for r in file_rows[:3]]


def test_sharegpt_subset_and_cache(sharegpt_cache, monkeypatch):
    monkeypatch.setenv("DRAFTER_CACHE", sharegpt_cache)
    first = load_conversations("sharegpt", max_examples=50, seed=0)
    assert len(first) == 50 and first.column_names == ["id", "messages"]
    for row in first:
        roles = [m["role"] for m in row["messages"]]
        assert set(roles) <= {"system", "user", "assistant"} and "assistant" in roles
        assert [r for r in roles if r != "system"][0] == "user"
        assert all(m["content"].strip() for m in row["messages"])

    # The second load comes from the Arrow cache: the JSON conversion must not run again.
    def no_conversion():
        raise AssertionError("ShareGPT JSON was converted again despite the cache")

    monkeypatch.setattr(builtin_module, "_convert_sharegpt", no_conversion)
    again = load_conversations("sharegpt", max_examples=50, seed=0)
    assert again["id"] == first["id"]
    assert load_conversations("sharegpt", max_examples=50, seed=1)["id"] != first["id"]
    prompts = load_prompts("sharegpt", max_examples=5)
    assert all(p["messages"][-1]["role"] == "user" for p in prompts)


def test_iter_json_array_tolerates_truncated_tail():
    assert list(iter_json_array('[{"a": 1}, {"b": [2, 3]} ]')) == [{"a": 1}, {"b": [2, 3]}]
    assert list(iter_json_array('[{"a": 1}, {"b": [2, 3]}, {"c": "unterminat')) == [{"a": 1}, {"b": [2, 3]}]


def write_jsonl(path: Path, rows) -> str:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return str(path)


def test_local_files(tmp_path):
    messages_file = write_jsonl(
        tmp_path / "chats.jsonl",
        [
            {"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"id": "b", "messages": [{"role": "user", "content": "only a prompt"}]},
        ],
    )
    chats = load_conversations(messages_file)
    assert chats["id"] == ["a", "b"] and chats[0]["messages"][1] == {"role": "assistant", "content": "hello"}

    sharegpt_file = tmp_path / "sharegpt.json"
    sharegpt_file.write_text(
        json.dumps(
            [
                {
                    "id": "x",
                    "conversations": [
                        {"from": "gpt", "value": "reply to nothing"},
                        {"from": "human", "value": "q"},
                        {"from": "gpt", "value": ""},
                        {"from": "bard", "value": "a"},
                    ],
                }
            ]
        )
    )
    converted = load_conversations(str(sharegpt_file))
    assert converted[0]["messages"] == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]

    text_file = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["first document", "", "second document"]}), text_file)
    texts = load_conversations(str(text_file))
    assert texts.column_names == ["id", "text"] and texts["text"] == ["first document", "second document"]

    alpaca_file = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "Add", "input": "1+1", "output": "2"}])
    assert load_conversations(alpaca_file)[0]["messages"] == [
        {"role": "user", "content": "Add\n\n1+1"},
        {"role": "assistant", "content": "2"},
    ]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "response": "r"}])
    assert load_conversations(pairs)[0]["messages"][1]["content"] == "r"


def test_compressed_json_files_and_folders_read_as_the_plain_ones(tmp_path):
    import gzip
    import lzma

    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "é"}]}
            for i in range(3)]
    plain = load_conversations(write_jsonl(tmp_path / "chats.jsonl", rows)).to_list()
    text = (tmp_path / "chats.jsonl").read_bytes()
    (tmp_path / "chats.jsonl.xz").write_bytes(lzma.compress(text))
    (tmp_path / "list.json.gz").write_bytes(gzip.compress(json.dumps(rows).encode()))
    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "data.jsonl.xz").write_bytes(lzma.compress(text))
    for source in ("chats.jsonl.xz", "list.json.gz", "teacher"):
        assert load_conversations(str(tmp_path / source)).to_list() == plain
    (tmp_path / "t.parquet.gz").write_bytes(b"")
    with pytest.raises(DataSourceError, match="Unsupported file type '.parquet.gz'"):
        load_conversations(str(tmp_path / "t.parquet.gz"))


def test_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(DataSourceError, match="Unknown dataset 'no_such_dataset'"):
        load_conversations("no_such_dataset")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_conversations(str(tmp_path / "missing.jsonl"))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(DataSourceError, match=r"found columns \['bar', 'foo'\]"):
        load_conversations(bad)
    csv_file = tmp_path / "data.csv"
    csv_file.write_text("text\nhello\n")
    with pytest.raises(DataSourceError, match="Unsupported file type"):
        load_conversations(str(csv_file))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("alpaca", "wikitext"):
        with pytest.raises(DataSourceError, match="pass a local .json/.jsonl/.parquet file"):
            load_conversations(name)
    with pytest.raises(DataSourceError, match="plain-text"):
        load_prompts(write_jsonl(tmp_path / "t.jsonl", [{"text": "x"}]))


# ------------------------------------------------------------------------------------------- tokenised datasets


def chat_rows(n: int):
    rows = [
        {
            "id": f"c{i}",
            "messages": [
                {"role": "user", "content": f"Question number {i}?"},
                {"role": "assistant", "content": f"Answer number {i}."},
            ],
        }
        for i in range(n)
    ]
    rows.append({"id": "prompt-only", "messages": [{"role": "user", "content": "no reply here"}]})
    return rows


def count_tokenize_calls(monkeypatch) -> List[int]:
    calls = [0]
    original = dataset_module.tokenize_example

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(dataset_module, "tokenize_example", counting)
    return calls


def test_build_tokenized_datasets_split_and_cache(tokenizer, tmp_path, monkeypatch):
    data_file = write_jsonl(tmp_path / "chats.jsonl", chat_rows(30))
    cache_dir = tmp_path / "tok-cache"
    calls = count_tokenize_calls(monkeypatch)

    built = build_tokenized_datasets(
        tokenizer, data_file, model_max_length=64, eval_examples=5, seed=3, cache_dir=cache_dir
    )
    assert calls[0] == 31
    assert set(built) == {"train", "eval"} and built["train"].column_names == ["input_ids", "labels"]
    assert len(built["train"]) + len(built["eval"]) == 30  # the prompt-only row has nothing to learn: dropped
    assert len(built["eval"]) in (4, 5)
    for row in built["train"]:
        labelled = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
        assert tokenizer.decode(labelled).startswith("Answer number") and len(row["input_ids"]) <= 64

    # Same inputs: served from the cache without tokenising again, identical content.
    calls[0] = 0
    again = build_tokenized_datasets(
        tokenizer, data_file, model_max_length=64, eval_examples=5, seed=3, cache_dir=cache_dir
    )
    assert calls[0] == 0
    assert again["eval"]["input_ids"] == built["eval"]["input_ids"]

    # A changed parameter, or an edited file, misses the cache.
    build_tokenized_datasets(tokenizer, data_file, model_max_length=100, eval_examples=5, seed=3, cache_dir=cache_dir)
    assert calls[0] == 31
    write_jsonl(tmp_path / "chats.jsonl", chat_rows(31))
    os.utime(data_file, ns=(1, 1))  # force a different mtime even on coarse clocks
    calls[0] = 0
    build_tokenized_datasets(tokenizer, data_file, model_max_length=64, eval_examples=5, seed=3, cache_dir=cache_dir)
    assert calls[0] == 32


def test_a_damaged_tokenized_cache_is_rebuilt(tokenizer, tmp_path, monkeypatch):
    data_file = write_jsonl(tmp_path / "chats.jsonl", chat_rows(12))
    cache_dir = tmp_path / "tok-cache"
    built = build_tokenized_datasets(tokenizer, data_file, model_max_length=64, eval_examples=2, cache_dir=cache_dir)
    (cache_path,) = [p for p in cache_dir.iterdir() if not p.name.startswith(".")]
    assert json.loads((cache_path / "drafter_cache_info.json").read_text())["params"]["model_max_length"] == 64
    (cache_path / "train" / "dataset_info.json").write_text("{ damaged")
    calls = count_tokenize_calls(monkeypatch)
    again = build_tokenized_datasets(tokenizer, data_file, model_max_length=64, eval_examples=2, cache_dir=cache_dir)
    assert calls[0] == 13
    assert again["train"]["input_ids"] == built["train"]["input_ids"]
    assert sorted(p.name for p in cache_dir.iterdir()) == [cache_path.name]


def test_build_tokenized_datasets_text_and_fraction(tokenizer, tmp_path):
    docs = [{"text": f"Document {i} has some words in it."} for i in range(20)]
    data_file = write_jsonl(tmp_path / "docs.jsonl", docs)
    built = build_tokenized_datasets(
        tokenizer, data_file, model_max_length=6, eval_examples=0.25, cache_dir=tmp_path / "c"
    )
    assert len(built["eval"]) == 5 and len(built["train"]) == 15
    assert all(row["labels"] == row["input_ids"] and len(row["input_ids"]) == 6 for row in built["train"])


def test_build_tokenized_datasets_from_sharegpt(tokenizer, sharegpt_cache, monkeypatch):
    monkeypatch.setenv("DRAFTER_CACHE", sharegpt_cache)
    built = build_tokenized_datasets(tokenizer, "sharegpt", model_max_length=128, max_examples=24, eval_examples=4)
    assert len(built["eval"]) <= 4 and 0 < len(built["train"]) <= 20
    assert all(any(label != IGNORE_INDEX for label in row["labels"][1:]) for row in built["train"])


def test_no_trainable_rows_is_an_error(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="trainable label"):
        build_tokenized_datasets(tokenizer, "mtbench", eval_examples=0, cache_dir=tmp_path / "c")


# ----------------------------------------------------------------------------------------------------- collator


def test_collator_pads_right():
    collator = DataCollatorForDrafter(pad_token_id=2)
    batch = collator(
        [
            {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
            {"input_ids": [8], "labels": [8]},
        ]
    )
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(t.dtype == torch.long and t.shape == (2, 3) for t in batch.values())
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    padded = DataCollatorForDrafter(pad_token_id=0, pad_to_multiple_of=8)([{"input_ids": torch.tensor([1, 2])}])
    assert padded["input_ids"].shape == (1, 8) and "labels" not in padded


def test_benchmark_questions_are_kept_out_of_teacher_prompts():
    from drafter.data.sources import exclude_prompts_of

    questions = [row["turns"] for row in load_conversations("mtbench")]
    prompts = [
        {"id": "clean", "messages": [{"role": "user", "content": "Explain KV caches."}]},
        {"id": "first", "messages": [{"role": "user", "content": questions[3][0]}]},
        {"id": "second-turn", "messages": [{"role": "user", "content": "  " + questions[10][1].upper()}]},
        {"id": "quoted", "messages": [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Please answer: " + questions[42][0] + " Thanks"}]},
    ]
    kept, dropped = exclude_prompts_of(prompts, "mtbench")
    assert [p["id"] for p in kept] == ["clean"] and dropped == 3
    recipe = (REPO_ROOT / "scripts" / "strong_drafter.sh").read_text()
    assert "--exclude_dataset mtbench" in recipe  # the shipped drafter's teacher prompts exclude the benchmark
    # ...and the teacher data kept in the repository (what the shipped drafter trained on) holds none of them
    shipped = load_conversations(str(REPO_ROOT / "benchmarks" / "teacher" / "smollm2-sharegpt-greedy-256"))
    shipped_prompts = [{"id": row["id"], "messages": row["messages"]} for row in shipped]
    assert len(shipped_prompts) > 3000 and exclude_prompts_of(shipped_prompts, "mtbench")[1] == 0
