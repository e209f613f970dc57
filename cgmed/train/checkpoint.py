"""Checkpoints (atomic, the last K kept, checked before they are loaded) and the final model.

A checkpoint is ``<output>/checkpoints/step-000120/``: accelerate's state (model or LoRA
adapter only, optimizer, scheduler, every rank's RNG; DeepSpeed's own layout under DeepSpeed)
plus ``trainer_state.json`` (step, data position, what makes the run that run, and the size of
every file written). It is written into ``.tmp-step-000120`` and renamed when complete, so a
crash mid-save never leaves a checkpoint that ``train.resume=auto`` would pick; a file truncated
or lost later shows against the recorded sizes (:func:`checkpoint_problems`).

The finished run's model goes to ``<output>/final/`` in Hugging Face format (:func:`save_final`),
written as ``.tmp-final`` and renamed once it holds its completion marker: later stages call
:func:`is_complete` before they use it. A save that fails (a full disk above all) removes its
partial directory on every rank; leftovers of a killed run go at the next start
(:func:`remove_leftovers`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cgmed.compat import drop_zero3_weight_conversions, rng_state_problem
from cgmed.errors import CgmedError, ConfigError
from cgmed.train.distributed import problems_of_all_ranks
from cgmed.train.files import (
    TEMP_PREFIX,
    directory_bytes,
    disk_full_error,
    file_sizes,
    is_disk_full,
    marker_problems,
    remove_temporaries,
    size_problems,
    write_complete_marker,
)

STATE_FILE = "trainer_state.json"
PREFIX = "step-"
FINAL = "final"


def checkpoint_root(output_dir: Path) -> Path:
    """The directory holding a run's ``step-N`` checkpoints."""
    return output_dir / "checkpoints"


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoints that were renamed into place (they hold ``trainer_state.json``), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def resume_candidates(resume: str | None, output_dir: Path) -> list[Path]:
    """The checkpoints ``train.resume`` may continue from, newest first.

    ``auto``: this run's checkpoints (none: a fresh start). A run directory: its checkpoints. A
    ``step-N`` directory: that one only (a problem with it is an error, not a fallback).
    """
    if resume is None:
        return []
    if resume == "auto":
        return complete_checkpoints(output_dir)[::-1]
    path = Path(resume).expanduser()
    if (path / STATE_FILE).is_file():
        return [path]
    inside = complete_checkpoints(path) if path.is_dir() else []
    if inside:
        return inside[::-1]
    raise ConfigError(
        "train.resume",
        f"{path} holds no complete checkpoint (no {STATE_FILE} in it or in {path}/checkpoints/step-*)",
        "point train.resume at a step-N directory or a run directory, or use train.resume=auto",
    )


def read_state(path: Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of checkpoint ``path``."""
    return json.loads((path / STATE_FILE).read_text())


def checkpoint_problems(path: Path, process_index: int) -> list[str]:
    """Why this process could not load checkpoint ``path``: an unreadable state file, files
    missing or shorter than written, an RNG state that cannot be restored. Empty when it can."""
    try:
        state = read_state(path)
    except (OSError, ValueError) as err:
        return [f"{STATE_FILE} is unreadable ({err})"]
    problems = size_problems(path, state.get("files", {}))
    rng = rng_state_problem(path, process_index)
    named = {problem.split(" ")[0] for problem in problems}
    if rng and rng.split(" ")[0] not in named:  # a truncated RNG file is named once
        problems.append(rng)
    return problems


def save_checkpoint(
    accelerator: Any,
    output_dir: Path,
    step: int,
    state: dict[str, Any],
    keep_last: int,
    save_kwargs: dict[str, Any] | None = None,
    model: Any = None,
) -> Path:
    """Write checkpoint ``step`` atomically on every rank's behalf; returns its path.

    ``model`` sizes the disk-full message of a first checkpoint (later ones use the previous one's size).
    """
    root = checkpoint_root(output_dir)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f"{TEMP_PREFIX}{PREFIX}{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()

    def needed() -> int:
        previous = complete_checkpoints(output_dir)
        return directory_bytes(previous[-1]) if previous else _training_state_bytes(model)

    def publish() -> None:
        if not accelerator.is_main_process:
            return
        # the sizes of every rank's files, so that a truncated or lost one is seen before loading
        recorded = {**state, "files": file_sizes(tmp)}
        (tmp / STATE_FILE).write_text(json.dumps(recorded, indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)

    what = f"checkpoint {final.name}"
    _write_or_remove(
        accelerator, tmp, what, lambda: accelerator.save_state(str(tmp), **(save_kwargs or {})), needed
    )
    _write_or_remove(accelerator, tmp, what, publish, needed)
    if accelerator.is_main_process:
        for old in complete_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def save_final(accelerator: Any, model: Any, processor: Any, out: Path, info: dict[str, Any]) -> Path:
    """The trained model in Hugging Face format: a full model, or the LoRA adapter (merge with
    cgmed-model export). ``info`` (step, seed ...) goes into the completion marker."""
    state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 / FSDP shards
    unwrapped = accelerator.unwrap_model(model)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        drop_zero3_weight_conversions(unwrapped)
    tmp = out.with_name(TEMP_PREFIX + out.name)

    def write() -> None:
        if not accelerator.is_main_process:
            return
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        processor.save_pretrained(tmp)
        write_complete_marker(tmp, info)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)

    _write_or_remove(accelerator, tmp, f"the final model {out.name}/", write, lambda: _weight_bytes(model))
    accelerator.wait_for_everyone()
    return out


def is_complete(final_dir: Path) -> bool:
    """Whether ``final_dir`` (a run's ``final/``) was written to the end and is intact since.

    A directory from a killed save, or one whose files went missing or shrank, is not complete:
    rerun the training stage (``train.resume=auto`` writes it again from the last checkpoint).
    """
    return final_dir.is_dir() and not marker_problems(final_dir)


def remove_leftovers(output_dir: Path) -> list[Path]:
    """Remove what a killed run left under temporary names (``.tmp-final``, ``checkpoints/.tmp-step-*``
    and other ``.tmp-*`` files of the run directory); returns what was removed.

    Only the process holding the run directory's lock may call it.
    """
    return remove_temporaries(output_dir) + remove_temporaries(checkpoint_root(output_dir))


def _write_or_remove(
    accelerator: Any, tmp: Path, what: str, write: Callable[[], None], needed: Callable[[], int]
) -> None:
    """Run ``write`` on every rank; when it fails on any, remove ``tmp`` and stop every rank.

    A full disk becomes a message naming the directory and roughly the space needed.
    """
    error: Exception | None = None
    try:
        write()
    except Exception as err:  # any failure must reach the other ranks, or they wait forever
        error = err
    problems = problems_of_all_ranks(
        accelerator, None if error is None else f"{type(error).__name__}: {error}"
    )
    if not problems:
        return
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    if error is None:
        raise CgmedError(f"another process failed while writing {what}: {problems[0]}")
    if is_disk_full(error, tmp.parent, needed()):
        raise disk_full_error(tmp.parent, what, needed()) from error
    raise error


def _weight_bytes(model: Any) -> int:
    if model is None:
        return 0
    return sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in model.parameters())


def _training_state_bytes(model: Any) -> int:
    """Weights plus AdamW's two fp32 moments per trainable parameter: a first checkpoint's size."""
    if model is None:
        return 0
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    return _weight_bytes(model) + 8 * trainable


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
