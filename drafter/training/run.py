"""The training and evaluation jobs behind `train_speculator.py`."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

from transformers import PreTrainedModel, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..data import DataCollatorForDrafter, build_tokenized_datasets
from ..engine.base_lm import BaseLM
from ..engine.loading import base_model_config, load_base_model, load_tokenizer
from ..models import AutoDrafter, DrafterConfig, DrafterPreTrainedModel, get_family
from ..store import cache_root, fingerprint, save_dataset_atomically
from .arguments import DataArguments, DrafterTrainingArguments, ModelArguments
from .clock import TrainingClock, seconds_since_process_start, training_budget_seconds
from .draft_vocab import count_target_tokens, select_draft_vocabulary
from .trainer import DrafterTrainer

logger = logging.getLogger(__name__)


def base_dtype(model_args: ModelArguments, training_args: DrafterTrainingArguments) -> str:
    """dtype name for `load_base_model`: explicit, else following the --bf16/--fp16 training flags."""
    if model_args.base_dtype != "auto":
        return model_args.base_dtype
    if training_args.bf16:
        return "bfloat16"
    if training_args.fp16:
        return "float16"
    return "float32"


def build_drafter(model_args: ModelArguments, base: PreTrainedModel, training: bool = True) -> DrafterPreTrainedModel:
    """A fresh drafter sized for `base`, or the saved one named by --drafter_name_or_path (which, trained further
    on another base with --allow_base_mismatch, then records that base)."""
    if not model_args.drafter_name_or_path:
        return AutoDrafter.from_config(drafter_config(model_args, base))
    drafter = AutoDrafter.from_pretrained(model_args.drafter_name_or_path)
    drafter.check_base_model(base, allow_weight_mismatch=model_args.allow_base_mismatch)
    if training:
        drafter.record_base_model(model_args.llm_name_or_path, BaseLM(base).fingerprint())
    return drafter


def prepare_output_dir(training_args: DrafterTrainingArguments) -> None:
    """Refuse to train over an earlier drafter or its checkpoints unless asked to replace (their files are then
    removed first, so no stale checkpoint stays beside new ones) or to resume them."""
    folder = Path(training_args.output_dir)
    earlier = [p for p in folder.glob("*") if p.name in ("config.json", "model.safetensors")
               or p.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")] if folder.is_dir() else []
    if not earlier or training_args.resume_from_checkpoint:
        return
    if not training_args.overwrite_output_dir:
        raise ValueError(f"--output_dir {folder} already holds a drafter or checkpoints; pass --overwrite_output_dir "
                         "to replace them or --resume_from_checkpoint True to continue that run")
    for path in earlier:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def drafter_config(model_args: ModelArguments, base: PreTrainedModel) -> DrafterConfig:
    """The config of a fresh drafter of family `model_args.drafter_type`, sized for `base`."""
    lm = BaseLM(base)
    return get_family(model_args.drafter_type).build_config(
        model_args,
        base_config=base.config.get_text_config(),
        hidden_size=lm.hidden_size,
        vocab_size=lm.vocab_size,
        base_model_name_or_path=model_args.llm_name_or_path,
        base_model_fingerprint=lm.fingerprint(),
        draft_vocab_size=model_args.draft_vocab_size,
    )


def use_feature_layers(datasets: dict, drafter: DrafterPreTrainedModel, features_dir: str) -> None:
    """Make the feature datasets read the base layers the drafter fuses (EAGLE-3), and no others: a drafter of the
    last hidden state leaves an EAGLE-3 cache's extra layers on disk. A cache without those layers is refused."""
    wanted = list(getattr(drafter, "context_layers", None) or [])
    cache = datasets["train"].cache
    missing = [layer for layer in wanted if layer not in cache.layers]
    if missing:
        raise ValueError(
            f"--features_dir {features_dir} stores base layers {cache.layers}, but this {drafter.config.model_type} "
            f"reads layers {wanted}: rebuild it with python -m drafter.features ... --hidden_layers -1 "
            + " ".join(map(str, wanted))
        )
    for rows in datasets.values():
        rows.read_layers(wanted)


