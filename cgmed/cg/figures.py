"""Pictures of a CG report, to see what the models got wrong on a held-out combination.

Per target: ``pictures/<target>_confusion.png``, a confusion matrix per arm (Baseline, Baseline+,
Trained; the seeds of an arm pooled), and ``pictures/<target>_examples.png``, a grid of test
images with the label and each arm's answer (green right, red wrong), questions on which the arms
disagree first. Over targets: ``cg_differences.png``, Trained minus Baseline+ per target with its
paired 95% interval (the report row's ``paired.baseline_plus``), sorted, the paper's difference as
a marker where the row carries the paper's numbers.

The answers come from each evaluation's ``predictions.jsonl``, the image of each question from the
target's ``test.jsonl`` (joined by question id). Detection targets (box answers) get no confusion
matrix and no grid. Figures have a fixed size in pixels (no tight bounding box), so that a figure's
pixel size tells its layout.
"""

from __future__ import annotations

import hashlib
import logging
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cgmed.atomic import atomic_file
from cgmed.cg.results import Evaluation, TargetRun, subset_title
from cgmed.data.choices import LETTERS
from cgmed.data.manifest import read_jsonl
from cgmed.errors import CgmedError

log = logging.getLogger(__name__)

ARMS = (("baseline", "Baseline"), ("baseline_plus", "Baseline+"), ("trained", "Trained"))
UNPARSED = "unparsed"  # the confusion matrix's column of answers that could not be read
DPI = 100
PANEL_INCHES = (4.0, 3.6)  # one confusion matrix
TILE_INCHES = 2.2  # one example image (text lines below it add to the height)
TEXT_LINE_INCHES = 0.2
GRID_COLUMNS = 4
GRID_SIZE = 12  # example images per target
RIGHT, WRONG = "#1a8f1a", "#c81e1e"
PICTURES_DIR = "pictures"
DIFFERENCES = "cg_differences.png"


@dataclass(frozen=True)
class Answer:
    """One question as one run answered it, by option name."""

    label: str  # the right option
    pred: str  # the chosen option, or UNPARSED
    correct: bool


@dataclass(frozen=True)
class Picture:
    """A written figure: its path relative to the report's folder and its layout."""

    file: str
    shown: tuple[str, ...]  # its panels in order: arms, question ids, or targets (bottom to top)
    size: tuple[int, int]  # width, height in pixels


@dataclass(frozen=True)
class ArmRuns:
    """An arm's runs on the target's test set: one per seed (Baseline: one run)."""

    key: str
    label: str
    seeds: list[int] | None  # None for Baseline, which does not depend on the seed
    evaluations: list[Evaluation]


def read_answers(path: Path) -> dict[str, Answer]:
    """The multiple-choice rows of a ``predictions.jsonl`` by question id (box rows are left out)."""
    answers = {}
    for row in read_jsonl(path):
        options = row.get("options") or []
        if not options:
            continue
        label = options[LETTERS.index(row["answer"])]
        pred = row.get("pred")
        chosen = options[LETTERS.index(pred)] if pred in list(LETTERS[: len(options)]) else UNPARSED
        answers[str(row["id"])] = Answer(label, chosen, bool(row["correct"]))
    return answers


def target_arms(run: TargetRun) -> list[ArmRuns]:
    """The arms a target was evaluated with on its test set, in the report's order."""
    assert run.baseline is not None
    seeds = list(run.seeds)
    arms = [ArmRuns("baseline", "Baseline", None, [run.baseline])]
    plus = [run.seeds[s].baseline_plus for s in seeds]
    if seeds and all(e is not None for e in plus):
        arms.append(ArmRuns("baseline_plus", "Baseline+", seeds, [e for e in plus if e is not None]))
    arms.append(ArmRuns("trained", "Trained", seeds, [run.seeds[s].trained for s in seeds]))
    return arms


