"""Drafter model, losses and trainer on tiny random base models (no downloads)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from drafter import AutoDrafter, DrafterMismatchError
from drafter.data import DataCollatorForDrafter
from drafter.training.arguments import DrafterTrainingArguments
from drafter.training.clock import TrainingClock, seconds_recorded_in
from drafter.training.losses import distillation_loss, drafter_loss
from drafter.training.trainer import DrafterTrainer
from tests.fakes import make_tiny_gpt2, make_tiny_llama, make_tiny_redrafter

VOCAB = 96


def base_features(base, input_ids):
    with torch.no_grad():
        hidden = base.base_model(input_ids=input_ids)[0]
        embeds = base.get_input_embeddings()(input_ids)
    return hidden, embeds


def pattern_dataset(num_examples: int, length: int = 24, seed: int = 0) -> Dataset:
    """Sequences following x_{t+1} = (5 x_t + 3) mod V from a random start: learnable several tokens ahead."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(num_examples):
        token = int(torch.randint(3, VOCAB, (1,), generator=generator))
        ids = []
        for _ in range(length):
            ids.append(token)
            token = (5 * token + 3) % VOCAB
        rows.append({"input_ids": ids, "labels": ids, "attention_mask": [1] * length})
    return Dataset.from_list(rows)


def training_args(tmp_path, **overrides) -> DrafterTrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=3e-3,
        max_steps=30,
        logging_steps=5,
        save_strategy="no",
        report_to=["none"],
        use_cpu=True,
        seed=0,
        eval_top_k=5,
        disable_tqdm=True,
    )
    defaults.update(overrides)
    return DrafterTrainingArguments(**defaults)


@pytest.mark.parametrize("make_base", [make_tiny_llama, make_tiny_gpt2])
@pytest.mark.parametrize("rnn, exit_dim_multiplier", [(True, 2.0), (False, 1.0)])
def test_forward_shapes(make_base, rnn, exit_dim_multiplier):
    base = make_base()
    drafter = make_tiny_redrafter(base, rnn=rnn, exit_dim_multiplier=exit_dim_multiplier, drafter_predict_n_tokens=3)
    input_ids = torch.randint(0, VOCAB, (2, 11))
    hidden, embeds = base_features(base, input_ids)
    logits = drafter(hidden, embeds)
    assert logits.shape == (3, 2, 11, VOCAB)
    assert (drafter.input_proj is None) == (exit_dim_multiplier == 2.0)


def test_ground_truth_loss_matches_hand_computation():
    base = make_tiny_llama()
    drafter = make_tiny_redrafter(base, drafter_predict_n_tokens=2)
    input_ids = torch.randint(0, VOCAB, (1, 6))
    labels = input_ids.clone()
    labels[0, 3] = -100  # masked target
    hidden, embeds = base_features(base, input_ids)
    decay = 0.5
    loss = drafter_loss(drafter, hidden, embeds, labels, num_steps=2, loss_decay=decay).loss

    # By hand: step k at position t sees h_t and tokens t+1..t+k+1 and predicts token t+k+2.
    emb = embeds[0]
    expected = 0.0
    for step in range(2):
        terms = []
        for t in range(6):
            target_pos = t + step + 2
            if target_pos >= 6 or labels[0, target_pos] == -100:
                continue
            state = torch.zeros(hidden.shape[-1])
            for j in range(step + 1):
                state = torch.nn.functional.silu(drafter.rnn_w(emb[t + j + 1]) + drafter.rnn_u(state))
            logits = drafter.compute_logits(hidden[0, t], state, step)
            terms.append(-torch.log_softmax(logits, -1)[labels[0, target_pos]])
        expected += decay**step * torch.stack(terms).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_distillation_loss_zero_iff_student_matches_teacher():
    teacher = torch.randn(7, VOCAB)
    assert distillation_loss(teacher.clone(), teacher, temperature=2.0).abs().item() < 1e-6
    assert distillation_loss(torch.randn(7, VOCAB), teacher, temperature=2.0).item() > 1e-2


