"""Teacher-data throughput of every backend on the same prompts, in one run, and whether their greedy answers agree.

Backends: the toolkit's transformers backend (`python -m drafter.teacher.generate --backend transformers`:
continuous batching, small-batch CPU kernels), the generator it replaced (length-sorted static batches through
the same decode loop, torch's stock kernels), plain length-sorted `model.generate` batches (what a user would
write by hand, stock kernels), and vLLM (`--backend vllm`, run with .venv-vllm/bin/python when
scripts/bootstrap_vllm.sh made it). Greedy, float32. Prints a table, writes JSON.

    python benchmarks/teacher_throughput.py [--max_examples 256 --max_tokens 256 --batch_size 16 \\
        --output benchmarks/results/teacher_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from drafter.data import load_prompts
from drafter.engine import (
    EMBEDDED_BASE_MODEL,
    AutoregressiveGenerator,
    load_base_model,
    load_tokenizer,
    stop_token_ids,
)
from drafter.evaluation.benchmark import environment
from drafter.teacher.jobs import prepare_prompt

REPO = Path(__file__).resolve().parents[1]


def teacher_cli(python: str, backend: str, args, folder: Path) -> tuple[float, dict]:
    """Seconds of one teacher command (from its own report) and its answers by prompt id."""
    command = [python, "-m", "drafter.teacher.generate", "--backend", backend, "--dataset_name", args.dataset_name,
               "--max_examples", str(args.max_examples), "--max_tokens", str(args.max_tokens), "--gen_temp", "0",
               "--batch_size", str(args.batch_size), "--output_dir", str(folder), "--no_progress",
               "--llm_name_or_path", args.llm_name_or_path]
    output = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ})
    if output.returncode != 0:
        raise RuntimeError(f"{backend}: {output.stderr[-2000:]}")
    line = next(x for x in output.stdout.splitlines() if x.startswith("Shard"))
    seconds = float(line.split(" tokens in ")[1].split(" s")[0])
    rows = [json.loads(x) for x in (folder / "data.jsonl").read_text().splitlines()]
    return seconds, {row["id"]: row["messages"][-1]["content"] for row in rows}


def in_process(args, method: str) -> tuple[float, int, dict]:
    """Seconds, tokens (up to and including each stop token) and answers by prompt id of length-sorted static
    batches, through `model.generate` or the toolkit's decode loop, with torch's stock kernels."""
    model = load_base_model(args.llm_name_or_path, small_batch_kernels=False)
    tokenizer = load_tokenizer(args.llm_name_or_path)
    # The prompts exactly as the teacher command sees them (cut to its default 512 tokens; none that cannot fit).
    prepared = [(item, prepare_prompt(tokenizer, item["messages"], 512)[0])
                for item in load_prompts(args.dataset_name, max_examples=args.max_examples)]
    items = [item for item, ids in prepared if ids is not None]
    prompts = [ids for _, ids in prepared if ids is not None]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    stops, pad = stop_token_ids(model, tokenizer), tokenizer.pad_token_id
    tokens, answers, start = 0, {}, time.perf_counter()
    for begin in range(0, len(order), args.batch_size):
        rows = order[begin : begin + args.batch_size]
        batch = [prompts[i] for i in rows]
        if method == "model.generate":
            width = max(len(p) for p in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=mask, max_new_tokens=args.max_tokens, do_sample=False,
                                     eos_token_id=stops, pad_token_id=pad)[:, width:].tolist()
        else:
            out = AutoregressiveGenerator(model).generate(batch, max_new_tokens=args.max_tokens,
                                                          eos_token_id=stops).sequences
        for i, row in zip(rows, out):
            cut = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
            tokens += cut
            answer = row[: cut - 1] if row[cut - 1] in stops else row[:cut]
            answers[str(items[i]["id"])] = tokenizer.decode(answer, skip_special_tokens=True)
    return time.perf_counter() - start, tokens, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--llm_name_or_path", default=EMBEDDED_BASE_MODEL)
    parser.add_argument("--dataset_name", default="sharegpt")
    parser.add_argument("--max_examples", type=int, default=256)
    parser.add_argument("--max_tokens", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    results, answers = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("transformers", sys.executable)]
        vllm_python = REPO / ".venv-vllm" / "bin" / "python"
        if vllm_python.exists():
            runs.append(("vllm", str(vllm_python)))
        for backend, python in runs:
            folder = Path(tmp) / backend
            seconds, answers[backend] = teacher_cli(python, backend, args, folder)
            metadata = json.loads((folder / "metadata.json").read_text())
            tokens = metadata["merged"]["num_generated_tokens"]
            results[backend] = {"seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds}
    for method in ("static batches, stock kernels", "model.generate"):
        seconds, tokens, answers[method] = in_process(args, method)
        results[method] = {"seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds}
    reference = results["static batches, stock kernels"]["tokens_per_second"]
    identical = {b: sum(answers[b][k] == answers["transformers"][k] for k in answers["transformers"])
                 for b in answers}
    print("| backend | tokens | seconds | tok/s | vs the previous generator | identical answers |")
    print("|---|---|---|---|---|---|")
    for name, entry in results.items():
        same = f"{identical[name]}/{len(answers['transformers'])}" if name in identical else "-"
        print(f"| {name} | {entry['tokens']} | {entry['seconds']:.1f} | {entry['tokens_per_second']:.1f} | "
              f"{entry['tokens_per_second'] / reference:.2f}x | {same} |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"settings": vars(args), "methods": results, "identical": identical,
                       "environment": environment()}, f, indent=2)


if __name__ == "__main__":
    main()
