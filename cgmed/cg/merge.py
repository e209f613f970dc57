"""One CG report over many runs: ``cgmed-cg report runs=[DIR, ...]`` (``cgmed-report``).

Every ``cgmed-cg`` run directory at or under the given directories is found (a run, a sweep's
``hydra.sweep.dir`` or ``SWEEP_DIR``, folders of job folders; :func:`cgmed.cg.status.find_run_dirs`),
each target's results are rebuilt from disk (splits, ``results.json`` and ``predictions.jsonl``
of every evaluation, the stage records), and :func:`cgmed.cg.report.write_report` writes the same
``cg_report.json`` / ``.md`` / plots as a single run, recomputed from the predictions: a merged
report of a sweep equals the report of one run over the same targets and seeds. The markdown adds
a status table of the targets that are missing, unfinished (the stage where they stopped) or failed.

A target found in several runs (the same name) is one target when its settings are the same:
the target's row of ``cg.targets``, the evaluation and protocol settings of the run (``eval.*``,
``cg.baseline_plus`` ...), the content of its split manifests, and the settings every training
and evaluation stage recorded (``stage.json``; a training's seed aside). Different settings are
refused (a ConfigError naming both directories and the differing keys): they measure different
things. With the same settings the seeds are merged (seed 0 from one job, seed 1 from another);
the seed-independent stages (splits, Baseline) are read from the first run in path order. A seed
found twice is counted once when every one of its evaluations has byte-identical predictions (the
same training and evaluation run again: counting it twice would narrow the interval with a copy),
and refused otherwise: two different outcomes of one seed mean that something else changed
(nondeterministic kernels, another code version), and choosing one silently would bias the report.

A target is reported when its splits, its Baseline and at least one seed are done; seeds planned
but not done are listed in the status table (the row's ``seeds`` say which were used).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cgmed.cg.config import CGConfig, CGTarget
from cgmed.cg.records import file_sha256, read_stage_record
from cgmed.cg.report import group_rank, write_report
from cgmed.cg.results import Evaluation, SeedRun, SplitSummary, TargetRun
from cgmed.cg.status import (
    PlannedTarget,
    RunPlan,
    Stage,
    find_run_dirs,
    first_missing,
    load_plan,
    seed_stages,
    shared_stages,
)
from cgmed.cg.tracking import track_report
from cgmed.config import as_dict
from cgmed.errors import ConfigError
from cgmed.train.config import TrainConfig

# run settings that decide what a target's numbers mean (besides its stages' own records)
RUN_KEYS = (
    "cg.baseline_plus",
    "cg.eval_seen",
    "cg.second_method",
    "cg.few_shot",
    "cg.tiny_base",
    "model.path",
)
# evaluation settings the report's intervals are drawn with: one value for a whole report
REPORT_EVAL_KEYS = ("bootstrap", "seed")


@dataclass
class ReportConfig:
    """``cgmed-report`` / ``cgmed-cg report``: which runs to merge and where the report goes."""

    runs: list[str] = field(default_factory=list)  # run dirs, sweep dirs, or folders holding them
    out: str | None = None  # the report's folder (null: outputs/report/<time>)
    exclude: list[str] = field(default_factory=list)  # run dirs (or folders of them) to leave out
    targets: list[str] | None = None  # only these target names (null: every target found)
    plots: bool = True
    # the merged report's table, scalars and plots to TensorBoard (<out>/tensorboard/cg_report) and
    # wandb (offline unless wandb_mode says otherwise), as a single run does with train.tensorboard/wandb
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "cgmed"
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"


@dataclass
class Occurrence:
    """A target as one run planned it: its folder there (which may not exist)."""

    plan: RunPlan
    target: PlannedTarget

    @property
    def folder(self) -> Path:
        return self.plan.directory / self.target.name

    @property
    def seeds(self) -> list[int]:
        return list(self.plan.cg.seeds)

    def shared(self) -> list[Stage]:
        return shared_stages(self.plan.cg, self.folder)

    def seed(self, seed: int) -> list[Stage]:
        return seed_stages(self.plan.cg, self.folder, seed)


@dataclass
class MergedTarget:
    """A target over all its occurrences: where its shared stages and each seed come from."""

    name: str
    occurrences: list[Occurrence]
    shared_from: Occurrence | None = None
    seeds_from: dict[int, Occurrence] = field(default_factory=dict)
    planned_seeds: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> CGTarget:
        return self.occurrences[0].target.spec

    @property
    def reportable(self) -> bool:
        return self.shared_from is not None and bool(self.seeds_from)


def merge_report(cfg: ReportConfig, out: Path) -> dict[str, Any]:
    """Write the report over every run ``cfg`` names into ``out``; returns its document."""
    plans = load_plans(cfg)
    merged = [merge_target(name, occ) for name, occ in occurrences(plans, cfg.targets).items()]
    reported = sorted((m for m in merged if m.reportable), key=_order)
    status = status_rows(merged)
    account = {
        "runs": [str(p.directory) for p in plans],
        "status": status,
        "not_run": not_run(plans, merged, cfg.targets),
        "notes": [note for m in merged for note in m.notes],
        "sources": {m.name: _sources(m) for m in reported},
    }
    if not reported:
        print(status_markdown(account))
        raise ConfigError(
            "runs",
            f"no target under {cfg.runs} has its splits, its Baseline and a seed done",
            "run (or finish) cgmed-cg in those directories first; the status above says where each stopped",
        )
    runs = [target_run(m) for m in reported]
    eval_cfg = report_eval_config([o.plan for m in reported for o in _contributors(m)])
    notes = list(dict.fromkeys(m.shared_from.plan.cg.note for m in reported if m.shared_from.plan.cg.note))
    seeds = sorted({s for m in reported for s in m.seeds_from})
    cg = CGConfig(seeds=seeds, plots=cfg.plots, note=" ".join(notes))
    out.mkdir(parents=True, exist_ok=True)
    doc = write_report(runs, cg, out, eval_cfg, merged=account, merged_md=status_markdown(account))
    tracking = TrainConfig(
        tensorboard=cfg.tensorboard,
        wandb=cfg.wandb,
        wandb_project=cfg.wandb_project,
        wandb_mode=cfg.wandb_mode,
    )
    return track_report(doc, out, tracking)


def load_plans(cfg: ReportConfig) -> list[RunPlan]:
    """The plans of every CG run directory under ``cfg.runs`` (pilots and dry runs left out)."""
    if not cfg.runs:
        raise ConfigError(
            "runs", "names no directory", "runs=[DIR, ...]: run directories or sweep directories"
        )
    tops = [Path(r) for r in cfg.runs]
    for top in tops:
        if not top.is_dir():
            raise ConfigError("runs", f"{top} is no directory", "give run or sweep directories that exist")
    dirs = find_run_dirs(tops, [Path(e) for e in cfg.exclude])
    # a pilot's folders are no CG targets; a dry run (Hydra's config only) built splits, ran nothing
    plans = [p for p in map(load_plan, dirs) if p.cg.pilot is None and not p.config.get("dry_run")]
    if not plans:
        raise ConfigError(
            "runs",
            f"no cgmed-cg run directory (with cg_run.json or a cgmed-cg .hydra/config.yaml) at or under {cfg.runs}",
            "give the hydra.run.dir of a cgmed-cg run, a hydra.sweep.dir, or cg_sweep.sh's SWEEP_DIR",
        )
    return plans


def occurrences(plans: list[RunPlan], only: list[str] | None) -> dict[str, list[Occurrence]]:
    """Each target name (of ``only``, when given) -> its occurrences, runs in path order."""
    found: dict[str, list[Occurrence]] = {}
    for plan in plans:
        for target in plan.targets:
            if only is None or target.name in only:
                found.setdefault(target.name, []).append(Occurrence(plan, target))
    return found


def merge_target(name: str, found: list[Occurrence]) -> MergedTarget:
    """Check that the occurrences of ``name`` are one target, then pick where each part comes from."""
    merged = MergedTarget(name, found)
    present = [o for o in found if o.folder.is_dir()]
    settings = [(o, occurrence_settings(o)) for o in present]
    for other, theirs in settings[1:]:
        first, ours = settings[0]
        differing = sorted(k for k in ours.keys() & theirs.keys() if ours[k] != theirs[k])
        if differing:
            raise ConfigError(
                "runs",
                f"target {name} in {first.folder} and in {other.folder} was run with different settings "
                f"(differing: {differing}); their numbers measure different things",
                "merge one of them: leave the other out with exclude=[DIR], or rerun it with the same settings",
            )
    merged.planned_seeds = sorted({s for o in found for s in o.seeds})
    merged.shared_from = next((o for o in present if first_missing(o.shared()) is None), None)
    for seed in merged.planned_seeds:
        done = [o for o in present if seed in o.seeds and first_missing(o.seed(seed)) is None]
        if done:
            merged.seeds_from[seed] = done[0]
            merged.notes += _same_seed_once(name, seed, done)
    if merged.shared_from is not None:
        merged.notes += _baseline_agreement(name, merged.shared_from, present)
    return merged


def _same_seed_once(name: str, seed: int, done: list[Occurrence]) -> list[str]:
    """Notes for a seed done in several runs with identical predictions; refused when they differ."""
    first = _predictions(done[0].seed(seed))
    notes = []
    for other in done[1:]:
        theirs = _predictions(other.seed(seed))
        differing = sorted(k for k in first.keys() | theirs.keys() if first.get(k) != theirs.get(k))
        if differing:
            raise ConfigError(
                "runs",
                f"seed {seed} of target {name} is in {done[0].folder} and in {other.folder} with different "
                f"predictions ({differing}); a seed counts once",
                "keep one of them: leave the other run out with exclude=[DIR] (or give it another seed)",
            )
        notes.append(
            f"{name} seed {seed}: in {done[0].folder} and {other.folder} with byte-identical predictions, "
            f"counted once (from {done[0].folder})"
        )
    return notes


def _baseline_agreement(name: str, chosen: Occurrence, present: list[Occurrence]) -> list[str]:
    ours = _predictions(chosen.shared())
    notes = []
    for other in present:
        if other is chosen or first_missing(other.shared()) is not None:
            continue
        if _predictions(other.shared()) != ours:
            notes.append(
                f"{name}: the Baseline predictions in {other.folder} differ from those in {chosen.folder} "
                "(same settings); the report uses the latter"
            )
    return notes


def _predictions(stages: Iterable[Stage]) -> dict[str, str]:
    """Each finished evaluation stage's label -> the sha256 of its predictions.jsonl."""
    return {
        s.label: file_sha256(s.directory / "predictions.jsonl")
        for s in stages
        if s.kind == "eval" and s.done()
    }


