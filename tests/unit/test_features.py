"""The feature cache: built once, resumed after a kill, refused when stale, and one training step from it equal
to one live step."""

from __future__ import annotations

import json

import pytest
import torch

from drafter.data import DataCollatorForDrafter, build_tokenized_datasets
from drafter.features import FeatureCache, FeatureDataset, FeatureSpec, StaleFeaturesError, build_features
from drafter.features import cache as cache_module
from drafter.training.arguments import DataArguments, DrafterTrainingArguments, ModelArguments
from drafter.training.run import run
from tests.fakes import (
    make_chat_llama,
    make_tiny_eagle3,
    make_tiny_llama,
    make_tiny_redrafter,
    save_with_tokenizer,
    smollm2_tokenizer,
)
from tests.unit.test_training import make_trainer

pytestmark = pytest.mark.usefixtures("single_thread")

SPEC = FeatureSpec(model_max_length=48, num_eval_examples=3, hidden_dtype="float32", examples_per_shard=4,
                   hidden_layers=(-1, 0, 1, 2))  # EAGLE-3 fuses three layers


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DRAFTER_CACHE", str(tmp_path / "drafter-cache"))


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def base(tokenizer):
    return make_chat_llama(tokenizer)


@pytest.fixture()
def chats(tmp_path):
    path = tmp_path / "chats.jsonl"
    with open(path, "w") as f:
        for i in range(14):
            f.write(json.dumps({"id": f"c{i}", "messages": [
                {"role": "user", "content": f"Count from {i} please" + " and on" * (i % 4)},
                {"role": "assistant", "content": " ".join(str(i + k) for k in range(3 + i % 5))},
            ]}) + "\n")
    return str(path)


def tensors_of(cache: FeatureCache, split: str):
    dataset = FeatureDataset(cache, split)
    return [dataset[i] for i in range(len(dataset))]


