"""From configs to a trainable model: load, quantize (QLoRA), freeze, add LoRA, group parameters,
and the optimizer with its learning-rate schedule.

Each function takes plain arguments; :func:`cgmed.train.run.setup_run` wires them together.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from typing import Any

from cgmed.errors import ConfigError
from cgmed.models.registry import PARTS, BackboneAdapter, detect_family, get_adapter
from cgmed.train.config import ModelConfig, PeftConfig, TrainConfig

log = logging.getLogger(__name__)


def resolve_adapter(model_cfg: ModelConfig) -> BackboneAdapter:
    """The backbone adapter of ``model.family``, or of the checkpoint's ``config.json`` when it is null."""
    if not model_cfg.path:
        raise ConfigError(
            "model.path",
            "is required",
            "model.path=DIR (a local checkpoint, e.g. from cgmed-model init) or a hub id",
        )
    family = model_cfg.family or detect_family(model_cfg.path)
    return get_adapter(family)


def quantization_config(adapter: BackboneAdapter, peft_cfg: PeftConfig, compute_dtype: str) -> Any:
    """bitsandbytes 4-bit config for QLoRA; only the language model is quantized."""
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as err:
        raise ConfigError(
            "peft.method",
            f"qlora needs bitsandbytes, which does not import ({err})",
            "pip install bitsandbytes",
        ) from None
    import torch

    # The vision tower, projector and output head stay in full precision (as in QLoRA and
    # LLaMA-Factory): quantizing them costs accuracy for little memory.
    skip = [p.rstrip(".") for p in (*adapter.vision_prefixes, *adapter.projector_prefixes)] + ["lm_head"]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=peft_cfg.quant_type,
        bnb_4bit_use_double_quant=peft_cfg.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
        llm_int8_skip_modules=skip,
    )


def load_model(model_cfg: ModelConfig, peft_cfg: PeftConfig, adapter: BackboneAdapter) -> tuple[Any, Any]:
    """``(model, processor)`` through the adapter's ``from_pretrained`` path, with the attention
    kernel of ``model.attn_implementation`` and, with ``model.use_liger``, Liger's kernels."""
    model_kwargs: dict[str, Any] = {}
    if peft_cfg.method == "qlora":
        compute = "float32" if model_cfg.dtype in ("auto", "float32") else model_cfg.dtype
        model_kwargs["quantization_config"] = quantization_config(adapter, peft_cfg, compute)
    return adapter.load(
        model_cfg.path,
        dtype=model_cfg.dtype,
        trust_remote_code=model_cfg.trust_remote_code,
        model_kwargs=model_kwargs,
        attn_implementation=model_cfg.attn_implementation,
        use_liger=model_cfg.use_liger,
        min_pixels=model_cfg.min_pixels,
        max_pixels=model_cfg.max_pixels,
    )


def lora_targets(model: Any, adapter: BackboneAdapter, peft_cfg: PeftConfig) -> list[str]:
    """Names of the linear modules LoRA wraps: the chosen parts' Linear layers (never lm_head)."""
    import torch

    linear_types: tuple[type, ...] = (torch.nn.Linear,)
    try:
        import bitsandbytes as bnb

        linear_types += (bnb.nn.Linear4bit,)
    except ImportError:
        pass
    names = [n for n, m in model.named_modules() if isinstance(m, linear_types)]
    if peft_cfg.target_modules is not None:
        patterns = [re.compile(t) for t in peft_cfg.target_modules]
        chosen = [n for n in names if any(p.fullmatch(n) or n.endswith("." + p.pattern) for p in patterns)]
        if not chosen:
            raise ConfigError(
                "peft.target_modules",
                f"{peft_cfg.target_modules} match no linear module of the model",
                f"use module names or regexes such as {sorted({n.split('.')[-1] for n in names})[:8]}",
            )
        return chosen
    wanted = {
        "language": peft_cfg.target_language,
        "vision": peft_cfg.target_vision,
        "projector": peft_cfg.target_projector,
    }
    chosen = []
    for n in names:
        part = adapter.part_of(n + ".")
        if part and wanted[part] and not n.startswith("lm_head"):
            chosen.append(n)
    if not chosen:
        raise ConfigError("peft.target_language", "the chosen LoRA targets match no linear module")
    return chosen