def occurrence_settings(o: Occurrence) -> dict[str, Any]:
    """What makes an occurrence the target it is, flat: its ``cg.targets`` row, the run's protocol
    and report settings, its split manifests' content and its stages' records (seed aside)."""
    settings: dict[str, Any] = {
        f"cg.targets[{o.target.name}].{k}": v for k, v in as_dict(o.target.spec).items()
    }
    for key in RUN_KEYS:
        group, name = key.split(".")
        settings[key] = (o.plan.config.get(group) or {}).get(name)
    settings.update({f"eval.{k}": getattr(o.plan.eval, k) for k in REPORT_EVAL_KEYS})
    for split in ("related", "unrelated"):
        meta = o.folder / "splits" / split / "split_meta.json"
        if meta.is_file():
            files = json.loads(meta.read_text(encoding="utf-8")).get("files", {})
            settings.update({f"splits/{split}/{f} sha256": sha for f, sha in files.items()})
    for stage in o.shared():
        settings.update(_recorded(stage, stage.label, o.plan.directory))
    for seed in o.seeds:  # one seed's records stand for every seed's (they differ in the seed only)
        for stage in o.seed(seed):
            label = stage.label.replace(f"seed-{seed}", "seed-*")
            for key, value in _recorded(stage, label, o.plan.directory).items():
                settings.setdefault(key, value)
    return settings


