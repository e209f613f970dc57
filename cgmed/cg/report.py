"""The CG report: ``cg_report.json``, a Table-3-shaped ``cg_report.md`` and PNG plots, made from
the typed results of the stages (:mod:`cgmed.cg.results`).

Every number is recomputed from the evaluations' ``predictions.jsonl``; what each evaluation did
(its method) comes from its ``results.json``, and how each trained arm was trained (steps, lr,
seed) from its training stage's record (``stage.json``), never from the config of the rerun. Per arm: the mean over seeds, each seed's value, a
95% interval over seeds and questions (:data:`cgmed.cg.stats.INTERVAL_METHOD`), the evaluation
method and the unparsed answers per run. Trained is compared with Baseline+ and with Baseline
twice: by the paper's rule on point estimates (``cg_helps``: Trained > max(Baseline, Baseline+))
and by a paired bootstrap on the same questions (``paired``, ``cg_helps_significant``).

A classification target's arms are compared on accuracy. A detection target's (its test set
is all box records) are compared on cIoU, the paper's Table 5 metric: its row carries
``metric: "ciou"``, each arm a ``ciou`` (plus ``mean_iou`` and ``acc_iou50``), and the interval
and the paired difference are of cIoU.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from cgmed.atomic import atomic_file, atomic_write_text
from cgmed.cg.config import CGConfig
from cgmed.cg.figures import differences_figure, pictures_markdown, target_pictures
from cgmed.cg.records import read_stage_record
from cgmed.cg.results import Evaluation, SplitSummary, TargetRun, subset_title
from cgmed.cg.reuse import reused_from, shared_lines
from cgmed.cg.stats import (
    ALPHA,
    INTERVAL_METHOD,
    Outcomes,
    Resamples,
    interval,
    outcomes,
    paired,
    resamples,
    spread,
)
from cgmed.data.manifest import read_jsonl
from cgmed.errors import DataError
from cgmed.eval.metrics import is_unparsed, mat_key
from cgmed.eval.score import EvalConfig

log = logging.getLogger(__name__)
_LABELS = {"accuracy": "accuracy", "ciou": "cIoU"}
_ARMS = (("baseline", "Baseline"), ("baseline_plus", "Baseline+"), ("trained", "Trained"))
_RIVALS = ("baseline_plus", "baseline")  # what Trained is compared with
SIGNIFICANCE = (
    "Trained minus the rival on the same test questions (joined by question id), the per-seed "
    "differences averaged over seeds (a one-run Baseline paired with every seed's Trained); 95% interval and "
    "two-sided p-value from a bootstrap that resamples seeds, then questions (the same for both arms); "
    f"significant when p < {ALPHA}; accuracy rows also get McNemar's exact test per seed"
)


def _metric(results: dict) -> str:
    """``ciou`` when every test row of an evaluation is a detection, else ``accuracy``."""
    o = results["overall"]
    return "ciou" if o.get("n_det") and o["n_det"] == o["n"] else "accuracy"


def _value(arm: dict | None, metric: str) -> float:
    return float(arm[metric]) if arm else float("nan")


def load_outcomes(evaluations: list[Evaluation], metric: str) -> tuple[Outcomes, list[int]]:
    """The runs' outcomes per question (:func:`cgmed.cg.stats.outcomes`) and each run's count of
    unparsed answers (``pred`` None: counted wrong)."""
    runs = [read_jsonl(e.predictions) for e in evaluations]
    unparsed = [sum(1 for r in rows if is_unparsed(r)) for rows in runs]
    if metric == "ciou":
        runs = [[r for r in rows if r.get("box") is not None] for rows in runs]
    return outcomes(runs, metric, [str(e.predictions) for e in evaluations]), unparsed


def _method(evaluations: list[Evaluation]) -> str:
    """The evaluation method of an arm's runs (each run's results.json)."""
    methods = sorted({e.method for e in evaluations})
    return methods[0] if len(methods) == 1 else "mixed: " + ", ".join(methods)


def arm_summary(
    evaluations: list[Evaluation], scored: Outcomes, unparsed: list[int], draws: Resamples, seeded: bool
) -> dict[str, Any]:
    """One arm: the mean over its runs of accuracy (or cIoU, plus mean IoU and IoU >= 0.5
    accuracy), per-seed values and SD (ddof=1) for an arm trained per seed, the 95% interval,
    the evaluation method and the unparsed answers of each run."""
    metric = scored.metric
    overall = [e.overall for e in evaluations]
    arm: dict[str, Any] = {metric: scored.point()}
    if seeded:
        seeds = spread(scored.per_run().tolist())
        arm.update(per_seed=seeds.values, sd=seeds.sd)
    arm["ci95"] = interval(scored, draws)
    arm["n"] = overall[0]["n"]
    if metric == "ciou":
        arm["mean_iou"] = float(np.mean([o["mean_iou"] for o in overall]))
        arm["acc_iou50"] = float(np.mean([o["acc_iou50"] for o in overall]))
    else:
        arm["chance"] = overall[0]["chance"]
    arm["method"] = _method(evaluations)
    arm["unparsed_per_run"] = unparsed
    return arm


def compare_arms(
    arms: dict[str, list[Evaluation]], seeds: list[int], metric: str, eval_cfg: EvalConfig
) -> dict[str, Any]:
    """Each arm on the target's test set (``baseline``: one run; ``trained``, ``baseline_plus``:
    one per seed) and Trained against each rival, by the paper's rule on point estimates
    (``cg_helps``) and paired (``paired``; ``cg_helps_significant``: above every rival at 0.05)."""
    loaded = {arm: load_outcomes(evaluations, metric) for arm, evaluations in arms.items()}
    trained = loaded["trained"][0]
    for arm, (scored, _) in loaded.items():
        if scored.ids != trained.ids:
            raise DataError(
                str(arms[arm][0].predictions),
                f"scores other questions than {arms['trained'][0].predictions}",
                "evaluate every arm on the target's test.jsonl (delete the stale eval folder and rerun)",
            )
    draws = resamples(len(seeds), len(trained.ids), eval_cfg.bootstrap, eval_cfg.seed)
    out: dict[str, Any] = {
        arm: arm_summary(arms[arm], scored, unparsed, draws, seeded=arm != "baseline")
        for arm, (scored, unparsed) in loaded.items()
    }
    out["paired"] = {}
    for rival in (r for r in _RIVALS if r in loaded):
        out["paired"][rival] = paired(trained, loaded[rival][0], draws, seeds).to_json()
    # The paper's apparent rule (Table 3): CG helps when Trained beats both Baseline and Baseline+
    # (for a detection target, on cIoU: Table 5 reports cIoU gains).
    out["cg_helps"] = bool(out["trained"][metric] > max(out[r][metric] for r in out["paired"]))
    verdicts = [p["significant"] and p["difference"] > 0 for p in out["paired"].values()]
    tested = all(p["significant"] is not None for p in out["paired"].values())
    out["cg_helps_significant"] = all(verdicts) if tested else None
    return out


def seen_arm(evaluations: list[Evaluation], seeds: list[int], eval_cfg: EvalConfig) -> dict[str, Any]:
    """Trained's accuracy on the test sets of the combinations it trained on."""
    scored, unparsed = load_outcomes(evaluations, "accuracy")
    draws = resamples(len(seeds), len(scored.ids), eval_cfg.bootstrap, eval_cfg.seed)
    return arm_summary(evaluations, scored, unparsed, draws, seeded=True)


