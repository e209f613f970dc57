"""The training loop: set up, step, checkpoint, finish. Logging and checkpointing are separate pieces.

accelerate launch --config_file launch/accelerate/deepspeed_zero2.yaml -m cgmed.train experiment=NAME
torchrun --nproc_per_node 8 -m cgmed.train experiment=NAME distributed=deepspeed_zero2
cgmed-train experiment=NAME model.path=DIR data.train_manifest=runs/x/train.jsonl
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgmed.errors import CgmedError
from cgmed.models.collate import IGNORE_INDEX, Collator
from cgmed.train import checkpoint as ckpt
from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig
from cgmed.train.data import (
    BatchPlan,
    ManifestDataset,
    SkippingCollate,
    micro_batches,
    steps_for,
    text_lengths,
)
from cgmed.train.distributed import make_accelerator
from cgmed.train.metrics import MetricsLogger
from cgmed.train.setup import apply_training_mode, load_model, lr_lambda, param_groups, resolve_adapter

log = logging.getLogger(__name__)


class TrainingError(CgmedError):
    """The run cannot go on (a non-finite loss, ...); the last good checkpoint is kept."""


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path | None
    steps: int
    last_loss: float | None
    stopped_early: bool


class _Plan:
    """The rank's micro-batches as a torch batch sampler, from a given optimizer step on."""

    def __init__(self, plan: BatchPlan, grad_accum: int, start: int, total: int, rank: int, per_device: int):
        self.args = (plan, grad_accum, start, rank, per_device)
        self.n = (total - start) * grad_accum

    def __iter__(self):
        plan, ga, start, rank, per_device = self.args
        for i, (_, _, idx) in enumerate(micro_batches(plan, ga, start, rank, per_device)):
            if i >= self.n:
                return
            yield idx

    def __len__(self) -> int:
        return self.n


