"""The CG report's statistics on constructed predictions: the two-level bootstrap over seeds and
questions, the paired comparison of Trained with its rivals (question ids, not row order),
McNemar's exact test, cIoU differences, and the report's method, unparsed and warning columns."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from cgmed.cg.config import CGConfig, CGTarget
from cgmed.cg.report import compare_arms, write_report
from cgmed.cg.results import Evaluation, SeedRun, SplitSummary, TargetRun
from cgmed.cg.stats import interval, mcnemar_exact, outcomes, paired, resamples
from cgmed.errors import DataError
from cgmed.eval.metrics import bootstrap_ci, results
from cgmed.eval.score import EvalConfig

N = 67  # questions, about a Med-MAT target test set
SEEDS = [0, 1, 2]
EVAL = EvalConfig(bootstrap=1000, seed=0)


def rows(correct: list[bool], unparsed: int = 0) -> list[dict]:
    """Prediction rows of a 3-option test set: question i right or wrong; the first ``unparsed``
    wrong answers could not be read (``pred`` None)."""
    out, wrong_seen = [], 0
    for i, c in enumerate(correct):
        pred: str | None = "A" if c else "B"
        if not c:
            wrong_seen += 1
            pred = None if wrong_seen <= unparsed else pred
        out.append(
            {
                "id": f"q{i:03d}",
                "subset": "04",
                "modality": "CT",
                "area": "Lung",
                "task": "Cancer",
                "options": ["Cancer", "Normal", "Other"],
                "answer": "A",
                "pred": pred,
                "correct": c,
            }
        )
    return out


def evaluation(directory: Path, predictions: list[dict], method: str = "generation") -> Evaluation:
    """An evaluation folder as the evaluator leaves it: predictions.jsonl and results.json."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in predictions))
    doc = {**results(predictions, 0, 0), "method": method}
    (directory / "results.json").write_text(json.dumps(doc))
    return Evaluation(doc, directory)


def pattern(n_right: int, seed: int) -> list[bool]:
    """``n_right`` of N questions right, which ones drawn by ``seed``."""
    right = set(random.Random(seed).sample(range(N), n_right))
    return [i in right for i in range(N)]


def flipped(base: list[bool], n: int) -> list[bool]:
    """``base`` with its first ``n`` wrong answers made right: the arms differ on exactly n questions."""
    out, left = list(base), n
    for i, c in enumerate(out):
        if not c and left:
            out[i], left = True, left - 1
    assert left == 0
    return out


def arms_differing_by(tmp_path: Path, n_questions: int) -> dict[str, list[Evaluation]]:
    """Baseline (one run), Baseline+ and Trained (three seeds each); each seed's Trained gets
    ``n_questions`` more right than its Baseline+ and than Baseline."""
    base = pattern(25, 100)
    plus = [pattern(26, s) for s in SEEDS]
    return {
        "baseline": [evaluation(tmp_path / "baseline", rows(base))],
        "baseline_plus": [evaluation(tmp_path / f"plus-{s}", rows(plus[s])) for s in SEEDS],
        "trained": [
            evaluation(tmp_path / f"trained-{s}", rows(flipped(plus[s], n_questions))) for s in SEEDS
        ],
    }


def test_one_question_is_not_significant_thirty_are(tmp_path):
    one = compare_arms(arms_differing_by(tmp_path / "one", 1), SEEDS, "accuracy", EVAL)
    assert one["paired"]["baseline_plus"]["difference"] == pytest.approx(1 / N)
    assert one["cg_helps"] is True  # the paper's rule on point estimates: one question flips it
    assert one["paired"]["baseline_plus"]["significant"] is False
    assert one["paired"]["baseline_plus"]["p_value"] > 0.2
    assert one["cg_helps_significant"] is False
    thirty = compare_arms(arms_differing_by(tmp_path / "thirty", 30), SEEDS, "accuracy", EVAL)
    for rival in ("baseline_plus", "baseline"):
        got = thirty["paired"][rival]
        assert got["significant"] is True and got["p_value"] < 0.01 and got["ci95"][0] > 0
    assert thirty["paired"]["baseline_plus"]["difference"] == pytest.approx(30 / N)
    assert thirty["cg_helps"] is True and thirty["cg_helps_significant"] is True
    # McNemar per seed: Trained alone right on the 30 flipped questions, never the other way
    assert [m["trained_only"] for m in thirty["paired"]["baseline_plus"]["mcnemar"]] == [30, 30, 30]
    assert all(
        m["rival_only"] == 0 and m["p_value"] < 1e-8 for m in thirty["paired"]["baseline_plus"]["mcnemar"]
    )


