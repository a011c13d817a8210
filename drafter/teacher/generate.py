"""Teacher regeneration (self-distillation data, the Arctic/Medusa recipe): the base model answers prompts.

The first-turn prompts of a dataset are answered by the frozen base model itself, and every answer is saved as
a chat ``{"id", "messages": prompt + [{"role": "assistant", "content": answer}], ...}``. A drafter trained on
these chats learns the base model's own distribution instead of the original (e.g. ChatGPT) replies.

Layout of an output folder::

    metadata.json                       what generated it (model, tokenizer, prompts hash, parameters)
    shard-00000-of-00004.jsonl          one JSON row per finished prompt, appended and flushed as they finish
    ...
    data.jsonl                          all shards merged in prompt order (written once every prompt is done)

``load_conversations(folder)`` (and so ``--dataset_name folder`` of training) reads ``data.jsonl``.

Scale-out and resume: prompt ``i`` belongs to shard ``i % num_shards``. A shard skips prompts whose id is
already in any shard file of the folder (a killed job resumes where it stopped; a partially written last line is
cut off), so every prompt is generated exactly once. When the last prompt is done the shards are merged into
``data.jsonl`` (or explicitly with ``--merge``). Sampling uses one random generator per prompt, seeded from
(seed, prompt id), so neither sharding, batching nor resuming changes which tokens are drawn (up to float
noise between batch compositions).

Usage::

    python -m drafter.teacher.generate --dataset_name sharegpt --max_examples 2000 --output_dir DIR \\
        [--llm_name_or_path NAME] [--max_tokens 256] [--gen_temp 1.0] [--top_k K] [--top_p P] [--seed 0] \\
        [--batch_size 16] [--backend transformers|vllm] [--tensor_parallel 1] \\
        [--num_shards N --shard_index i] [--max_prompt_tokens 512] [--continue_from KEPT_DIR] [--merge]

Without ``--output_dir`` the data goes to ``<DRAFTER_CACHE>/teacher/<source>-<key>`` where the key hashes the
base model, the source and every generation parameter, so sweeps reuse it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..engine.base_lm import stop_token_ids
from ..engine.loading import EMBEDDED_BASE_MODEL
from ..engine.sampling import row_seed
from ..errors import run_main
from ..store import ShardAppender, shard_file_name
from .backends import (
    generate_with_transformers,
    generate_with_vllm,
    is_vllm_engine,
    load_vllm_engine,
    resolve_backend,
    vllm_cpu_environment,
    vllm_dtype,
)
from .config import (
    BACKENDS,
    DATA_FILE,
    TeacherGenerationConfig,
    TeacherGenerationResult,
    check_or_write_metadata,
    folder_is_merged,
    teacher_cache_dir,
    teacher_identity,
)
from .jobs import TeacherJob, answer_jobs, prepare_prompt, shard_indices, write_skipped
from .merge import continue_from_merged, done_ids, merge_teacher_shards
from .turns import answer_all_turns, conversation_prompts, turn_prompts

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def generate_teacher_data(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Mapping[str, Any]],
    output_dir: PathLike,
    config: Optional[TeacherGenerationConfig] = None,
    *,
    batch_size: int = 16,
    num_shards: int = 1,
    shard_index: int = 0,
    model_id: Optional[str] = None,
    source: Optional[Mapping[str, Any]] = None,
    merge: bool = True,
    progress: bool = True,
    on_example: Optional[Callable[[Dict[str, Any]], None]] = None,
    all_turns: bool = False,
) -> TeacherGenerationResult:
    """Let the base model answer `prompts` and append the answers to a shard file under `output_dir`.

    Args:
        model: a transformers causal LM (batched decoding on its device) or a ``vllm.LLM`` engine.
        tokenizer: the base model's tokenizer (its chat template renders the prompts).
        prompts: ``{"id", "messages"}`` items, e.g. `drafter.data.load_prompts`; ids must be unique.
            Every shard must receive the same full list.
        output_dir: the teacher folder (created; see the module docstring for its layout).
        config: generation parameters (`TeacherGenerationConfig`).
        batch_size: prompts decoded together (transformers backend); does not change the data beyond float noise.
        num_shards, shard_index: this call generates prompts ``i`` with ``i % num_shards == shard_index``.
        model_id: name recorded in the folder identity (default ``model.config.name_or_path``).
        source: free-form description of where the prompts came from, stored in metadata.json.
        merge: write ``data.jsonl`` when, after this shard, every prompt of the folder is done.
        progress: show a progress bar (prompts, tokens/s, ETA).
        on_example: called with every row right after it is written (tests use it to simulate a kill).
        all_turns: answer every turn of each conversation, the model's own answers as the context of later turns
            (`turns.py`); `prompts` items then carry ``"turns"`` (`turns.conversation_turns`), one row is written
            per (conversation, turn) and data.jsonl holds each conversation's last answered turn.

    Resumes: prompts already in any shard file of the folder are skipped. Raises
    `TeacherDataMismatchError` when the folder was generated with a different identity.
    """
    config = config or TeacherGenerationConfig()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = [str(prompt["id"]) for prompt in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError("prompt ids must be unique (resume and merging key on them)")
    selected = shard_indices(len(prompts), num_shards, shard_index)
    vllm_engine = is_vllm_engine(model)
    stop_ids = stop_token_ids(None if vllm_engine else model, tokenizer)
    if not stop_ids:
        raise ValueError("the tokenizer/model define no EOS token to stop answers at")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # With all turns, a folder is one row per (conversation, turn); its identity covers every turn's messages.
    rows_expected = turn_prompts(prompts) if all_turns else prompts
    identity = _identity(model, vllm_engine, model_id, tokenizer, rows_expected, config)
    if all_turns:
        identity["turns"] = "all"
    check_or_write_metadata(output_dir, identity, {"source": dict(source or {}), "created": time.time()})
    shard_path = output_dir / shard_file_name(num_shards, shard_index)
    lock = _claim(shard_path)
    try:
        with ShardAppender(shard_path, on_row=on_example) as shard:  # cuts a partially written last row first
            label = f"Teacher shard {shard_index}/{num_shards}" if progress else None
            backend_fn = generate_with_vllm if vllm_engine else generate_with_transformers

            def answer(jobs: List[TeacherJob], bar_label: Optional[str]) -> Tuple[int, int, float]:
                return answer_jobs(model, tokenizer, jobs, config, batch_size, stop_ids, backend_fn, shard, bar_label)

            if all_turns:
                num_rows = sum(len(prompts[i]["turns"]) for i in selected)
                generated, tokens, seconds, num_resumed, num_skipped = answer_all_turns(
                    tokenizer, prompts, selected, output_dir, config, shard, answer, label)
            else:
                num_rows = len(selected)
                jobs, skipped, num_resumed = _plan_jobs(tokenizer, prompts, selected, done_ids(output_dir), config)
                write_skipped(shard, skipped, config)
                generated, tokens, seconds = answer(jobs, label)
                num_skipped = len(skipped)
            if num_resumed:
                logger.info("%s: resumed, %d of %d rows of this shard were already done", shard_path, num_resumed,
                            num_rows)
    finally:
        lock.release()
    if generated:
        logger.info("%s: generated %d answers, %d tokens in %.1f s (%.1f tokens/s)",
                    shard_path.name, generated, tokens, seconds, tokens / max(seconds, 1e-9))
    expected_ids = [str(row["id"]) for row in rows_expected]
    data_path = _merge_if_complete(output_dir, expected_ids, changed=bool(generated or num_skipped)) if merge else None
    return TeacherGenerationResult(output_dir, shard_path, num_rows, generated, num_resumed, tokens, seconds,
                                   data_path)


def _claim(shard_path: Path):
    """The shard's lock, held: one writer per shard file."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(shard_path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RuntimeError(f"{shard_path} is being generated by another process (lock {lock.lock_file})") from None
    return lock


