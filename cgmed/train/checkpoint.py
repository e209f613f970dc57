"""Checkpoints (atomic, the last K kept, resumable exactly) and the final model.

A checkpoint is ``<output>/checkpoints/step-000120/``: accelerate's state (model or LoRA
adapter only, optimizer, scheduler, every rank's RNG; DeepSpeed's own layout under DeepSpeed)
plus ``trainer_state.json`` (step, data position, world size). It is written into a hidden
temporary directory and renamed when complete, so a crash mid-save never leaves a checkpoint
that ``train.resume=auto`` would pick. The finished run's model goes to ``<output>/final/`` in
Hugging Face format (:func:`save_final`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from cgmed.compat import drop_zero3_weight_conversions
from cgmed.errors import ConfigError

STATE_FILE = "trainer_state.json"
PREFIX = "step-"


def checkpoint_root(output_dir: Path) -> Path:
    """The directory holding a run's ``step-N`` checkpoints."""
    return output_dir / "checkpoints"


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    """The checkpoint to resume from; ``auto`` with none found starts fresh, a bad path is an error."""
    if resume is None:
        return None
    if resume == "auto":
        found = complete_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if (path / STATE_FILE).is_file():
        return path
    inside = complete_checkpoints(path) if path.is_dir() else []
    if inside:
        return inside[-1]
    raise ConfigError(
        "train.resume",
        f"{path} holds no complete checkpoint (no {STATE_FILE} in it or in {path}/checkpoints/step-*)",
        "point train.resume at a step-N directory or a run directory, or use train.resume=auto",
    )


def read_state(path: Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of checkpoint ``path``."""
    return json.loads((path / STATE_FILE).read_text())


def save_checkpoint(
    accelerator: Any,
    output_dir: Path,
    step: int,
    state: dict[str, Any],
    keep_last: int,
    save_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically on every rank's behalf; returns its path."""
    root = checkpoint_root(output_dir)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), **(save_kwargs or {}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in complete_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def register_lora_hooks(accelerator: Any) -> None:
    """Make accelerate's save/load_state store only the LoRA weights of a peft model (not the base)."""
    from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

    def save_hook(models: list[Any], weights: list[dict], output_dir: str) -> None:
        for i, model in enumerate(models):
            inner = accelerator.unwrap_model(model)
            if isinstance(inner, PeftModel) and i < len(weights):
                weights[i] = get_peft_model_state_dict(inner, state_dict=weights[i])

    def load_hook(models: list[Any], input_dir: str) -> None:
        from safetensors.torch import load_file

        for i in range(len(models) - 1, -1, -1):
            inner = accelerator.unwrap_model(models[i])
            if not isinstance(inner, PeftModel):
                continue
            name = "model.safetensors" if i == 0 else f"model_{i}.safetensors"
            path = Path(input_dir) / name
            if path.is_file():
                set_peft_model_state_dict(inner, load_file(str(path)))
                models.pop(i)  # loaded here; accelerate must not load it again

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_final(accelerator: Any, model: Any, processor: Any, out: Path) -> Path:
    """The trained model in Hugging Face format: a full model, or the LoRA adapter (merge with cgmed-model export)."""
    state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 / FSDP shards
    unwrapped = accelerator.unwrap_model(model)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        drop_zero3_weight_conversions(unwrapped)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        unwrapped.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
        processor.save_pretrained(out)
    accelerator.wait_for_everyone()
    return out