def training_data(tokenizer, base: PreTrainedModel, data_args: DataArguments, seed: int) -> dict:
    """{"train", "eval"}: the tokenized dataset, or with --features_dir the feature cache (whose base model must
    be this one; its data settings replace the data arguments)."""
    if not data_args.features_dir:
        return build_tokenized_datasets(
            tokenizer,
            data_args.dataset_name,
            model_max_length=data_args.model_max_length,
            train_on_assistant_only=data_args.train_on_assistant_only,
            max_examples=data_args.max_train_examples,
            eval_examples=data_args.num_eval_examples,
            seed=seed,
        )
    from ..features import FeatureCache, FeatureDataset, StaleFeaturesError

    cache = FeatureCache.open(data_args.features_dir)
    if cache.index["identity"]["base_model"] != BaseLM(base).fingerprint():
        raise StaleFeaturesError(
            f"{data_args.features_dir} holds hidden states of another base model than '{base.config.name_or_path}'; "
            "build the cache with this base (python -m drafter.features)"
        )
    if not cache.index["complete"]:
        raise ValueError(f"{data_args.features_dir} is not complete; run python -m drafter.features again to finish it")
    if data_args.use_distilled_dataset and not cache.num_future_tokens:
        raise ValueError(f"--use_distilled_dataset: {data_args.features_dir} has no distilled continuations "
                         "(build it with --distill_num_future_tokens N)")
    logger.info("Training from the feature cache %s (%d train / %d eval examples)", data_args.features_dir,
                cache.num_examples("train"), cache.num_examples("eval"))
    return {"train": FeatureDataset(cache, "train", distilled=data_args.use_distilled_dataset),
            "eval": FeatureDataset(cache, "eval")}


def distilled_train_split(base, model_args: ModelArguments, data_args: DataArguments, train, seed: int):
    """The training split with the base model's continuations at every labelled position, cached on disk
    (keyed by base model, tokenized data and distillation parameters) so sweeps compute it once."""
    from datasets import load_from_disk

    from ..teacher.distill import add_distill_targets

    if data_args.distill_max_examples is not None:
        train = train.select(range(min(data_args.distill_max_examples, len(train))))
    params = [model_args.llm_name_or_path, train._fingerprint, data_args.distill_num_future_tokens,
              data_args.distill_temperature, seed]
    path = cache_root() / "distilled" / fingerprint(params, length=20)
    if path.is_dir():
        logger.info("Distilled dataset from cache %s", path)
        return load_from_disk(str(path))
    distilled = add_distill_targets(
        base, train, num_future_tokens=data_args.distill_num_future_tokens,
        temperature=data_args.distill_temperature, seed=seed, batch_size=data_args.distill_batch_size,
    )
    save_dataset_atomically(distilled, path)
    return load_from_disk(str(path))


def install_draft_vocabulary(drafter: DrafterPreTrainedModel, train) -> float:
    """Give a fresh drafter the most frequent training targets as its draft vocabulary; returns their coverage."""
    counts = count_target_tokens(train["labels"], drafter.config.vocab_size)
    draft_to_base, coverage = select_draft_vocabulary(counts, drafter.config.draft_vocab_size)
    drafter.set_draft_vocabulary(draft_to_base)
    logger.info("Draft vocabulary of %d tokens covers %.1f%% of training targets",
                drafter.config.draft_vocab_size, 100 * coverage)
    return coverage


def count_trainable_tokens(dataset) -> int:
    return sum(sum(1 for label in labels if label != -100) for labels in dataset["labels"])