def _identity(model: Any, vllm_engine: bool, model_id: Optional[str], tokenizer: Any,
              prompts: Sequence[Mapping[str, Any]], config: TeacherGenerationConfig) -> Dict[str, Any]:
    """The folder identity for this model (name: `model_id`, default the model's own), dtype and backend."""
    if model_id is None:
        model_id = getattr(getattr(model, "config", None), "name_or_path", "") if not vllm_engine else ""
    dtype = vllm_dtype(model) if vllm_engine else str(getattr(model, "dtype", ""))
    backend = "vllm" if vllm_engine else "transformers"
    return teacher_identity(model_id, dtype, tokenizer, prompts, config, backend)


def _plan_jobs(
    tokenizer: Any,
    prompts: Sequence[Mapping[str, Any]],
    selected: Sequence[int],
    done: set,
    config: TeacherGenerationConfig,
) -> Tuple[List[TeacherJob], List[TeacherJob], int]:
    """(jobs to answer, jobs whose prompt cannot fit, number already done) for this shard's prompts."""
    jobs: List[TeacherJob] = []
    skipped: List[TeacherJob] = []
    num_resumed = 0
    for i in selected:
        prompt_id = str(prompts[i]["id"])
        if prompt_id in done:
            num_resumed += 1
            continue
        token_ids, messages, truncated = prepare_prompt(tokenizer, prompts[i]["messages"], config.max_prompt_tokens)
        job = TeacherJob(i, prompts[i], messages, token_ids or [], truncated, row_seed(config.seed, prompt_id))
        (jobs if token_ids is not None else skipped).append(job)
    return jobs, skipped, num_resumed


