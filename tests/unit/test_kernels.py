"""The small-batch CPU linear path computes what `F.linear` does, is switched on and off without touching the
weights, and keeps greedy speculative decoding identical to plain decoding (test_generation_greedy runs half its
cases on switched models)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from drafter.engine import (
    AutoregressiveGenerator,
    SmallBatchLinear,
    small_batch_linear,
    stock_kernels,
    use_small_batch_kernels,
)
from drafter.engine.kernels import SMALL_BATCH_ROWS
from tests.fakes import make_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("shape", [(1, 24), (2, 24), (3, 24), (7, 24), (2, 5, 24), (13, 24), (SMALL_BATCH_ROWS, 24),
                                   (SMALL_BATCH_ROWS + 1, 24), (0, 24)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_same_values_as_torch_linear(shape, with_bias: bool):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    weight = torch.randn(40, 24, generator=gen)
    bias = torch.randn(40, generator=gen) if with_bias else None
    out = small_batch_linear(x, weight, bias)
    assert out.shape == (*shape[:-1], 40)
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


def test_gradients_flow_like_torch_linear():
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


def test_switched_model_decodes_like_the_stock_one():
    base = make_tiny_llama(seed=3)
    prompts = [[5, 6, 7, 8], [9, 10]]
    stock = AutoregressiveGenerator(base).generate(prompts, max_new_tokens=16).sequences
    use_small_batch_kernels(base)
    assert AutoregressiveGenerator(base).generate(prompts, max_new_tokens=16).sequences == stock