def _titles(split: SplitSummary | None) -> list[str]:
    return [subset_title(s) for s in split.train_subsets] if split else []


def _second_method_arms(run: TargetRun, seeds: list[int]) -> dict[str, list[Evaluation]] | None:
    """Baseline, Trained (and Baseline+) by the second evaluation method, when every run has one."""
    per_seed = [run.seeds[s].second_method for s in seeds]
    if run.baseline_second_method is None or not all("trained" in m for m in per_seed):
        return None
    arms = {"baseline": [run.baseline_second_method], "trained": [m["trained"] for m in per_seed]}
    if all("baseline_plus" in m for m in per_seed):
        arms["baseline_plus"] = [m["baseline_plus"] for m in per_seed]
    return arms


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
        "seeds": seeds,
    }
    if metric == "ciou":
        row["metric"] = "ciou"
    arms = {"baseline": [run.baseline], "trained": [r.trained for r in per_seed]}
    if all(r.baseline_plus is not None for r in per_seed):
        arms["baseline_plus"] = [r.baseline_plus for r in per_seed]
    row.update(compare_arms(arms, seeds, metric, eval_cfg))
    # Tables 4, 5, 7, 8 and 15 report only this: Trained minus the untrained model
    row["gain"] = float(row["trained"][metric] - row["baseline"][metric])
    for arm in ("trained", "baseline_plus"):
        if arm in row:
            row[arm]["training"] = training_used(arms[arm])
            if any(reused_from(arms[arm])):  # per seed: whose identical training it used (cg.reuse)
                row[arm]["reused_from"] = reused_from(arms[arm])
    if all(r.seen is not None for r in per_seed):
        row["seen_accuracy"] = seen_arm([r.seen for r in per_seed], seeds, eval_cfg)
        row["seen_per_mat"] = per_seed[0].seen.results["per_mat"]
    second = _second_method_arms(run, seeds)
    if second:
        row["second_method"] = {
            "method": _method(second["trained"]),
            **compare_arms(second, seeds, metric, eval_cfg),
        }
    if run.related.test_set_warnings:
        row["test_set_warnings"] = run.related.test_set_warnings
    if run.spec.paper:
        row["paper"] = dict(run.spec.paper)
    if run.spec.note:  # e.g. a two-element row of Table 10, a scaling arm that cannot reach the cap
        row["note"] = run.spec.note
    if run.baseline_few_shot is not None:
        row["few_shot"] = few_shot_block(run, seeds)
    return row


