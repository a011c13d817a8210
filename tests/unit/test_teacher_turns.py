"""All-turn teacher data (`--turns all`): every assistant turn is answered by the base model with its own earlier
answers as context, one row per (conversation, turn); a killed run resumes with no turn lost or generated twice;
the merged data holds one row per conversation, its whole conversation in the model's words."""

from __future__ import annotations

import pytest

from drafter.store import read_jsonl_rows
from drafter.teacher.config import SKIPPED_REASON, TeacherGenerationConfig
from drafter.teacher.generate import generate_teacher_data
from drafter.teacher.turns import conversation_turns, turn_id
from tests.fakes import smollm2_tokenizer
from tests.unit.test_teacher_data import (
    GREEDY,
    SAMPLED_PLAIN,
    Killed,
    all_shard_rows,
    greedy_reference,
    make_stopping_model,
    read_rows,
)


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_stopping_model(tokenizer)  # float64, see test_teacher_data


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DRAFTER_CACHE", str(tmp_path / "drafter-cache"))


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


CONVERSATIONS = [
    [user("Hello there, who are you?"), assistant("An assistant."), user("What can you do?"), assistant("Things."),
     user("Thanks, bye.")],
    [{"role": "system", "content": "Be brief."}, user("Name a colour."), assistant("Red."), user("Another one?"),
     assistant("Blue.")],
    [user("One question only.")],
    [user("First."), assistant("Ok."), user("Second " + "long " * 40), assistant("Fine.")],
]
ITEMS = [{"id": f"c{i}", "messages": m, "turns": conversation_turns(m)} for i, m in enumerate(CONVERSATIONS)]


def test_conversation_turns_split_at_answers():
    assert [len(t) for t in conversation_turns(CONVERSATIONS[0])] == [1, 1, 1]
    assert conversation_turns(CONVERSATIONS[1])[0] == CONVERSATIONS[1][:2]  # the system message stays in turn 1
    assert conversation_turns([assistant("orphan"), user("q")]) == [[user("q")]]
    assert conversation_turns([{"role": "system", "content": "s"}, assistant("a")]) == []


def test_every_turn_answered_in_the_models_own_context(model, tokenizer, tmp_path):
    result = generate_teacher_data(model, tokenizer, ITEMS, tmp_path, GREEDY, batch_size=3, progress=False,
                                   all_turns=True)
    rows = {row["id"]: row for row in all_shard_rows(tmp_path)}
    assert set(rows) == {turn_id(item["id"], k) for item in ITEMS for k in range(1, len(item["turns"]) + 1)}
    assert result.num_generated == len(rows) == 8
    stop_ids = list(model.generation_config.eos_token_id)
    for item in ITEMS:
        context = []
        for k, turn in enumerate(item["turns"], start=1):
            row = rows[turn_id(item["id"], k)]
            assert row["turn"] == k and row["messages"][:-1] == context + turn
            # The answer is plain greedy decoding of exactly that context (the model's own earlier answers).
            expected = greedy_reference(model, tokenizer, {"messages": context + turn}, stop_ids)
            assert row["num_tokens"] == len(expected)
            assert row["messages"][-1] == {"role": "assistant", "content": tokenizer.decode(
                expected[:-1] if row["finish_reason"] == "stop" else expected, skip_special_tokens=True)}
            context = row["messages"]
    merged = read_rows(result.data_file)
    assert [row["id"] for row in merged] == ["c0#3", "c1#2", "c2", "c3#2"]  # each conversation's last turn
    assert [len([m for m in row["messages"] if m["role"] == "assistant"]) for row in merged] == [3, 2, 1, 2]


def test_killed_run_resumes_per_conversation_and_turn(model, tokenizer, tmp_path):
    reference = generate_teacher_data(model, tokenizer, ITEMS, tmp_path / "ref", SAMPLED_PLAIN, batch_size=2,
                                      progress=False, all_turns=True)
    folder = tmp_path / "run"
    written = []

    def kill_in_round_two(row):  # shard 0 holds c0 (3 turns) and c2 (1): round 1 writes 2 rows, round 2 one
        written.append(row["id"])
        if len(written) == 3:
            raise Killed

    with pytest.raises(Killed):
        generate_teacher_data(model, tokenizer, ITEMS, folder, SAMPLED_PLAIN, batch_size=2, num_shards=2,
                              shard_index=0, progress=False, on_example=kill_in_round_two, all_turns=True)
    assert written == ["c0", "c2", "c0#2"]
    other = generate_teacher_data(model, tokenizer, ITEMS, folder, SAMPLED_PLAIN, batch_size=2, num_shards=2,
                                  shard_index=1, progress=False, all_turns=True)
    assert other.data_file is None  # c0#3 is still missing
    resumed = generate_teacher_data(model, tokenizer, ITEMS, folder, SAMPLED_PLAIN, batch_size=2, num_shards=2,
                                    shard_index=0, progress=False, all_turns=True)
    assert (resumed.num_resumed, resumed.num_generated) == (3, 1)
    ids = [row["id"] for row in all_shard_rows(folder)]
    assert len(ids) == len(set(ids)) == 8  # every (conversation, turn) exactly once
    assert read_rows(resumed.data_file) == read_rows(reference.data_file)


def test_a_turn_that_cannot_fit_skips_the_rest_of_its_conversation(model, tokenizer, tmp_path):
    config = TeacherGenerationConfig(max_tokens=4, temperature=0.0, max_prompt_tokens=40)
    too_long = [{"role": "system", "content": "y " * 60}, user("Start.")]  # over 40 tokens with no user text
    item = {"id": "long", "messages": [], "turns": [too_long, [user("Next.")], [user("Third.")]]}
    result = generate_teacher_data(model, tokenizer, [item], tmp_path, config, progress=False, all_turns=True)
    rows = {row["id"]: row for row in read_jsonl_rows(next(tmp_path.glob("shard-*.jsonl")))}
    assert set(rows) == {"long", "long#2", "long#3"}  # counted as done, so the folder completes
    assert all(row["finish_reason"] == SKIPPED_REASON for row in rows.values())
    assert read_rows(result.data_file) == []
