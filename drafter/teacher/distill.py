"""Distilled targets: at every position of every assistant response, the base model's own continuation.

For a tokenised chat ``input_ids`` / ``labels`` (labels unshifted, -100 outside assistant replies) and a
position ``t`` whose next token is a label (``labels[t + 1] != -100``), ``distill_targets[t, j]`` is the
``(j + 1)``-th token the base model generates after the ground-truth prefix ``input_ids[: t + 1]``:
``distill_targets[t, 0]`` is its next-token choice at ``t`` and so stands where ``labels[t + 1]`` does,
``distill_targets[t, j]`` where ``labels[t + 1 + j]`` does. Other rows are -100, and so is everything after a
stop (EOS) token in a continuation (generation would have ended there). Temperature 0 is greedy; a positive
temperature samples (temperature / top-k / top-p as in transformers) from one generator per example, seeded
from (seed, example index), so the result does not depend on the batch size.

The continuations come from the engine's decode loop (`drafter.engine.continuations`): N forward passes per
batch of sequences, never one ``generate`` per position.

Benchmark / inspection CLI::

    python -m drafter.teacher.distill --dataset_name sharegpt --max_examples 20 --model_max_length 256 \\
        --num_future_tokens 5 --batch_size 4 [--compare_bruteforce]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any, List, Optional, Sequence

import numpy as np
import torch

from ..data.chat import IGNORE_INDEX
from ..engine.base_lm import stop_token_ids as model_stop_token_ids
from ..engine.continuations import ContinuationDecoder
from ..engine.sampling import RowGenerators, SamplingConfig, row_seed

logger = logging.getLogger(__name__)

DISTILL_COLUMN = "distill_targets"


def distill_positions(labels: Sequence[int]) -> List[int]:
    """Positions t whose next token is a label: the rows of distill_targets that get continuations."""
    return [t for t in range(len(labels) - 1) if labels[t + 1] != IGNORE_INDEX]


def compute_distill_targets(
    model: Any,
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    num_future_tokens: int = 5,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: int = 0,
    example_keys: Optional[Sequence[Any]] = None,
    stop_token_ids: Optional[Sequence[int]] = None,
    batch_size: int = 8,
    pad_token_id: Optional[int] = None,
    progress: bool = False,
) -> List[np.ndarray]:
    """Distilled targets of every example: a list of int32 arrays of shape ``(len(input_ids[i]), N)``.

    Args:
        model: the frozen base causal LM (transformers; its device is used).
        input_ids, labels: tokenised examples (labels unshifted, -100 where not trained), e.g. the rows of
            `drafter.data.build_tokenized_datasets`.
        num_future_tokens: N, continuation tokens per position (``distill_num_future_tokens``).
        temperature, top_k, top_p: 0 = greedy; otherwise sampling from the warped distribution.
        seed, example_keys: example i samples from a generator seeded with (seed, example_keys[i]) (default i).
        stop_token_ids: a continuation ends after one of these (later entries -100); default the model's EOS.
        batch_size: sequences per forward (length-sorted, so batches are homogeneous).
        pad_token_id: filler for right padding (never attended); default the stop token or 0.

    Row t of example i holds the base model's continuation of ``input_ids[i][: t + 1]`` when
    ``labels[i][t + 1] != -100`` and -100 otherwise (see the module docstring).
    """
    if num_future_tokens < 1:
        raise ValueError(f"num_future_tokens must be >= 1, got {num_future_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if len(input_ids) != len(labels):
        raise ValueError("input_ids and labels must have the same number of examples")
    device = next(model.parameters()).device
    stops = list(stop_token_ids) if stop_token_ids is not None else model_stop_token_ids(model)
    pad_id = pad_token_id if pad_token_id is not None else (stops[0] if stops else 0)
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    keys = list(example_keys) if example_keys is not None else list(range(len(input_ids)))
    sequences = [list(map(int, ids)) for ids in input_ids]
    positions = [distill_positions(list(map(int, lab))) for lab in labels]
    for ids, lab in zip(sequences, labels):
        if len(ids) != len(lab):
            raise ValueError("every example needs as many labels as input ids")
    decoder = ContinuationDecoder(model)
    results: List[Optional[np.ndarray]] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
    from tqdm.auto import tqdm

    with tqdm(total=len(order), unit="example", desc="Distill targets", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            rng = None
            if not sampling.greedy:  # one stream per example, drawing one uniform per position and step
                seeds = [row_seed(seed, str(keys[i])) for i in chunk]
                rng = RowGenerators.from_seeds(seeds, device, counts=[len(positions[i]) for i in chunk])
            continuations = iter(decoder.continue_positions(
                [sequences[i] for i in chunk], [positions[i] for i in chunk], num_future_tokens, stops, sampling,
                rng, pad_id,
            ))
            for i in chunk:
                full = np.full((len(sequences[i]), num_future_tokens), IGNORE_INDEX, dtype=np.int32)
                for t in positions[i]:
                    tokens = next(continuations)
                    full[t, : len(tokens)] = tokens
                results[i] = full
            bar.update(len(chunk))
    return results  # type: ignore[return-value]


@torch.no_grad()
def compute_distill_targets_bruteforce(
    model: Any,
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    num_future_tokens: int = 5,
    stop_token_ids: Optional[Sequence[int]] = None,
) -> List[np.ndarray]:
    """Greedy reference: one ``model.generate`` call per position (slow; for tests and benchmarks)."""
    device = next(model.parameters()).device
    stops = list(stop_token_ids) if stop_token_ids is not None else model_stop_token_ids(model)
    results = []
    for ids, lab in zip(input_ids, labels):
        ids = list(map(int, ids))
        full = np.full((len(ids), num_future_tokens), IGNORE_INDEX, dtype=np.int32)
        for t in distill_positions(list(map(int, lab))):
            prefix = torch.tensor([ids[: t + 1]], device=device)
            generated = model.generate(
                prefix,
                attention_mask=torch.ones_like(prefix),
                max_new_tokens=num_future_tokens,
                do_sample=False,
                eos_token_id=stops or None,
                pad_token_id=stops[0] if stops else 0,
            )[0, t + 1 :].tolist()
            full[t, : len(generated)] = generated
        results.append(full)
    return results


def add_distill_targets(
    model: Any,
    dataset: Any,
    num_future_tokens: int = 5,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
):
    """A copy of a tokenised ``datasets.Dataset`` (``input_ids``, ``labels``) with a ``distill_targets`` column
    (per row a list of ``[N]`` lists, one per token). Example keys are the row indices."""
    import datasets

    targets = compute_distill_targets(
        model,
        dataset["input_ids"],
        dataset["labels"],
        num_future_tokens=num_future_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
    )
    feature = datasets.Sequence(datasets.Sequence(datasets.Value("int32")))
    if DISTILL_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(DISTILL_COLUMN)
    return dataset.add_column(DISTILL_COLUMN, [t.tolist() for t in targets], feature=feature)


# ------------------------------------------------------------------------------------------------------- CLI


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Compute distill targets for a few conversations and report examples/s (optionally vs brute force)."""
    from ..data.chat import tokenize_example
    from ..data.sources import load_conversations
    from ..engine.loading import EMBEDDED_BASE_MODEL, load_base_model, load_tokenizer

    parser = argparse.ArgumentParser(
        prog="python -m drafter.teacher.distill", description=main.__doc__, allow_abbrev=False
    )
    parser.add_argument("--dataset_name", default="sharegpt")
    parser.add_argument("--max_examples", type=int, default=20)
    parser.add_argument("--data_seed", type=int, default=0)
    parser.add_argument("--model_max_length", type=int, default=256)
    parser.add_argument("--llm_name_or_path", default=EMBEDDED_BASE_MODEL)
    parser.add_argument("--num_future_tokens", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--compare_bruteforce", action="store_true", help="also time one generate per position")
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    model = load_base_model(args.llm_name_or_path)
    tokenizer = load_tokenizer(args.llm_name_or_path)
    rows = load_conversations(args.dataset_name, max_examples=args.max_examples, seed=args.data_seed)
    examples = [tokenize_example(tokenizer, row, args.model_max_length) for row in rows]
    input_ids = [e["input_ids"] for e in examples]
    labels = [e["labels"] for e in examples]
    num_positions = sum(len(distill_positions(lab)) for lab in labels)
    print(f"{len(examples)} examples, {sum(map(len, input_ids))} tokens, {num_positions} distilled positions, "
          f"N = {args.num_future_tokens}, torch threads = {torch.get_num_threads()}")
    start = time.perf_counter()
    batched = compute_distill_targets(
        model, input_ids, labels, args.num_future_tokens, temperature=args.temperature, seed=args.seed,
        batch_size=args.batch_size,
    )
    seconds = time.perf_counter() - start
    report = {"examples": len(examples), "positions": num_positions, "batched_s": seconds,
              "batched_examples_per_s": len(examples) / seconds}
    print(f"batched (batch_size {args.batch_size}): {seconds:.1f} s, {len(examples) / seconds:.3f} examples/s, "
          f"{num_positions / seconds:.1f} positions/s")
    if args.compare_bruteforce:
        if args.temperature != 0:
            parser.error("--compare_bruteforce needs --temperature 0")
        start = time.perf_counter()
        reference = compute_distill_targets_bruteforce(model, input_ids, labels, args.num_future_tokens)
        brute = time.perf_counter() - start
        same_rows = sum(int((a == b).all(axis=1).sum()) for a, b in zip(batched, reference))
        total_rows = sum(len(a) for a in batched)
        report.update({"bruteforce_s": brute, "bruteforce_examples_per_s": len(examples) / brute,
                       "identical_rows": same_rows, "rows": total_rows})
        print(f"one generate per position: {brute:.1f} s, {len(examples) / brute:.3f} examples/s "
              f"({brute / seconds:.1f}x slower); identical target rows: {same_rows}/{total_rows}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
