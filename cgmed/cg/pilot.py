"""The paper's pilot study (Tables 1-2): single-task vs multi-task training, before any CG.

* Baseline: the untrained model on every test set.
* Multi-task: one model trained on every in-distribution (ID) subset together (each capped at
  ``split.cap_per_subset``), evaluated on every ID test set (Table 1) and on the out-of-
  distribution (OOD) test sets, which are never trained on (Table 2).
* Single-task: one model per ID subset, trained on that subset only, evaluated on its test set.

Splits (under ``<run>/pilot/splits/``): ``multi`` (train = all ID subsets, ``seen_test.jsonl`` =
their test sets), ``ood`` (test-only: ``test.jsonl`` = the OOD test sets) and ``single-<id>``.
The single-task test set of a subset is the same samples and questions as its part of the
multi-task one (same seeded draw), so Table 1's columns compare like with like.

Leakage: an OOD subset may share its MAT triplet with an ID one (20 with 18, 27 with 36, 29 with
37, 34 with 16 in Med-MAT): Table 2 measures transfer to new sources of seen combinations, so
the triplet and subset checks of the CG audit do not apply; the image-byte audit does (no OOD
test image may be a training image), and its report is in ``pilot/pilot_audit.json``.
Finished stages are skipped on rerun (:mod:`cgmed.cg.stages`); the report is
:mod:`cgmed.cg.pilot_report`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from cgmed.cg.config import CGApp, Pilot
from cgmed.cg.main_process import on_main
from cgmed.cg.pilot_report import print_pilot_plan, write_pilot_report
from cgmed.cg.recipe import pilot_lines
from cgmed.cg.results import PilotRun, PilotSeedRun, SplitSummary
from cgmed.cg.stages import eval_stage, open_data, open_split, train_stage, with_base_model
from cgmed.data.audit import audit_split
from cgmed.data.manifest import read_jsonl
from cgmed.data.record import Sample
from cgmed.data.split import SplitConfig
from cgmed.data.subsets import normalize_subset_id
from cgmed.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PilotPlan:
    """The pilot's subsets and the split config of each of its models."""

    trained: list[str]  # ID subsets: trained on (multi and single), Table 1
    test_only: list[str]  # OOD subsets: evaluated only, Table 2
    splits: dict[str, SplitConfig]  # multi, ood, single-<id>


def plan_pilot(pilot: Pilot, split: SplitConfig, source: Any) -> PilotPlan:
    """The trained and test-only subsets of the data, and the splits that train and test them."""
    subsets = source.subsets()
    chosen = None
    if pilot.subsets is not None:
        chosen = [normalize_subset_id(s) for s in pilot.subsets]
        unknown = [s for s in chosen if s not in subsets]
        if unknown:
            raise ConfigError(
                "cg.pilot.subsets", f"no subset {unknown} in the data", f"ids there: {sorted(subsets)}"
            )
    ids = sorted(chosen if chosen is not None else subsets)
    trained = [s for s in ids if subsets[s].status in pilot.train_status]
    test_only = [s for s in ids if subsets[s].status in pilot.test_only_status and s not in trained]
    if not trained:
        raise ConfigError(
            "cg.pilot.train_status",
            f"no subset with status {pilot.train_status} among {ids}",
            "check the data's subset statuses (cgmed-data catalog) or cg.pilot.subsets",
        )
    base = dataclasses.replace(
        split, without=[], match_size_of=None, target_train_samples=0, shots_per_label=0, seen_test=True
    )
    splits = {"multi": dataclasses.replace(base, targets=[], train=list(trained))}
    if test_only:
        splits["ood"] = dataclasses.replace(base, targets=list(test_only), train="none", seen_test=False)
    if pilot.single:
        for sid in trained:
            splits[f"single-{sid}"] = dataclasses.replace(base, targets=[], train=[sid])
    return PilotPlan(trained, test_only, splits)


def _samples(path: Path) -> list[Sample]:
    return [Sample.from_json(record) for record in read_jsonl(path)]


