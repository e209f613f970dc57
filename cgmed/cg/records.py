"""The records a ``cgmed-cg`` stage leaves beside its output: ``stage.json`` with the settings that
determine the stage's output (the keys below say which settings change weights or predictions and
which do not), written before the stage starts so that a half-finished stage is checked too, and
the checks that refuse to reuse a stage made with other settings (or remove it for ``cg.redo``).
Below both :mod:`cgmed.cg.stages` and :mod:`cgmed.cg.reuse`, which read and write these records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from cgmed.atomic import TEMP_PREFIX, atomic_write_text
from cgmed.cg.config import CGApp
from cgmed.cg.main_process import on_main
from cgmed.config import as_dict
from cgmed.errors import ConfigError
from cgmed.eval.score import EvalConfig

log = logging.getLogger(__name__)

# marks a folder as a tiny base made by cgmed-cg: its identity is then its content, so that two
# run directories with identical tiny bases share trainings (cgmed.cg.reuse.base_identity)
TINY_BASE_MARKER = "cgmed_tiny_base.json"

STAGE_RECORD = "stage.json"
STAGE_RECORD_FORMAT = "cgmed-cg-stage/1"

# train keys that change the weights a training produces
WEIGHT_TRAIN_KEYS = (
    "seed",
    "max_steps",
    "epochs",
    "per_device_batch_size",
    "grad_accum",
    "global_batch_size",
    "lr",
    "lr_vision",
    "lr_projector",
    "lr_language",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_eps",
    "warmup_ratio",
    "warmup_steps",
    "scheduler",
    "min_lr_ratio",
    "max_grad_norm",
    "precision",
    "gradient_checkpointing",
    "freeze_vision",
    "freeze_projector",
    "freeze_language",
    "max_length",
    "on_overflow",
    "max_bad_images",
    "group_by_length",
    "optimizer_impl",
    "deterministic",
)
# train keys that only place, log, pace or checkpoint a training: its weights stay the same
OUTPUT_TRAIN_KEYS = (
    "output_dir",
    "stop_after_steps",
    "num_workers",
    "save_every",
    "keep_last",
    "resume",
    "resume_allow_changes",
    "log_every",
    "tensorboard",
    "wandb",
    "wandb_project",
    "wandb_mode",
    "progress_bar",
    "eval_every",
)
# eval keys that change the predictions (or which samples are scored)
PREDICTION_EVAL_KEYS = (
    "method",
    "max_new_tokens",
    "circular",
    "base",
    "shots",
    "shot_seed",
    "max_bad_images",
    "stop_at_answer",
)
# eval keys that change no prediction: how many at a time and in what order, the interval that results.json states
# (the report recomputes its intervals from the predictions), and where the example pool lies
# (its content is recorded instead)
OUTPUT_EVAL_KEYS = ("batch_size", "bootstrap", "seed", "shot_pool", "sort_by_length")
# model keys that change what a model computes
MODEL_KEYS = ("family", "dtype", "min_pixels", "max_pixels")


def file_sha256(path: Path) -> str:
    """The content hash of a manifest: the same file name may hold other samples after a rebuild."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_location(model_path: Path | str, stage_dir: Path) -> str:
    """A local model relative to the stage (a run directory may move whole); a hub id as given."""
    path = Path(model_path)
    if path.exists():
        return os.path.relpath(path.resolve(), stage_dir.resolve())
    return str(model_path)


def _jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as they read back from JSON (tuples become lists), so that equal compares equal."""
    return json.loads(json.dumps(settings, sort_keys=True))


def weight_settings(app: CGApp, cfg: Any) -> dict[str, Any]:
    """The settings besides the base model and the data that change a training's weights: the
    model keys, the weight-changing train keys (with the seed) and peft."""
    train = as_dict(cfg)
    settings: dict[str, Any] = {f"model.{k}": getattr(app.model, k) for k in MODEL_KEYS}
    settings.update({f"train.{k}": train[k] for k in WEIGHT_TRAIN_KEYS})
    settings.update({f"peft.{k}": v for k, v in as_dict(app.peft).items()})
    return settings


def stage_settings_for_training(app: CGApp, cfg: Any, manifest: Path) -> dict[str, Any]:
    """What determines a training's weights: the base model, the weight-changing train keys (with
    the seed), peft and the training manifest's content."""
    out = Path(cfg.output_dir)
    settings: dict[str, Any] = {"model.path": _model_location(app.model.path, out)}
    settings.update(weight_settings(app, cfg))
    settings["manifest_sha256"] = file_sha256(manifest)
    return _jsonable(settings)