def _recorded(stage: Stage, label: str, run_dir: Path) -> dict[str, Any]:
    """A stage's recorded settings as ``'<label>: <key>'``, a local model as a place in its run."""
    record = read_stage_record(stage.directory) if stage.kind != "split" else None
    out = {}
    for key, value in (record or {}).items():
        # the seed differs by design; an evaluation's model is the training (or reused training)
        # whose own record is compared, and a reused one lies in another folder
        if key == "train.seed" or (stage.kind == "eval" and key == "model"):
            continue
        if key == "model.path" and isinstance(value, str):
            value = _model_place(stage.directory, value, run_dir)
        out[f"{label}: {key}"] = value
    return out


def _model_place(stage_dir: Path, location: str, run_dir: Path) -> str:
    """A recorded model location as comparable across runs: relative to the stage when the model
    lies in the stage's own run (its base, its ``final/``), else the absolute path, or a hub id."""
    path = stage_dir / location
    if not path.exists():
        return location
    resolved = path.resolve()
    return location if resolved.is_relative_to(run_dir.resolve()) else str(resolved)


def _order(m: MergedTarget) -> tuple:
    """Paper groups in the paper's order (then others, then none), rows in their experiment's order."""
    index = m.occurrences[0].target.index
    return (group_rank(m.spec.group), math.inf if index is None else index, m.name)