def run(model_args: ModelArguments, data_args: DataArguments, training_args: DrafterTrainingArguments) -> dict:
    """Train (phase=train) or evaluate (phase=eval) a drafter; returns the evaluation metrics."""
    if training_args.phase == "eval" and not model_args.drafter_name_or_path:
        raise ValueError("--phase eval needs --drafter_name_or_path")
    if data_args.use_distilled_dataset and training_args.use_knowledge_distillation:
        raise ValueError("--use_distilled_dataset and --use_knowledge_distillation cannot be combined")
    if training_args.phase == "train":
        prepare_output_dir(training_args)
    if model_args.draft_vocab_size is not None and not model_args.drafter_name_or_path:
        vocab = base_model_config(model_args.llm_name_or_path, model_args.trust_remote_code).get_text_config()
        if model_args.draft_vocab_size > vocab.vocab_size:
            raise ValueError(f"--draft_vocab_size {model_args.draft_vocab_size} exceeds the base model's vocabulary "
                             f"of {vocab.vocab_size} tokens (unset it for the full vocabulary)")
    tokenizer = load_tokenizer(model_args.llm_name_or_path, trust_remote_code=model_args.trust_remote_code)
    base = load_base_model(
        model_args.llm_name_or_path,
        dtype=base_dtype(model_args, training_args),
        trust_remote_code=model_args.trust_remote_code,
    )
    datasets = training_data(tokenizer, base, data_args, training_args.seed)
    set_seed(training_args.seed)  # a fresh drafter's weights follow --seed (the Trainer seeds only later)
    drafter = build_drafter(model_args, base, training=training_args.phase == "train")
    if data_args.features_dir:
        use_feature_layers(datasets, drafter, data_args.features_dir)
    summary: dict = {"drafter_parameters": sum(p.numel() for p in drafter.parameters())}
    # Counted on the whole training split, before a distilled subset replaces it: with the distilled dataset
    # only --distill_max_examples conversations train, too few to rank a vocabulary of thousands of tokens.
    if drafter.has_reduced_vocabulary and not model_args.drafter_name_or_path:
        summary["draft_vocab_coverage"] = install_draft_vocabulary(drafter, datasets["train"])

    if data_args.use_distilled_dataset and not data_args.features_dir:
        datasets["train"] = distilled_train_split(base, model_args, data_args, datasets["train"], training_args.seed)
        if data_args.distill_num_future_tokens - 1 < drafter.num_draft_steps:
            logger.warning(
                "Distilled continuations of %d tokens train only %d of the drafter's %d steps",
                data_args.distill_num_future_tokens, data_args.distill_num_future_tokens - 1,
                drafter.num_draft_steps,
            )

    trainer = DrafterTrainer(
        model=drafter,
        args=training_args,
        base_model=base,
        data_collator=DataCollatorForDrafter(pad_token_id=tokenizer.pad_token_id),
        train_dataset=datasets["train"],
        eval_dataset=datasets["eval"],
    )
    if training_args.phase == "train":
        checkpoint = _resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
        budget = training_budget_seconds(training_args.max_train_minutes, training_args.max_run_minutes)
        clock = TrainingClock(resumed_from=checkpoint, budget_seconds=budget)
        trainer.add_callback(clock)
        train_output = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model(training_args.output_dir)
        steps_run = train_output.global_step - _checkpoint_step(checkpoint)
        seen_tokens = _trained_target_tokens(trainer, datasets["train"], steps_run)
        summary.update(
            train_seconds=clock.total_seconds,  # all runs, when resumed
            train_seconds_this_run=clock.this_run_seconds,
            stopped_by_time_budget=clock.stopped_by_budget,
            train_steps=train_output.global_step,
            train_steps_this_run=steps_run,
            train_loss=train_output.training_loss,
            trained_target_tokens=seen_tokens,
            train_tokens_per_second=seen_tokens / clock.this_run_seconds if clock.this_run_seconds else None,
        )
    metrics = trainer.evaluate()
    summary.update(metrics)
    accuracy_table = trainer.last_accuracy.table()
    if trainer.is_world_process_zero():
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, "drafter_eval.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(f"\nDrafter evaluation on {len(datasets['eval'])} held-out '{data_args.dataset_name}' examples:\n")
        print(accuracy_table)
        print(f"\nResults written to {os.path.join(training_args.output_dir, 'drafter_eval.json')}")
        print(f"Wall time of this command: {seconds_since_process_start():.0f} s")
    return summary


def _resolve_checkpoint(checkpoint: Optional[str], output_dir: str) -> Optional[str]:
    """The checkpoint folder a run resumes from: a path, or `True` for the latest in output_dir, or None."""
    if checkpoint in (True, "True", "true"):
        checkpoint = get_last_checkpoint(output_dir)
        if checkpoint is None:
            raise ValueError(f"--resume_from_checkpoint True: no checkpoint in {output_dir}")
    return checkpoint or None


def _checkpoint_step(checkpoint: Optional[str]) -> int:
    """The global step a resumed run starts from (0 for a fresh run)."""
    if not checkpoint or not os.path.isdir(checkpoint):
        return 0
    with open(os.path.join(checkpoint, "trainer_state.json")) as f:
        return int(json.load(f)["global_step"])


def _trained_target_tokens(trainer: DrafterTrainer, train_dataset, steps: int) -> Optional[int]:
    """Trainable (labelled) tokens this invocation went through, for tokens/s: labelled tokens per example
    times examples seen, estimated from the dataset average."""
    args = trainer.args
    examples_seen = steps * args.train_batch_size * args.gradient_accumulation_steps * args.world_size
    per_example = count_trainable_tokens(train_dataset) / max(len(train_dataset), 1)
    return int(examples_seen * per_example)
