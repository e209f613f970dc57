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
import json
import logging
from pathlib import Path
from typing import Any

from cgmed.atomic import atomic_write_text
from cgmed.cg import console
from cgmed.cg.config import CGApp, CGConfig
from cgmed.cg.main_process import on_main
from cgmed.cg.records import (
    TINY_BASE_MARKER,
    check_stage_record,
    stage_settings_for_eval,
    stage_settings_for_training,
    write_stage_record,
)
from cgmed.cg.results import Evaluation, SplitSummary
from cgmed.config import as_dict
from cgmed.data.build import Selection, build_split, resolve_root, write_split
from cgmed.data.source import DataConfig, open_source
from cgmed.data.split import SplitConfig
from cgmed.errors import ConfigError
from cgmed.eval.score import EvalConfig
from cgmed.models.processor_cache import with_run_cache

log = logging.getLogger(__name__)


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
