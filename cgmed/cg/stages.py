"""Stages shared by the CG protocol and the pilot: work on the main process, opening the data,
the base model, building (or reusing) a split, training a model, evaluating one.

Every stage leaves its output on disk (``split_meta.json``, ``final/``, ``results.json``) and is
skipped when the command is rerun, so a crash in one stage keeps the others. Every process of a
multi-process launch runs the driver; data building and reports happen on the main process.

A training or evaluation stage records the settings that determine its output in ``stage.json``
beside it (:func:`stage_settings_for_training`, :func:`stage_settings_for_eval`), written before
the stage starts so that a half-finished stage is checked too. A rerun with other settings is
refused, naming the differing keys, unless ``cg.redo`` names the stage: then the stage's folder
(which holds everything made from it: a training's evaluations lie inside it) is removed and the
stage runs again. A training also records its identity, by which an identical finished training
elsewhere is used instead of training again (:mod:`cgmed.cg.reuse`).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cgmed.atomic import TEMP_PREFIX, atomic_write_text
from cgmed.cg import console
from cgmed.cg.config import CGApp, CGConfig
from cgmed.cg.results import Evaluation, SplitSummary
from cgmed.config import as_dict
from cgmed.data.build import Selection, build_split, resolve_root, write_split
from cgmed.data.source import DataConfig, open_source
from cgmed.data.split import SplitConfig
from cgmed.errors import CgmedError, ConfigError
from cgmed.eval.score import EvalConfig
from cgmed.models.processor_cache import with_run_cache

log = logging.getLogger(__name__)
T = TypeVar("T")


def on_main(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on the main process while the others wait; returns its result there (None
    elsewhere). A failure on the main process is raised on every rank: behind a bare barrier the
    others would wait for it until the process-group timeout."""
    from accelerate import PartialState

    state = PartialState()
    result: T | None = None
    failure: BaseException | None = None
    if state.is_main_process:
        try:
            result = fn()
        except Exception as err:  # re-raised below, after every rank has heard of it
            failure = err
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        news = [None if failure is None else type(failure).__name__]
        broadcast_object_list(news, from_process=0)  # a collective: also the barrier
        if news[0] is not None and failure is None:
            raise CgmedError(
                f"stopped on rank {state.process_index}: the main process failed with {news[0]} (its message is "
                "printed by rank 0)"
            )
    if failure is not None:
        raise failure
    return result


def open_data(app: CGApp) -> Any:
    """Start the process group, make the data root (the synthetic world once, on the main
    process) and open the source on every rank."""
    from cgmed.train.distributed import init_process_state

    init_process_state(
        app.distributed
    )  # every rank runs the driver; its barriers use the training process group
    root = on_main(lambda: resolve_root(app.data, app.synth))
    return open_source(app.data, root or resolve_root(app.data, app.synth), app.image)


def with_base_model(app: CGApp, run_dir: Path) -> CGApp:
    """``app`` whose ``model.path`` is set: the configured one, or a tiny random base made for the
    run (``cg.tiny_base``); and whose ``image.processor_cache: auto`` is ``<run_dir>/processor_cache``."""
    app = dataclasses.replace(app, image=with_run_cache(app.image, run_dir))
    if app.model.path is not None:
        return app
    if app.cg.tiny_base is None:
        raise ConfigError(
            "model.path", "is required", "model.path=DIR or a hub id (or cg.tiny_base for a demo)"
        )
    model = dataclasses.replace(app.model, path=str(_tiny_base(app.cg, run_dir)))
    return dataclasses.replace(app, model=model)


# marks a folder as a tiny base made by cgmed-cg: its identity is then its content, so that two
# run directories with identical tiny bases share trainings (cgmed.cg.reuse.base_identity)
TINY_BASE_MARKER = "cgmed_tiny_base.json"


def _tiny_base(cg: CGConfig, run_dir: Path) -> Path:
    from cgmed.models.tiny import init_tiny

    base = cg.tiny_base
    out = run_dir / "base"

    def make() -> None:
        if not (out / "config.json").is_file():
            init_tiny(base.family, out, seed=base.seed, size=base)
        atomic_write_text(out / TINY_BASE_MARKER, json.dumps(as_dict(base), sort_keys=True) + "\n")

    if not (out / TINY_BASE_MARKER).is_file():
        on_main(make)
    return out


# data settings that change which records a split holds (roots and caches may move)
SPLIT_DATA_KEYS = (
    "format",
    "files",
    "test_fraction",
    "split_seed",
    "extra_elements",
    "task_merge",
    "derived",
    "keep_derived_sources",
    "hf",  # format=hf: which datasets, columns and splits make the subsets
)
CHECK_ONLY_SPLIT_KEYS = ("audit_images",)  # switch a check, change no sample


def open_split(
    app: CGApp,
    source: Any,
    cfg: SplitConfig,
    directory: Path,
    folder: str,
    selection: Selection | None = None,
) -> SplitSummary:
    """One split of the run: built on the main process unless ``directory`` holds it already, and
    refused when it was built with other settings (``folder`` names what to delete to redo it).
    ``selection``: the subsets ``cfg`` selects, when the caller has them already."""
    if not (directory / "split_meta.json").is_file():
        on_main(lambda: build_and_write(source, app.data, cfg, directory, selection))
    meta = json.loads((directory / "split_meta.json").read_text())
    check_split_settings(meta, cfg, app.data, directory, folder)
    return SplitSummary(directory, meta)


