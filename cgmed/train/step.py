"""The step piece of a training run: one optimizer step over ``train.grad_accum`` micro-batches.

Each micro-batch's loss is the sum of next-token cross-entropy over its labelled tokens divided
by the labelled-token count of that micro-batch over *all* ranks; with gradients averaged over
ranks, a 2-process step then equals a 1-process step on the same samples, whatever the per-rank
token counts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cgmed.models.collate import IGNORE_INDEX
from cgmed.train.checkpoint import checkpoint_root
from cgmed.train.run import TrainingError, TrainingRun


@dataclass
class StepResult:
    """What one optimizer step did, for its metrics row."""

    loss: float  # mean loss per labelled token over every rank
    grad_norm: Any  # before clipping; None when train.max_grad_norm is off
    samples: int  # this rank's samples
    tokens: int  # this rank's attended positions (visual tokens included)
    bad_images: int  # left out by this rank's collate
    too_long: int
    seconds: float


def token_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """(sum of next-token cross-entropy over labelled tokens, their count) for one micro-batch."""
    import torch.nn.functional as F

    labels = batch.pop("labels")
    out = model(**batch, use_cache=False)
    logits = out.logits[:, :-1]
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    picked = logits[mask].float()  # only labelled positions: the full (B, T, V) never goes fp32
    loss_sum = F.cross_entropy(picked, target[mask], reduction="sum")
    return loss_sum, mask.sum()


def train_step(run: TrainingRun, batches: Iterator[dict[str, Any]], step: int) -> StepResult:
    """Optimizer step ``step`` (counted from 1) on the next ``train.grad_accum`` micro-batches."""
    import torch

    accelerator, device = run.accelerator, run.accelerator.device
    started = time.perf_counter()
    loss_sum_total = torch.zeros((), device=device)
    tokens_total = torch.zeros((), device=device, dtype=torch.long)
    samples = seq_tokens = bad_images = too_long = 0
    grad_norm = None
    for _ in range(run.train_cfg.grad_accum):
        batch = next(batches)
        bad_images += batch.pop("_bad_images", 0)
        too_long += batch.pop("_too_long", 0)
        # pinned batches (train on CUDA) copy while the previous kernels still run
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        samples += batch["input_ids"].shape[0]
        seq_tokens += int(batch["attention_mask"].sum())
        with accelerator.accumulate(run.model):
            global_sum, global_tokens = _backward(run, batch, step)
            loss_sum_total += global_sum
            tokens_total += global_tokens
            if accelerator.sync_gradients:
                grad_norm = _update(run)
    seconds = time.perf_counter() - started
    return StepResult(
        loss=(loss_sum_total / tokens_total.clamp(min=1)).item(),
        grad_norm=grad_norm,
        samples=samples,
        tokens=seq_tokens,
        bad_images=bad_images,
        too_long=too_long,
        seconds=seconds,
    )


def _backward(run: TrainingRun, batch: dict[str, Any], step: int) -> tuple[Any, Any]:
    """Backward of one micro-batch; (its loss sum, its labelled tokens), both over every rank."""
    import torch

    accelerator = run.accelerator
    loss_sum, n_tokens = token_loss(run.model, batch)
    global_tokens = accelerator.reduce(n_tokens.detach().clone(), "sum").clamp(min=1)
    global_sum = accelerator.reduce(loss_sum.detach().clone(), "sum")
    if not torch.isfinite(global_sum):
        raise TrainingError(
            f"non-finite loss ({global_sum.item()}) at step {step}; stopping. The last good "
            f"checkpoint is kept in {checkpoint_root(run.output_dir)}. Lower train.lr, use "
            "bf16 instead of fp16, or check the data of this step"
        )
    accelerator.backward(loss_sum * run.world / global_tokens)
    return global_sum, global_tokens


def _update(run: TrainingRun) -> Any:
    """Clip, step the optimizer and the schedule, clear the gradients; the norm before clipping."""
    grad_norm = None
    if run.train_cfg.max_grad_norm:
        grad_norm = run.accelerator.clip_grad_norm_(run.model.parameters(), run.train_cfg.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def step_metrics(
    run: TrainingRun, step: int, result: StepResult, bad_images: int, too_long: int
) -> dict[str, Any]:
    """The metrics row of ``step``; ``bad_images`` / ``too_long`` are this process's totals so far."""
    import torch

    row: dict[str, Any] = {
        "loss": result.loss,
        "lr": run.scheduler.get_last_lr()[-1],
        "grad_norm": None if result.grad_norm is None else float(result.grad_norm),
        "samples_per_s": result.samples * run.world / result.seconds,
        "tokens_per_s": result.tokens * run.world / result.seconds,
        "step_time_s": result.seconds,
        "epoch": run.trainer_state(step)["epoch"],
    }
    if torch.cuda.is_available():
        row["cuda_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    if bad_images or too_long:
        row.update(skipped_bad_images=bad_images, dropped_too_long=too_long)
    return row
