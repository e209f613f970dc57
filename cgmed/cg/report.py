"""The CG report: ``cg_report.json``, a Table-3-shaped ``cg_report.md`` and PNG plots, made from
the typed results of the stages (:mod:`cgmed.cg.results`).

A classification target's arms are compared on accuracy. A detection target's (its test set
is all box records) are compared on cIoU, the paper's Table 5 metric: its row carries
``metric: "ciou"``, each arm a ``ciou`` (plus ``mean_iou`` and ``acc_iou50``) with a bootstrap
interval of cIoU, and ``cg_helps`` compares cIoU. Classification rows are unchanged.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from cgmed.cg.config import CGConfig
from cgmed.cg.results import Evaluation, SplitSummary, TargetRun, subset_title
from cgmed.cg.stats import spread
from cgmed.data.manifest import read_jsonl
from cgmed.eval.metrics import bootstrap_ci, ciou_bootstrap_ci, mat_key
from cgmed.eval.score import EvalConfig

log = logging.getLogger(__name__)
_LABELS = {"accuracy": "accuracy", "ciou": "cIoU"}
_ARMS = (("baseline", "Baseline"), ("baseline_plus", "Baseline+"), ("trained", "Trained"))


def _metric(results: dict) -> str:
    """``ciou`` when every test row of an evaluation is a detection, else ``accuracy``."""
    o = results["overall"]
    return "ciou" if o.get("n_det") and o["n_det"] == o["n"] else "accuracy"


def _value(arm: dict | None, metric: str) -> float:
    return float(arm[metric]) if arm else float("nan")


def _pooled(evaluations: list[Evaluation]) -> list[dict]:
    rows: list[dict] = []
    for e in evaluations:
        rows += read_jsonl(e.predictions)
    return rows


def _arm(evaluations: list[Evaluation], eval_cfg: EvalConfig, metric: str = "accuracy") -> dict[str, Any]:
    """An arm over seeds: mean, per-seed values and SD (ddof=1) of accuracy (or of cIoU, with
    ``metric="ciou"``, plus mean IoU and IoU >= 0.5 accuracy), and the bootstrap 95% interval of
    the predictions of every seed pooled."""
    overall = [e.overall for e in evaluations]
    seeds = spread([o[metric] for o in overall])
    pooled = _pooled(evaluations)
    arm: dict[str, Any] = {metric: seeds.mean, "per_seed": seeds.values, "sd": seeds.sd}
    if metric == "ciou":
        boxes = [r for r in pooled if r.get("box") is not None]
        arm["ci95"] = list(ciou_bootstrap_ci(boxes, eval_cfg.bootstrap, eval_cfg.seed))
        arm["n"] = overall[0]["n"]
        arm["mean_iou"] = float(np.mean([o["mean_iou"] for o in overall]))
        arm["acc_iou50"] = float(np.mean([o["acc_iou50"] for o in overall]))
    else:
        arm["ci95"] = list(bootstrap_ci([r["correct"] for r in pooled], eval_cfg.bootstrap, eval_cfg.seed))
        arm["n"] = overall[0]["n"]
        arm["chance"] = overall[0]["chance"]
    return arm


def _baseline_arm(baseline: Evaluation, metric: str) -> dict[str, Any]:
    """The untrained model's arm: one evaluation, its own bootstrap interval."""
    o = baseline.overall
    if metric == "ciou":
        return {
            "ciou": o["ciou"],
            "ci95": o["ciou_ci95"],
            "n": o["n"],
            "mean_iou": o["mean_iou"],
            "acc_iou50": o["acc_iou50"],
        }
    return {"accuracy": o["accuracy"], "ci95": o["ci95"], "n": o["n"], "chance": o["chance"]}


def _titles(split: SplitSummary | None) -> list[str]:
    return [subset_title(s) for s in split.train_subsets] if split else []