def _merge_if_complete(output_dir: Path, ids: Sequence[str], changed: bool) -> Optional[Path]:
    """data.jsonl once every prompt of the folder is done (merged again only when something changed)."""
    missing = set(ids) - done_ids(output_dir)
    if missing:
        logger.info("%s: %d prompts of other shards still missing; not merging yet", output_dir, len(missing))
        return None
    if changed or not folder_is_merged(output_dir):
        return merge_teacher_shards(output_dir)
    return output_dir / DATA_FILE


# ------------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m drafter.teacher.generate",
        description="Regenerate a dataset's answers with the base model (self-distillation data for drafters).",
    )
    parser.add_argument("--dataset_name", default="sharegpt", help="sharegpt, mtbench or a local chat file")
    parser.add_argument("--max_examples", type=int, default=None, help="seeded subset of the source's prompts")
    parser.add_argument("--data_seed", type=int, default=0, help="seed of the --max_examples subset")
    parser.add_argument("--exclude_dataset", nargs="*", default=[],
                        help="drop prompts that contain a user turn of these datasets (e.g. mtbench: keep the "
                             "benchmark's questions out of training data)")
    parser.add_argument("--output_dir", default=None, help="default: <DRAFTER_CACHE>/teacher/<source>-<key>")
    parser.add_argument("--llm_name_or_path", default=EMBEDDED_BASE_MODEL)
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16 or auto")
    parser.add_argument("--device", default=None, help="e.g. cuda; default: cuda when available, else cpu")
    parser.add_argument("--max_tokens", type=int, default=256)
    parser.add_argument("--gen_temp", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (per prompt: hash of seed and id)")
    parser.add_argument("--max_prompt_tokens", type=int, default=512)
    parser.add_argument("--turns", choices=("first", "all"), default="first",
                        help="all: answer every turn of multi-turn conversations, the model's own earlier answers "
                             "as context (resumable per conversation and turn)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--backend", choices=("auto", *BACKENDS), default="auto",
                        help="auto: vllm when it is installed (scripts/bootstrap_vllm.sh), else transformers")
    parser.add_argument("--tensor_parallel", type=int, default=1, help="vLLM tensor parallel size")
    parser.add_argument("--num_shards", type=int, default=1)
    parser.add_argument("--shard_index", type=int, default=0)
    parser.add_argument("--continue_from", default=None, metavar="DIR",
                        help="a merged teacher folder (data.jsonl or data.jsonl.xz, e.g. the set kept in "
                             "benchmarks/teacher/): an empty --output_dir starts from its answers, so this run "
                             "extends that set instead of regenerating it (same settings required)")
    parser.add_argument("--merge", action="store_true", help="only merge the finished shards into data.jsonl")
    parser.add_argument("--allow_partial", action="store_true", help="with --merge: merge although prompts miss")
    parser.add_argument("--num_threads", type=int, default=None,
                        help="torch CPU threads (on a shared/oversubscribed CPU, 1 can be much faster)")
    parser.add_argument("--no_progress", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> TeacherGenerationResult | Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if resolve_backend(args.backend) == "vllm" and not torch.cuda.is_available():
        _reexec_with_vllm_cpu_environment(argv, args.num_threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = TeacherGenerationConfig(
        max_tokens=args.max_tokens,
        temperature=args.gen_temp,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        max_prompt_tokens=args.max_prompt_tokens,
    )
    if args.batch_size < 1:
        raise ValueError(f"--batch_size {args.batch_size}: must be >= 1")
    if args.max_examples is not None and args.max_examples < 1:
        raise ValueError(f"--max_examples {args.max_examples}: must be >= 1")
    shard_indices(0, args.num_shards, args.shard_index)  # a bad shard pair fails before anything loads
    backend = resolve_backend(args.backend)
    dtype_label = args.dtype or "float32"
    output_dir = Path(args.output_dir) if args.output_dir else teacher_cache_dir(
        args.llm_name_or_path, args.dataset_name, args.max_examples, args.data_seed, config, backend,
        dtype_label, exclude=args.exclude_dataset, turns=args.turns,
    )
    if args.merge:
        path = merge_teacher_shards(output_dir, allow_partial=args.allow_partial)
        print(f"Merged teacher data: {path}")
        return path
    if args.continue_from:
        seeded = continue_from_merged(args.continue_from, output_dir, args.num_shards)
        if seeded:
            print(f"Continuing {args.continue_from}: its {seeded} answers seed {output_dir}")

    from ..data.sources import exclude_prompts_of, load_prompts
    from ..engine.loading import load_base_model, load_tokenizer

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    tokenizer = load_tokenizer(args.llm_name_or_path)
    if args.turns == "all":
        prompts = conversation_prompts(args.dataset_name, args.max_examples, args.data_seed)
    else:
        prompts = load_prompts(args.dataset_name, max_examples=args.max_examples, seed=args.data_seed)
    for excluded in args.exclude_dataset:
        prompts, dropped = exclude_prompts_of(prompts, excluded)
        print(f"Dropped {dropped} prompts that hold a '{excluded}' question")
    source = {"dataset_name": args.dataset_name, "max_examples": args.max_examples, "data_seed": args.data_seed,
              "exclude_dataset": list(args.exclude_dataset), "turns": args.turns}
    if backend == "vllm":
        # vLLM's engine runs in child processes that outlive a SIGTERM'd parent (one kept a core busy for an hour):
        # turn SIGTERM into an exit, so vLLM's shutdown hooks stop them.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        model = load_vllm_engine(args.llm_name_or_path, args.tensor_parallel, dtype_label, args.seed,
                                 num_threads=args.num_threads)
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_base_model(args.llm_name_or_path, dtype=dtype_label, device=device)
    result = generate_teacher_data(
        model,
        tokenizer,
        prompts,
        output_dir,
        config,
        batch_size=args.batch_size,
        num_shards=args.num_shards,
        shard_index=args.shard_index,
        model_id=args.llm_name_or_path,
        source=source,
        progress=not args.no_progress,
        all_turns=args.turns == "all",
    )
    print(
        f"Shard {args.shard_index}/{args.num_shards}: {result.num_generated} generated, {result.num_resumed} resumed "
        f"of {result.num_prompts} prompts; {result.num_tokens} tokens in {result.seconds:.1f} s "
        f"({result.tokens_per_second:.1f} tokens/s)"
    )
    if result.data_file is not None:
        print(f"Teacher data: {result.data_file} (train with --dataset_name {output_dir})")
    else:
        print(f"Shard done; other shards missing. Output folder: {output_dir}")
    return result


def _reexec_with_vllm_cpu_environment(argv: List[str], num_threads: Optional[int]) -> None:
    """vLLM's CPU build wants the Intel OpenMP runtime preloaded, which only takes effect at process start:
    restart this command once with `vllm_cpu_environment` (a no-op when the environment already has it)."""
    environment = vllm_cpu_environment(num_threads)
    if environment.get("LD_PRELOAD") == os.environ.get("LD_PRELOAD") or os.environ.get("DRAFTER_VLLM_REEXEC"):
        return
    logger.info("Restarting with LD_PRELOAD=%s for vLLM's CPU build", environment["LD_PRELOAD"])
    environment["DRAFTER_VLLM_REEXEC"] = "1"
    os.execve(sys.executable, [sys.executable, "-m", "drafter.teacher.generate", *argv], environment)


if __name__ == "__main__":
    sys.exit(run_main(main))