def stage_settings_for_eval(
    app: CGApp, eval_cfg: EvalConfig, model_path: Path | str, manifest: Path, out: Path
) -> dict[str, Any]:
    """What determines an evaluation's predictions: the model evaluated, the prediction-changing
    eval keys, the test manifest's content (and the example pool's, for few-shot)."""
    settings: dict[str, Any] = {"model": _model_location(model_path, out)}
    settings.update({f"model.{k}": getattr(app.model, k) for k in MODEL_KEYS})
    settings.update({f"eval.{k}": getattr(eval_cfg, k) for k in PREDICTION_EVAL_KEYS})
    settings["manifest_sha256"] = file_sha256(manifest)
    if eval_cfg.shot_pool:
        settings["shot_pool_sha256"] = file_sha256(Path(eval_cfg.shot_pool))
    return _jsonable(settings)


def read_stage_record(stage_dir: Path) -> dict[str, Any] | None:
    """The settings recorded for the stage in ``stage_dir``; None when there is no record (a stage
    not started, or one made before stages recorded their settings)."""
    doc = read_stage_doc(stage_dir)
    return None if doc is None else doc["settings"]


def read_stage_doc(stage_dir: Path) -> dict[str, Any] | None:
    """The whole record of the stage in ``stage_dir`` (its settings, and for a training its
    ``identity`` and, when it reuses another, ``reused_from``); None when there is none."""
    path = stage_dir / STAGE_RECORD
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc["settings"], dict):
            raise TypeError("settings is not an object")
        return doc
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            "cg.redo",
            f"{path} is unreadable ({err}), so the settings of the stage in {stage_dir} are unknown",
            f"delete {stage_dir} to redo that stage",
        ) from err


def write_stage_record(stage_dir: Path, stage: str, settings: dict[str, Any], **extra: Any) -> None:
    """Record the settings that make the ``stage`` (train / eval) in ``stage_dir`` (atomically),
    with ``extra`` fields (a training's ``identity``, ``reused_from``)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    doc = {"format": STAGE_RECORD_FORMAT, "stage": stage, "settings": settings, **extra}
    atomic_write_text(stage_dir / STAGE_RECORD, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def check_stage_record(stage_dir: Path, stage: str, settings: dict[str, Any], redo: list[str]) -> None:
    """Refuse to reuse the stage in ``stage_dir`` when it was made with other settings, or, when
    ``redo`` names the stage, remove it (and so what was made from it) to run it again."""
    on_main(lambda: _remove_stale_leftovers(stage_dir))
    recorded = read_stage_record(stage_dir)
    if recorded is None:
        if stage_dir.is_dir() and any(stage_dir.iterdir()):
            log.warning("%s has no %s: its settings cannot be checked", stage_dir, STAGE_RECORD)
        return
    changed = sorted(k for k in {*recorded, *settings} if recorded.get(k) != settings.get(k))
    if not changed:
        return
    if stage not in redo:
        detail = ", ".join(f"{k}: {recorded.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        raise ConfigError(
            "cg.redo",
            f"the {stage} stage in {stage_dir} was made with other settings ({detail}); it and "
            "everything made from it belong to those",
            f"add cg.redo=[{stage}] to redo such stages (and what was made from them), or run in a new "
            "directory (hydra.run.dir=...)",
        )
    log.warning("redo (cg.redo): %s, whose settings differ in %s", stage_dir, changed)
    on_main(lambda: remove_stage(stage_dir))


def _stale_name(stage_dir: Path, pid: int | str) -> Path:
    return stage_dir.with_name(f"{TEMP_PREFIX}stale-{stage_dir.name}.{pid}")


def remove_stage(stage_dir: Path) -> None:
    """Remove a stale stage: renamed first, so that a kill while deleting leaves a temporary
    name (removed by the next check of that stage), never a half-deleted stage under its own name."""
    doomed = _stale_name(stage_dir, os.getpid())
    stage_dir.rename(doomed)
    shutil.rmtree(doomed)


def _remove_stale_leftovers(stage_dir: Path) -> None:
    if stage_dir.parent.is_dir():
        for leftover in stage_dir.parent.glob(_stale_name(stage_dir, "*").name):
            shutil.rmtree(leftover, ignore_errors=True)
