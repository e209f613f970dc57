"""The CG report: ``cg_report.json``, a Table-3-shaped ``cg_report.md`` and PNG plots.

A classification target's arms are compared on accuracy. A detection target's (its test set
is all box records) are compared on cIoU, the paper's Table 5 metric: its row carries
``metric: "ciou"``, each arm a ``ciou`` (plus ``mean_iou`` and ``acc_iou50``) with a bootstrap
interval of cIoU, and ``cg_helps`` compares cIoU. Classification rows are unchanged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from cgmed.cg.config import CGConfig
from cgmed.eval.metrics import bootstrap_ci, ciou_bootstrap_ci

_LABELS = {"accuracy": "accuracy", "ciou": "cIoU"}


def _describe(subsets: list[dict]) -> list[str]:
    return [f"{s['id']} {s['modality']} {s['area']} {s['task']}" for s in subsets]


def _read(paths: list[Path]) -> list[dict]:
    rows: list[dict] = []
    for p in paths:
        rows += [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return rows


def _metric(results: dict) -> str:
    """``ciou`` when every test row of an evaluation is a detection, else ``accuracy``."""
    o = results["overall"]
    return "ciou" if o.get("n_det") and o["n_det"] == o["n"] else "accuracy"


def _value(arm: dict | None, metric: str) -> float:
    return float(arm[metric]) if arm else float("nan")


def _det_arm(results: list[dict], eval_cfg: Any, predictions: list[Path]) -> dict[str, Any]:
    """A detection arm over seeds: mean cIoU, per-seed cIoU, SD, pooled bootstrap interval of cIoU."""
    vals = [r["overall"]["ciou"] for r in results]
    pooled = [r for r in _read(predictions) if r.get("box") is not None]
    return {
        "ciou": float(np.mean(vals)),
        "per_seed": vals,
        "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
        "ci95": list(ciou_bootstrap_ci(pooled, eval_cfg.bootstrap, eval_cfg.seed)),
        "n": results[0]["overall"]["n"],
        "mean_iou": float(np.mean([r["overall"]["mean_iou"] for r in results])),
        "acc_iou50": float(np.mean([r["overall"]["acc_iou50"] for r in results])),
    }


def _arm(
    results: list[dict], eval_cfg: Any, predictions: list[Path], metric: str = "accuracy"
) -> dict[str, Any]:
    """An arm over seeds: mean accuracy, per-seed values, SD (ddof=1), pooled bootstrap 95% interval
    (of cIoU, with ``metric="ciou"``)."""
    if metric == "ciou":
        return _det_arm(results, eval_cfg, predictions)
    accs = [r["overall"]["accuracy"] for r in results]
    pooled: list[bool] = []
    for p in predictions:
        pooled += [json.loads(x)["correct"] for x in p.read_text().splitlines() if x.strip()]
    return {
        "accuracy": float(np.mean(accs)),
        "per_seed": accs,
        "sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
        "ci95": list(bootstrap_ci(pooled, eval_cfg.bootstrap, eval_cfg.seed)),
        "n": results[0]["overall"]["n"],
        "chance": results[0]["overall"]["chance"],
    }


def target_row(entry: dict[str, Any], run_dir: Path, eval_cfg: Any) -> dict[str, Any]:
    plan, metas = entry["plan"], entry["metas"]
    out = run_dir / plan.name
    seeds = list(entry["seeds"])
    base = entry["baseline"]
    metric = _metric(base)
    row: dict[str, Any] = {
        "name": plan.name,
        "group": plan.spec.group,
        "target": _describe(metas["related"]["targets"])[0],
        "related": _describe(metas["related"]["train_subsets"]),
        "unrelated": _describe(metas["unrelated"]["train_subsets"]) if "unrelated" in metas else [],
        "train_samples": metas["related"]["sizes"]["train"],
        "baseline": {
            "accuracy": base["overall"]["accuracy"],
            "ci95": base["overall"]["ci95"],
            "n": base["overall"]["n"],
            "chance": base["overall"]["chance"],
        },
        "trained": _arm(
            [entry["seeds"][s]["trained"] for s in seeds],
            eval_cfg,
            [out / f"seed-{s}" / "trained" / "eval" / "predictions.jsonl" for s in seeds],
            metric,
        ),
        "seeds": seeds,
    }
    if metric == "ciou":
        o = base["overall"]
        row["metric"] = "ciou"
        row["baseline"] = {
            "ciou": o["ciou"],
            "ci95": o["ciou_ci95"],
            "n": o["n"],
            "mean_iou": o["mean_iou"],
            "acc_iou50": o["acc_iou50"],
        }
    if all("baseline_plus" in entry["seeds"][s] for s in seeds):
        row["baseline_plus"] = _arm(
            [entry["seeds"][s]["baseline_plus"] for s in seeds],
            eval_cfg,
            [out / f"seed-{s}" / "baseline_plus" / "eval" / "predictions.jsonl" for s in seeds],
            metric,
        )
    if all("seen" in entry["seeds"][s] for s in seeds):
        seen = _arm(
            [entry["seeds"][s]["seen"] for s in seeds],
            eval_cfg,
            [out / f"seed-{s}" / "trained" / "eval_seen" / "predictions.jsonl" for s in seeds],
        )
        row["seen_accuracy"] = seen
        row["seen_per_mat"] = entry["seeds"][seeds[0]]["seen"]["per_mat"]
    rivals = [row["baseline"][metric]] + ([row["baseline_plus"][metric]] if "baseline_plus" in row else [])
    # The paper's apparent rule (Table 3): CG helps when Trained beats both Baseline and Baseline+
    # (for a detection target, on cIoU: Table 5 reports cIoU gains).
    # Tables 4, 5, 7, 8 and 15 report only this: Trained minus the untrained model
    row["gain"] = float(row["trained"][metric] - row["baseline"][metric])
    row["cg_helps"] = bool(row["trained"][metric] > max(rivals))
    row["cg_helps_beyond_ci"] = bool(row["trained"]["ci95"][0] > max(rivals))
    if plan.spec.paper:
        row["paper"] = dict(plan.spec.paper)
    if "baseline_few_shot" in entry:
        row["few_shot"] = few_shot_block(entry, seeds, plan.spec.paper_few_shot)
    return row


def _spread(values: list[float]) -> dict[str, Any]:
    # population SD (ddof=0), as the paper's Table 16 appears to report it (medmat.md section 5)
    return {"mean": float(np.mean(values)), "sd": float(np.std(values)), "values": values}


def few_shot_block(entry: dict[str, Any], seeds: list[int], paper: dict | None) -> dict[str, Any]:
    """Accuracy per shot count for Baseline and Trained: 0-shot, then mean and SD over the draws
    (over seeds x draws for Trained)."""
    base_fs = entry["baseline_few_shot"]
    block: dict[str, Any] = {"shots": [0, *(int(n) for n in base_fs)]}
    block["baseline"] = {"0": _spread([entry["baseline"]["overall"]["accuracy"]])}
    block["baseline"].update(
        {n: _spread([r["overall"]["accuracy"] for r in runs]) for n, runs in base_fs.items()}
    )
    block["trained"] = {"0": _spread([entry["seeds"][s]["trained"]["overall"]["accuracy"] for s in seeds])}
    for n in base_fs:
        block["trained"][n] = _spread(
            [r["overall"]["accuracy"] for s in seeds for r in entry["seeds"][s]["trained_few_shot"][n]]
        )
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


def markdown(rows: list[dict], cg: CGConfig) -> str:
    has_paper = any("paper" in r for r in rows)
    head = [
        "Related combination",
        "Target",
        "Baseline",
        "Baseline+",
        "Trained",
        "CG helps",
        "Seen (Trained)",
        "Gain (Trained - Baseline)",
    ]
    if has_paper:
        head.append("Paper")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        metric = r.get("metric", "accuracy")
        target = r["target"] + (" (cIoU)" if metric == "ciou" else "")
        cells = [
            " + ".join(r["related"]),
            target,
            _pct(r["baseline"], metric),
            _pct(r.get("baseline_plus"), metric),
            _pct(r["trained"], metric),
            "yes" if r["cg_helps"] else "no",
            _pct(r.get("seen_accuracy")),
            f"{100 * r['gain']:+.1f}",
        ]
        if has_paper:
            cells.append(_paper_cell(r.get("paper") or {}))
        lines.append("| " + " | ".join(cells) + " |")
    seeds = rows[0]["seeds"] if rows else []
    notes = [
        "",
        "Accuracy in %, [95% bootstrap interval]. Baseline = the model before training; Baseline+ = trained on "
        "Unrelated subsets (no shared MAT element), as many samples as the Related data; Trained = trained on the "
        f"Related combination only. Seeds: {seeds}. CG helps = Trained > max(Baseline, Baseline+). Gain = "
        "Trained - Baseline in points (what Tables 4, 5, 7, 8 and 15 report).",
    ]
    if has_paper:
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
    return "\n".join(lines + notes + few_shot_markdown(rows)) + "\n"


def plots(rows: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    arms = [("baseline", "Baseline"), ("baseline_plus", "Baseline+"), ("trained", "Trained")]
    fig, ax = plt.subplots(figsize=(max(4, 2.6 * len(rows)), 3.6))
    width = 0.26
    for k, (key, label) in enumerate(arms):
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
    ax.set_xticks(range(len(rows)), [r["target"].split(" ", 1)[1] for r in rows], fontsize=8)
    metrics = sorted({_LABELS[r.get("metric", "accuracy")] for r in rows})
    ax.set_ylabel(" / ".join(metrics) + " (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("CG per held-out target (dotted: chance)")
    fig.tight_layout()
    fig.savefig(out / "cg_targets.png", dpi=120)
    plt.close(fig)
    written.append("cg_targets.png")

    # heatmap over MAT combinations: Trained accuracy on seen combinations and on each target
    cells: dict[tuple[str, str], float] = {}
    for r in rows:
        m, a, t = r["target"].split(" ")[1:4]
        cells[(m, f"{a} {t}")] = _value(r["trained"], r.get("metric", "accuracy"))
        for mat, v in (r.get("seen_per_mat") or {}).items():
            m2, a2, t2 = mat.split(" ")
            cells.setdefault((m2, f"{a2} {t2}"), v["accuracy"])
    if cells:
        ms = sorted({k[0] for k in cells})
        ats = sorted({k[1] for k in cells})
        grid = np.full((len(ms), len(ats)), np.nan)
        for (m, at), v in cells.items():
            grid[ms.index(m), ats.index(at)] = 100 * v
        fig, ax = plt.subplots(figsize=(1.2 * len(ats) + 2, 0.6 * len(ms) + 1.8))
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis")
        ax.set_xticks(range(len(ats)), ats, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(ms)), ms, fontsize=8)
        targets = {(r["target"].split(" ")[1], " ".join(r["target"].split(" ")[2:4])) for r in rows}
        for i, m in enumerate(ms):
            for j, at in enumerate(ats):
                if not np.isnan(grid[i, j]):
                    mark = "*" if (m, at) in targets else ""
                    ax.text(j, i, f"{grid[i, j]:.0f}{mark}", ha="center", va="center", fontsize=7, color="w")
        has_det = any(r.get("metric") == "ciou" for r in rows)
        fig.colorbar(im, ax=ax, label="Trained accuracy (%)" + ("; * Det targets: cIoU" if has_det else ""))
        ax.set_title("Accuracy over MAT combinations (* held out)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "cg_heatmap.png", dpi=120)
        plt.close(fig)
        written.append("cg_heatmap.png")
    return written


def write_report(per_target: list[dict], cg: CGConfig, run_dir: Path, eval_cfg: Any) -> dict[str, Any]:
    rows = [target_row(e, run_dir, eval_cfg) for e in per_target]
    doc = {"format": "cgmed-cg-report/1", "targets": rows, "note": cg.note, "eval_method": eval_cfg.method}
    if any(r.get("metric") == "ciou" for r in rows):
        doc["detection_eval"] = "generation; boxes parsed as {<x1><y1><x2><y2>} (0-100); headline metric cIoU"
    (run_dir / "cg_report.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(rows, cg)
    (run_dir / "cg_report.md").write_text(md)
    if cg.plots:
        doc["plots"] = plots(rows, run_dir)
    print(md)
    print(f"report written to {run_dir / 'cg_report.md'} (and cg_report.json, plots)")
    return doc


def print_plan(per_target: list[dict]) -> None:
    for e in per_target:
        plan, metas = e["plan"], e["metas"]
        rel = metas["related"]
        print(f"target {plan.name}: {_describe(rel['targets'])[0]}")
        print(
            f"  Trained on (Related): {', '.join(_describe(rel['train_subsets']))}  ->  {rel['sizes']['train']} "
            f"samples; target test {rel['sizes']['test']}, seen test {rel['sizes']['seen_test']}; "
            f"audit {'passed' if rel['audit']['passed'] else 'FAILED'}"
        )
        if rel["sizes"].get("shots"):
            print(
                f"  in-context examples (few-shot, never trained on): {rel['sizes']['shots']} in shots.jsonl"
            )
        if "unrelated" in metas:
            un = metas["unrelated"]
            print(
                f"  Baseline+ on (Unrelated): {', '.join(_describe(un['train_subsets']))}  ->  "
                f"{un['sizes']['train']} samples; audit {'passed' if un['audit']['passed'] else 'FAILED'}"
            )
    print("dry run: nothing trained")
