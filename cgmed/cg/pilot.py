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
Finished stages are skipped on rerun, as in :mod:`cgmed.cg.protocol`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cgmed.cg.config import CGConfig, Pilot
from cgmed.cg.protocol import (
    _is_main,
    base_model,
    build_and_write,
    check_split_settings,
    eval_stage,
    on_main,
    open_data,
    refuse_global_shots,
    train_stage,
)
from cgmed.data.audit import audit_split
from cgmed.data.record import Sample
from cgmed.data.source import DataConfig
from cgmed.data.split import SplitConfig
from cgmed.errors import ConfigError, DataError
from cgmed.eval.score import EvalConfig
from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PilotPlan:
    trained: list[str]  # ID subsets: trained on (multi and single), Table 1
    test_only: list[str]  # OOD subsets: evaluated only, Table 2
    splits: dict[str, SplitConfig]  # multi, ood, single-<id>


def plan_pilot(pilot: Pilot, split: SplitConfig, source: Any) -> PilotPlan:
    subsets = source.subsets()
    chosen = None
    if pilot.subsets is not None:
        chosen = [str(s).zfill(2) if str(s).isdigit() else str(s) for s in pilot.subsets]
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


def _build(name: str, cfg: SplitConfig, data: DataConfig, source: Any, out: Path) -> dict:
    d = out / "splits" / name
    if not (d / "split_meta.json").is_file():
        on_main(lambda: build_and_write(source, data, cfg, d))
    meta = json.loads((d / "split_meta.json").read_text())
    check_split_settings(meta, cfg, data, d, "the pilot/ folder")
    return meta


def _samples(path: Path) -> list[Sample]:
    return [Sample.from_json(json.loads(x)) for x in path.read_text().splitlines() if x.strip()]


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


