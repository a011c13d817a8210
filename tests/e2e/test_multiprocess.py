"""Multi-process training: `accelerate launch` of train_speculator.py on two CPU processes (gloo) trains the same
drafter as one process with the same global batch, for both drafter families, and saves it once.

How the two runs are made comparable:

* Launch. `accelerate launch --cpu --num_processes 2` would start ONE process (accelerate's simple launcher; several
  CPU processes need mpirun), so the test launches through torch.distributed.run (`--multi_gpu`) and passes
  `--use_cpu true` to the script: accelerate then sets up MULTI_CPU with the gloo backend, also where a GPU exists.
* Data order. The Trainer shuffles with a RandomSampler that accelerate replaces by a SeedableRandomSampler seeded
  with --data_seed, the same permutation on every process; without split_batches each process then takes whole
  per-device batches in turn (process r gets batches r, r + 2, ...). So a step of 2 processes x 2 examples sees
  exactly the micro-batches 2k and 2k + 1 that one process with 2 examples x 2 accumulation steps sees.
* Averaging. DDP averages the gradients of the per-process mean losses, and gradient accumulation averages the
  per-micro-batch mean losses: the same objective. One process with a doubled batch instead takes the mean over
  all labelled tokens of the 4 examples, which differs whenever the two halves hold different numbers of targets,
  so it is not the reference here.
* Initial weights. The drafter is built before the Trainer seeds the RNG, so a fresh drafter differs from run to
  run; both runs continue the same saved, seeded initial drafter (--drafter_name_or_path) instead.

Agreement of the per-step losses with the accumulation run is also what shows that two processes really trained
together: one process alone, or two that do not communicate, would each see 2 examples per step and log other
losses. 5 held-out examples do not split evenly over 2 processes, so accelerate repeats some in the last evaluation
batches; the evaluation must still count each example once to match the one-process metrics.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from drafter import AutoDrafter
from drafter.data import build_tokenized_datasets
from drafter.engine.loading import load_base_model
from drafter.training.arguments import ModelArguments
from drafter.training.draft_vocab import count_target_tokens, select_draft_vocabulary
from drafter.training.run import drafter_config
from tests.fakes import REPO_ROOT, make_chat_llama, save_with_tokenizer, smollm2_tokenizer

pytestmark = pytest.mark.e2e

DATA = dict(model_max_length=64, num_eval_examples=5, max_train_examples=40, seed=0)
DRAFT_VOCAB = 256
FAMILIES = {
    "redrafter": dict(drafter_num_layers=1, drafter_predict_n_tokens=2),
    "arctic_lstm": dict(n_speculator_heads=2),
    "eagle3": dict(drafter_predict_n_tokens=2, eagle3_intermediate_size=48),
}
STEPS = 3
OUTPUT_FILES = {"config.json", "model.safetensors", "drafter_eval.json", "training_args.bin"}
LAUNCH_TIMEOUT_S = 900  # a few seconds of compute; the rest is imports, slow on a loaded machine


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny random Llama with the real SmolLM2 tokenizer saved to a folder, a local chat dataset, and a seeded
    initial drafter of each family (draft vocabulary chosen from the training split, as run() does)."""
    root = tmp_path_factory.mktemp("multiprocess")
    tokenizer = smollm2_tokenizer()
    save_with_tokenizer(make_chat_llama(tokenizer), tokenizer, root / "base")
    chats = root / "chats.jsonl"
    with open(chats, "w") as f:
        for i in range(48):  # replies of different lengths: the processes' batches hold different target counts
            f.write(json.dumps({"id": f"c{i}", "messages": [
                {"role": "user", "content": f"Count from {i} please" + " and on" * (i % 4)},
                {"role": "assistant", "content": " ".join(str(i + k) for k in range(3 + i % 7))},
            ]}) + "\n")

    loaded = load_base_model(str(root / "base"))
    train = build_tokenized_datasets(
        tokenizer, str(chats), model_max_length=DATA["model_max_length"], max_examples=DATA["max_train_examples"],
        eval_examples=DATA["num_eval_examples"], seed=DATA["seed"], cache_dir=root / "tokenized",
    )["train"]
    for family, fields in FAMILIES.items():
        model_args = ModelArguments(llm_name_or_path=str(root / "base"), drafter_type=family,
                                    draft_vocab_size=DRAFT_VOCAB, **fields)
        torch.manual_seed(0)
        drafter = AutoDrafter.from_config(drafter_config(model_args, loaded))
        counts = count_target_tokens(train["labels"], drafter.config.vocab_size)
        drafter.set_draft_vocabulary(select_draft_vocabulary(counts, DRAFT_VOCAB)[0])
        drafter.save_pretrained(root / f"init-{family}")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(workspace: Path, family: str, output_dir: Path, processes: int, batch: int, accumulation: int) -> str:
    """Run train_speculator.py (under `accelerate launch` when processes > 1); returns its stdout + stderr."""
    args = [
        "--llm_name_or_path", str(workspace / "base"), "--drafter_type", family,
        "--drafter_name_or_path", str(workspace / f"init-{family}"),
        "--dataset_name", str(workspace / "chats.jsonl"), "--output_dir", str(output_dir),
        "--model_max_length", str(DATA["model_max_length"]), "--num_eval_examples", str(DATA["num_eval_examples"]),
        "--max_train_examples", str(DATA["max_train_examples"]), "--draft_vocab_size", str(DRAFT_VOCAB),
        *[item for key, value in FAMILIES[family].items() for item in (f"--{key}", str(value))],
        "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", str(accumulation),
        "--learning_rate", "1e-3", "--max_steps", str(STEPS), "--logging_steps", "1", "--save_strategy", "no",
        "--report_to", "none", "--disable_tqdm", "true", "--seed", "0", "--data_seed", "0",
        "--dataloader_num_workers", "0", "--use_cpu", "true",
    ]
    script = str(REPO_ROOT / "train_speculator.py")
    if processes == 1:
        command = [sys.executable, script, *args]
    else:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), script, *args,
        ]
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "", "DRAFTER_CACHE": str(workspace / "drafter-cache"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=LAUNCH_TIMEOUT_S)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def step_logs(output: str) -> list[dict]:
    """The Trainer's per-step log lines (printed by the main process only, values as display strings)."""
    logs = [ast.literal_eval(line) for line in output.splitlines() if line.startswith("{'loss': ")]
    return [{key: float(value) for key, value in log.items()} for log in logs]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_two_processes_train_the_same_drafter_as_one(workspace, tmp_path, family):
    start = time.monotonic()
    # The 2-process run goes first, against an empty data cache: both processes tokenize and write it at once.
    two = train(workspace, family, tmp_path / "two", processes=2, batch=2, accumulation=1)
    one = train(workspace, family, tmp_path / "one", processes=1, batch=2, accumulation=2)
    print(f"{family}: 2-process + 1-process runs took {time.monotonic() - start:.0f} s")

    # Exactly one drafter, saved once in output_dir by the main process (no checkpoints, nothing per rank).
    saved = tmp_path / "two"
    assert {p.name for p in saved.iterdir()} == OUTPUT_FILES
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.safetensors")) == [
        Path("one", "model.safetensors"), Path("two", "model.safetensors")
    ]
    assert two.count("Results written to") == 1 and one.count("Results written to") == 1

    summary_two = json.loads((saved / "drafter_eval.json").read_text())
    summary_one = json.loads((tmp_path / "one" / "drafter_eval.json").read_text())
    logs_two, logs_one = step_logs(two), step_logs(one)
    print(f"{family}: train_loss 2 processes {summary_two['train_loss']!r}, 1 process {summary_one['train_loss']!r}; "
          f"per step {[log['loss'] for log in logs_two]} vs {[log['loss'] for log in logs_one]}")

    assert summary_two["train_steps"] == summary_one["train_steps"] == STEPS
    assert summary_two["train_loss"] == pytest.approx(summary_one["train_loss"], rel=1e-4)
    assert summary_one["train_loss"] == pytest.approx(sum(log["loss"] for log in logs_one) / STEPS, rel=1e-3)
    assert len(logs_two) == len(logs_one) == STEPS
    for log_two, log_one in zip(logs_two, logs_one):  # printed to 4 significant digits
        assert log_two.keys() == log_one.keys()
        for key in log_two:
            assert log_two[key] == pytest.approx(log_one[key], rel=1e-3), key

    # The same evaluation: every held-out example counted once, on either number of processes.
    for key, value in summary_one.items():
        if key.startswith("eval_"):
            assert summary_two[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key

    drafter_two = AutoDrafter.from_pretrained(str(saved))
    drafter_one = AutoDrafter.from_pretrained(str(tmp_path / "one"))
    initial = AutoDrafter.from_pretrained(str(workspace / f"init-{family}"))
    assert type(drafter_two) is type(initial) and drafter_two.config.model_type == initial.config.model_type
    assert drafter_two.config.draft_vocab_size == DRAFT_VOCAB
    weights_two, weights_one = drafter_two.state_dict(), drafter_one.state_dict()
    assert weights_two.keys() == weights_one.keys()
    for name, tensor in weights_two.items():
        torch.testing.assert_close(tensor, weights_one[name], rtol=1e-4, atol=1e-6, msg=name)
    largest = max(float((t.double() - weights_one[name].double()).abs().max()) for name, t in weights_two.items())
    print(f"{family}: largest weight difference after {STEPS} steps {largest:.2e}")
    assert any(not torch.equal(tensor, initial.state_dict()[name]) for name, tensor in weights_two.items())
