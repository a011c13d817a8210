"""CPU matrix-multiply path for the few-row linear layers of decoding.

On CPU, torch sends `F.linear(x, W)` with a handful of rows x (M, K) to MKL, whose cost grows about linearly in M
up to M ~ 4 (a 2-token forward of SmolLM2-135M cost 1.85x a 1-token one, measured by `benchmarks/verify_cost.py`)
although one pass over the weights is what bounds it. The same product written as `(W @ x.T).T`, i.e. with the few
rows as GEMM's N dimension, streams the weights about once for M = 2 .. 16 (2-token forward: 1.03x). Speculative
verification (M = tree nodes), batched plain decoding (M = rows) and beam drafting all run at such M.

`use_small_batch_kernels(model)` switches every `nn.Linear` of a CPU float32 model to that path (the module
stays an `nn.Linear`: same parameters, state dict, hooks). One row (plain decoding at batch 1) keeps torch's own
matrix-vector path, so plain decoding stays bit-identical to stock transformers; verification computes the same
products through other kernels, i.e. with float32 rounding differences (as any wider forward has), and greedy
answers stay identical to plain decoding's (measured: 16/16 MT-Bench answers). `stock_kernels(model)` switches
back for a while (the "stock transformers" peer of a benchmark).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn
from torch.nn import functional as F

# Up to this many rows the transposed product is faster on the CPUs measured (AVX2, MKL); above it (batched
# decoding, training batches) both paths cost about the same and torch's own is kept.
SMALL_BATCH_ROWS = 16
# MKL's kernels for a few columns are faster at some counts than at one fewer (measured over the embedded model's
# 211 linear layers, median of 7 interleaved rounds: 3 rows 60 ms -> padded to 4, 43 ms; 7 -> 8: 70 -> 58;
# 13 -> 16: 119 -> 80): such row counts are padded with zero rows, whose outputs are dropped.
PADDED_ROWS = {3: 4, 7: 8, 11: 16, 12: 16, 13: 16, 14: 16, 15: 16}


def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for x (..., K), weight (N, K), computed as (weight @ x.T).T when x has 2 ..
    `SMALL_BATCH_ROWS` rows and lives on the CPU."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    # One row (a plain decoding step) is a matrix-vector product, which torch's own path does well.
    if x.device.type != "cpu" or not 1 < rows <= SMALL_BATCH_ROWS:
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1])
    padding = PADDED_ROWS.get(rows, rows) - rows
    if padding:
        flat = torch.cat([flat, flat.new_zeros(padding, flat.shape[1])])
    # MKL writes (W @ x.T) as (N, rows); the layers after this one want (rows, N) rows contiguous (elementwise ops
    # on the transposed view ran several times slower), so the small result is copied once.
    out = torch.mm(weight, flat.t())[:, :rows].t().contiguous()  # (rows, N)
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


class SmallBatchLinear(nn.Linear):
    """An `nn.Linear` whose forward takes the small-batch CPU path (the class is swapped in place)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return small_batch_linear(input, self.weight, self.bias)


def _linears(model: nn.Module, kind: type) -> list[nn.Linear]:
    return [module for module in model.modules() if type(module) is kind]


def use_small_batch_kernels(model: nn.Module) -> int:
    """Switch the `nn.Linear` layers of a CPU float32 model to `SmallBatchLinear`; returns how many were switched
    (0 for other devices and dtypes, whose kernels do not show the problem or were not measured)."""
    params = next(model.parameters(), None)
    if params is None or params.device.type != "cpu" or params.dtype != torch.float32:
        return 0
    linears = _linears(model, nn.Linear)
    for module in linears:
        module.__class__ = SmallBatchLinear
    return len(linears)


@contextmanager
def stock_kernels(model: nn.Module) -> Iterator[None]:
    """Run `model` with torch's own linear kernels inside the block (undoes `use_small_batch_kernels` for a
    while)."""
    switched = _linears(model, SmallBatchLinear)
    for module in switched:
        module.__class__ = nn.Linear
    try:
        yield
    finally:
        for module in switched:
            module.__class__ = SmallBatchLinear
