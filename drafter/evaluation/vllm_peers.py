"""vLLM as a peer in the speed benchmark (`--baselines vllm_plain vllm_ngram vllm_eagle3`): what a user would run
instead of the project's decoder, at batch 1 on the same prompts, interleaved with the other methods.
`vllm_eagle3` serves the run's own EAGLE-3 drafter in vLLM (exported with `drafter.export`, a chain of its drafting
steps), so the project's decoder and vLLM are compared with the same drafter; vLLM's own acceptance counters give
its tau.

vLLM's V1 engine runs the model in its own engine process; on a CPU machine that process is started with the
environment of `vllm_cpu_environment` (both cores, its Intel OpenMP runtime preloaded) by spawning it, so this
process keeps torch's own threading for the methods it times itself.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from ..teacher.backends import load_vllm_engine, vllm_cpu_environment, vllm_installed

# Method name -> vLLM speculative_config (None: plain decoding).
VLLM_PEERS: Dict[str, Optional[Dict[str, Any]]] = {
    "vllm_plain": None,
    "vllm_ngram": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4, "prompt_lookup_min": 2},
    "vllm_eagle3": None,  # filled by `eagle3_speculative_config` with the run's EAGLE-3 drafter
}


def eagle3_speculative_config(drafter: Any, num_speculative_tokens: int, export_dir: Optional[str] = None) -> dict:
    """vLLM's speculative_config serving `drafter` (an EAGLE-3 drafter), exported to `export_dir` (default: a
    fresh temporary folder)."""
    from ..export import export_speculator

    folder = export_dir or tempfile.mkdtemp(prefix="drafter-eagle3-vllm-")
    export_speculator(drafter, folder, format="eagle3", dtype="float32")
    return {"method": "eagle3", "model": os.path.abspath(folder), "num_speculative_tokens": int(num_speculative_tokens)}


class VllmPeer:
    """One vLLM engine (started here: tens of seconds) answering one prompt at a time, greedy."""

    def __init__(self, llm_name_or_path: str, speculative_config: Optional[Dict[str, Any]]):
        if not vllm_installed():
            raise ImportError("the vllm_* baselines need vLLM in this environment: bash scripts/bootstrap_vllm.sh, "
                              "then run with .venv-vllm/bin/python (CPU), or pip install vllm (CUDA)")
        self.llm_name_or_path = llm_name_or_path
        self.speculative_config = speculative_config
        self._engine = self._load()

    def _load(self) -> Any:
        import torch

        if not torch.cuda.is_available():
            # Batch 1: a small KV cache per engine (GiB), unless the user set one; load_vllm_engine adds the
            # other CPU settings of `vllm_cpu_environment`, all but the preload, which only spawned (not forked)
            # engine processes can still take: this process has already started.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            preload = vllm_cpu_environment().get("LD_PRELOAD")
            if preload:
                os.environ["LD_PRELOAD"] = preload
            os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
        # Speculative engines keep their statistics: their acceptance counters are read per prompt.
        kwargs = {"speculative_config": self.speculative_config, "disable_log_stats": False} \
            if self.speculative_config else {}
        return load_vllm_engine(self.llm_name_or_path, dtype="float32", **kwargs)

    def draft_counters(self) -> Tuple[int, int]:
        """(drafts so far, drafted tokens accepted so far) from the engine's speculative-decoding metrics; (0, 0)
        for plain decoding."""
        if not self.speculative_config:
            return 0, 0
        totals = {"vllm:spec_decode_num_drafts": 0, "vllm:spec_decode_num_accepted_tokens": 0}
        for metric in self._engine.get_metrics():  # one counter per engine (data-parallel rank)
            if metric.name in totals:
                totals[metric.name] += int(getattr(metric, "value", 0))
        return totals["vllm:spec_decode_num_drafts"], totals["vllm:spec_decode_num_accepted_tokens"]

    def close(self) -> None:
        """Stop the engine's processes now (left to exit hooks, a spawned engine can outlive its parent)."""
        if self._engine is not None:
            core = getattr(getattr(self._engine, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            self._engine = None

    def generate(self, prompt: List[int], max_new_tokens: int, eos_token_id: Any) -> List[int]:
        from vllm import SamplingParams

        stops = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens,
                                stop_token_ids=[int(t) for t in stops if t is not None])
        output = self._engine.generate([{"prompt_token_ids": list(prompt)}], params, use_tqdm=False)
        return list(output[0].outputs[0].token_ids)