TRAINING_FACTS = {"max_steps": "train.max_steps", "lr": "train.lr", "seed": "train.seed"}


def training_used(evaluations: list[Evaluation]) -> dict[str, list[Any]]:
    """How the model of each run was trained (per seed: steps, lr, seed), from the records of the
    evaluation and of the training of the model it evaluated; None where nothing was recorded."""
    used: dict[str, list[Any]] = {fact: [] for fact in TRAINING_FACTS}
    for evaluation in evaluations:
        record = read_stage_record(evaluation.directory) or {}
        training = None
        if "model" in record:
            model_dir = (evaluation.directory / record["model"]).resolve()
            training = read_stage_record(model_dir.parent)
        for fact, key in TRAINING_FACTS.items():
            used[fact].append((training or {}).get(key))
    return used


def _training_text(training: dict[str, list[Any]]) -> str:
    steps, lrs = set(training["max_steps"]), set(training["lr"])
    if None in steps or None in lrs:
        return "not recorded"
    if len(steps) == 1 and len(lrs) == 1:
        return f"{steps.pop()} steps at lr {lrs.pop():g}"
    return "per seed " + ", ".join(
        f"{s} steps at lr {lr:g}" for s, lr in zip(training["max_steps"], training["lr"], strict=True)
    )


def training_lines(rows: list[dict]) -> list[str]:
    """Per target, the steps and lr each trained arm was trained with (its records)."""
    lines = []
    for r in rows:
        arms = [(label, r[key]["training"]) for key, label in _ARMS if "training" in (r.get(key) or {})]
        if arms:
            used = "; ".join(f"{label} {_training_text(training)}" for label, training in arms)
            lines.append(f"Trained with ({r['name']}, from each training's stage.json): {used}.")
    return lines


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
    """An arm's cell in %: the mean, each seed's value when there are several, [95% interval]."""
    if not x:
        return "-"
    lo, hi = x["ci95"]
    seeds = x.get("per_seed") or []
    each = " (" + ", ".join(f"{100 * v:.1f}" for v in seeds) + ")" if len(seeds) > 1 else ""
    return f"{100 * x[metric]:.1f}{each} [{100 * lo:.0f}-{100 * hi:.0f}]"


