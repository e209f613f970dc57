"""Where a CG run stands, read from its directory: the run record, the run directories under a
sweep, and the stages of each target that are done.

``cgmed-cg`` writes ``<run>/cg_run.json`` when it starts (the composed config, the targets it
planned, ``status: running``) and sets ``status`` to ``finished`` or ``failed`` (with the error)
when it ends; a job killed by its scheduler stays ``running``. A run made before the record
existed is read from Hydra's ``.hydra/config.yaml`` instead (:func:`load_plan`).

The stages of a target are those :func:`cgmed.cg.protocol.run_target` runs, in its order
(:func:`target_stages`): the splits, the Baseline evaluations, then per seed the Trained
training and evaluations, then Baseline+'s. A target is done when every stage is; otherwise the
first stage that is not done says where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgmed.atomic import atomic_write_text
from cgmed.cg.config import CGApp, CGConfig, CGTarget
from cgmed.config import as_dict, build_config
from cgmed.errors import CgmedError, DataError
from cgmed.eval.score import EvalConfig

RUN_RECORD = "cg_run.json"
RUN_RECORD_FORMAT = "cgmed-cg-run/1"


def write_run_record(run_dir: Path, app: CGApp, planned: list[tuple[str, CGTarget, str]]) -> None:
    """Record at the start of a run what it will do: its config and its ``(name, spec, subset
    id)`` targets (after ``cg.only``), with ``status: running``."""
    indices = {id(spec): i for i, spec in enumerate(app.cg.targets)}
    doc = {
        "format": RUN_RECORD_FORMAT,
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "targets": [
            {"name": name, "index": indices.get(id(spec)), "subset": subset, "spec": as_dict(spec)}
            for name, spec, subset in planned
        ],
        # every row of the experiment (named ones: a sweep job plans one, cg.only), to tell what no job ran
        "experiment_targets": [spec.name for spec in app.cg.targets],
        "config": as_dict(app),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RUN_RECORD, json.dumps(doc, indent=1, default=str) + "\n")


def mark_run(run_dir: Path, status: str, error: BaseException | None = None) -> None:
    """Set the run record's ``status`` (``finished`` / ``failed``, with the error's text); a run
    without a record (a dry run, a failure before planning) is left alone. Main process only
    (``RANK`` 0): every rank of a multi-process launch raises the same failure."""
    path = run_dir / RUN_RECORD
    if int(os.environ.get("RANK", "0")) != 0 or not path.is_file():
        return
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc.update(status=status, ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if error is not None:
        doc["error"] = f"{type(error).__name__}: {error}"
    atomic_write_text(path, json.dumps(doc, indent=1, default=str) + "\n")


@dataclass
class PlannedTarget:
    """A target a run planned: its folder name, its row of ``cg.targets`` and its position there."""

    name: str
    spec: CGTarget
    index: int | None


@dataclass
class RunPlan:
    """What a run directory says about itself: its config (as recorded), the targets it planned,
    the named targets of its experiment, and how the run ended (``running`` when unknown)."""

    directory: Path
    cg: CGConfig
    eval: EvalConfig
    config: dict[str, Any]  # every group as plain data (the run record's, or Hydra's composed config)
    targets: list[PlannedTarget]
    experiment_targets: list[str]
    status: str = "running"
    error: str | None = None


def is_run_dir(path: Path) -> bool:
    """A ``cgmed-cg`` run directory: it has a run record, or Hydra's record of a ``cgmed-cg`` job."""
    if (path / RUN_RECORD).is_file():
        return True
    hydra = path / ".hydra" / "hydra.yaml"
    if not (hydra.is_file() and (path / ".hydra" / "config.yaml").is_file()):
        return False
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(OmegaConf.load(hydra), "hydra.job.name") == "cg"
    except Exception:  # an unreadable hydra.yaml is no run of ours
        return False


def find_run_dirs(paths: list[Path], exclude: list[Path]) -> list[Path]:
    """Every run directory at or under ``paths`` (a run, a sweep directory, folders of job
    folders), sorted, leaving out those at or under ``exclude``; a run's own folders are not
    searched further."""
    skip = [p.resolve() for p in exclude]
    found: set[Path] = set()
    for top in paths:
        for directory in _walk(top.resolve()):
            if not any(directory == s or s in directory.parents for s in skip):
                found.add(directory)
    return sorted(found)


def _walk(top: Path) -> Iterator[Path]:
    for here, subdirs, _ in os.walk(top):
        path = Path(here)
        if is_run_dir(path):
            subdirs.clear()
            yield path
            continue
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))


def load_plan(run_dir: Path) -> RunPlan:
    """The run's plan from its ``cg_run.json``, else from Hydra's ``.hydra/config.yaml``."""
    record = run_dir / RUN_RECORD
    if record.is_file():
        try:
            doc = json.loads(record.read_text(encoding="utf-8"))
            return _plan(run_dir, doc["config"], doc)
        except (ValueError, KeyError, TypeError, CgmedError) as err:
            raise DataError(
                str(record), f"unreadable run record ({err})", f"delete it and rerun cgmed-cg in {run_dir}"
            ) from err
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "config.yaml"
    try:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        return _plan(run_dir, config, None)
    except Exception as err:
        raise DataError(
            str(path), f"cannot be read as a cgmed-cg config ({err})", f"leave {run_dir} out (exclude=[...])"
        ) from err