def token_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """(sum of next-token cross-entropy over labelled tokens, their count) for one micro-batch.

    Normalising by the *global* count (done by the caller) makes a 2-process step equal a
    1-process step on the same samples, whatever the per-rank token counts.
    """
    import torch.nn.functional as F

    labels = batch.pop("labels")
    out = model(**batch, use_cache=False)
    logits = out.logits[:, :-1]
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    picked = logits[mask].float()  # only labelled positions: the full (B, T, V) never goes fp32
    loss_sum = F.cross_entropy(picked, target[mask], reduction="sum")
    return loss_sum, mask.sum()


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    peft_cfg: PeftConfig,
    dist_cfg: DistributedConfig,
    train_manifest: str | None,
    output_dir: Path,
    resolved_config: dict[str, Any] | None = None,
    eval_manifests: dict[str, str] | None = None,
) -> TrainResult:
    """Fine-tune ``model_cfg.path`` on ``train_manifest``; writes checkpoints, metrics and ``final/``."""
    import torch
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    if not train_manifest:
        from cgmed.errors import ConfigError

        raise ConfigError("data.train_manifest", "is required", "data.train_manifest=runs/NAME/train.jsonl")
    # -- everything that can be wrong is checked before the model loads
    adapter = resolve_adapter(model_cfg)
    resume_from = ckpt.resolve_resume(train_cfg.resume, output_dir)
    dataset = ManifestDataset(train_manifest)

    accelerator = make_accelerator(dist_cfg, train_cfg)
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    set_seed(train_cfg.seed)
    if train_cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    model, processor = load_model(model_cfg, peft_cfg, adapter)
    model = apply_training_mode(model, adapter, peft_cfg, train_cfg)
    collator = Collator(adapter, processor, train_cfg.max_length, train_cfg.on_overflow)
    lengths = text_lengths(dataset, collator) if train_cfg.group_by_length else None
    plan = BatchPlan(lengths, len(dataset), train_cfg.per_device_batch_size * world, train_cfg.seed)
    total = steps_for(plan, train_cfg.grad_accum, train_cfg.max_steps, train_cfg.epochs)
    warmup = (
        train_cfg.warmup_steps
        if train_cfg.warmup_steps is not None
        else math.ceil(total * train_cfg.warmup_ratio)
    )

    optimizer = torch.optim.AdamW(
        param_groups(model, adapter, train_cfg),
        lr=train_cfg.lr,
        betas=(train_cfg.adam_beta1, train_cfg.adam_beta2),
        eps=train_cfg.adam_eps,
    )
    schedule = functools.partial(
        lr_lambda, total=total, warmup=warmup, kind=train_cfg.scheduler, min_ratio=train_cfg.min_lr_ratio
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    lora = peft_cfg.method != "full"
    if lora:
        ckpt.register_lora_hooks(accelerator)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    ds = accelerator.distributed_type.value == "DEEPSPEED"
    save_kwargs = {"exclude_frozen_parameters": True} if (ds and lora) else {}

    start = 0
    if resume_from is not None:
        state = ckpt.read_state(resume_from)
        if state["global_batch"] != plan.global_batch * train_cfg.grad_accum:
            raise TrainingError(
                f"{resume_from} was trained with a global batch of {state['global_batch']}, this run has "
                f"{plan.global_batch * train_cfg.grad_accum}; resume with the same batch size x processes"
            )
        load_kwargs = {"load_module_strict": False} if (ds and lora) else {}
        accelerator.load_state(str(resume_from), **load_kwargs)
        start = int(state["step"])
        if main:
            log.info("resumed from %s at step %d", resume_from, start)

    sampler = _Plan(plan, train_cfg.grad_accum, start, total, rank, train_cfg.per_device_batch_size)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=SkippingCollate(collator, train_cfg.max_bad_images),
        num_workers=train_cfg.num_workers,
        persistent_workers=False,
    )
    metrics = MetricsLogger(
        output_dir,
        main,
        train_cfg.tensorboard,
        train_cfg.wandb,
        train_cfg.wandb_project,
        train_cfg.wandb_mode,
        resolved_config,
        resume_step=start if resume_from is not None else None,
    )
    if main and resolved_config is not None:
        (output_dir / "resolved_config.json").write_text(
            json.dumps(resolved_config, indent=1, default=str) + "\n"
        )

    def state_at(step: int) -> dict[str, Any]:
        return {
            "step": step,
            "micro_batches": step * train_cfg.grad_accum,
            "epoch": (step * train_cfg.grad_accum) / max(1, plan.micro_batches_per_epoch()),
            "global_batch": plan.global_batch * train_cfg.grad_accum,
            "world_size": world,
            "total_steps": total,
            "seed": train_cfg.seed,
        }

    progress = None
    if main and train_cfg.progress_bar:
        from tqdm.auto import tqdm

        progress = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)

    device = accelerator.device
    step, last_loss, stopped = start, None, False
    bad_images = too_long = 0
    it = iter(loader)
    model.train()
    try:
        while step < total:
            if train_cfg.stop_after_steps is not None and step - start >= train_cfg.stop_after_steps:
                stopped = True
                break
            t0 = time.perf_counter()
            loss_sum_total = torch.zeros((), device=device)
            tokens_total = torch.zeros((), device=device, dtype=torch.long)
            samples = seq_tokens = 0
            grad_norm = None
            for _ in range(train_cfg.grad_accum):
                batch = next(it)
                bad_images += batch.pop("_bad_images", 0)
                too_long += batch.pop("_too_long", 0)
                batch = {k: v.to(device) for k, v in batch.items()}
                samples += batch["input_ids"].shape[0]
                seq_tokens += int(batch["attention_mask"].sum())
                with accelerator.accumulate(model):
                    loss_sum, n_tok = token_loss(model, batch)
                    n_global = accelerator.reduce(n_tok.detach().clone(), "sum").clamp(min=1)
                    global_sum = accelerator.reduce(loss_sum.detach().clone(), "sum")
                    if not torch.isfinite(global_sum):
                        raise TrainingError(
                            f"non-finite loss ({global_sum.item()}) at step {step + 1}; stopping. The last good "
                            f"checkpoint is kept in {ckpt.checkpoint_root(output_dir)}. Lower train.lr, use "
                            "bf16 instead of fp16, or check the data of this step"
                        )
                    loss_sum_total += global_sum
                    tokens_total += n_global
                    accelerator.backward(loss_sum * world / n_global)
                    if accelerator.sync_gradients:
                        if train_cfg.max_grad_norm:
                            grad_norm = accelerator.clip_grad_norm_(
                                model.parameters(), train_cfg.max_grad_norm
                            )
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
            step += 1
            dt = time.perf_counter() - t0
            last_loss = (loss_sum_total / tokens_total.clamp(min=1)).item()
            if step % train_cfg.log_every == 0 or step == total:
                row: dict[str, Any] = {
                    "loss": last_loss,
                    "lr": scheduler.get_last_lr()[-1],
                    "grad_norm": None if grad_norm is None else float(grad_norm),
                    "samples_per_s": samples * world / dt,
                    "tokens_per_s": seq_tokens * world / dt,
                    "step_time_s": dt,
                    "epoch": state_at(step)["epoch"],
                }
                if torch.cuda.is_available():
                    row["cuda_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
                if bad_images or too_long:
                    row.update(skipped_bad_images=bad_images, dropped_too_long=too_long)
                metrics.log(step, row)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{last_loss:.4f}")
            if (
                eval_manifests
                and train_cfg.eval_every
                and (step % train_cfg.eval_every == 0 or step == total)
            ):
                metrics.log(
                    step,
                    evaluate_during_training(
                        accelerator,
                        model,
                        processor,
                        adapter,
                        eval_manifests,
                        output_dir / "curve" / f"step-{step:06d}",
                    ),
                )
            if train_cfg.save_every and step % train_cfg.save_every == 0 and step < total:
                ckpt.save_checkpoint(
                    accelerator, output_dir, step, state_at(step), train_cfg.keep_last, save_kwargs
                )
    finally:
        if progress is not None:
            progress.close()
        metrics.close()

    if step > start and (stopped or step == total):
        ckpt.save_checkpoint(accelerator, output_dir, step, state_at(step), train_cfg.keep_last, save_kwargs)
    final_dir = None
    if step == total:
        final_dir = save_final(accelerator, model, processor, output_dir / "final")
    accelerator.wait_for_everyone()
    if ds:
        # accelerate left a global "ZeRO-3 is on" marker for transformers; models loaded later in this
        # process (cgmed-cg evaluates right after training) must load whole, not partitioned.
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    # No end_training(): it destroys the process group, and cgmed-cg trains several models in one
    # process. The CLI tears the group down at exit.
    return TrainResult(output_dir, final_dir, step, last_loss, stopped)


def evaluate_during_training(
    accelerator: Any, model: Any, processor: Any, adapter: Any, manifests: dict[str, str], out: Path
) -> dict[str, float]:
    """Option-scoring accuracy of the current weights on each manifest (a point of a CG learning curve)."""
    from cgmed.eval.run import evaluate
    from cgmed.eval.score import EvalConfig

    inner = accelerator.unwrap_model(model)
    inner.eval()
    values = {}
    for name, manifest in manifests.items():
        doc = evaluate(
            "(training)", EvalConfig(bootstrap=0), manifest, out / name, model=(inner, processor, adapter)
        )
        values[f"eval/{name}/accuracy"] = doc["overall"]["accuracy"]
    inner.train()
    return values


def save_final(accelerator: Any, model: Any, processor: Any, out: Path) -> Path:
    """The trained model in Hugging Face format: a full model, or the LoRA adapter (merge with cgmed-model export)."""
    state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 / FSDP shards
    unwrapped = accelerator.unwrap_model(model)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        # transformers' ZeRO-3 loader records every weight-name conversion, used or not, and
        # save_pretrained would revert the unused ones too ("model.model.layers.*").
        unwrapped._weight_conversions = None
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        unwrapped.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
        processor.save_pretrained(out)
    accelerator.wait_for_everyone()
    return out
