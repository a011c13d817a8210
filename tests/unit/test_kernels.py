"""The few-row CPU linear paths compute what `F.linear` does (the native kernel also bit-identically for a row
whatever else shares the call and however many threads run it), are switched on and off without touching the
weights, and keep greedy speculative decoding identical to plain decoding (test_generation_greedy runs half its
cases on switched models)."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from drafter.engine import (
    AutoregressiveGenerator,
    SmallBatchLinear,
    kernels,
    small_batch_linear,
    stock_kernels,
    use_small_batch_kernels,
)
from drafter.engine.kernels import NATIVE_MAX_ROWS, SMALL_BATCH_ROWS
from drafter.engine.native import rows_linear_op, unavailable_reason
from tests.fakes import make_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPES = [(1, 24), (2, 24), (3, 24), (7, 24), (2, 5, 24), (13, 24), (SMALL_BATCH_ROWS, 24), (SMALL_BATCH_ROWS + 1, 24),
          (NATIVE_MAX_ROWS, 13), (NATIVE_MAX_ROWS + 1, 13), (5, 1), (0, 24)]


@pytest.fixture(params=["native", "transposed"])
def kernel_path(request, monkeypatch):
    """Each test once with the native kernel (required wherever a C++ compiler exists) and once without it."""
    if request.param == "native":
        if shutil.which("c++") is None:
            pytest.skip("no C++ compiler: the native kernel cannot be built here")
        assert rows_linear_op() is not None, f"native kernel unavailable: {unavailable_reason()}"
    else:
        monkeypatch.setattr(kernels, "rows_linear_op", lambda: None)
    return request.param


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_same_values_as_torch_linear(kernel_path, shape, with_bias: bool):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    weight = torch.randn(40, shape[-1], generator=gen)
    bias = torch.randn(40, generator=gen) if with_bias else None
    out = small_batch_linear(x, weight, bias)
    assert out.shape == (*shape[:-1], 40)
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_features", [576, 13])
def test_native_rows_are_bit_identical_alone_among_others_and_on_any_thread_count(kernel_path, in_features: int):
    """Plain decoding computes one row, verification the same row among the tree's nodes: the same bits."""
    if kernel_path != "native":
        pytest.skip("a property of the native kernel")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(NATIVE_MAX_ROWS, in_features, generator=gen)
    weight = torch.randn(3 * 16 * 4 + 2, in_features, generator=gen)  # enough weight rows for several threads
    bias = torch.randn(weight.shape[0], generator=gen)
    together = small_batch_linear(x, weight, bias)
    for rows in (1, 2, 5, 17):
        assert torch.equal(small_batch_linear(x[3:3 + rows], weight, bias), together[3:3 + rows])
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.equal(small_batch_linear(x, weight, bias), together)
    finally:
        torch.set_num_threads(previous)


def test_gradients_flow_like_torch_linear(kernel_path):
    layer = nn.Linear(8, 6)
    x = torch.randn(3, 8, requires_grad=True)
    layer(x).square().sum().backward()
    expected = (x.grad.clone(), layer.weight.grad.clone())
    x.grad, layer.weight.grad = None, None
    use_small_batch_kernels(layer)
    layer(x).square().sum().backward()
    torch.testing.assert_close((x.grad, layer.weight.grad), expected)


def test_switch_keeps_weights_and_stock_kernels_switch_back():
    base = make_tiny_llama(seed=0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    linears = sum(type(m) is nn.Linear for m in base.modules())
    assert use_small_batch_kernels(base) == linears > 0
    assert all(type(m) is not nn.Linear for m in base.modules())
    assert all(isinstance(m, nn.Linear) for m in base.modules() if isinstance(m, SmallBatchLinear))
    assert base.state_dict().keys() == before.keys()
    assert all(torch.equal(base.state_dict()[k], v) for k, v in before.items())
    with stock_kernels(base):
        assert sum(type(m) is nn.Linear for m in base.modules()) == linears
    assert sum(type(m) is SmallBatchLinear for m in base.modules()) == linears


def test_only_cpu_float32_models_are_switched():
    assert use_small_batch_kernels(make_tiny_llama(seed=0).to(torch.float64)) == 0
    assert use_small_batch_kernels(make_tiny_llama(seed=0).to(torch.bfloat16)) == 0


def test_switched_model_decodes_like_the_stock_one(kernel_path):
    """The switched model's greedy tokens are the stock model's argmax at every step (up to exact near-ties, where
    float rounding may pick either), and its logits agree to float32 rounding."""
    base = make_tiny_llama(seed=3)
    prompts = [[5, 6, 7, 8], [9, 10]]
    use_small_batch_kernels(base)
    switched = AutoregressiveGenerator(base).generate(prompts, max_new_tokens=16).sequences
    for prompt, answer in zip(prompts, switched):
        sequence = torch.tensor([prompt + answer])
        with torch.no_grad():
            fast = base(sequence).logits[0, len(prompt) - 1:-1]
            with stock_kernels(base):
                stock = base(sequence).logits[0, len(prompt) - 1:-1]  # (answer length, V)
        torch.testing.assert_close(fast, stock, rtol=1e-4, atol=1e-4)
        chosen = stock.gather(1, torch.tensor(answer)[:, None])[:, 0]
        assert torch.all(chosen >= stock.max(dim=1).values - 1e-4)
