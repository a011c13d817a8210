"""Tests of drafter.teacher.distill: batched N-token continuations at every assistant position equal brute-force
per-position generation (greedy), across padding and batch boundaries; seeded sampling is reproducible."""

from __future__ import annotations

import copy

import datasets
import numpy as np
import pytest
import torch

from drafter.data.chat import IGNORE_INDEX
from drafter.teacher.distill import (
    DISTILL_COLUMN,
    add_distill_targets,
    compute_distill_targets,
    compute_distill_targets_bruteforce,
    distill_positions,
)
from tests.fakes import make_tiny_gpt2, make_tiny_llama

MAX_N = 5


def make_examples():
    """Chats of different lengths: label runs (assistant turns) with gaps, one without labels, a 1-token one."""
    generator = torch.Generator().manual_seed(0)
    examples = []
    for length, spans in [
        (29, [(8, 14), (20, 29)]),  # two assistant turns
        (6, [(2, 6)]),
        (1, []),
        (17, []),  # no label: all rows -100
        (23, [(3, 23)]),
        (11, [(10, 11)]),  # only the last token is a label
        (14, [(5, 9)]),
    ]:
        ids = torch.randint(3, 96, (length,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * length
        for start, end in spans:
            labels[start:end] = ids[start:end]
        examples.append((ids, labels))
    return [e[0] for e in examples], [e[1] for e in examples]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request):
    """A tiny model, the examples, a stop set with a frequently generated token (so continuations end early),
    and the brute-force greedy targets for N = MAX_N."""
    model = make_tiny_llama() if request.param == "llama" else make_tiny_gpt2()
    input_ids, labels = make_examples()
    plain = compute_distill_targets_bruteforce(model, input_ids, labels, MAX_N, stop_token_ids=[2])
    values, counts = np.unique(np.concatenate([t[t != IGNORE_INDEX] for t in plain]), return_counts=True)
    stops = [2, int(values[counts.argmax()])]
    reference = compute_distill_targets_bruteforce(model, input_ids, labels, MAX_N, stop_token_ids=stops)
    return model, input_ids, labels, stops, reference


@pytest.mark.parametrize("num_future_tokens", [1, 2, 3, 4, 5])
def test_batched_targets_equal_bruteforce_generation(setup, num_future_tokens):
    model, input_ids, labels, stops, reference = setup
    for batch_size in (1, 3):
        targets = compute_distill_targets(
            model, input_ids, labels, num_future_tokens, stop_token_ids=stops, batch_size=batch_size
        )
        assert len(targets) == len(input_ids)
        for ids, lab, got, expected in zip(input_ids, labels, targets, reference):
            assert got.shape == (len(ids), num_future_tokens) and got.dtype == np.int32
            # Greedy: the N-token continuation is the first N tokens of the 5-token one.
            np.testing.assert_array_equal(got, expected[:, :num_future_tokens])
            rows = distill_positions(lab)
            others = np.setdiff1d(np.arange(len(ids)), rows)
            assert (got[others] == IGNORE_INDEX).all()
            assert (got[rows, 0] != IGNORE_INDEX).all()
    if num_future_tokens > 1:
        stopped = np.concatenate([t[:, :-1] for t in reference])
        assert np.isin(stopped, stops).any(), "some continuation must stop early (the -100 tail is exercised)"


def test_bruteforce_reference_is_per_position_generate(setup):
    """Spot-check the reference itself: row t is `generate` from input_ids[: t + 1]."""
    model, input_ids, labels, stops, reference = setup
    ids, t = input_ids[0], distill_positions(labels[0])[3]
    out = model.generate(
        torch.tensor([ids[: t + 1]]), max_new_tokens=MAX_N, do_sample=False, eos_token_id=stops, pad_token_id=0
    )[0, t + 1 :].tolist()
    assert reference[0][t, : len(out)].tolist() == out
    assert (reference[0][t, len(out) :] == IGNORE_INDEX).all()


def test_sampling_is_seeded_and_independent_of_batching(setup):
    model, input_ids, labels, stops, reference = setup
    # float64: batch-shape- and thread-dependent float32 rounding could move a uniform draw across a token
    # boundary, which is noise, not a batching bug; in float64 that noise is ~1e-16.
    exact = copy.deepcopy(model).double()
    kwargs = dict(num_future_tokens=4, temperature=1.0, top_k=20, top_p=0.9, stop_token_ids=stops)
    one = compute_distill_targets(exact, input_ids, labels, seed=7, batch_size=1, **kwargs)
    many = compute_distill_targets(exact, input_ids, labels, seed=7, batch_size=4, **kwargs)
    other = compute_distill_targets(exact, input_ids, labels, seed=8, batch_size=4, **kwargs)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)
    assert any((a != b).any() for a, b in zip(one, other))
    assert any((a != g[:, :4]).any() for a, g in zip(one, reference))
    for a, lab in zip(one, labels):
        assert ((a == IGNORE_INDEX) | ((a >= 0) & (a < 96))).all()
        assert (a[distill_positions(lab), 0] != IGNORE_INDEX).all()
    # top_k = 1 leaves only the argmax: sampling reproduces greedy decoding.
    top1 = compute_distill_targets(model, input_ids, labels, 4, temperature=0.7, top_k=1, stop_token_ids=stops)
    for a, g in zip(top1, reference):
        np.testing.assert_array_equal(a, g[:, :4])


def test_add_distill_targets_column(setup):
    model, input_ids, labels, stops, reference = setup
    dataset = datasets.Dataset.from_dict({"input_ids": input_ids, "labels": labels})
    model.generation_config.eos_token_id = stops  # the default stop set is the model's EOS ids
    try:
        with_targets = add_distill_targets(model, dataset, num_future_tokens=3, batch_size=2, progress=False)
    finally:
        model.generation_config.eos_token_id = 2
    assert with_targets.column_names == ["input_ids", "labels", DISTILL_COLUMN]
    for row, expected in zip(with_targets, reference):
        np.testing.assert_array_equal(np.array(row[DISTILL_COLUMN]).reshape(-1, 3), expected[:, :3])


def test_invalid_arguments():
    model = make_tiny_llama()
    with pytest.raises(ValueError, match="num_future_tokens"):
        compute_distill_targets(model, [[1, 2]], [[1, 2]], num_future_tokens=0)
    with pytest.raises(ValueError, match="as many labels"):
        compute_distill_targets(model, [[1, 2, 3]], [[1, 2]])
    with pytest.raises(ValueError, match="same number"):
        compute_distill_targets(model, [[1, 2]], [])