def _p_text(comparison: dict) -> str:
    p = comparison["p_value"]
    if p is None:
        return "untested (eval.bootstrap=0)"
    if p == 0:  # no replicate reached 0: the p-value is below what the replicates resolve
        return f"p < {2 / comparison['replicates']:.2g}"
    return f"p {p:.3f}"


def _difference(comparison: dict | None) -> str:
    """A paired difference in points: ``+6.0 [-1.2, +13.1], p 0.110``."""
    if not comparison:
        return "-"
    lo, hi = comparison["ci95"]
    return f"{100 * comparison['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}], {_p_text(comparison)}"


def _yes_no(verdict: bool | None) -> str:
    return "-" if verdict is None else ("yes" if verdict else "no")


def _method_cell(row: dict) -> str:
    """The evaluation method of the arms: one name when they agree, else one per arm."""
    methods = {label: row[key]["method"].replace("_", " ") for key, label in _ARMS if row.get(key)}
    if len(set(methods.values())) == 1:
        return next(iter(methods.values()))
    return "; ".join(f"{label}: {method}" for label, method in methods.items())


def _unparsed_cell(row: dict) -> str:
    """Unparsed answers per run, Baseline / Baseline+ / Trained ('-' when no arm generated)."""
    arms = [row.get(key) for key, _ in _ARMS]
    if not any(a and "generation" in a["method"] for a in arms):
        return "-"
    return " / ".join(", ".join(str(n) for n in a["unparsed_per_run"]) if a else "-" for a in arms)


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
    "Significant",
    "Trained - Baseline+ (paired)",
    "Seen (Trained)",
    "Gain: Trained - Baseline (paired)",
    "Method",
    "Unparsed (B / B+ / T)",
]