def _contributors(m: MergedTarget) -> list[Occurrence]:
    return [m.shared_from, *m.seeds_from.values()]


def report_eval_config(plans: list[RunPlan]):
    """The evaluation settings of the report's intervals: the same in every run it draws from."""
    first = plans[0]
    for plan in plans[1:]:
        differing = [f"eval.{k}" for k in REPORT_EVAL_KEYS if getattr(plan.eval, k) != getattr(first.eval, k)]
        if differing:
            raise ConfigError(
                "runs",
                f"{first.directory} and {plan.directory} draw the report's intervals with different settings "
                f"(differing: {differing})",
                "merge runs made with the same eval.bootstrap and eval.seed (or report them separately)",
            )
    return first.eval


def target_run(m: MergedTarget) -> TargetRun:
    """The target's results as :func:`cgmed.cg.protocol.run_target` returns them, from disk."""
    shared = m.shared_from
    assert shared is not None
    folder, cg = shared.folder, shared.plan.cg
    related = _split(folder / "splits" / "related")
    unrelated = _split(folder / "splits" / "unrelated") if cg.baseline_plus else None
    run = TargetRun(
        m.name, shared.target.spec, related, unrelated, baseline=_evaluation(folder / "baseline" / "eval")
    )
    if cg.second_method:
        run.baseline_second_method = _evaluation(folder / "baseline" / f"eval_{cg.second_method}")
    if cg.few_shot:
        run.baseline_few_shot = _few_shot(folder / "baseline", cg)
    for seed, source in sorted(m.seeds_from.items()):
        run.seeds[seed] = _seed_run(source.folder / f"seed-{seed}", source.plan.cg, related)
    return run


def _seed_run(base: Path, cg: CGConfig, related: SplitSummary) -> SeedRun:
    trained = base / "trained"
    result = SeedRun(trained=_evaluation(trained / "eval"))
    if cg.second_method:
        result.second_method["trained"] = _evaluation(trained / f"eval_{cg.second_method}")
    if cg.few_shot:
        result.trained_few_shot = _few_shot(trained, cg)
    if cg.eval_seen and related.manifest("seen_test").stat().st_size:
        result.seen = _evaluation(trained / "eval_seen")
    if cg.baseline_plus:
        result.baseline_plus = _evaluation(base / "baseline_plus" / "eval")
        if cg.second_method:
            result.second_method["baseline_plus"] = _evaluation(
                base / "baseline_plus" / f"eval_{cg.second_method}"
            )
    return result


def _few_shot(arm: Path, cg: CGConfig) -> dict[str, list[Evaluation]]:
    assert cg.few_shot is not None
    return {
        str(n): [_evaluation(arm / f"eval_{n}shot" / f"repeat-{r}") for r in range(cg.few_shot.repeats)]
        for n in cg.few_shot.shots
    }


def _split(directory: Path) -> SplitSummary:
    return SplitSummary(directory, json.loads((directory / "split_meta.json").read_text(encoding="utf-8")))