def test_cache_holds_the_base_hidden_states_of_the_tokenized_examples(base, tokenizer, chats, tmp_path):
    cache = build_features(base, tokenizer, chats, tmp_path / "features", SPEC, batch_size=3, progress=False)
    tokenized = build_tokenized_datasets(tokenizer, chats, **SPEC.tokenized_params())
    for split in ("train", "eval"):
        examples = tensors_of(cache, split)
        assert [e["input_ids"] for e in examples] == tokenized[split]["input_ids"]
        assert [e["labels"] for e in examples] == tokenized[split]["labels"]
        for example in examples:  # each example alone through the base equals what the batched build stored
            ids = torch.tensor([example["input_ids"]])
            with torch.no_grad():
                out = base.base_model(input_ids=ids, output_hidden_states=True)
            torch.testing.assert_close(example["hidden_states"], out.last_hidden_state[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(example["hidden_states.1"], out.hidden_states[1][0], rtol=1e-5, atol=1e-5)
    assert len(cache.shards("train")) == 3 and cache.index["complete"]  # 11 training examples, 4 per shard
    last_only = FeatureDataset(cache, "eval")  # a drafter of the last hidden state leaves the other layers on disk
    last_only.read_layers([])
    assert sorted(last_only[0]) == ["hidden_states", "input_ids", "labels"]
    last_only.read_layers([2])
    assert sorted(last_only[0]) == ["hidden_states", "hidden_states.2", "input_ids", "labels"]
    with pytest.raises(ValueError, match="no base layers \\[5\\]"):
        last_only.read_layers([5])


def test_killed_build_resumes_without_losing_or_repeating_examples(base, tokenizer, chats, tmp_path, monkeypatch):
    reference = build_features(base, tokenizer, chats, tmp_path / "ref", SPEC, progress=False)
    original = cache_module.FeatureCache.add_shard
    written = []

    def add_then_die(self, split, number, tensors, examples):
        original(self, split, number, tensors, examples)
        written.append(number)
        if len(written) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.FeatureCache, "add_shard", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_features(base, tokenizer, chats, tmp_path / "run", SPEC, progress=False)
    monkeypatch.setattr(cache_module.FeatureCache, "add_shard", original)
    partial = FeatureCache.open(tmp_path / "run")
    assert not partial.index["complete"] and len(partial.shards("train")) == 2
    resumed = build_features(base, tokenizer, chats, tmp_path / "run", SPEC, progress=False)
    for split in ("train", "eval"):
        got, want = tensors_of(resumed, split), tensors_of(reference, split)
        assert [e["input_ids"] for e in got] == [e["input_ids"] for e in want]
        for a, b in zip(got, want):
            assert torch.equal(a["hidden_states"], b["hidden_states"])


def test_stale_cache_is_refused(base, tokenizer, chats, tmp_path):
    folder = tmp_path / "features"
    build_features(base, tokenizer, chats, folder, SPEC, progress=False)
    with pytest.raises(StaleFeaturesError, match="model_max_length"):
        build_features(base, tokenizer, chats, folder, FeatureSpec(**{**SPEC.__dict__, "model_max_length": 40}),
                       progress=False)
    other_base = make_tiny_llama(1, vocab_size=len(tokenizer), max_position_embeddings=256)
    with pytest.raises(StaleFeaturesError, match="base_model"):
        build_features(other_base, tokenizer, chats, folder, SPEC, progress=False)


@pytest.mark.parametrize("family", ["redrafter", "eagle3"])
def test_one_step_from_the_cache_equals_one_live_step(base, tokenizer, chats, tmp_path, family):
    cache = build_features(base, tokenizer, chats, tmp_path / "features", SPEC, progress=False)
    tokenized = build_tokenized_datasets(tokenizer, chats, **SPEC.tokenized_params())
    if family == "eagle3":
        drafter = make_tiny_eagle3(base, drafter_predict_n_tokens=3, eagle3_aux_layers=[0, 2, 1])
    else:
        drafter = make_tiny_redrafter(base, drafter_predict_n_tokens=3)
    collate = DataCollatorForDrafter(pad_token_id=tokenizer.pad_token_id)
    cached = collate([FeatureDataset(cache, "train")[i] for i in range(5)])
    live = collate([tokenized["train"][i] for i in range(5)])
    assert "hidden_states" in cached and "hidden_states" not in live
    for kd in (False, True):
        trainer = make_trainer(tmp_path, base, drafter, use_knowledge_distillation=kd)
        with torch.no_grad():
            from_cache = trainer.drafter_forward(trainer.model, cached).loss
            from_base = trainer.drafter_forward(trainer.model, live).loss
        assert from_cache.item() == pytest.approx(from_base.item(), abs=1e-5)


def test_training_from_features_stops_at_the_time_budget_and_saves(base, tokenizer, chats, tmp_path):
    model_dir = tmp_path / "base"
    save_with_tokenizer(base, tokenizer, model_dir)
    features = build_features(base, tokenizer, chats, tmp_path / "features", SPEC, progress=False)
    model_args = ModelArguments(llm_name_or_path=str(model_dir), drafter_num_layers=1, drafter_predict_n_tokens=2,
                                draft_vocab_size=64)
    data_args = DataArguments(features_dir=str(features.root))
    training_args = DrafterTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=500, per_device_train_batch_size=2, max_train_minutes=0.0,
        save_strategy="no", report_to=["none"], use_cpu=True, disable_tqdm=True, logging_steps=1,
    )
    summary = run(model_args, data_args, training_args)
    assert summary["stopped_by_time_budget"] and summary["train_steps"] == 1
    assert (tmp_path / "out" / "model.safetensors").is_file() and "eval_step1_top1" in summary
    # With checkpoints on, the stop is a checkpoint, and a resume with more budget continues from that step.
    stepped = DrafterTrainingArguments(**{**training_args.to_dict(), "output_dir": str(tmp_path / "stepped"),
                                          "save_strategy": "steps", "save_steps": 100})
    assert run(model_args, data_args, stepped)["train_steps"] == 1
    assert (tmp_path / "stepped" / "checkpoint-1" / "train_clock.json").is_file()
    resumed = DrafterTrainingArguments(**{**stepped.to_dict(), "max_steps": 3, "max_train_minutes": None,
                                          "resume_from_checkpoint": "True"})
    summary = run(model_args, data_args, resumed)
    assert (summary["train_steps"], summary["train_steps_this_run"], summary["stopped_by_time_budget"]) == (3, 2, False)
    other = tmp_path / "other-base"
    save_with_tokenizer(make_tiny_llama(5, vocab_size=len(tokenizer), max_position_embeddings=256), tokenizer, other)
    elsewhere = DrafterTrainingArguments(**{**training_args.to_dict(), "output_dir": str(tmp_path / "out2")})
    with pytest.raises(StaleFeaturesError, match="another base model"):
        run(ModelArguments(llm_name_or_path=str(other), drafter_num_layers=1), data_args, elsewhere)


def test_eagle3_trains_from_a_cache_holding_its_layers_and_refuses_one_without(base, tokenizer, chats, tmp_path):
    model_dir = tmp_path / "base"
    save_with_tokenizer(base, tokenizer, model_dir)
    features = build_features(base, tokenizer, chats, tmp_path / "features", SPEC, progress=False)
    model_args = ModelArguments(llm_name_or_path=str(model_dir), drafter_type="eagle3", eagle3_aux_layers=[0, 1, 2],
                                drafter_predict_n_tokens=2, draft_vocab_size=64)
    training_args = DrafterTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, save_strategy="no",
        report_to=["none"], use_cpu=True, disable_tqdm=True, logging_steps=1,
    )
    summary = run(model_args, DataArguments(features_dir=str(features.root)), training_args)
    assert summary["train_steps"] == 2 and "eval_step2_top1" in summary
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == "eagle3_drafter" and saved["eagle3_aux_layers"] == [0, 1, 2]
    last_only = FeatureSpec(**{**SPEC.__dict__, "hidden_layers": (-1,)})
    other = build_features(base, tokenizer, chats, tmp_path / "last-only", last_only, progress=False)
    again = DrafterTrainingArguments(**{**training_args.to_dict(), "output_dir": str(tmp_path / "out2")})
    with pytest.raises(ValueError, match="--hidden_layers -1 0 1 2"):
        run(model_args, DataArguments(features_dir=str(other.root)), again)