def table_lines(rows: list[dict], with_paper: bool) -> list[str]:
    """The Table-3-shaped markdown table, one line per target."""
    head = _TABLE_HEAD + (["Paper"] if with_paper else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        metric = r.get("metric", "accuracy")
        compared = r["paired"]
        target = r["target"] + (" (cIoU)" if metric == "ciou" else "")
        cells = [
            " + ".join(r["related"]),
            target + (" †" if r.get("test_set_warnings") else ""),
            _pct(r["baseline"], metric),
            _pct(r.get("baseline_plus"), metric),
            _pct(r["trained"], metric),
            _yes_no(r["cg_helps"]),
            _yes_no(r["cg_helps_significant"]),
            _difference(compared.get("baseline_plus")),
            _pct(r.get("seen_accuracy")),
            _difference(compared.get("baseline")),
            _method_cell(r),
            _unparsed_cell(r),
        ]
        if with_paper:
            cells.append(_paper_cell(r.get("paper") or {}))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def methods_markdown(rows: list[dict]) -> list[str]:
    """Per target evaluated by both methods: each arm under each method, side by side."""
    lines: list[str] = []
    for r in rows:
        second = r.get("second_method")
        if not second:
            continue
        metric = r.get("metric", "accuracy")
        first_name, second_name = _method_cell(r), _method_cell(second)
        lines += [
            "",
            f"{r['target']} by both evaluation methods ({_LABELS[metric]} %; unparsed answers per run):",
            "",
            f"| | {first_name} | {second_name} | Unparsed ({first_name}) | Unparsed ({second_name}) |",
            "|---|---|---|---|---|",
        ]
        for key, label in _ARMS:
            if r.get(key):
                unparsed = [
                    ", ".join(map(str, (x.get(key) or {}).get("unparsed_per_run", []))) for x in (r, second)
                ]
                lines.append(
                    f"| {label} | {_pct(r[key], metric)} | {_pct(second.get(key), metric)} | "
                    f"{unparsed[0]} | {unparsed[1]} |"
                )
        lines += [
            f"| CG helps | {_yes_no(r['cg_helps'])} | {_yes_no(second['cg_helps'])} | | |",
            f"| Significant | {_yes_no(r['cg_helps_significant'])} | {_yes_no(second['cg_helps_significant'])} | | |",
        ]
        for rival, label in (("baseline_plus", "Trained - Baseline+"), ("baseline", "Trained - Baseline")):
            if rival in r["paired"]:
                lines.append(
                    f"| {label} | {_difference(r['paired'][rival])} | "
                    f"{_difference(second['paired'].get(rival))} | | |"
                )
    return lines


def note_lines(rows: list[dict], cg: CGConfig, with_paper: bool) -> list[str]:
    """What the table's columns mean, for the kinds of rows it holds."""
    seeds = rows[0]["seeds"] if rows else []
    notes = [
        "",
        "Accuracy in %: the mean over seeds, (each seed's value, with several seeds), [95% interval]. Baseline = "
        "the model before training (one run: it does not depend on the seed); Baseline+ = trained on Unrelated "
        "subsets (no shared MAT element), as many samples as the Related data; Trained = trained on the Related "
        f"combination only. Seeds: {seeds}.",
        f"Intervals: {INTERVAL_METHOD}.",
        "CG helps = the paper's rule on point estimates: Trained > max(Baseline, Baseline+). Significant = Trained "
        f"above both in the paired comparison: {SIGNIFICANCE}. The paired columns give the difference in points "
        "[95% interval], p; Gain = Trained - Baseline (what Tables 4, 5, 7, 8 and 15 report).",
        "Method = each arm's evaluation method as its results.json records it. Unparsed = answers that could not "
        "be read, counted wrong, per run (Baseline / Baseline+ per seed / Trained per seed); '-' when every arm "
        "scored options (always a letter).",
    ]
    if any(len(r["seeds"]) == 1 for r in rows):
        notes.append(
            "With one seed the intervals cover question sampling only: the seed-to-seed spread needs more seeds "
            "(cg.seeds)."
        )
    if with_paper:
        notes.append(
            "Paper = the paper's Baseline / Baseline+ / Trained, then any other number it gives for the row."
        )
    if any(r.get("metric") == "ciou" for r in rows):
        notes.append(
            "Targets marked (cIoU) are detection subsets: their Baseline / Baseline+ / Trained cells are cIoU in % "
            "(cumulative IoU = sum of intersections / sum of unions over the test set, the paper's Table 5 metric), "
            "with a 95% interval of cIoU, and CG helps and the paired differences compare cIoU. Boxes are generated "
            "(whatever eval.method says) and read as {<x1><y1><x2><y2>} on a 0-100 grid; an unreadable answer counts "
            "as no box. Their Seen column stays accuracy (a detection counts as right at IoU >= 0.5)."
        )
    notes += training_lines(rows)
    notes += shared_lines(rows)
    notes += [f"† {warning}" for r in rows for warning in r.get("test_set_warnings", [])]
    notes += [f"{r['name']} ({r['target']}): {r['note']}" for r in rows if r.get("note")]
    if cg.note:
        notes.append(cg.note)
    return notes


# Table 3's groups, in the paper's order (cg.targets[i].group)
PAPER_GROUPS = {"FM": "fixed modality", "FA": "fixed area", "FT": "fixed task", "MA": "modality-area pair"}


def group_rank(group: str | None) -> tuple[int, str]:
    """Where a group's table goes: the paper's groups in its order, then others by name, then none."""
    order = list(PAPER_GROUPS)
    if group in PAPER_GROUPS:
        return (order.index(group), "")
    return (len(order), group) if group else (len(order) + 1, "")


def grouped_table_lines(rows: list[dict], with_paper: bool) -> list[str]:
    """One table per paper group (FM / FA / FT / MA) under its name, as Table 3 is printed; a
    single table when no row has a group."""
    groups = sorted({r.get("group") for r in rows}, key=group_rank)
    if groups == [None]:
        return table_lines(rows, with_paper)
    lines: list[str] = []
    for group in groups:
        title = f"{group} ({PAPER_GROUPS[group]})" if group in PAPER_GROUPS else (group or "No group")
        if lines:
            lines.append("")
        lines += [f"**{title}**", "", *table_lines([r for r in rows if r.get("group") == group], with_paper)]
    return lines


def markdown(rows: list[dict], cg: CGConfig) -> str:
    """``cg_report.md``: the table (one per paper group), its notes, both methods side by side
    (where both ran), then the few-shot tables."""
    with_paper = any("paper" in r for r in rows)
    lines = grouped_table_lines(rows, with_paper) + note_lines(rows, cg, with_paper)
    lines += methods_markdown(rows) + few_shot_markdown(rows)
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
                # clipped at 0: a percentile interval need not contain the mean over seeds
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
    with atomic_file(out / "cg_targets.png", "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
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
    with atomic_file(out / "cg_heatmap.png", "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)
    return "cg_heatmap.png"


def plots(runs: list[TargetRun], rows: list[dict], out: Path) -> list[str]:
    """The bar plot per target, the heatmap over MAT combinations, Trained minus Baseline+ per
    target, and each target's pictures (:mod:`cgmed.cg.figures`: confusion matrices, example
    images), whose files go into its row as ``pictures``; returns every file name."""
    written = [bar_plot(runs, rows, out)]
    cells = heatmap_cells(runs, rows)
    if cells:
        written.append(heatmap(runs, cells, any(r.get("metric") == "ciou" for r in rows), out))
    differences = differences_figure(rows, out)
    if differences is not None:
        written.append(differences.file)
    for run, row in zip(runs, rows, strict=True):
        row["pictures"] = {kind: p.file for kind, p in target_pictures(run, out).items()}
        written += row["pictures"].values()
    return written


def write_report(
    runs: list[TargetRun],
    cg: CGConfig,
    run_dir: Path,
    eval_cfg: EvalConfig,
    merged: dict[str, Any] | None = None,
    merged_md: str = "",
) -> dict[str, Any]:
    """Write ``cg_report.json``, ``cg_report.md`` (printed too) and the plots; returns the document.
    A report merged from several runs (:mod:`cgmed.cg.merge`) gives its account of the runs and
    their status as ``merged`` (the JSON's ``merge``) and ``merged_md`` (after the tables)."""
    rows = [target_row(run, eval_cfg) for run in runs]
    doc = {
        "format": "cgmed-cg-report/2",
        "targets": rows,
        "note": cg.note,
        # what the evaluations did, from their results.json (not what the config asks for now)
        "methods": sorted({r[key]["method"] for r in rows for key, _ in _ARMS if r.get(key)}),
        "interval_method": INTERVAL_METHOD,
        "significance": SIGNIFICANCE,
        "warnings": [warning for r in rows for warning in r.get("test_set_warnings", [])],
    }
    if any(r.get("metric") == "ciou" for r in rows):
        doc["detection_eval"] = "generation; boxes parsed as {<x1><y1><x2><y2>} (0-100); headline metric cIoU"
    if merged is not None:
        doc["merge"] = merged
    if cg.plots:  # before the files: the rows list their pictures
        doc["plots"] = plots(runs, rows, run_dir)
    atomic_write_text(run_dir / "cg_report.json", json.dumps(doc, indent=1) + "\n")
    md = markdown(rows, cg) + merged_md + pictures_markdown(rows, doc.get("plots", []))
    atomic_write_text(run_dir / "cg_report.md", md)
    print(md)
    print(f"report written to {run_dir / 'cg_report.md'} (and cg_report.json, plots)")
    return doc


def print_plan(runs: list[TargetRun], details: dict[str, list[str]] | None = None) -> None:
    """The dry run's account: per target, the subsets and sample counts of each split, then its
    ``details`` lines (the arms' recipes, :func:`cgmed.cg.recipe.target_lines`)."""
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
        for line in (details or {}).get(run.name, []):
            print(line)
    print("dry run: nothing trained")