def target_row(run: TargetRun, eval_cfg: EvalConfig) -> dict[str, Any]:
    """One target's row of ``cg_report.json``: its subsets, each arm, and whether CG helps."""
    assert run.baseline is not None
    seeds = list(run.seeds)
    per_seed = [run.seeds[s] for s in seeds]
    metric = _metric(run.baseline.results)
    row: dict[str, Any] = {
        "name": run.name,
        "group": run.spec.group,
        "target": subset_title(run.target),
        "related": _titles(run.related),
        "unrelated": _titles(run.unrelated),
        "train_samples": run.related.sizes["train"],
        "baseline": _baseline_arm(run.baseline, metric),
        "trained": _arm([r.trained for r in per_seed], eval_cfg, metric),
        "seeds": seeds,
    }
    if metric == "ciou":
        row["metric"] = "ciou"
    if all(r.baseline_plus is not None for r in per_seed):
        row["baseline_plus"] = _arm([r.baseline_plus for r in per_seed], eval_cfg, metric)
    if all(r.seen is not None for r in per_seed):
        row["seen_accuracy"] = _arm([r.seen for r in per_seed], eval_cfg)
        row["seen_per_mat"] = per_seed[0].seen.results["per_mat"]
    rivals = [row["baseline"][metric]] + ([row["baseline_plus"][metric]] if "baseline_plus" in row else [])
    # The paper's apparent rule (Table 3): CG helps when Trained beats both Baseline and Baseline+
    # (for a detection target, on cIoU: Table 5 reports cIoU gains).
    # Tables 4, 5, 7, 8 and 15 report only this: Trained minus the untrained model
    row["gain"] = float(row["trained"][metric] - row["baseline"][metric])
    row["cg_helps"] = bool(row["trained"][metric] > max(rivals))
    row["cg_helps_beyond_ci"] = bool(row["trained"]["ci95"][0] > max(rivals))
    if run.spec.paper:
        row["paper"] = dict(run.spec.paper)
    if run.baseline_few_shot is not None:
        row["few_shot"] = few_shot_block(run, seeds)
    return row


def _accuracies(evaluations: list[Evaluation]) -> dict[str, Any]:
    """Mean and population SD over few-shot draws (see :func:`cgmed.cg.stats.spread`)."""
    draws = spread([e.overall["accuracy"] for e in evaluations], ddof=0)
    return {"mean": draws.mean, "sd": draws.sd, "values": draws.values}


def few_shot_block(run: TargetRun, seeds: list[int]) -> dict[str, Any]:
    """Accuracy per shot count for Baseline and Trained: 0-shot, then mean and SD over the draws
    (over seeds x draws for Trained)."""
    assert run.baseline is not None and run.baseline_few_shot is not None
    base_fs = run.baseline_few_shot
    block: dict[str, Any] = {"shots": [0, *(int(n) for n in base_fs)]}
    block["baseline"] = {"0": _accuracies([run.baseline])}
    block["baseline"].update({n: _accuracies(draws) for n, draws in base_fs.items()})
    block["trained"] = {"0": _accuracies([run.seeds[s].trained for s in seeds])}
    for n in base_fs:
        block["trained"][n] = _accuracies([e for s in seeds for e in run.seeds[s].trained_few_shot[n]])
    paper = run.spec.paper_few_shot
    if paper:
        block["paper"] = {arm: {str(k): v for k, v in vals.items()} for arm, vals in paper.items()}
    return block