def test_kd_loss_zero_when_drafter_matches_teacher():
    """With kd_alpha = 1 and a drafter that reproduces the teacher's logits, the whole loss is 0."""
    base = make_tiny_llama()
    drafter = make_tiny_redrafter(base, drafter_predict_n_tokens=2)
    input_ids = torch.randint(0, VOCAB, (2, 9))
    hidden, embeds = base_features(base, input_ids)
    head = base.get_output_embeddings()

    class TeacherCopy(torch.nn.Module):
        # A drafter whose step-k logits are exactly the base model's at position t + k + 1.
        num_draft_steps = 2
        has_reduced_vocabulary = False

        def initial_state(self, context):
            return torch.zeros(context.shape[:-1] + (0,))

        def advance_state(self, state, token_embeds, step):
            return state

        def compute_logits(self, context, state, step):
            return self._next_logits[step]

        def to_draft_ids(self, ids, ignore_index=-100):
            return ids

    copy = TeacherCopy()
    labels = input_ids.clone()
    copy._next_logits = []
    for step in range(2):
        shifted = torch.zeros_like(hidden)
        shifted[:, : -(step + 1)] = hidden[:, step + 1 :]
        valid = torch.zeros_like(labels, dtype=torch.bool)
        valid[:, : 9 - (step + 2)] = True
        copy._next_logits.append(head(shifted[valid]))
    out = drafter_loss(copy, hidden, embeds, labels, 2, teacher_head=head, kd_alpha=1.0, kd_temperature=2.0)
    assert out.loss.abs().item() < 1e-5
    # ...and a real (untrained) drafter is far from the teacher.
    out = drafter_loss(drafter, hidden, embeds, labels, 2, teacher_head=head, kd_alpha=1.0, kd_temperature=2.0)
    assert out.loss.item() > 0.1


def test_save_load_round_trip_identical_logits(tmp_path):
    base = make_tiny_llama()
    drafter = make_tiny_redrafter(base, draft_vocab_size=40)
    drafter.set_draft_vocabulary(torch.randperm(VOCAB)[:40])
    drafter.save_pretrained(tmp_path / "d")
    loaded = AutoDrafter.from_pretrained(str(tmp_path / "d"))
    assert type(loaded) is type(drafter)
    assert torch.equal(loaded.draft_to_base, drafter.draft_to_base)
    assert torch.equal(loaded.base_to_draft, drafter.base_to_draft)
    input_ids = torch.randint(0, VOCAB, (2, 8))
    hidden, embeds = base_features(base, input_ids)
    assert torch.equal(drafter(hidden, embeds), loaded(hidden, embeds))
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-random"
    assert config["hidden_size"] == 32 and config["vocab_size"] == VOCAB


def test_reduced_vocabulary_excludes_out_of_vocab_targets():
    base = make_tiny_llama()
    drafter = make_tiny_redrafter(base, draft_vocab_size=8, drafter_predict_n_tokens=1)
    drafter.set_draft_vocabulary(torch.arange(10, 18))
    labels = torch.tensor([[0, 1, 10, 11, 50, 12, 60, 13]])
    mapped = drafter.to_draft_ids(labels)
    assert mapped.tolist() == [[-100, -100, 0, 1, -100, 2, -100, 3]]
    hidden, embeds = base_features(base, labels)
    out = drafter_loss(drafter, hidden, embeds, labels, 1, top_k=1)
    targets, oov, _ = out.step_counts[0]
    assert (targets, oov) == (6, 2)  # step 1 targets tokens 2..7 ahead-by-2: 10 11 50 12 60 13; 50, 60 OOV
    assert drafter.to_base_ids(torch.tensor([0, 7])).tolist() == [10, 17]


def test_mismatched_base_fails_clearly():
    drafter = make_tiny_redrafter(make_tiny_llama(hidden_size=32))
    with pytest.raises(DrafterMismatchError, match="hidden size 48 != drafter's 32"):
        drafter.check_base_model(make_tiny_llama(hidden_size=48))
    with pytest.raises(DrafterMismatchError, match="vocabulary size 80"):
        drafter.check_base_model(make_tiny_llama(vocab_size=80))


