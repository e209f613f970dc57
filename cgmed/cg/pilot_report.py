"""The pilot's report (Tables 1-2): ``pilot_report.json``, ``pilot_report.md`` and ``pilot.png``,
made from the typed results of :mod:`cgmed.cg.pilot`, and the dry run's account."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cgmed.atomic import atomic_file, atomic_write_text
from cgmed.cg.config import CGConfig, Pilot
from cgmed.cg.results import Evaluation, PilotRun, SplitSummary, subset_title
from cgmed.cg.stats import spread

_ARM_TITLES = {
    "baseline": ("Baseline", "Base"),
    "single": ("Single-task", "Single"),
    "multi": ("Multi-task", "Multi"),
}


def _per_subset(evaluation: Evaluation | None, sid: str) -> float | None:
    if evaluation is None:
        return None
    got = evaluation.results["per_subset"].get(sid)
    return None if got is None else float(got["accuracy"])


def _over_seeds(values: list[float | None]) -> dict[str, Any] | None:
    """Mean, per-seed values and SD of the seeds that scored the subset (None if none did)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    seeds = spread(vals)
    return {"accuracy": seeds.mean, "per_seed": seeds.values, "sd": seeds.sd}


def pilot_rows(
    trained: list[str], test_only: list[str], splits: dict[str, SplitSummary], run: PilotRun, pilot: Pilot
) -> dict[str, list[dict]]:
    """Table 1 (``table1_id``: trained subsets) and Table 2 (``table2_ood``: test-only subsets)."""
    subsets = {s.id: s for split in splits.values() for s in (*split.train_subsets, *split.targets)}
    seed_runs = list(run.seeds.values())
    paper = pilot.paper or {}

    def row(sid: str, table: str) -> dict[str, Any]:
        base = run.baseline_id if table == "id" else run.baseline_ood
        assert base is not None
        scores = base.results["per_subset"][sid]
        out = {
            "subset": subset_title(subsets[sid]),
            "n": scores["n"],
            "chance": scores["chance"],
            "baseline": _per_subset(base, sid),
        }
        if table == "id":  # only trained-on subsets have a Single-task model
            out["single"] = _over_seeds([_per_subset(r.single.get(sid), sid) for r in seed_runs])
        multi = [r.multi_id if table == "id" else r.multi_ood for r in seed_runs]
        out["multi"] = _over_seeds([_per_subset(m, sid) for m in multi])
        if sid in paper:
            out["paper"] = dict(paper[sid])
        return out

    return {
        "table1_id": [row(sid, "id") for sid in trained],
        "table2_ood": [row(sid, "ood") for sid in test_only],
    }


def _cell(x: Any) -> str:
    if x is None:
        return "-"
    v = x["accuracy"] if isinstance(x, dict) else x
    sd = f" ± {100 * x['sd']:.1f}" if isinstance(x, dict) and len(x["per_seed"]) > 1 else ""
    return f"{100 * v:.1f}{sd}"


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
    """``pilot_report.md``: Table 1, Table 2 (when there are test-only subsets) and the notes."""
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
    trained: list[str],
    test_only: list[str],
    splits: dict[str, SplitSummary],
    run: PilotRun,
    cg: CGConfig,
    out: Path,
    audit: dict | None,
) -> dict[str, Any]:
    """Write ``pilot_report.json``, ``pilot_report.md`` (printed too) and the plot; returns the document."""
    assert cg.pilot is not None
    tables = pilot_rows(trained, test_only, splits, run, cg.pilot)
    doc = {
        "format": "cgmed-pilot-report/1",
        **tables,
        "train_samples": {"multi": splits["multi"].sizes["train"]}
        | {k: s.sizes["train"] for k, s in splits.items() if k.startswith("single-")},
        "ood_image_audit": audit,
        "seeds": list(cg.seeds),
        "note": cg.note,
    }
    atomic_write_text(out / "pilot_report.json", json.dumps(doc, indent=1) + "\n")
    md = pilot_markdown(tables, cg)
    atomic_write_text(out / "pilot_report.md", md)
    if cg.plots:
        doc["plots"] = [pilot_plot(tables, [*trained, *test_only], out)]
    print(md)
    print(f"report written to {out / 'pilot_report.md'} (and pilot_report.json)")
    return doc


def pilot_plot(tables: dict[str, list[dict]], subset_ids: list[str], out: Path) -> str:
    """``pilot.png``: each arm per subset (``subset_ids`` in the order of the rows), ID then OOD."""
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
    ax.set_xticks(range(len(rows)), subset_ids, fontsize=8)
    if tables["table2_ood"]:
        ax.axvline(len(tables["table1_id"]) - 0.5, color="k", linestyle=":")
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Pilot: ID subsets | OOD subsets (right of the dotted line)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(out / "pilot.png", "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)
    return "pilot.png"


def print_pilot_plan(
    trained: list[str], test_only: list[str], splits: dict[str, SplitSummary], audit: dict | None
) -> None:
    """The dry run's account: the subsets and sample counts of each pilot model."""
    multi = splits["multi"]
    print(
        f"pilot: Multi-task trains on {len(trained)} subsets ({', '.join(trained)}) -> "
        f"{multi.sizes['train']} samples; ID test {multi.sizes['seen_test']}; "
        f"audit {'passed' if multi.audit_passed else 'FAILED'}"
    )
    if "ood" in splits:
        print(
            f"  OOD test-only subsets ({', '.join(test_only)}): {splits['ood'].sizes['test']} samples; "
            f"image audit against the Multi-task training set {'passed' if audit and audit['passed'] else 'FAILED'}"
        )
    singles = [k for k in splits if k.startswith("single-")]
    if singles:
        sizes = ", ".join(f"{k[7:]}: {splits[k].sizes['train']}" for k in singles)
        print(f"  Single-task models: {len(singles)} ({sizes} samples)")
    print("dry run: nothing trained")