def confusion(runs: list[dict[str, Answer]]) -> tuple[np.ndarray, list[str], list[str]]:
    """Counts of (label, answer) pooled over ``runs``: rows the labels, columns every label or
    answer named, then :data:`UNPARSED`."""
    answers = [a for run in runs for a in run.values()]
    rows = sorted({a.label for a in answers})
    columns = sorted({a.label for a in answers} | {a.pred for a in answers} - {UNPARSED}) + [UNPARSED]
    counts = np.zeros((len(rows), len(columns)), dtype=int)
    for a in answers:
        counts[rows.index(a.label), columns.index(a.pred)] += 1
    return counts, rows, columns


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, file: str, shown: list[str]) -> Picture:
    path = out / file
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=DPI)
    width, height = (round(v * DPI) for v in fig.get_size_inches())
    _pyplot().close(fig)
    return Picture(file, tuple(shown), (width, height))


def _wrap(name: str) -> str:
    """A label name over lines of at most 16 characters, so long class names do not crowd panels."""
    return "\n".join(textwrap.wrap(name, 16)) or name


def _seed_text(arm: ArmRuns) -> str:
    if arm.seeds is None:
        return "one run"
    return f"seed {arm.seeds[0]}" if len(arm.seeds) == 1 else f"seeds {', '.join(map(str, arm.seeds))} pooled"


def _confusion_panel(ax: Any, arm: ArmRuns, counts: np.ndarray, rows: list[str], columns: list[str]) -> None:
    """One arm's matrix: coloured by the share of each label's questions, annotated with counts."""
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    ax.imshow(shares, vmin=0, vmax=1, cmap="Blues", aspect="auto")
    small = 7 if len(columns) <= 8 else 5
    if len(columns) <= 16:  # beyond that the numbers would not fit their cells
        for i in range(len(rows)):
            for j in range(len(columns)):
                colour = "w" if shares[i, j] > 0.6 else "k"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=small, color=colour)
    ax.set_xticks(range(len(columns)), [_wrap(c) for c in columns], rotation=40, ha="right", fontsize=small)
    ax.set_yticks(range(len(rows)), [_wrap(r) for r in rows], fontsize=small)
    ax.set_xlabel("answer", fontsize=8)
    ax.set_ylabel("label", fontsize=8)
    ax.set_title(f"{arm.label} ({_seed_text(arm)}, {int(counts.sum())} answers)", fontsize=8)


def confusion_figure(run: TargetRun, arms: list[ArmRuns], out: Path) -> Picture:
    """``pictures/<target>_confusion.png``: one panel per arm, the same rows and columns in each."""
    plt = _pyplot()
    answers = {arm.key: [read_answers(e.predictions) for e in arm.evaluations] for arm in arms}
    _, rows, columns = confusion([run for runs in answers.values() for run in runs])
    width, height = PANEL_INCHES
    fig, axes = plt.subplots(
        1, len(arms), figsize=(width * len(arms), height), squeeze=False, layout="constrained"
    )
    for ax, arm in zip(axes[0], arms, strict=True):
        counts, own_rows, own_columns = confusion(answers[arm.key])
        aligned = np.zeros((len(rows), len(columns)), dtype=int)
        for i, label in enumerate(own_rows):
            for j, name in enumerate(own_columns):
                aligned[rows.index(label), columns.index(name)] = counts[i, j]
        _confusion_panel(ax, arm, aligned, rows, columns)
    fig.suptitle(f"{subset_title(run.target)}: label (rows) against answer (columns)", fontsize=9)
    return _save(fig, out, f"{PICTURES_DIR}/{run.name}_confusion.png", [arm.label for arm in arms])


def _stable_rank(question_id: str) -> str:
    """An order of questions that depends on nothing but their ids (spread over labels)."""
    return hashlib.blake2b(question_id.encode(), digest_size=8).hexdigest()