def _plan(run_dir: Path, config: dict[str, Any], record: dict[str, Any] | None) -> RunPlan:
    cg = build_config(CGConfig, _known(CGConfig, config.get("cg")), "cg")
    eval_cfg = build_config(EvalConfig, _known(EvalConfig, config.get("eval")), "eval")
    if record is not None:
        targets = [
            PlannedTarget(
                t["name"], build_config(CGTarget, _known(CGTarget, t["spec"]), "targets"), t.get("index")
            )
            for t in record["targets"]
        ]
        names = [n for n in record.get("experiment_targets", []) if n]
        status, error = record.get("status", "running"), record.get("error")
    else:
        targets = _targets_from_config(run_dir, cg)
        names = [t.name for t in cg.targets if t.name]
        status, error = "running", None  # Hydra does not record how a job ended
    return RunPlan(run_dir, cg, eval_cfg, config, targets, names, status, error)


def _known(cls: type, recorded: dict[str, Any] | None) -> dict[str, Any]:
    """The keys of a recorded config that this cgmed's ``cls`` has: a run made by another version
    may record keys since added or removed (a missing one takes its default)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in (recorded or {}).items() if k in names}


def _targets_from_config(run_dir: Path, cg: CGConfig) -> list[PlannedTarget]:
    """The targets a run planned, from its config: each row's name, or for an unnamed row the
    folder whose split holds out that row's target and trains on its ``related``."""
    planned = []
    for i, spec in enumerate(cg.targets):
        name = spec.name or _folder_of_unnamed(run_dir, spec)
        if name is None or (cg.only is not None and name not in cg.only):
            continue
        planned.append(PlannedTarget(name, spec, i))
    return planned


def _folder_of_unnamed(run_dir: Path, spec: CGTarget) -> str | None:
    for meta_path in sorted(run_dir.glob("*/splits/related/split_meta.json")):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        split = meta.get("config", {}).get("split", {})
        (subset,) = meta["targets"][:1] or [{}]
        wanted = spec.target if isinstance(spec.target, dict) else {"id": str(spec.target)}
        if (
            split.get("train") == spec.related
            and list(split.get("without") or []) == list(spec.without)
            and all(subset.get(k) == v for k, v in wanted.items())
        ):
            return meta_path.parents[2].name
    return None


@dataclass(frozen=True)
class Stage:
    """One stage of a target: its label (``seed-0 trained train``), folder and kind."""

    label: str
    directory: Path
    kind: str  # split | train | eval

    def done(self) -> bool:
        """Its output is there whole: ``split_meta.json``; ``final/`` with its completion
        marker (its own or the reused training's); ``results.json`` and ``predictions.jsonl``."""
        if self.kind == "split":
            return (self.directory / "split_meta.json").is_file()
        if self.kind == "train":
            from cgmed.cg.records import read_stage_doc
            from cgmed.cg.reuse import original_of
            from cgmed.train.checkpoint import is_complete

            doc = read_stage_doc(self.directory) or {}
            # a training reused from an identical finished one (cgmed.cg.reuse) is done when that one is
            trained = original_of(self.directory, doc) if "reused_from" in doc else self.directory
            return trained is not None and is_complete(trained / "final")
        return (self.directory / "results.json").is_file() and (
            self.directory / "predictions.jsonl"
        ).is_file()


def _eval_variants(cg: CGConfig, arm: Path, label: str, few_shot: bool) -> list[Stage]:
    """An arm's evaluations on the target besides ``eval``: by the second method, with examples."""
    stages = []
    if cg.second_method:
        stages.append(Stage(f"{label} eval_{cg.second_method}", arm / f"eval_{cg.second_method}", "eval"))
    if few_shot and cg.few_shot:
        for n in cg.few_shot.shots:
            for r in range(cg.few_shot.repeats):
                where = arm / f"eval_{n}shot" / f"repeat-{r}"
                stages.append(Stage(f"{label} eval_{n}shot repeat-{r}", where, "eval"))
    return stages


def shared_stages(cg: CGConfig, folder: Path) -> list[Stage]:
    """The stages of a target that no seed repeats: its splits and the Baseline evaluations."""
    stages = [Stage("splits (related)", folder / "splits" / "related", "split")]
    if cg.baseline_plus:
        stages.append(Stage("splits (unrelated)", folder / "splits" / "unrelated", "split"))
    stages.append(Stage("baseline eval", folder / "baseline" / "eval", "eval"))
    return stages + _eval_variants(cg, folder / "baseline", "baseline", few_shot=True)


def seed_stages(cg: CGConfig, folder: Path, seed: int) -> list[Stage]:
    """One seed's stages, in :func:`cgmed.cg.protocol.seed_stages`' order."""
    base, label = folder / f"seed-{seed}", f"seed-{seed}"
    trained = base / "trained"
    stages = [
        Stage(f"{label} trained train", trained, "train"),
        Stage(f"{label} trained eval", trained / "eval", "eval"),
        *_eval_variants(cg, trained, f"{label} trained", few_shot=True),
    ]
    seen = folder / "splits" / "related" / "seen_test.jsonl"
    if cg.eval_seen and seen.is_file() and seen.stat().st_size:
        stages.append(Stage(f"{label} trained eval_seen", trained / "eval_seen", "eval"))
    if cg.baseline_plus:
        control = base / "baseline_plus"
        stages += [
            Stage(f"{label} baseline_plus train", control, "train"),
            Stage(f"{label} baseline_plus eval", control / "eval", "eval"),
            *_eval_variants(cg, control, f"{label} baseline_plus", few_shot=False),
        ]
    return stages


def first_missing(stages: list[Stage]) -> Stage | None:
    """The first stage that is not done (None when all are)."""
    return next((s for s in stages if not s.done()), None)
