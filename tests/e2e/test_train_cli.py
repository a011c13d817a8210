"""train_speculator.py end to end on the embedded model: train, distilled dataset, evaluate."""

from __future__ import annotations

import json

import pytest

import train_speculator
from drafter import AutoDrafter, RecurrentDraftingModel
from drafter.engine.loading import EMBEDDED_BASE_MODEL

pytestmark = pytest.mark.e2e


def test_train_then_eval_on_embedded_model(tmp_path, capsys):
    out = tmp_path / "drafter"
    common = ["--quick", "--max_train_examples", "40", "--num_eval_examples", "8", "--model_max_length", "128",
              "--draft_vocab_size", "1024", "--drafter_predict_n_tokens", "2", "--disable_tqdm", "true"]
    train_speculator.main(common + ["--max_steps", "4", "--output_dir", str(out), "--save_strategy", "no"])
    summary = json.loads((out / "drafter_eval.json").read_text())
    assert summary["train_steps"] == 4
    assert summary["train_tokens_per_second"] > 0
    assert 0.0 <= summary["eval_step1_top1"] <= 1.0
    assert 0 < summary["draft_vocab_coverage"] <= 1.0
    assert "| step |" in capsys.readouterr().out

    drafter = AutoDrafter.from_pretrained(str(out))
    assert isinstance(drafter, RecurrentDraftingModel)
    assert drafter.config.base_model_name_or_path == EMBEDDED_BASE_MODEL
    assert drafter.config.draft_vocab_size == 1024

    distilled = tmp_path / "distilled"
    train_speculator.main(
        common + ["--max_steps", "2", "--output_dir", str(distilled), "--use_distilled_dataset",
                  "--distill_num_future_tokens", "3", "--max_train_examples", "16"]
    )
    assert json.loads((distilled / "drafter_eval.json").read_text())["train_steps"] == 2

    evaluated = tmp_path / "eval"
    train_speculator.main(
        common + ["--phase", "eval", "--drafter_name_or_path", str(out), "--output_dir", str(evaluated)]
    )
    again = json.loads((evaluated / "drafter_eval.json").read_text())
    assert again["eval_step1_top1"] == pytest.approx(summary["eval_step1_top1"])
