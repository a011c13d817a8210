"""The one table of dtype names the toolkit accepts (command lines, recipes, export)."""

from __future__ import annotations

from typing import Union

import torch

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
}


def torch_dtype(name: Union[str, torch.dtype]) -> torch.dtype:
    """A dtype from a name of `DTYPES` (or a dtype, returned as is); ValueError naming the choices otherwise."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[str(name).strip().lower()]
    except KeyError:
        raise ValueError(f"Unknown dtype '{name}': use float32, bfloat16 or float16 (or auto)") from None


def canonical_dtype_name(name: Union[str, torch.dtype]) -> str:
    """'bf16' -> 'bfloat16', torch.float32 -> 'float32'; 'auto' stays 'auto'."""
    if isinstance(name, str) and name.strip().lower() == "auto":
        return "auto"
    return dtype_name(torch_dtype(name))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 / float32 -> float32; float64 stays float64 (so a float64 model keeps its precision)."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()