def test_baseline_is_paired_with_every_seed(tmp_path):
    arms = arms_differing_by(tmp_path, 1)
    got = compare_arms(arms, SEEDS, "accuracy", EVAL)["paired"]["baseline"]
    base = np.mean([r["correct"] for r in json_rows(arms["baseline"][0])])
    per_seed = [np.mean([r["correct"] for r in json_rows(e)]) - base for e in arms["trained"]]
    assert got["per_seed"] == pytest.approx(per_seed)
    assert got["difference"] == pytest.approx(np.mean(per_seed))
    assert [m["seed"] for m in got["mcnemar"]] == SEEDS and got["n_questions"] == N


def json_rows(e: Evaluation) -> list[dict]:
    return [json.loads(x) for x in e.predictions.read_text().splitlines()]


def test_two_level_interval_is_wider_than_the_pooled_one():
    runs = [rows(pattern(k, s)) for s, k in zip(SEEDS, (20, 33, 47), strict=True)]  # 30%, 49%, 70%
    scored = outcomes(runs, "accuracy", ["s0", "s1", "s2"])
    lo, hi = interval(scored, resamples(3, N, 1000, 0))
    pooled_lo, pooled_hi = bootstrap_ci([r["correct"] for run in runs for r in run], 1000, 0)
    assert lo <= scored.point() <= hi
    assert hi - lo > 1.5 * (pooled_hi - pooled_lo)


def test_seeds_answering_the_same_questions_do_not_narrow_the_question_part():
    """Three identical seeds hold one seed's information: the interval keeps one seed's width,
    where pooling their rows would shrink it by about sqrt(3)."""
    one = rows(pattern(30, 7))
    single = outcomes([one], "accuracy", ["s0"])
    tripled = outcomes([one, one, one], "accuracy", ["s0", "s1", "s2"])
    width_single = np.diff(interval(single, resamples(1, N, 2000, 0)))[0]
    width_tripled = np.diff(interval(tripled, resamples(3, N, 2000, 0)))[0]
    pooled = np.diff(bootstrap_ci([r["correct"] for r in one * 3], 2000, 0))[0]
    assert width_tripled == pytest.approx(width_single, rel=0.15)
    assert pooled < 0.75 * width_tripled


def test_pairing_uses_question_ids_not_row_order(tmp_path):
    arms = arms_differing_by(tmp_path / "ordered", 5)
    shuffled = {
        arm: [
            evaluation(tmp_path / "shuffled" / f"{arm}-{i}", random.Random(i).sample(json_rows(e), N))
            for i, e in enumerate(evaluations)
        ]
        for arm, evaluations in arms.items()
    }
    assert compare_arms(shuffled, SEEDS, "accuracy", EVAL) == compare_arms(arms, SEEDS, "accuracy", EVAL)


def test_deterministic_for_a_seed(tmp_path):
    arms = arms_differing_by(tmp_path, 5)
    first = compare_arms(arms, SEEDS, "accuracy", EVAL)
    assert compare_arms(arms, SEEDS, "accuracy", EVAL) == first
    other = compare_arms(arms, SEEDS, "accuracy", EvalConfig(bootstrap=1000, seed=1))
    assert other["trained"]["ci95"] != first["trained"]["ci95"]
    assert other["paired"]["baseline_plus"]["difference"] == first["paired"]["baseline_plus"]["difference"]


def test_arms_on_other_questions_are_refused(tmp_path):
    arms = arms_differing_by(tmp_path, 1)
    fewer = json_rows(arms["baseline"][0])[:-1]
    arms["baseline"] = [evaluation(tmp_path / "short", fewer)]
    with pytest.raises(DataError, match=r"short/predictions.jsonl: scores other questions than"):
        compare_arms(arms, SEEDS, "accuracy", EVAL)


@pytest.mark.parametrize(
    ("only_first", "only_second", "p_value"),
    [(0, 0, 1.0), (5, 0, 2 / 32), (1, 1, 1.0), (10, 2, 2 * (1 + 12 + 66) / 4096)],
)
def test_mcnemar_exact(only_first, only_second, p_value):
    first = np.array([1] * only_first + [0] * only_second + [1, 0])
    second = np.array([0] * only_first + [1] * only_second + [1, 0])
    got = mcnemar_exact(first, second)
    assert (got["trained_only"], got["rival_only"]) == (only_first, only_second)
    assert got["p_value"] == pytest.approx(p_value)