def pick_examples(answers: list[dict[str, Answer]], limit: int = GRID_SIZE) -> list[str]:
    """Up to ``limit`` question ids every run answered: those on which the runs' answers differ
    first, then those every run got wrong, then the rest; within each, a stable order of the ids."""
    common = set.intersection(*(set(a) for a in answers)) if answers else set()

    def priority(qid: str) -> tuple[int, str]:
        given = [a[qid] for a in answers]
        if len({a.pred for a in given}) > 1:
            return 0, _stable_rank(qid)
        return (1 if not any(a.correct for a in given) else 2), _stable_rank(qid)

    return sorted(common, key=priority)[:limit]


def _thumbnail(record: dict[str, Any] | None) -> np.ndarray | None:
    """The question's image as the model saw it (RGB), or None when it cannot be read here."""
    from cgmed.data.imaging import open_image

    if record is None:
        return None
    try:
        image = open_image(record["image"], modality=record.get("modality"))
    except CgmedError as err:
        log.warning("example image left blank: %s", err)
        return None
    image.thumbnail((256, 256))
    return np.asarray(image)


def _tile(ax: Any, image: np.ndarray | None, label: str, lines: list[tuple[str, Answer]]) -> None:
    """One example: the image, its label, then each arm's answer in green (right) or red (wrong)."""
    if image is None:
        ax.text(0.5, 0.5, "image not found", ha="center", va="center", fontsize=7, transform=ax.transAxes)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"label: {label}", fontsize=7)
    for k, (arm, a) in enumerate(lines):
        mark, colour = ("✓", RIGHT) if a.correct else ("✗", WRONG)
        ax.text(
            0,
            -0.06 - 0.09 * k,
            f"{mark} {arm}: {a.pred}",
            color=colour,
            fontsize=7,
            ha="left",
            va="top",
            transform=ax.transAxes,
        )


def examples_figure(run: TargetRun, arms: list[ArmRuns], out: Path) -> Picture | None:
    """``pictures/<target>_examples.png``: up to :data:`GRID_SIZE` test images with each arm's
    answer (the first seed of a seeded arm); None when no question was answered by every arm."""
    first = {arm.label: read_answers(arm.evaluations[0].predictions) for arm in arms}
    picked = pick_examples(list(first.values()))
    if not picked:
        return None
    manifest = run.related.manifest("test")
    if not manifest.is_file():
        log.warning("%s not found: the example images of %s are left blank", manifest, run.name)
    records = {str(r["id"]): r for r in read_jsonl(manifest)} if manifest.is_file() else {}
    plt = _pyplot()
    columns = min(GRID_COLUMNS, len(picked))
    rows = math.ceil(len(picked) / columns)
    tile_height = TILE_INCHES + TEXT_LINE_INCHES * (len(arms) + 1)
    fig, axes = plt.subplots(
        rows, columns, figsize=(TILE_INCHES * columns, tile_height * rows + 0.6), squeeze=False
    )
    for ax, qid in zip(axes.flat, picked, strict=False):
        given = [(label, answers[qid]) for label, answers in first.items()]
        _tile(ax, _thumbnail(records.get(qid)), given[0][1].label, given)
    for ax in axes.flat[len(picked) :]:
        ax.axis("off")
    seeds = next((arm.seeds for arm in arms if arm.seeds), None)
    seed_note = f"seed {seeds[0]}'s models" if seeds else "one run"
    fig.suptitle(
        f"{subset_title(run.target)}: test images, answers of {seed_note}\n"
        "(✓ green right, ✗ red wrong; questions where the arms disagree first)",
        fontsize=8,
    )
    text_share = TEXT_LINE_INCHES * len(arms) / tile_height
    fig.subplots_adjust(
        left=0.02,
        right=0.98,
        bottom=text_share / rows + 0.01,
        top=1 - 0.6 / fig.get_figheight(),
        hspace=text_share * 1.6 + 0.15,
        wspace=0.08,
    )
    return _save(fig, out, f"{PICTURES_DIR}/{run.name}_examples.png", picked)