def make_trainer(tmp_path, base, drafter, **arg_overrides) -> DrafterTrainer:
    return DrafterTrainer(
        model=drafter,
        args=training_args(tmp_path, **arg_overrides),
        base_model=base,
        data_collator=DataCollatorForDrafter(pad_token_id=0),
        train_dataset=pattern_dataset(256),
        eval_dataset=pattern_dataset(32, seed=1),
    )


def test_training_beats_untrained_drafter_and_freezes_base(tmp_path):
    base = make_tiny_llama()
    base_before = {k: v.clone() for k, v in base.state_dict().items()}
    drafter = make_tiny_redrafter(base, drafter_predict_n_tokens=2)
    trainer = make_trainer(tmp_path, base, drafter, max_steps=150, learning_rate=1e-2)
    untrained = trainer.evaluate()
    trainer.train()
    trained = trainer.evaluate()
    assert untrained["eval_step1_top1"] < 0.1
    assert trained["eval_step1_top1"] > 0.8, trained
    assert trained["eval_expected_accepted_length_top1"] > untrained["eval_expected_accepted_length_top1"] + 1.0
    # The base model never trains and never reaches the optimizer.
    assert all(not p.requires_grad and p.grad is None for p in base.parameters())
    assert all(torch.equal(base_before[k], v) for k, v in base.state_dict().items())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized <= {id(p) for p in trainer.model.parameters()}
    assert not optimized & {id(p) for p in base.parameters()}


def test_checkpoint_holds_drafter_only_and_resume_continues(tmp_path):
    base = make_tiny_llama()
    args = dict(max_steps=20, save_strategy="steps", save_steps=10, logging_steps=1, learning_rate=1e-3)
    full = make_trainer(tmp_path / "full", base, make_tiny_redrafter(base), **args)
    full_clock = TrainingClock()
    full.add_callback(full_clock)
    full.train()
    full_losses = {h["step"]: h["loss"] for h in full.state.log_history if "loss" in h}

    checkpoint = tmp_path / "full" / "run" / "checkpoint-10"
    tensors = load_file(str(checkpoint / "model.safetensors"))
    drafter_names = set(make_tiny_redrafter(base).state_dict())
    assert set(tensors) == drafter_names
    assert not any("embed_tokens" in name or "layers." in name for name in tensors)

    # the wall clock survives the resume: the checkpoint holds the seconds up to step 10
    at_step_10 = seconds_recorded_in(str(checkpoint))
    assert 0 < at_step_10 < full_clock.total_seconds
    resumed = make_trainer(tmp_path / "full", base, make_tiny_redrafter(base, seed=123), **args)
    resumed_clock = TrainingClock(resumed_from=str(checkpoint))
    resumed.add_callback(resumed_clock)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed_clock.previous_seconds == at_step_10
    assert resumed_clock.total_seconds == pytest.approx(at_step_10 + resumed_clock.this_run_seconds, rel=1e-3)
    resumed_losses = {h["step"]: h["loss"] for h in resumed.state.log_history if "loss" in h and h["step"] > 10}
    assert resumed.state.global_step == 20
    assert min(resumed_losses) == 11
    for step, loss in resumed_losses.items():
        assert math.isclose(loss, full_losses[step], rel_tol=1e-4), (step, loss, full_losses[step])
    assert os.path.isfile(checkpoint / "trainer_state.json")


def make_tiny_arctic(base, seed: int = 0):
    from drafter import ArcticLSTMSpeculator, ArcticLSTMSpeculatorConfig

    torch.manual_seed(seed)
    return ArcticLSTMSpeculator(ArcticLSTMSpeculatorConfig(
        hidden_size=base.config.hidden_size, vocab_size=VOCAB, n_speculator_heads=3, speculator_width=24))


