"""The CG protocol for each target: splits, Baseline, Baseline+ and Trained, evaluations.

Stages write into ``<run>/<target>/`` and are skipped on rerun (:mod:`cgmed.cg.stages`).

A target may be a detection subset (task ``Det``; the paper's Table 5): its test set holds box
records, which the evaluator answers by generation, and the report compares its arms on cIoU.
Detection subsets have status ``det``, so the ``related`` rule (under the default
``split.train_status: [ID, OOD]``) never trains on them: list them in ``related`` explicitly
(e.g. a Det subset of another modality plus a classification subset of the target's
modality and area), or add ``det`` to ``split.train_status``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from cgmed.cg import console
from cgmed.cg.config import CGApp, CGConfig, CGTarget
from cgmed.cg.main_process import on_main
from cgmed.cg.recipe import check_few_shot_fits, shared_training_lines, target_lines
from cgmed.cg.report import print_plan, write_report
from cgmed.cg.results import Evaluation, SeedRun, SplitSummary, TargetRun
from cgmed.cg.stages import (
    curve_manifests,
    eval_stage,
    open_data,
    open_split,
    train_stage,
    with_base_model,
)
from cgmed.cg.status import mark_run, write_run_record
from cgmed.cg.tracking import track_report
from cgmed.data.build import Selection
from cgmed.data.split import SplitConfig, resolve_ids, select_train
from cgmed.data.subsets import SubsetInfo
from cgmed.data.vocab import DETECTION_TASK
from cgmed.errors import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TargetPlan:
    """One target of the run, resolved: its subset and the splits of its Trained and Baseline+
    models, each with the subsets it selects (selected here once, not again by the build)."""

    name: str
    spec: CGTarget
    target: str  # the subset id
    related_split: SplitConfig
    related_selection: Selection
    unrelated_split: SplitConfig | None = None  # None without cg.baseline_plus
    unrelated_selection: Selection | None = None


def target_name(spec: CGTarget, target_info: SubsetInfo) -> str:
    """The target's folder and table name: ``cg.targets[i].name``, or one made of its id and triplet."""
    if spec.name:
        return spec.name
    return f"{target_info.id}_{target_info.modality}_{target_info.area}_{target_info.task}".replace("-", "")


def plan_targets(cg: CGConfig, split: SplitConfig, source: Any) -> list[TargetPlan]:
    """Resolve every target (exactly one subset each) and its two training selections."""
    plans = [plan_target(i, spec, cg, split, source) for i, spec in enumerate(cg.targets)]
    if cg.only is not None:
        missing = set(cg.only) - {p.name for p in plans}
        if missing:
            raise ConfigError(
                "cg.only", f"no target named {sorted(missing)}", f"names: {[p.name for p in plans]}"
            )
        plans = [p for p in plans if p.name in cg.only]
    if not plans:
        raise ConfigError(
            "cg.targets", "no target to run", "list targets under cg.targets (see cgmed/conf/experiment/)"
        )
    return plans


