"""CPU matrix-multiply paths for the few-row linear layers of decoding.

On CPU, torch sends `F.linear(x, W)` with a handful of rows x (M, K) to MKL, whose cost grows about linearly in M
on the AMD EPYC measured (over the embedded model's 211 linear layers: 1 row 75 ms, 4 rows 144, 16 rows 162)
although one pass over the weights is what bounds it. Speculative verification (M = tree nodes), batched plain
decoding (M = rows) and beam drafting all run at such M.

Two paths, best first:

* the native kernel (`native.py`, `csrc/rows_linear.cpp`) for 1 .. `NATIVE_MAX_ROWS` rows: streams the weights
  once on all threads (same 211 layers: 1 row 42 ms, 8 rows 45, 16 rows 74) and is batch-invariant: a row's
  output is bit-identical whatever else is in the call and however many threads run it. Plain decoding (1 row)
  and tree verification (M rows) therefore compute the same linear layers bit for bit;
* where it is unavailable (no compiler, no AVX2, ``DRAFTER_NATIVE_KERNELS=0``), `transposed_linear`: the same
  product written as `(W @ x.T).T` for 2 .. `SMALL_BATCH_ROWS` rows (MKL with the few rows as GEMM's N: about
  one weight pass up to 4 rows, 1.5-1.8x at 9-16); one row keeps torch's matrix-vector path.

`use_small_batch_kernels(model)` switches every `nn.Linear` of a CPU float32 model to these paths (the module
stays an `nn.Linear`: same parameters, state dict, hooks); anything that needs gradients, other dtypes and
devices, and code being compiled keep `F.linear`. `stock_kernels(model)` switches back for a while (the "stock
transformers" peer of a benchmark).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn
from torch.nn import functional as F

from .native import native_source_fingerprint, rows_linear_op

# Up to this many rows the native kernel beats MKL on the CPUs measured (64 rows: 213 vs 274 ms over the 211
# layers); longer prompts' prefill keeps MKL's GEMM.
NATIVE_MAX_ROWS = 64
# Without the native kernel: up to this many rows the transposed product is faster on the CPUs measured (AVX2,
# MKL); above it (batched decoding, training batches) both paths cost about the same and torch's own is kept.
SMALL_BATCH_ROWS = 16
# MKL's kernels for a few columns are faster at some counts than at one fewer (measured over the embedded model's
# 211 linear layers, median of 7 interleaved rounds: 3 rows 60 ms -> padded to 4, 43 ms; 7 -> 8: 70 -> 58;
# 13 -> 16: 119 -> 80): such row counts are padded with zero rows, whose outputs are dropped.
PADDED_ROWS = {3: 4, 7: 8, 11: 16, 12: 16, 13: 16, 14: 16, 15: 16}


def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for x (..., K), weight (N, K), through the native kernel for 1 ..
    `NATIVE_MAX_ROWS` rows of float32 on the CPU, else through `transposed_linear`."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if x.device.type != "cpu" or rows == 0 or torch.compiler.is_compiling() or _needs_grad(x, weight, bias):
        return F.linear(x, weight, bias)
    if rows <= NATIVE_MAX_ROWS and _all_float32(x, weight, bias) and (native := rows_linear_op()) is not None:
        return native(x.reshape(rows, x.shape[-1]), weight, bias).reshape(*x.shape[:-1], weight.shape[0])
    return transposed_linear(x, weight, bias)


def transposed_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` computed as (weight @ x.T).T when x has 2 .. `SMALL_BATCH_ROWS` rows (the path
    without the native kernel); other row counts go to `F.linear`."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    # One row (a plain decoding step) is a matrix-vector product, which torch's own path does well.
    if not 1 < rows <= SMALL_BATCH_ROWS:
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


def _needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _all_float32(*tensors: Optional[torch.Tensor]) -> bool:
    return all(t is None or t.dtype == torch.float32 for t in tensors)


def kernel_policy() -> dict:
    """Which path serves which row counts here (part of a measured cost curve's identity)."""
    if rows_linear_op() is None:
        native = {"native_rows": 0, "native_source": None}
    else:
        native = {"native_rows": NATIVE_MAX_ROWS, "native_source": native_source_fingerprint()}
    return {**native, "transposed_rows": SMALL_BATCH_ROWS, "padded": PADDED_ROWS}


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