def few_shot_markdown(rows: list[dict]) -> list[str]:
    """Table 16's shape per target: rows Baseline / Trained (and the paper's), columns n-shot."""
    lines: list[str] = []
    for r in rows:
        fs = r.get("few_shot")
        if not fs:
            continue
        shots = [str(n) for n in fs["shots"]]
        lines += [
            "",
            f"Few-shot prompting on {r['target']} (accuracy %, mean ± SD over draws of the examples):",
            "",
            "| Model | " + " | ".join(f"{n}-shot" for n in shots) + " |",
            "|" + "---|" * (len(shots) + 1),
        ]
        for arm, label in (("baseline", "Baseline (untrained)"), ("trained", "Trained (CG)")):
            cells = []
            for n in shots:
                v = fs[arm][n]
                sd = f" ± {100 * v['sd']:.2f}" if len(v["values"]) > 1 else ""
                cells.append(f"{100 * v['mean']:.2f}{sd}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for arm, vals in (fs.get("paper") or {}).items():
            lines.append(f"| paper: {arm} | " + " | ".join(str(vals.get(n, "-")) for n in shots) + " |")
    return lines


def _pct(x: dict | None, metric: str = "accuracy") -> str:
    if not x:
        return "-"
    lo, hi = x["ci95"]
    return f"{100 * x[metric]:.1f} [{100 * lo:.0f}-{100 * hi:.0f}]"


_TABLE3_KEYS = ("baseline", "baseline_plus", "trained")


def _paper_cell(paper: dict) -> str:
    """``Base / Base+ / Trained`` as Table 3 prints them, then any other number the row carries
    (a gain, a SD, another backbone's value) as ``name value``."""
    parts = []
    if any(k in paper for k in _TABLE3_KEYS):
        parts.append(" / ".join(str(paper.get(k, "-")) for k in _TABLE3_KEYS))
    parts += [f"{k} {v}" for k, v in paper.items() if k not in _TABLE3_KEYS]
    return "; ".join(parts) or "-"


_TABLE_HEAD = [
    "Related combination",
    "Target",
    "Baseline",
    "Baseline+",
    "Trained",
    "CG helps",
    "Seen (Trained)",
    "Gain (Trained - Baseline)",
]


def table_lines(rows: list[dict], with_paper: bool) -> list[str]:
    """The Table-3-shaped markdown table, one line per target."""
    head = _TABLE_HEAD + (["Paper"] if with_paper else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        metric = r.get("metric", "accuracy")
        cells = [
            " + ".join(r["related"]),
            r["target"] + (" (cIoU)" if metric == "ciou" else ""),
            _pct(r["baseline"], metric),
            _pct(r.get("baseline_plus"), metric),
            _pct(r["trained"], metric),
            "yes" if r["cg_helps"] else "no",
            _pct(r.get("seen_accuracy")),
            f"{100 * r['gain']:+.1f}",
        ]
        if with_paper:
            cells.append(_paper_cell(r.get("paper") or {}))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def note_lines(rows: list[dict], cg: CGConfig, with_paper: bool) -> list[str]:
    """What the table's columns mean, for the kinds of rows it holds."""
    seeds = rows[0]["seeds"] if rows else []
    notes = [
        "",
        "Accuracy in %, [95% bootstrap interval]. Baseline = the model before training; Baseline+ = trained on "
        "Unrelated subsets (no shared MAT element), as many samples as the Related data; Trained = trained on the "
        f"Related combination only. Seeds: {seeds}. CG helps = Trained > max(Baseline, Baseline+). Gain = "
        "Trained - Baseline in points (what Tables 4, 5, 7, 8 and 15 report).",
    ]
    if with_paper:
        notes.append(
            "Paper = the paper's Baseline / Baseline+ / Trained, then any other number it gives for the row."
        )
    if any(r.get("metric") == "ciou" for r in rows):
        notes.append(
            "Targets marked (cIoU) are detection subsets: their Baseline / Baseline+ / Trained cells are cIoU in % "
            "(cumulative IoU = sum of intersections / sum of unions over the test set, the paper's Table 5 metric), "
            "with a 95% bootstrap interval of cIoU, and CG helps compares cIoU. Boxes are generated (whatever "
            "eval.method says) and read as {<x1><y1><x2><y2>} on a 0-100 grid; an unreadable answer counts as no box. "
            "Their Seen column stays accuracy (a detection counts as right at IoU >= 0.5)."
        )
    if cg.note:
        notes.append(cg.note)
    return notes


def markdown(rows: list[dict], cg: CGConfig) -> str:
    """``cg_report.md``: the table, its notes, then the few-shot tables."""
    with_paper = any("paper" in r for r in rows)
    lines = table_lines(rows, with_paper) + note_lines(rows, cg, with_paper) + few_shot_markdown(rows)
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_plot(runs: list[TargetRun], rows: list[dict], out: Path) -> str:
    """``cg_targets.png``: each arm per target with its interval, chance dotted."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 2.6 * len(rows)), 3.6))
    width = 0.26
    for k, (key, label) in enumerate(_ARMS):
        xs, ys, lo, hi = [], [], [], []
        for i, r in enumerate(rows):
            if key in r and r[key]:
                a, v = r[key], _value(r[key], r.get("metric", "accuracy"))
                xs.append(i + (k - 1) * width)
                ys.append(100 * v)
                # clipped at 0: a pooled interval need not contain a mean over seeds
                lo.append(max(0.0, 100 * (v - a["ci95"][0])))
                hi.append(max(0.0, 100 * (a["ci95"][1] - v)))
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=label)
    for i, r in enumerate(rows):
        chance = r["baseline"].get("chance")
        if chance is not None and not math.isnan(chance):  # a detection target has no chance level
            ax.hlines(100 * chance, i - 1.5 * width, i + 1.5 * width, colors="k", linestyles=":")
    ax.set_xticks(range(len(rows)), [" ".join(run.target.triplet) for run in runs], fontsize=8)
    metrics = sorted({_LABELS[r.get("metric", "accuracy")] for r in rows})
    ax.set_ylabel(" / ".join(metrics) + " (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("CG per held-out target (dotted: chance)")
    fig.tight_layout()
    fig.savefig(out / "cg_targets.png", dpi=120)
    plt.close(fig)
    return "cg_targets.png"


def _cell(modality: str, area: str, task: str) -> tuple[str, str]:
    """A heatmap cell: the modality's row, the area-task column."""
    return (modality, f"{area} {task}")


def heatmap_cells(runs: list[TargetRun], rows: list[dict]) -> dict[tuple[str, str], float]:
    """Trained's number on each target and its accuracy on each seen combination."""
    cells: dict[tuple[str, str], float] = {}
    for run, r in zip(runs, rows, strict=True):
        cells[_cell(*run.target.triplet)] = _value(r["trained"], r.get("metric", "accuracy"))
        # the evaluator keys per-MAT results by mat_key; the trained-on subsets give each its triplet
        triplets = {mat_key(s.to_json()): s.triplet for s in run.related.train_subsets}
        for mat, v in (r.get("seen_per_mat") or {}).items():
            if mat not in triplets:
                log.warning(
                    "seen combination %r is no trained-on subset of %s; left off the heatmap", mat, run.name
                )
                continue
            cells.setdefault(_cell(*triplets[mat]), v["accuracy"])
    return cells


def heatmap(runs: list[TargetRun], cells: dict[tuple[str, str], float], has_det: bool, out: Path) -> str:
    """``cg_heatmap.png``: Trained over MAT combinations, held-out targets starred."""
    plt = _pyplot()
    ms = sorted({k[0] for k in cells})
    ats = sorted({k[1] for k in cells})
    grid = np.full((len(ms), len(ats)), np.nan)
    for (m, at), v in cells.items():
        grid[ms.index(m), ats.index(at)] = 100 * v
    fig, ax = plt.subplots(figsize=(1.2 * len(ats) + 2, 0.6 * len(ms) + 1.8))
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis")
    ax.set_xticks(range(len(ats)), ats, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(ms)), ms, fontsize=8)
    targets = {_cell(*run.target.triplet) for run in runs}
    for i, m in enumerate(ms):
        for j, at in enumerate(ats):
            if not np.isnan(grid[i, j]):
                mark = "*" if (m, at) in targets else ""
                ax.text(j, i, f"{grid[i, j]:.0f}{mark}", ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(im, ax=ax, label="Trained accuracy (%)" + ("; * Det targets: cIoU" if has_det else ""))
    ax.set_title("Accuracy over MAT combinations (* held out)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "cg_heatmap.png", dpi=120)
    plt.close(fig)
    return "cg_heatmap.png"


def plots(runs: list[TargetRun], rows: list[dict], out: Path) -> list[str]:
    """The bar plot per target and the heatmap over MAT combinations; returns their file names."""
    written = [bar_plot(runs, rows, out)]
    cells = heatmap_cells(runs, rows)
    if cells:
        written.append(heatmap(runs, cells, any(r.get("metric") == "ciou" for r in rows), out))
    return written


def write_report(runs: list[TargetRun], cg: CGConfig, run_dir: Path, eval_cfg: EvalConfig) -> dict[str, Any]:
    """Write ``cg_report.json``, ``cg_report.md`` (printed too) and the plots; returns the document."""
    rows = [target_row(run, eval_cfg) for run in runs]
    doc = {"format": "cgmed-cg-report/1", "targets": rows, "note": cg.note, "eval_method": eval_cfg.method}
    if any(r.get("metric") == "ciou" for r in rows):
        doc["detection_eval"] = "generation; boxes parsed as {<x1><y1><x2><y2>} (0-100); headline metric cIoU"
    (run_dir / "cg_report.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(rows, cg)
    (run_dir / "cg_report.md").write_text(md)
    if cg.plots:
        doc["plots"] = plots(runs, rows, run_dir)
    print(md)
    print(f"report written to {run_dir / 'cg_report.md'} (and cg_report.json, plots)")
    return doc


def print_plan(runs: list[TargetRun]) -> None:
    """The dry run's account: per target, the subsets and sample counts of each split."""
    for run in runs:
        rel = run.related
        print(f"target {run.name}: {subset_title(run.target)}")
        print(
            f"  Trained on (Related): {', '.join(_titles(rel))}  ->  {rel.sizes['train']} "
            f"samples; target test {rel.sizes['test']}, seen test {rel.sizes['seen_test']}; "
            f"audit {'passed' if rel.audit_passed else 'FAILED'}"
        )
        if rel.sizes.get("shots"):
            print(f"  in-context examples (few-shot, never trained on): {rel.sizes['shots']} in shots.jsonl")
        if run.unrelated is not None:
            un = run.unrelated
            print(
                f"  Baseline+ on (Unrelated): {', '.join(_titles(un))}  ->  "
                f"{un.sizes['train']} samples; audit {'passed' if un.audit_passed else 'FAILED'}"
            )
    print("dry run: nothing trained")