def plan_target(index: int, spec: CGTarget, cg: CGConfig, split: SplitConfig, source: Any) -> TargetPlan:
    """``cg.targets[index]`` resolved to one subset, with the split configs of its two models and
    the subsets each selects."""
    subsets, vocab = source.subsets(), source.vocab
    tid, related_ids = select_target(index, spec, split, source)
    name = target_name(spec, subsets[tid])
    if subsets[tid].task == DETECTION_TASK:
        if cg.few_shot:
            raise ConfigError(
                "cg.few_shot",
                f"target {subsets[tid].describe()} is a detection subset; few-shot prompting covers "
                "multiple-choice targets",
                "run detection targets in a config without cg.few_shot",
            )
        # Rules train only on split.train_status (default ID/OOD); a detection target then
        # learns boxes only from Det subsets listed in cg.targets[].related (as Table 5 does).
        log.info("target %s is a detection subset: its arms are scored on cIoU of generated boxes", name)
    related = dataclasses.replace(
        split,
        targets=[tid],
        train=spec.related,
        without=list(spec.without),
        match_size_of=None,
        shots_per_label=max(cg.few_shot.shots) if cg.few_shot else 0,
    )
    plan = TargetPlan(name, spec, tid, related, Selection([tid], related_ids))
    if cg.baseline_plus:
        plan.unrelated_split = dataclasses.replace(
            split,
            targets=[tid],
            train="unrelated",
            without=[],
            match_size_of={"train": spec.related, "without": list(spec.without)},
            # the control gets the same samples of the target's own training portion as Trained
            # (Figure 6, Table 5: the same seed draws the same ones), so that the difference
            # between the two is the Related data alone
            target_train_samples=split.target_train_samples,
            seen_test=False,
            shots_per_label=0,
        )
        unrelated_ids = select_train(
            "unrelated", [], [tid], subsets, vocab, split.train_status, same_triplet=split.same_triplet
        )
        plan.unrelated_selection = Selection([tid], unrelated_ids, size_reference=related_ids)
    return plan


def select_target(index: int, spec: CGTarget, split: SplitConfig, source: Any) -> tuple[str, list[str]]:
    """The subset ``cg.targets[index]`` holds out (exactly one) and the subsets its Trained model
    trains on (at least one)."""
    subsets, vocab = source.subsets(), source.vocab
    key = f"cg.targets[{index}]"
    ids = resolve_ids([spec.target], subsets, vocab, f"{key}.target", split.same_triplet)
    if len(ids) != 1:
        raise ConfigError(
            f"{key}.target",
            f"names {len(ids)} subsets ({ids}); a CG target is one subset",
            "give a subset id or a fuller MAT pattern",
        )
    # the same call the build makes for the Related split (cgmed.data.build.select_subsets)
    related_ids = select_train(
        spec.related,
        spec.without,
        ids,
        subsets,
        vocab,
        split.train_status,
        f"{key}.related",
        split.same_triplet,
    )
    if not related_ids:
        raise ConfigError(
            f"{key}.related",
            f"no related data for target {subsets[ids[0]].describe()}",
            "choose another target or widen the related selection",
        )
    return ids[0], related_ids


def run_protocol(app: CGApp, run_dir: Path, dry_run: bool = False) -> dict[str, Any]:
    """The whole protocol; returns the report document (and writes it unless ``dry_run``)."""
    source = open_data(app)
    plans = plan_targets(app.cg, app.split, source)
    if not dry_run:  # the run's own record of what it does, for a merged report (cgmed.cg.merge)
        on_main(lambda: write_run_record(run_dir, app, [(p.name, p.spec, p.target) for p in plans]))
    splits = [open_target_splits(app, p, source, run_dir / p.name) for p in plans]
    if not dry_run:
        app = with_base_model(app, run_dir)
    for plan, (related, _) in zip(plans, splits, strict=True):
        check_few_shot_fits(app, related, plan.target)  # every target, before any model is run
    if dry_run:
        runs = [TargetRun(p.name, p.spec, *built) for p, built in zip(plans, splits, strict=True)]
        recipes = {
            p.name: target_lines(app, p.spec, p.target, r.related, r.unrelated, source)
            for p, r in zip(plans, runs, strict=True)
        }
        for name, lines in shared_training_lines(app, runs).items():
            recipes[name] += lines
        on_main(lambda: print_plan(runs, recipes))
        return {"dry_run": True, "targets": [p.name for p in plans]}
    console.announce_plan(app.cg, app.train, splits)
    runs = []
    for number, (plan, (related, unrelated)) in enumerate(zip(plans, splits, strict=True), 1):
        with console.target(number, len(plans), plan.name, run_dir / plan.name):
            console.report_splits(related, unrelated)
            runs.append(run_target(app, plan, source, run_dir / plan.name))
    doc = on_main(lambda: track_report(write_report(runs, app.cg, run_dir, app.eval), run_dir, app.train))
    on_main(lambda: mark_run(run_dir, "finished"))
    return doc or {}


