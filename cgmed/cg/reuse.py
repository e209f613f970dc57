"""Train once what is the same: a training's identity, and the use of a finished identical
training instead of training again.

A training is identified (:func:`training_identity`) by the content of its manifest, its base
model (:func:`base_identity`: a hub id, a local folder's resolved path, or for a tiny base made by
``cgmed-cg`` its content, so that two run directories with identical tiny bases match) and every
setting that changes its weights: the model keys, the weight-changing train keys with the seed
and peft (:func:`cgmed.cg.records.weight_settings`, the same that ``stage.json`` checks), the image
conversion, the global batch that the process count makes, and, for a training that scores
learning curves (``cg.curve_every``), the content of the curve manifests. Every training stage
records its identity in its ``stage.json``.

Before training, ``cgmed-cg`` (``cg.reuse``, on by default) looks for a finished training (its
``final/`` complete) with the same identity in the run directory and in the directories of
``cg.reuse_from`` (searched recursively). When it finds one, the stage's folder gets a record of
the reuse instead of weights: ``stage.json`` with the identity, ``reused_from`` (the original
folder relative to the stage) and ``reused_from_absolute``; the evaluations load the original's
``final/`` and their records name it, and the report says which arms were shared.

Safety:

* a half-finished original is never used; a stage that started a training of its own resumes it;
* a reuse record whose original is gone, unfinished, or holds another training now (its identity
  differs), or whose identity is not this run's, is refused, naming both folders;
  ``cg.redo=[train]`` then removes the record (and the evaluations beside it), never the
  original, and the stage is decided afresh;
* the decision is made on the main process and broadcast, so every rank follows the same one;
* two jobs that start an identical training at the same time both train (nothing is locked
  across jobs): reuse needs the original finished first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from cgmed.atomic import TEMP_PREFIX
from cgmed.cg.config import CGApp, CGConfig
from cgmed.cg.main_process import on_main
from cgmed.cg.records import (
    STAGE_RECORD,
    TINY_BASE_MARKER,
    file_sha256,
    read_stage_doc,
    remove_stage,
    weight_settings,
    write_stage_record,
)
from cgmed.cg.results import Evaluation
from cgmed.errors import CgmedError, ConfigError
from cgmed.models.processor_cache import RUN_CACHE_FOLDER

log = logging.getLogger(__name__)
T = TypeVar("T")


def base_identity(model_path: str) -> str:
    """What a base model is, for :func:`training_identity`: the content hash of a tiny base made by
    ``cgmed-cg`` (every file of its folder), the resolved path of another local folder, or the hub id."""
    path = Path(model_path).expanduser()
    if (path / TINY_BASE_MARKER).is_file():
        return f"tiny-base-sha256:{folder_sha256(path, skip=(TINY_BASE_MARKER,))}"
    if path.exists():
        return f"local:{path.resolve()}"
    return f"hub:{model_path}"


def folder_sha256(folder: Path, skip: Iterable[str] = ()) -> str:
    """One hash over the names and contents of every file under ``folder`` (but ``skip``)."""
    digest = hashlib.sha256()
    skipped = set(skip)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in skipped):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def identity_fields(
    app: CGApp, cfg: Any, manifest_sha256: str, curves: dict[str, str] | None = None, base: str | None = None
) -> dict[str, Any]:
    """Everything :func:`training_identity` hashes; ``base`` defaults to ``app.model.path``'s
    :func:`base_identity` (a dry run, before the tiny base exists, passes a placeholder)."""
    from cgmed.train.config import resolve_global_batch
    from cgmed.train.distributed import world_size

    world = world_size()
    fields: dict[str, Any] = {"model.base": base or base_identity(str(app.model.path))}
    fields.update(weight_settings(app, cfg))
    # train.global_batch_size may be null: then the process count sets the batch of a step
    batch = resolve_global_batch(cfg, world).effective_batch(world)
    fields["train.effective_global_batch"] = batch["global_batch_size"]
    # the conversion settings (describe() leaves out where processed pixels are cached)
    fields.update({f"image.{key}": value for key, value in app.image.describe().items()})
    fields["manifest_sha256"] = manifest_sha256
    if curves:  # the learning curves in metrics.jsonl are scored on these test sets
        fields["curve_manifests_sha256"] = {name: file_sha256(Path(p)) for name, p in sorted(curves.items())}
    return json.loads(json.dumps(fields, sort_keys=True))


def training_identity(
    app: CGApp, cfg: Any, manifest_sha256: str, curves: dict[str, str] | None = None, base: str | None = None
) -> str:
    """The identity of a training of ``app`` with the ``train`` config ``cfg`` on the manifest whose
    content hash is ``manifest_sha256``: equal identities make equal weights (up to nondeterminism
    of the hardware)."""
    fields = identity_fields(app, cfg, manifest_sha256, curves, base)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def decided_on_main(fn: Callable[[], T]) -> T | None:
    """``fn`` run on the main process (see :func:`cgmed.cg.main_process.on_main`) and its result handed
    to every rank, so that all of them follow the one decision."""
    from accelerate import PartialState

    result = on_main(fn)
    if PartialState().num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [result]
        broadcast_object_list(box, from_process=0)
        result = box[0]
    return result


def reused_training(
    cg: CGConfig, out: Path, settings: dict[str, Any], identity: str, run_dir: Path | None
) -> Path | None:
    """The folder of the finished training that the train stage in ``out`` uses instead of
    training (recorded in ``out``), or None when it trains (or has trained) itself. Searched in
    ``run_dir`` and ``cg.reuse_from``; the same answer on every rank."""
    found = decided_on_main(lambda: _decide(cg, out, settings, identity, run_dir))
    return None if found is None else Path(found)


def _decide(
    cg: CGConfig, out: Path, settings: dict[str, Any], identity: str, run_dir: Path | None
) -> str | None:
    # runs on the main process only: no on_main (a collective) in here
    from cgmed.train.checkpoint import is_complete

    doc = read_stage_doc(out)
    if doc is not None and "reused_from" in doc:
        original = _checked_original(cg, out, doc, identity)
        if original is not None:
            if not cg.reuse:
                log.warning(
                    "cg.reuse=false, but %s reuses %s already: delete it to train it there", out, original
                )
            log.debug("skip (reused): %s uses %s", out, original)
            return str(original)
    elif doc is not None or is_complete(out / "final"):
        return None  # a training of its own, begun or finished: resumed or kept
    if not cg.reuse:
        return None
    found = find_training(identity, search_roots(cg, run_dir), exclude=out)
    if found is None:
        return None
    write_stage_record(
        out,
        "train",
        settings,
        identity=identity,
        reused_from=os.path.relpath(found, out.resolve()),
        reused_from_absolute=str(found),
    )
    log.debug(
        "reuse: %s is the same training as %s (identity %s): its final/ is used", out, found, identity[:12]
    )
    return str(found)


def original_of(stage_dir: Path, doc: dict[str, Any]) -> Path | None:
    """The original folder of a reuse record: by its path relative to the stage (a run directory
    moved whole), else by its absolute path; None when neither exists."""
    for where in (stage_dir / doc.get("reused_from", ""), Path(doc.get("reused_from_absolute", ""))):
        if doc.get("reused_from") and where.is_dir():
            return where.resolve()
    return None


def _checked_original(cg: CGConfig, out: Path, doc: dict[str, Any], identity: str) -> Path | None:
    """The original of the reuse record ``doc`` in ``out`` when it still holds this training;
    otherwise a ConfigError, or with ``cg.redo=[train]`` the record removed and None."""
    from cgmed.train.checkpoint import is_complete

    original = original_of(out, doc)
    shown = original or doc.get("reused_from_absolute") or doc.get("reused_from")
    problem = None
    if doc.get("identity") != identity:
        problem = "was recorded for another training identity than this run's (its base model or image settings changed)"
    elif original is None:
        problem = "is gone"
    elif (_record_or_none(original) or {}).get("identity") != identity:
        problem = "holds another training now (its stage.json has another identity)"
    elif not is_complete(original / "final"):
        problem = "has no finished final/ (it is being trained again, or was removed)"
    if problem is None:
        return original
    if "train" in cg.redo:
        log.warning("redo (cg.redo): %s, whose original %s %s", out, shown, problem)
        remove_stage(out)
        return None
    raise ConfigError(
        "cg.redo",
        f"the train stage in {out} reuses the training in {shown}, which {problem}; the evaluations in "
        f"{out} were made from that model",
        f"add cg.redo=[train] to drop the reuse record in {out} (with the evaluations beside it; the original "
        f"is left alone) and train or reuse anew, or delete {out}, or restore {shown}",
    )


def _record_or_none(stage_dir: Path) -> dict[str, Any] | None:
    try:
        return read_stage_doc(stage_dir)
    except CgmedError:  # an unreadable record elsewhere is no candidate
        return None


_WARNED: set[str] = set()


def search_roots(cg: CGConfig, run_dir: Path | None) -> list[Path]:
    """The run directory and the existing directories of ``cg.reuse_from`` (each once)."""
    roots = [run_dir.resolve()] if run_dir is not None else []
    for i, entry in enumerate(cg.reuse_from):
        path = Path(entry).expanduser()
        if path.is_dir():
            roots.append(path.resolve())
        elif entry not in _WARNED:  # a sweep's sibling job may not have started yet
            _WARNED.add(entry)
            log.warning("cg.reuse_from[%d]: %s is no directory (yet): not searched", i, entry)
    return list(dict.fromkeys(roots))


# folders of a run that hold no training, each with many files: the processed-image cache and the splits
NO_TRAINING_FOLDERS = frozenset({RUN_CACHE_FOLDER, "splits"})


def find_training(identity: str, roots: list[Path], exclude: Path | None = None) -> Path | None:
    """The first folder under ``roots`` (in sorted order) holding a finished training of
    ``identity`` of its own (not a reuse record); None when there is none."""
    from cgmed.train.checkpoint import is_complete

    skip = exclude.resolve() if exclude is not None else None
    for root in roots:
        for folder, subdirs, files in os.walk(root):
            if STAGE_RECORD in files or "config.json" in files:
                # a stage's folders hold its outputs and evaluations, a model's its files: no training
                subdirs[:] = []
                here = Path(folder).resolve()
                doc = _record_or_none(here) if (here / "final").is_dir() and here != skip else None
                if (
                    doc is not None
                    and doc.get("stage") == "train"
                    and doc.get("identity") == identity
                    and "reused_from" not in doc
                    and is_complete(here / "final")
                ):
                    return here
            subdirs[:] = sorted(
                d for d in subdirs if d not in NO_TRAINING_FOLDERS and not d.startswith((TEMP_PREFIX, "."))
            )
    return None


def reused_from(evaluations: list[Evaluation]) -> list[str | None]:
    """Per evaluation of a trained arm (``<run>/<target>/seed-<s>/<arm>/eval``): the training its
    arm reused, relative to the run directory when it lies there, else absolute; None where the
    arm trained itself."""
    shared: list[str | None] = []
    for evaluation in evaluations:
        arm = evaluation.directory.parent
        doc = _record_or_none(arm) or {}
        if "reused_from" not in doc:
            shared.append(None)
            continue
        original = original_of(arm, doc) or Path(doc.get("reused_from_absolute") or doc["reused_from"])
        run_dir = arm.resolve().parents[2]
        inside = original.is_relative_to(run_dir)
        shared.append(original.relative_to(run_dir).as_posix() if inside else str(original))
    return shared


def shared_lines(rows: list[dict[str, Any]]) -> list[str]:
    """``cg_report.md``'s lines on the arms that used another's training (``reused_from``)."""
    lines = []
    for row in rows:
        uses = [
            f"{label} seed {seed} = {origin}"
            for key, label in (("trained", "Trained"), ("baseline_plus", "Baseline+"))
            for seed, origin in zip(row["seeds"], (row.get(key) or {}).get("reused_from") or [], strict=False)
            if origin
        ]
        if uses:
            lines.append(
                f"Shared training ({row['name']}): {'; '.join(uses)}: the same training data, base model and "
                "recipe, trained once (cg.reuse)."
            )
    return lines