def target_pictures(run: TargetRun, out: Path) -> dict[str, Picture]:
    """A target's confusion matrices and example images (none for a detection target)."""
    arms = target_arms(run)
    if not read_answers(run.baseline.predictions):  # type: ignore[union-attr]
        return {}
    pictures = {"confusion": confusion_figure(run, arms, out)}
    examples = examples_figure(run, arms, out)
    if examples is not None:
        pictures["examples"] = examples
    return pictures


def _paper_difference(row: dict[str, Any]) -> float | None:
    """The paper's Trained minus Baseline+ in points, where the row carries both numbers."""
    paper = row.get("paper") or {}
    trained, plus = paper.get("trained"), paper.get("baseline_plus")
    if isinstance(trained, (int, float)) and isinstance(plus, (int, float)):
        return float(trained) - float(plus)
    return None


def differences_figure(rows: list[dict[str, Any]], out: Path) -> Picture | None:
    """``cg_differences.png``: Trained minus Baseline+ (paired, in points) per target with its 95%
    interval, sorted, the paper's difference as a marker; None when no target has a Baseline+."""
    compared = sorted(
        (r for r in rows if "baseline_plus" in r.get("paired", {})),
        key=lambda r: r["paired"]["baseline_plus"]["difference"],
    )
    if not compared:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 1.6 + 0.35 * len(compared)), layout="constrained")
    ys = np.arange(len(compared))
    diffs = np.array([100 * r["paired"]["baseline_plus"]["difference"] for r in compared])
    low = np.array([100 * r["paired"]["baseline_plus"]["ci95"][0] for r in compared])
    high = np.array([100 * r["paired"]["baseline_plus"]["ci95"][1] for r in compared])
    # clipped at 0: a percentile interval need not contain the mean over seeds
    xerr = [np.maximum(diffs - low, 0), np.maximum(high - diffs, 0)]
    ax.errorbar(diffs, ys, xerr=xerr, fmt="o", color="C0", capsize=3, label="measured (95% interval)")
    paper = [(y, _paper_difference(r)) for y, r in zip(ys, compared, strict=True)]
    paper = [(y, d) for y, d in paper if d is not None]
    if paper:
        ax.scatter(
            [d for _, d in paper], [y for y, _ in paper], marker="D", color="C3", zorder=3, label="paper"
        )
    ax.axvline(0, color="k", linewidth=0.8, linestyle=":")
    names = [r["target"] + (" (cIoU)" if r.get("metric") == "ciou" else "") for r in compared]
    ax.set_yticks(ys, names, fontsize=7)
    ax.set_xlabel("Trained − Baseline+ (points; paired, seeds averaged)", fontsize=8)
    ax.set_title("Does the Related data beat as much Unrelated data?", fontsize=9)
    ax.set_ylim(-0.6, len(compared) - 0.4)
    ax.margins(x=0.08)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _save(fig, out, DIFFERENCES, [r["name"] for r in compared])


def pictures_markdown(rows: list[dict[str, Any]], plots: list[str]) -> str:
    """The report's "Pictures" section (markdown links): the figures over targets, then each
    target's pictures; empty without plots."""
    if not plots:
        return ""
    titles = {
        "cg_targets.png": "arms per target",
        "cg_heatmap.png": "Trained over MAT combinations",
        DIFFERENCES: "Trained − Baseline+ per target",
    }
    overall = [f"[{titles[p]}]({p})" for p in plots if p in titles]
    lines = ["", "## Pictures", "", "Over targets: " + ", ".join(overall) + "."]
    names = {"confusion": "confusion matrices", "examples": "test images with each arm's answer"}
    for r in rows:
        pictures = r.get("pictures") or {}
        if pictures:
            links = ", ".join(f"[{names[kind]}]({file})" for kind, file in pictures.items())
            lines.append(f"- {r['target']} ({r['name']}): {links}.")
    return "\n".join(lines) + "\n"