def apply_training_mode(
    model: Any, adapter: BackboneAdapter, peft_cfg: PeftConfig, train_cfg: TrainConfig
) -> Any:
    """Freeze switches, LoRA/QLoRA wrapping and gradient checkpointing; returns the model to train."""
    groups = adapter.split_parameters(model)
    # a part with learning rate 0 is frozen: it keeps its weights and costs no gradient memory
    frozen = {part: part in train_cfg.frozen_parts() for part in PARTS}
    by_lr = sorted(p for p in PARTS if frozen[p] and not getattr(train_cfg, f"freeze_{p}"))
    if by_lr:
        log.info("frozen by a learning rate of 0: %s", ", ".join(by_lr))
    if peft_cfg.method == "full":
        for part in PARTS:
            for _, p in groups[part]:
                p.requires_grad_(not frozen[part])
    else:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if peft_cfg.method == "qlora":
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=train_cfg.gradient_checkpointing
            )
        targets = lora_targets(model, adapter, peft_cfg)
        # Only the LoRA weights train; a part's freeze switch turns off its adapters.
        model = get_peft_model(
            model,
            LoraConfig(
                r=peft_cfg.r,
                lora_alpha=peft_cfg.alpha,
                lora_dropout=peft_cfg.dropout,
                target_modules=targets,
                bias="none",
            ),
        )
        for name, p in model.named_parameters():
            if "lora_" in name and frozen[_part(adapter, name)]:
                p.requires_grad_(False)
    if train_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if peft_cfg.method != "full":
            model.enable_input_require_grads()
        model.config.use_cache = False
    # ZeRO-3 partitions parameters as the model loads (numel() is 0); ds_numel is the real size
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise ConfigError(
            "train.freeze_language", "no parameter is trainable", "unfreeze a part or use LoRA targets"
        )
    return model


def _part(adapter: BackboneAdapter, name: str) -> str:
    # peft prefixes names with "base_model.model."
    bare = name.removeprefix("base_model.model.")
    return adapter.part_of(bare) or "language"


def param_groups(model: Any, adapter: BackboneAdapter, train_cfg: TrainConfig) -> list[dict[str, Any]]:
    """Optimizer groups with separate learning rates for vision tower, projector and language model."""
    lrs = {part: train_cfg.part_lr(part) for part in PARTS}
    buckets: dict[tuple[str, bool], list[Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # no weight decay on biases and norms, as usual for transformers
        decay = len(getattr(p, "ds_shape", p.shape)) >= 2
        buckets.setdefault((_part(adapter, name), decay), []).append(p)
    groups = []
    for (part, decay), params in sorted(buckets.items()):
        groups.append(
            {
                "params": params,
                "lr": lrs[part],
                "weight_decay": train_cfg.weight_decay if decay else 0.0,
                "name": f"{part}{'' if decay else '_no_decay'}",
            }
        )
    return groups


def lr_lambda(step: int, total: int, warmup: int, kind: str, min_ratio: float) -> float:
    """Multiplier of the base lr: linear warmup, then cosine / linear decay or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return max(min_ratio, 1.0 - progress * (1.0 - min_ratio))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_optimizer_impl(requested: str, device_type: str, params: list[Any]) -> str:
    """The AdamW implementation a run uses: ``requested``, or for ``auto`` the fastest one the
    device runs: ``fused`` (one kernel for every tensor) on CUDA when every trainable parameter
    is fp32 or bf16, else ``foreach`` (one kernel per operation over all tensors)."""
    if requested != "auto":
        return requested
    import torch

    fused_dtypes = (torch.float32, torch.bfloat16)
    if device_type == "cuda" and params and all(p.dtype in fused_dtypes for p in params):
        return "fused"
    return "foreach"


_IMPL_FLAGS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}


def optimizer_and_scheduler(
    model: Any, adapter: BackboneAdapter, train_cfg: TrainConfig, total_steps: int, impl: str = "for_loop"
) -> tuple[Any, Any]:
    """AdamW (``impl``: fused, foreach or for_loop, see :func:`resolve_optimizer_impl`) over
    :func:`param_groups` and its per-optimizer-step schedule (:func:`lr_lambda`)."""
    import torch

    warmup = (
        train_cfg.warmup_steps
        if train_cfg.warmup_steps is not None
        else math.ceil(total_steps * train_cfg.warmup_ratio)
    )
    optimizer = torch.optim.AdamW(
        param_groups(model, adapter, train_cfg),
        lr=train_cfg.lr,
        betas=(train_cfg.adam_beta1, train_cfg.adam_beta2),
        eps=train_cfg.adam_eps,
        **_IMPL_FLAGS[impl],
    )
    schedule = functools.partial(
        lr_lambda,
        total=total_steps,
        warmup=warmup,
        kind=train_cfg.scheduler,
        min_ratio=train_cfg.min_lr_ratio,
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def resolve_num_workers(requested: int | None, device_type: str, cpu_count: int | None) -> int:
    """DataLoader workers: ``requested`` when set; otherwise 4 on CUDA, where processing the next
    batch in the step would leave the GPU idle (at most the CPU count), and 0 on CPU, where the
    workers would take the cores the step computes on."""
    if requested is not None:
        return requested
    if device_type != "cuda":
        return 0
    return max(1, min(4, cpu_count or 1))