@pytest.mark.parametrize("make_drafter", [make_tiny_redrafter, make_tiny_arctic])
@pytest.mark.parametrize("objective", ["ground_truth", "kd", "distilled"])
def test_loss_at_target_positions_only_equals_loss_over_every_position(make_drafter, objective):
    """Training drafts from the positions with a target only (prompts, padding and the sequence tail are skipped);
    loss, gradients and counts must be those of drafting from every position."""
    base = make_tiny_llama()
    input_ids = torch.randint(0, VOCAB, (3, 14), generator=torch.Generator().manual_seed(1))
    labels = input_ids.clone()
    labels[0, :6] = -100  # a prompt
    labels[1, 9:] = -100  # padding
    labels[2, 4] = -100  # a hole
    hidden, embeds = base_features(base, input_ids)
    kwargs = dict(input_ids=input_ids, top_k=2)
    if objective == "kd":
        kwargs.update(teacher_head=base.get_output_embeddings(), kd_alpha=0.5, kd_temperature=2.0)
    if objective == "distilled":
        continuation = torch.randint(0, VOCAB, (3, 14, 4), generator=torch.Generator().manual_seed(2))
        continuation[labels == -100] = -100
        continuation[0, 8, 2:] = -100
        kwargs.update(distill_targets=continuation,
                      distill_embeds=base.get_input_embeddings()(continuation.clamp(min=0)).detach())
    results = []
    for skip in (True, False):
        drafter = make_drafter(base)
        assert drafter.independent_positions
        drafter.independent_positions = skip  # False: the whole sequence, as drafters attending across positions
        drafter.zero_grad()
        out = drafter_loss(drafter, hidden, embeds, labels, 3, **kwargs)
        out.loss.backward()
        results.append((out, {name: p.grad.clone() for name, p in drafter.named_parameters() if p.grad is not None}))
    (skipped, skipped_grads), (full, full_grads) = results
    torch.testing.assert_close(skipped.loss, full.loss, rtol=1e-5, atol=1e-6)
    assert skipped.step_counts == full.step_counts and skipped.step_counts[0][0] > 0
    assert skipped_grads.keys() == full_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(skipped_grads[name], full_grads[name], rtol=1e-4, atol=1e-6)


def test_distilled_loss_equals_ground_truth_loss_when_continuations_are_the_sequence():
    """The distilled path feeds continuation tokens and targets the next one; if every continuation is the
    true sequence, it must reproduce the ground-truth loss exactly."""
    base = make_tiny_llama()
    drafter = make_tiny_redrafter(base, drafter_predict_n_tokens=3)
    input_ids = torch.randint(0, VOCAB, (2, 10))
    hidden, embeds = base_features(base, input_ids)
    n_future = 4
    continuation = torch.full((2, 10, n_future), -100)
    for t in range(10):
        for j in range(n_future):
            if t + 1 + j < 10:
                continuation[:, t, j] = input_ids[:, t + 1 + j]
    ground_truth = drafter_loss(drafter, hidden, embeds, input_ids, 3, top_k=1)
    distilled = drafter_loss(
        drafter, hidden, embeds, input_ids, 3, top_k=1,
        distill_targets=continuation, distill_embeds=base.get_input_embeddings()(continuation.clamp(min=0)),
    )
    torch.testing.assert_close(distilled.loss, ground_truth.loss)
    assert distilled.step_counts == ground_truth.step_counts
    # Shorter continuations train fewer steps; KD cannot be combined with them.
    short = drafter_loss(drafter, hidden, embeds, input_ids, 3, distill_targets=continuation[..., :2],
                         distill_embeds=base.get_input_embeddings()(continuation[..., :2].clamp(min=0)))
    assert len(short.step_losses) == 1
    with pytest.raises(ValueError, match="cannot be combined"):
        drafter_loss(drafter, hidden, embeds, input_ids, 3, distill_targets=continuation, kd_alpha=0.5,
                     teacher_head=base.get_output_embeddings())


def test_trainer_learns_from_distilled_dataset(tmp_path):
    from drafter.teacher.distill import add_distill_targets

    base = make_tiny_llama()
    train = add_distill_targets(base, pattern_dataset(64), num_future_tokens=3, progress=False)
    batch = DataCollatorForDrafter(pad_token_id=0)([train[0], train[1]])
    assert batch["distill_targets"].shape == (2, 24, 3)
    trainer = DrafterTrainer(
        model=make_tiny_redrafter(base, drafter_predict_n_tokens=2),
        args=training_args(tmp_path, max_steps=40, learning_rate=1e-2),
        base_model=base,
        data_collator=DataCollatorForDrafter(pad_token_id=0),
        train_dataset=train,
        eval_dataset=pattern_dataset(16, seed=1),
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0] - 1.0