def open_target_splits(
    app: CGApp, plan: TargetPlan, source: Any, out: Path
) -> tuple[SplitSummary, SplitSummary | None]:
    """The Related and (with Baseline+) the Unrelated split of a target."""
    splits, folder = out / "splits", "that target's folder"
    related = open_split(app, source, plan.related_split, splits / "related", folder, plan.related_selection)
    if plan.unrelated_split is None:
        return related, None
    unrelated = open_split(
        app, source, plan.unrelated_split, splits / "unrelated", folder, plan.unrelated_selection
    )
    return related, unrelated


def run_target(app: CGApp, plan: TargetPlan, source: Any, out: Path) -> TargetRun:
    """Every stage of one target: its splits, the Baseline evaluations, then each seed's models."""
    run = TargetRun(plan.name, plan.spec, *open_target_splits(app, plan, source, out))
    model_path = app.model.path
    run.baseline = eval_stage(app, model_path, run.related.manifest("test"), out / "baseline" / "eval")
    if app.cg.second_method:
        run.baseline_second_method = second_method_stage(app, model_path, run.related, out / "baseline")
    if app.cg.few_shot:
        run.baseline_few_shot = few_shot_stages(app, model_path, run.related, out / "baseline")
    for seed in app.cg.seeds:
        run.seeds[seed] = seed_stages(app, run, out / f"seed-{seed}", seed)
    return run


def seed_stages(app: CGApp, run: TargetRun, out: Path, seed: int) -> SeedRun:
    """Train Trained (and Baseline+) with one seed and evaluate them."""
    related = run.related
    target_test = related.manifest("test")
    curves = curve_manifests(app.cg, related)
    run_dir = out.parents[1]  # <run>/<target>/seed-<s>: other targets' identical trainings are reused
    trained = train_stage(app, related.manifest("train"), out / "trained", seed, curves, run_dir)
    result = SeedRun(trained=eval_stage(app, trained, target_test, out / "trained" / "eval"))
    if app.cg.second_method:
        result.second_method["trained"] = second_method_stage(app, trained, related, out / "trained")
    if app.cg.few_shot:
        result.trained_few_shot = few_shot_stages(app, trained, related, out / "trained")
    if app.cg.eval_seen and related.manifest("seen_test").stat().st_size:
        result.seen = eval_stage(app, trained, related.manifest("seen_test"), out / "trained" / "eval_seen")
    if run.unrelated is not None:
        control = train_stage(
            app, run.unrelated.manifest("train"), out / "baseline_plus", seed, run_dir=run_dir
        )
        result.baseline_plus = eval_stage(app, control, target_test, out / "baseline_plus" / "eval")
        if app.cg.second_method:
            result.second_method["baseline_plus"] = second_method_stage(
                app, control, related, out / "baseline_plus"
            )
    return result


def second_method_stage(app: CGApp, model_path: Path | str, split: SplitSummary, out: Path) -> Evaluation:
    """The target's test set scored by ``cg.second_method`` into ``out/eval_<method>``."""
    method = app.cg.second_method
    assert method is not None
    cfg = dataclasses.replace(app.eval, method=method)
    return eval_stage(app, model_path, split.manifest("test"), out / f"eval_{method}", cfg)


def few_shot_stages(
    app: CGApp, model_path: Path | str, split: SplitSummary, out: Path
) -> dict[str, list[Evaluation]]:
    """The target test set with N in-context examples per label, ``repeats`` draws per N."""
    few_shot = app.cg.few_shot
    assert few_shot is not None
    done: dict[str, list[Evaluation]] = {}
    for n in few_shot.shots:
        done[str(n)] = [
            eval_stage(
                app,
                model_path,
                split.manifest("test"),
                out / f"eval_{n}shot" / f"repeat-{r}",
                dataclasses.replace(app.eval, shots=n, shot_pool=str(split.manifest("shots")), shot_seed=r),
            )
            for r in range(few_shot.repeats)
        ]
    return done