def check_split_settings(meta: dict, cfg: SplitConfig, data: DataConfig, where: Path, folder: str) -> None:
    """Refuse to reuse a split built with other settings: every later stage (models, evaluations)
    was made from it. A key the recorded config lacks (written by an older cgmed) counts as its
    default."""
    recorded = meta.get("config", {})
    changed = []
    for group, now, defaults, keys in (
        ("split", as_dict(cfg), as_dict(SplitConfig()), None),
        ("data", as_dict(data), as_dict(DataConfig()), SPLIT_DATA_KEYS),
    ):
        old = recorded.get(group) or {}
        for k in keys or [k for k in now if k not in CHECK_ONLY_SPLIT_KEYS]:
            if old.get(k, defaults.get(k)) != now[k]:
                changed.append(f"{group}.{k}")
    if changed:
        raise ConfigError(
            "split",
            f"{where} was built with other settings (differing: {changed}); the models and evaluations made "
            "from it belong to those",
            f"run in a new directory (hydra.run.dir=...), or delete {folder} to redo it",
        )


def build_and_write(
    source: Any, data: DataConfig, cfg: SplitConfig, out: Path, selection: Selection | None = None
) -> None:
    """Build the split of ``cfg`` and write it to ``out`` with the config that made it."""
    built = build_split(source, data, cfg, selection)
    write_split(
        built, out, {"data": {**as_dict(data), "root": str(source.root)}, "split": as_dict(cfg)}, source
    )


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def stage_train_config(app: CGApp, out: Path, seed: int) -> Any:
    """The ``train`` config of the training stage in ``out`` with ``seed``."""
    return dataclasses.replace(
        app.train, seed=seed, resume="auto", output_dir=str(out), eval_every=app.cg.curve_every
    )


def curve_manifests(cg: CGConfig, related: SplitSummary) -> dict[str, str] | None:
    """The test sets a Trained training scores every ``cg.curve_every`` steps (None: no curve)."""
    if not cg.curve_every:
        return None
    return {"target": str(related.manifest("test")), "seen": str(related.manifest("seen_test"))}


def train_stage(
    app: CGApp,
    manifest: Path,
    out: Path,
    seed: int,
    curves: dict[str, str] | None = None,
    run_dir: Path | None = None,
) -> Path:
    """Train one model of ``app.model`` on ``manifest`` into ``out`` (resuming a half-finished one);
    returns its ``final/`` directory, or that of a finished identical training found in
    ``run_dir`` or ``cg.reuse_from`` (recorded in ``out``, :mod:`cgmed.cg.reuse`). ``curves`` are
    the manifests scored every ``cg.curve_every`` steps."""
    from cgmed.cg.reuse import reused_training, training_identity
    from cgmed.train.checkpoint import is_complete
    from cgmed.train.loop import train

    final = out / "final"
    cfg = stage_train_config(app, out, seed)
    settings = stage_settings_for_training(app, cfg, manifest)
    check_stage_record(out, "train", settings, app.cg.redo)
    identity = training_identity(app, cfg, settings["manifest_sha256"], curves)
    original = reused_training(app.cg, out, settings, identity, run_dir)
    line = console.training_line(out, cfg, manifest)
    if original is not None:
        line.reused(original)
        return original / "final"
    # the completion marker, not a file that a killed save may have left behind
    if is_complete(final):
        line.skipped("done")
        return final
    on_main(lambda: write_stage_record(out, "train", settings, identity=identity))
    line.started()
    result = train(
        app.model,
        cfg,
        app.peft,
        app.distributed,
        str(manifest),
        out,
        None,
        eval_manifests=curves,
        image=app.image,
    )
    line.finished(console.loss_headline(result.last_loss))
    _free_memory()
    return final


def eval_stage(
    app: CGApp, model_path: Path | str, manifest: Path, out: Path, eval_cfg: EvalConfig | None = None
) -> Evaluation:
    """Evaluate ``model_path`` on ``manifest`` into ``out`` (with ``app.eval`` unless ``eval_cfg``
    is given); a finished evaluation is read back."""
    from cgmed.eval.run import evaluate

    eval_cfg = eval_cfg or app.eval
    settings = stage_settings_for_eval(app, eval_cfg, model_path, manifest, out)
    check_stage_record(out, "eval", settings, app.cg.redo)
    line = console.evaluation_line(out, eval_cfg, manifest)
    if (out / "results.json").is_file():
        done = Evaluation(json.loads((out / "results.json").read_text()), out)
        line.skipped("done", console.evaluation_headline(done.results))
        return done
    on_main(lambda: write_stage_record(out, "eval", settings))
    line.started()
    model = app.model
    doc = evaluate(
        str(model_path),
        eval_cfg,
        str(manifest),
        out,
        model.family,
        model.dtype,
        {"min_pixels": model.min_pixels, "max_pixels": model.max_pixels},
        image=app.image,
        attn_implementation=model.attn_implementation,
        use_liger=model.use_liger,
        progress=app.train.progress_bar,
    )
    line.finished(console.evaluation_headline(doc))
    _free_memory()
    return Evaluation(doc, out)


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