def test_ciou_difference_is_paired_on_boxes():
    def box_rows(scale: float) -> list[dict]:
        # question i: truth 10x10 at the origin, prediction of side 10*scale (None for every 5th)
        return [
            {
                "id": f"q{i:02d}",
                "box": [0, 0, 10, 10],
                "pred_box": None if i % 5 == 0 else [0, 0, 10 * scale, 10],
            }
            for i in range(40)
        ]

    better, worse = outcomes([box_rows(1.0)], "ciou", ["a"]), outcomes([box_rows(0.5)], "ciou", ["b"])
    assert better.point() == pytest.approx(0.8) and worse.point() == pytest.approx(0.4)
    got = paired(better, worse, resamples(1, 40, 500, 0), [0])
    assert got.difference == pytest.approx(0.4) and got.significant and got.mcnemar is None
    same = paired(better, better, resamples(1, 40, 500, 0), [0])
    assert same.difference == 0 and same.p_value == 1.0 and same.significant is False


def summary(tmp_path: Path, warning: bool) -> SplitSummary:
    subset = {"id": "04", "modality": "CT", "area": "Lung", "task": "Cancer"}
    meta = {
        "targets": [subset],
        "train_subsets": [{"id": "03", "modality": "CT", "area": "Brain", "task": "Cancer"}],
        "sizes": {"train": 120, "test": N, "seen_test": 0},
        "audit": {"passed": True},
        "test_sets": {"04": {"n": N, **({"warning": "target 04 has 67 test questions"} if warning else {})}},
    }
    return SplitSummary(tmp_path, meta)


def test_report_states_methods_unparsed_both_methods_and_small_test_warning(tmp_path):
    """A target scored by option scoring and by generation: the markdown gives each arm's method,
    the unparsed answers per run, the paper's rule beside significance, and the two methods side
    by side; the JSON carries the interval method and the split's small-test warning."""
    plus = [pattern(26, s) for s in SEEDS]
    gen = {
        f"{arm}-{s}": evaluation(tmp_path / "gen" / f"{arm}-{s}", rows(c, unparsed=s + 1))
        for arm, per_seed in (("plus", plus), ("trained", [flipped(p, 30) for p in plus]))
        for s, c in zip(SEEDS, per_seed, strict=True)
    }
    run = TargetRun(
        "ct_lung",
        CGTarget(target="04", related=["03"]),
        summary(tmp_path, warning=True),
        baseline=evaluation(tmp_path / "os" / "baseline", rows(pattern(25, 100)), "option_scoring"),
        baseline_second_method=evaluation(tmp_path / "gen" / "baseline", rows(pattern(20, 100), 4)),
    )
    for s in SEEDS:
        run.seeds[s] = SeedRun(
            trained=evaluation(tmp_path / "os" / f"trained-{s}", rows(flipped(plus[s], 1)), "option_scoring"),
            baseline_plus=evaluation(tmp_path / "os" / f"plus-{s}", rows(plus[s]), "option_scoring"),
            second_method={"trained": gen[f"trained-{s}"], "baseline_plus": gen[f"plus-{s}"]},
        )
    doc = write_report([run], CGConfig(plots=False), tmp_path, EVAL)
    (row,) = doc["targets"]
    assert (
        doc["format"] == "cgmed-cg-report/2"
        and "interval_method" in doc
        and "two-level bootstrap" in doc["interval_method"]
    )
    assert doc["methods"] == ["option_scoring"] and doc["warnings"] == ["target 04 has 67 test questions"]
    assert row["trained"]["method"] == "option_scoring" and row["trained"]["unparsed_per_run"] == [0, 0, 0]
    assert (
        "cg_helps_beyond_ci" not in row and row["cg_helps"] is True and row["cg_helps_significant"] is False
    )
    second = row["second_method"]
    assert second["method"] == "generation" and second["cg_helps_significant"] is True
    assert second["trained"]["unparsed_per_run"] == [1, 2, 3]
    assert second["baseline_plus"]["unparsed_per_run"] == [1, 2, 3] and second["baseline"][
        "unparsed_per_run"
    ] == [4]
    md = (tmp_path / "cg_report.md").read_text()
    assert "| CG helps | Significant | Trained - Baseline+ (paired) |" in md
    assert "| Method | Unparsed (B / B+ / T) |" in md
    line = next(x for x in md.splitlines() if x.startswith("| 03 CT Brain Cancer"))
    assert (
        "04 CT Lung Cancer †" in line and "| yes | no | +1.5 [" in line and "| option scoring | - |" in line
    )
    assert "† target 04 has 67 test questions" in md and "Intervals: two-level bootstrap" in md
    assert "| | option scoring | generation | Unparsed (option scoring) | Unparsed (generation) |" in md
    assert "| Baseline+ | " in md and "| 0, 0, 0 | 1, 2, 3 |" in md
    assert json.loads((tmp_path / "cg_report.json").read_text())["targets"][0]["paired"] == row["paired"]