def _evaluation(directory: Path) -> Evaluation:
    return Evaluation(json.loads((directory / "results.json").read_text(encoding="utf-8")), directory)


def _sources(m: MergedTarget) -> dict[str, Any]:
    assert m.shared_from is not None
    return {
        "splits_and_baseline": str(m.shared_from.folder),
        "seeds": {str(s): str(o.folder / f"seed-{s}") for s, o in sorted(m.seeds_from.items())},
    }


def status_rows(merged: list[MergedTarget]) -> list[dict[str, Any]]:
    """Per target and run that planned it: finished, unfinished (where), failed (where, the
    error) or missing (no folder), and whether the report uses it."""
    rows = []
    for m in sorted(merged, key=_order):
        any_folder = any(o.folder.is_dir() for o in m.occurrences)
        for o in m.occurrences:
            row = {"target": m.name, "group": m.spec.group, "directory": str(o.folder), "seeds": o.seeds}
            stopped = _stopped_at(o)
            if not o.folder.is_dir():
                if any_folder:
                    continue  # made elsewhere
                row.update(status="failed" if o.plan.status == "failed" else "missing", stage="no folder")
            elif stopped is None:
                row.update(status="finished", stage=None)
            else:
                row.update(
                    status="failed" if o.plan.status == "failed" else "unfinished", stage=stopped.label
                )
            if row["status"] == "failed" and o.plan.error:
                row["error"] = o.plan.error
            row["reported"] = m.reportable and (
                o is m.shared_from or any(src is o for src in m.seeds_from.values())
            )
            if m.reportable and row["status"] != "finished":
                row["reported_seeds"] = sorted(m.seeds_from)
            rows.append(row)
    return rows


def _stopped_at(o: Occurrence) -> Stage | None:
    missing = first_missing(o.shared())
    if missing is not None:
        return missing
    return next((s for seed in o.seeds if (s := first_missing(o.seed(seed))) is not None), None)


def not_run(plans: list[RunPlan], merged: list[MergedTarget], only: list[str] | None) -> list[str]:
    """Targets no run planned: named rows of the runs' experiments, and names ``only`` asks for."""
    planned = {m.name for m in merged}
    named = dict.fromkeys([*(n for p in plans for n in p.experiment_targets), *(only or [])])
    return [n for n in named if n not in planned and (only is None or n in only)]


STATUS_HELP = (
    "unfinished = the job is still running or was stopped (killed, timed out): rerun the same command "
    "with the same run directory to finish it (finished stages are skipped); failed = the job ended with "
    "the error shown; missing = planned by a job but it has no folder"
)


def status_markdown(account: dict[str, Any]) -> str:
    """The merged report's account: where each target comes from and what is not done."""
    runs, rows = account["runs"], account["status"]
    problems = [r for r in rows if r["status"] != "finished"]
    lines = [
        "",
        "## Runs merged",
        "",
        f"Run directories ({len(runs)}): " + ", ".join(f"`{r}`" for r in runs) + ".",
        "",
    ]
    for name, src in account.get("sources", {}).items():
        seeds = "; ".join(f"seed {s} from `{where}`" for s, where in src["seeds"].items())
        lines.append(f"- {name}: splits and Baseline from `{src['splits_and_baseline']}`; {seeds}")
    lines += [f"- {note}" for note in account["notes"]]
    if account["not_run"]:
        lines += [
            "",
            f"Not run by any job (rows of the experiments, or asked for): {', '.join(account['not_run'])}.",
        ]
    if not problems:
        lines += ["", "Every target planned is finished."]
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "Targets missing, unfinished or failed (" + STATUS_HELP + "):",
        "",
        "| Target | Group | Status | Stopped at | Directory | Reported with |",
        "|---|---|---|---|---|---|",
    ]
    for r in problems:
        status = r["status"] + (f": {r['error'].splitlines()[0]}" if r.get("error") else "")
        used = f"seeds {r['reported_seeds']}" if r.get("reported_seeds") else "not reported"
        lines.append(
            f"| {r['target']} | {r['group'] or '-'} | {status} | {r['stage']} | `{r['directory']}` | {used} |"
        )
    return "\n".join(lines) + "\n"