def run_pilot(
    cg: CGConfig,
    data: DataConfig,
    split: SplitConfig,
    synth: Any,
    model: ModelConfig,
    train_cfg: TrainConfig,
    peft: PeftConfig,
    dist: DistributedConfig,
    eval_cfg: EvalConfig,
    run_dir: Path,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Tables 1-2: Baseline, Single-task and Multi-task accuracy per subset (see module docstring)."""
    pilot = cg.pilot
    assert pilot is not None
    refuse_global_shots(eval_cfg)
    source = open_data(data, synth, dist)
    plan = plan_pilot(pilot, split, source)
    out = run_dir / "pilot"
    metas = {name: _build(name, cfg, data, source, out) for name, cfg in plan.splits.items()}
    untested = [sid for sid in plan.trained if not metas["multi"]["counts"]["seen_test"].get(sid)]
    if untested:
        raise DataError(
            "cg.pilot",
            f"subset(s) {untested} have no test samples, so Table 1 has nothing to score them on",
            "add their test files, or leave them out with cg.pilot.subsets",
        )
    audit = ood_image_audit(out, split.audit_images) if "ood" in metas else None
    if dry_run:
        if _is_main():
            print_pilot_plan(plan, metas, audit)
        return {"dry_run": True, "pilot": {"trained": plan.trained, "test_only": plan.test_only}}
    model = base_model(cg, model, run_dir)

    splits = out / "splits"
    evals: dict[str, Any] = {"baseline": {}, "seeds": {}}
    evals["baseline"]["id"] = eval_stage(
        model.path, eval_cfg, splits / "multi" / "seen_test.jsonl", out / "baseline" / "eval_id", model
    )
    if "ood" in metas:
        evals["baseline"]["ood"] = eval_stage(
            model.path, eval_cfg, splits / "ood" / "test.jsonl", out / "baseline" / "eval_ood", model
        )
    for seed in cg.seeds:
        s_out = out / f"seed-{seed}"
        res: dict[str, Any] = {"single": {}}
        if pilot.multi:
            final = train_stage(
                model, train_cfg, peft, dist, splits / "multi" / "train.jsonl", s_out / "multi", seed
            )
            res["multi_id"] = eval_stage(
                final, eval_cfg, splits / "multi" / "seen_test.jsonl", s_out / "multi" / "eval_id", model
            )
            if "ood" in metas:
                res["multi_ood"] = eval_stage(
                    final, eval_cfg, splits / "ood" / "test.jsonl", s_out / "multi" / "eval_ood", model
                )
        if pilot.single:
            for sid in plan.trained:
                name = f"single-{sid}"
                final = train_stage(
                    model, train_cfg, peft, dist, splits / name / "train.jsonl", s_out / name, seed
                )
                res["single"][sid] = eval_stage(
                    final, eval_cfg, splits / name / "seen_test.jsonl", s_out / name / "eval", model
                )
        evals["seeds"][seed] = res
    return on_main(lambda: write_pilot_report(plan, metas, evals, cg, out, audit)) or {}


def _per_subset(results: dict | None, sid: str) -> float | None:
    if not results:
        return None
    got = results["per_subset"].get(sid)
    return None if got is None else float(got["accuracy"])


def _mean(values: list[float | None]) -> dict[str, Any] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {
        "accuracy": float(np.mean(vals)),
        "per_seed": vals,
        "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
    }


def pilot_rows(plan: PilotPlan, metas: dict, evals: dict, pilot: Pilot) -> dict[str, list[dict]]:
    subsets = {s["id"]: s for m in metas.values() for s in (*m["train_subsets"], *m["targets"])}
    seeds = list(evals["seeds"])
    paper = pilot.paper or {}

    def describe(sid: str) -> str:
        s = subsets[sid]
        return f"{sid} {s['modality']} {s['area']} {s['task']}"

    def row(sid: str, kind: str) -> dict[str, Any]:
        base = evals["baseline"][kind]
        out = {
            "subset": describe(sid),
            "n": base["per_subset"][sid]["n"],
            "chance": base["per_subset"][sid]["chance"],
            "baseline": _per_subset(base, sid),
        }
        if kind == "id":  # only trained-on subsets have a Single-task model
            out["single"] = _mean([_per_subset(evals["seeds"][s]["single"].get(sid), sid) for s in seeds])
        out["multi"] = _mean([_per_subset(evals["seeds"][s].get(f"multi_{kind}"), sid) for s in seeds])
        if sid in paper:
            out["paper"] = dict(paper[sid])
        return out

    table1 = [row(sid, "id") for sid in plan.trained]
    table2 = [row(sid, "ood") for sid in plan.test_only]
    return {"table1_id": table1, "table2_ood": table2}


def _cell(x: Any) -> str:
    if x is None:
        return "-"
    v = x["accuracy"] if isinstance(x, dict) else x
    sd = f" ± {100 * x['sd']:.1f}" if isinstance(x, dict) and len(x["per_seed"]) > 1 else ""
    return f"{100 * v:.1f}{sd}"


_ARM_TITLES = {
    "baseline": ("Baseline", "Base"),
    "single": ("Single-task", "Single"),
    "multi": ("Multi-task", "Multi"),
}


def _md_table(rows: list[dict], arms: tuple[str, ...], with_paper: bool) -> list[str]:
    head = ["Subset", "n"] + [_ARM_TITLES[a][0] for a in arms]
    if with_paper:
        head.append("Paper (" + " / ".join(_ARM_TITLES[a][1] for a in arms) + ")")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["subset"], str(r["n"])] + [_cell(r[a]) for a in arms]
        if with_paper:
            cells.append(" / ".join(str((r.get("paper") or {}).get(a, "-")) for a in arms))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def pilot_markdown(tables: dict[str, list[dict]], cg: CGConfig) -> str:
    has_paper = any("paper" in r for t in tables.values() for r in t)
    lines = ["Table 1 shape: in-distribution subsets (trained on), accuracy %", ""]
    lines += _md_table(tables["table1_id"], ("baseline", "single", "multi"), has_paper)
    if tables["table2_ood"]:
        lines += ["", "Table 2 shape: out-of-distribution subsets (never trained on), accuracy %", ""]
        lines += _md_table(tables["table2_ood"], ("baseline", "multi"), has_paper)
    lines += [
        "",
        "Baseline = the untrained model; Single-task = trained on that subset only; Multi-task = one model trained "
        f"on all in-distribution subsets together. Seeds: {list(cg.seeds)} (± = SD over seeds).",
    ]
    if cg.note:
        lines.append(cg.note)
    return "\n".join(lines) + "\n"


def write_pilot_report(
    plan: PilotPlan, metas: dict, evals: dict, cg: CGConfig, out: Path, audit: dict | None
) -> dict[str, Any]:
    assert cg.pilot is not None
    tables = pilot_rows(plan, metas, evals, cg.pilot)
    doc = {
        "format": "cgmed-pilot-report/1",
        **tables,
        "train_samples": {"multi": metas["multi"]["sizes"]["train"]}
        | {k: m["sizes"]["train"] for k, m in metas.items() if k.startswith("single-")},
        "ood_image_audit": audit,
        "seeds": list(cg.seeds),
        "note": cg.note,
    }
    (out / "pilot_report.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = pilot_markdown(tables, cg)
    (out / "pilot_report.md").write_text(md)
    if cg.plots:
        doc["plots"] = [pilot_plot(tables, out)]
    print(md)
    print(f"report written to {out / 'pilot_report.md'} (and pilot_report.json)")
    return doc


def pilot_plot(tables: dict[str, list[dict]], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = tables["table1_id"] + tables["table2_ood"]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(rows) + 1), 3.6))
    width = 0.27
    for k, (key, label) in enumerate(
        (("baseline", "Baseline"), ("single", "Single-task"), ("multi", "Multi-task"))
    ):
        xs, ys = [], []
        for i, r in enumerate(rows):
            v = r.get(key)
            if v is not None:
                xs.append(i + (k - 1) * width)
                ys.append(100 * (v["accuracy"] if isinstance(v, dict) else v))
        ax.bar(xs, ys, width, label=label)
    ax.set_xticks(range(len(rows)), [r["subset"].split(" ")[0] for r in rows], fontsize=8)
    if tables["table2_ood"]:
        ax.axvline(len(tables["table1_id"]) - 0.5, color="k", linestyle=":")
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Pilot: ID subsets | OOD subsets (right of the dotted line)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pilot.png", dpi=120)
    plt.close(fig)
    return "pilot.png"


def print_pilot_plan(plan: PilotPlan, metas: dict, audit: dict | None) -> None:
    multi = metas["multi"]
    print(
        f"pilot: Multi-task trains on {len(plan.trained)} subsets ({', '.join(plan.trained)}) -> "
        f"{multi['sizes']['train']} samples; ID test {multi['sizes']['seen_test']}; "
        f"audit {'passed' if multi['audit']['passed'] else 'FAILED'}"
    )
    if "ood" in metas:
        print(
            f"  OOD test-only subsets ({', '.join(plan.test_only)}): {metas['ood']['sizes']['test']} samples; "
            f"image audit against the Multi-task training set {'passed' if audit and audit['passed'] else 'FAILED'}"
        )
    singles = [k for k in metas if k.startswith("single-")]
    if singles:
        sizes = ", ".join(f"{k[7:]}: {metas[k]['sizes']['train']}" for k in singles)
        print(f"  Single-task models: {len(singles)} ({sizes} samples)")
    print("dry run: nothing trained")
