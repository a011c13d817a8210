"""`DrafterTrainer`: a transformers `Trainer` whose model is the drafter alone.

The frozen base model lives beside the trainer, not inside the trained module, so the optimizer, the
gradient hooks of DDP/FSDP/DeepSpeed and every checkpoint see drafter parameters only.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, Trainer

from ..engine.base_lm import BaseLM
from .losses import DrafterLossOutput, drafter_loss
from .metrics import DraftAccuracy


class DrafterTrainer(Trainer):
    def __init__(self, *args, base_model: PreTrainedModel, **kwargs):
        super().__init__(*args, **kwargs)
        # compute_loss returns the mean over its micro-batch and ignores `num_items_in_batch`, so the Trainer must
        # divide it by the accumulation steps. The drafter's forward(**loss_kwargs) would otherwise make transformers
        # take the loss for one already normalised over the accumulated batch: k accumulation steps then summed k
        # micro-batch means (k times the logged loss and the gradient of one process with k times the batch).
        self.model_accepts_loss_kwargs = False
        self.base_model = base_model.to(self.args.device).eval().requires_grad_(False)
        self.base = BaseLM(self.base_model)
        self._step_loss_sums: Optional[torch.Tensor] = None
        self._step_loss_batches = 0
        self.last_accuracy: Optional[DraftAccuracy] = None

    @property
    def drafter(self):
        return self.accelerator.unwrap_model(self.model)

    def drafter_forward(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], top_k: int = 0
    ) -> DrafterLossOutput:
        """Base model forward (no grad; skipped when the batch carries cached hidden states) -> drafter loss through
        `model`'s own forward (wrapper-safe)."""
        input_ids = inputs["input_ids"]
        distill_targets = inputs.get("distill_targets")  # (batch, seq, N) with the distilled dataset
        dtype = self.drafter.dtype
        with torch.no_grad():
            hidden_states, teacher_hidden = self._drafter_context(inputs)
            input_embeds = self.base.embed(input_ids)
            distill_embeds = None
            if distill_targets is not None:
                distill_embeds = self.base.embed(distill_targets.clamp(min=0)).to(dtype)
        args = self.args
        return model(
            hidden_states=hidden_states.to(dtype),
            teacher_hidden_states=teacher_hidden.to(dtype) if teacher_hidden is not None else None,
            input_embeds=input_embeds.to(dtype),
            labels=inputs["labels"],
            input_ids=input_ids,
            loss_fn=drafter_loss,
            distill_targets=distill_targets,
            distill_embeds=distill_embeds,
            loss_decay=args.drafter_loss_decay,
            teacher_head=self._teacher_head if args.use_knowledge_distillation else None,
            kd_temperature=args.kd_temperature,
            kd_alpha=args.kd_alpha if args.use_knowledge_distillation else 0.0,
            top_k=top_k,
        )

    def _drafter_context(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(the drafter's context (batch, seq, n * H), the base's last hidden state when that is not the context).

        The context is the base's last hidden state, or, for drafters that fuse other layers (`context_layers`,
        EAGLE-3), those layers concatenated; read from a feature cache's columns when the batch has them (the base
        then does not run), else computed in one base forward."""
        layers = getattr(self.drafter, "context_layers", None)
        last = inputs.get("hidden_states")  # from a feature cache
        if not layers:
            if last is None:
                last = self.base.hidden_states(inputs["input_ids"], inputs.get("attention_mask"))
            return last, None
        cached = [inputs.get(f"hidden_states.{layer}") for layer in layers]
        if last is None or any(state is None for state in cached):
            last, *cached = self.base.layer_hidden_states(inputs["input_ids"], inputs.get("attention_mask"),
                                                          [-1, *layers])
        return torch.cat(cached, dim=-1), last

    def _teacher_head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Base logits restricted to the draft vocabulary: only those rows of the output layer are computed."""
        rows = self.drafter.draft_to_base if self.drafter.has_reduced_vocabulary else None
        with torch.no_grad():
            return self.base.logits(hidden_states, rows).to(hidden_states.dtype)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        output = self.drafter_forward(model, inputs)
        step_losses = torch.stack(output.step_losses).float()
        self._step_loss_sums = step_losses if self._step_loss_sums is None else self._step_loss_sums + step_losses
        self._step_loss_batches += 1
        return (output.loss, output) if return_outputs else output.loss

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        # Per-step training losses, averaged since the last log line over the micro-batches of all processes (as
        # the Trainer's "loss"); every process logs the training steps, so the reduction is collective.
        if self._step_loss_sums is not None and "loss" in logs:
            sums = torch.cat([self._step_loss_sums, self._step_loss_sums.new_tensor([self._step_loss_batches])])
            sums = self.accelerator.reduce(sums, reduction="sum")
            means = (sums[:-1] / sums[-1]).tolist()
            logs.update({f"loss_step{step + 1}": round(value, 4) for step, value in enumerate(means)})
            self._step_loss_sums, self._step_loss_batches = None, 0
        super().log(logs, start_time)

    def evaluate(
        self,
        eval_dataset: Optional[Any] = None,
        ignore_keys: Optional[list[str]] = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Loss plus per-step top-k accuracy and the expected accepted length on held-out data."""
        dataloader = self.get_eval_dataloader(eval_dataset)
        model = self.model
        model.eval()
        accuracy = DraftAccuracy(num_steps=self.drafter.num_draft_steps, top_k=self.args.eval_top_k)
        loss_sum = torch.zeros((), device=self.args.device)
        batches = 0
        progress = tqdm(dataloader, desc="Evaluating drafter", disable=not self.is_local_process_zero())
        with torch.no_grad():
            for inputs in progress:
                inputs, real_examples = self._without_repeated_examples(self._prepare_inputs(inputs))
                output = self.drafter_forward(model, inputs, top_k=self.args.eval_top_k)
                loss_sum += output.loss.detach()
                batches += int(real_examples > 0)
                accuracy.update(output.step_counts)
        # Sum counts over processes so every rank reports the same numbers.
        flat = torch.tensor(
            [batches, *accuracy.targets, *accuracy.out_of_vocab, *(c for row in accuracy.correct for c in row)],
            dtype=torch.float64, device=self.args.device,
        )
        flat = self.accelerator.reduce(flat, reduction="sum")
        loss_sum = self.accelerator.reduce(loss_sum, reduction="sum")
        values = [int(v) for v in flat.tolist()]
        steps, top_k = accuracy.num_steps, accuracy.top_k
        batches = values[0]
        accuracy.targets = values[1 : 1 + steps]
        accuracy.out_of_vocab = values[1 + steps : 1 + 2 * steps]
        accuracy.correct = [values[1 + 2 * steps + s * top_k : 1 + 2 * steps + (s + 1) * top_k] for s in range(steps)]
        metrics = {f"{metric_key_prefix}_loss": loss_sum.item() / max(batches, 1)}
        metrics.update(accuracy.as_dict(prefix=f"{metric_key_prefix}_"))
        self.last_accuracy = accuracy
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _without_repeated_examples(self, inputs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        """(inputs, number of real examples): with several processes, accelerate fills the last evaluation batches
        up with repeated examples so that every process runs the same forwards (which FSDP / ZeRO-3 need); their
        labels are masked here so that the summed counts see each held-out example once. `gather_for_metrics`
        keeps the first real rows of a gathered batch, which is in process order."""
        rows = inputs["input_ids"].shape[0]
        if self.args.world_size <= 1 or not self.accelerator.even_batches:  # nothing repeated
            return inputs, rows
        marker = torch.ones(rows, device=inputs["input_ids"].device)
        real = self.accelerator.gather_for_metrics(marker).numel()  # real examples of all processes' batches
        keep = min(max(real - self.args.process_index * rows, 0), rows)
        if keep < rows:
            inputs = dict(inputs)
            for key in ("labels", "distill_targets"):
                if inputs.get(key) is not None:
                    inputs[key] = inputs[key].clone()
                    inputs[key][keep:] = -100
        return inputs, keep