def ood_image_audit(out: Path, check_images: bool) -> dict:
    """No OOD test image may be a multi-task training image (the triplet rule does not apply here)."""
    path = out / "pilot_audit.json"

    def audit() -> None:
        report = audit_split(
            _samples(out / "splits" / "multi" / "train.jsonl"),
            _samples(out / "splits" / "ood" / "test.jsonl"),
            [],
            check_images=check_images,
        )
        path.write_text(json.dumps(report.to_json(), indent=1) + "\n")

    if not path.is_file():
        on_main(audit)
    return json.loads(path.read_text())


def open_pilot_splits(app: CGApp, plan: PilotPlan, source: Any, out: Path) -> dict[str, SplitSummary]:
    """Every split of the pilot; a trained subset without test samples stops the run."""
    splits = {
        name: open_split(app, source, cfg, out / "splits" / name, "the pilot/ folder")
        for name, cfg in plan.splits.items()
    }
    untested = [sid for sid in plan.trained if not splits["multi"].meta["counts"]["seen_test"].get(sid)]
    if untested:
        raise DataError(
            "cg.pilot",
            f"subset(s) {untested} have no test samples, so Table 1 has nothing to score them on",
            "add their test files, or leave them out with cg.pilot.subsets",
        )
    return splits


def run_pilot(app: CGApp, run_dir: Path, dry_run: bool = False) -> dict[str, Any]:
    """Tables 1-2: Baseline, Single-task and Multi-task accuracy per subset (see module docstring)."""
    assert app.cg.pilot is not None
    source = open_data(app)
    plan = plan_pilot(app.cg.pilot, app.split, source)
    out = run_dir / "pilot"
    splits = open_pilot_splits(app, plan, source, out)
    audit = ood_image_audit(out, app.split.audit_images) if "ood" in splits else None
    if dry_run:
        on_main(lambda: print("\n".join(pilot_lines(app, splits))))
        on_main(lambda: print_pilot_plan(plan.trained, plan.test_only, splits, audit))
        return {"dry_run": True, "pilot": {"trained": plan.trained, "test_only": plan.test_only}}
    app = with_base_model(app, run_dir)
    multi, ood = splits["multi"], splits.get("ood")
    run = PilotRun(
        baseline_id=eval_stage(app, app.model.path, multi.manifest("seen_test"), out / "baseline" / "eval_id")
    )
    if ood is not None:
        run.baseline_ood = eval_stage(
            app, app.model.path, ood.manifest("test"), out / "baseline" / "eval_ood"
        )
    for seed in app.cg.seeds:
        run.seeds[seed] = pilot_seed_stages(app, plan, splits, out / f"seed-{seed}", seed)
    return (
        on_main(lambda: write_pilot_report(plan.trained, plan.test_only, splits, run, app.cg, out, audit))
        or {}
    )


def pilot_seed_stages(
    app: CGApp, plan: PilotPlan, splits: dict[str, SplitSummary], out: Path, seed: int
) -> PilotSeedRun:
    """Train the Multi-task and the Single-task models with one seed and evaluate them."""
    pilot = app.cg.pilot
    assert pilot is not None
    result = PilotSeedRun()
    if pilot.multi:
        multi, ood = splits["multi"], splits.get("ood")
        final = train_stage(app, multi.manifest("train"), out / "multi", seed)
        result.multi_id = eval_stage(app, final, multi.manifest("seen_test"), out / "multi" / "eval_id")
        if ood is not None:
            result.multi_ood = eval_stage(app, final, ood.manifest("test"), out / "multi" / "eval_ood")
    if pilot.single:
        for sid in plan.trained:
            single = splits[f"single-{sid}"]
            final = train_stage(app, single.manifest("train"), out / f"single-{sid}", seed)
            result.single[sid] = eval_stage(
                app, final, single.manifest("seen_test"), out / f"single-{sid}" / "eval"
            )
    return result
