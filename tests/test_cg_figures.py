"""The CG report's pictures and tracking on hand-made evaluations (no training): confusion matrices
per arm, the grid of test images, Trained minus Baseline+ over targets, the report's links to
them, and the report sent to TensorBoard and to an offline wandb run. Figures are checked as
images: files, pixel sizes, panels, colours."""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cgmed.cg import figures
from cgmed.cg.config import CGConfig, CGTarget
from cgmed.cg.report import write_report
from cgmed.cg.results import Evaluation, SeedRun, SplitSummary, TargetRun
from cgmed.cg.tracking import TABLE_COLUMNS, report_scalars, track_report
from cgmed.data.choices import LETTERS
from cgmed.eval.metrics import results
from cgmed.eval.score import EvalConfig
from cgmed.train.config import TrainConfig

LABELS = ["Adenocarcinoma", "Normal", "Squamous cell carcinoma"]
N = 24
EVAL = EvalConfig(bootstrap=200, seed=0)
TRUTH = [LABELS[i % 3] for i in range(N)]


def wrong(i: int) -> str:
    """A wrong answer to question i."""
    return "Normal" if TRUTH[i] != "Normal" else "Adenocarcinoma"


def answers(wrong_at: set[int] = frozenset(), unparsed_at: set[int] = frozenset()) -> list[str | None]:
    """Option names chosen per question: right except at ``wrong_at``, unreadable at ``unparsed_at``."""
    return [None if i in unparsed_at else wrong(i) if i in wrong_at else TRUTH[i] for i in range(N)]


# Questions 0-3: the arms' first seeds disagree; 20, 21: every arm gives the same wrong answer.
BASELINE = answers(wrong_at={0, 1, 2, 20, 21}, unparsed_at={3})
PLUS = {0: answers(wrong_at={1, 20, 21}), 1: answers(wrong_at={1, 2, 8})}
TRAINED = {0: answers(wrong_at={20, 21}), 1: answers(wrong_at={5, 6}, unparsed_at={9})}


def options(i: int) -> list[str]:
    """Each question shows the labels in another order: answers are read by name, not letter."""
    r = i % 3
    return LABELS[r:] + LABELS[:r]


def write_manifest(directory: Path, target: str) -> None:
    """test.jsonl of a target with a small PNG per question (its colour tells the label)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(N):
        image = directory / "images" / f"{target}-{i}.png"
        image.parent.mkdir(exist_ok=True)
        shade = 60 + 80 * LABELS.index(TRUTH[i])
        Image.new("RGB", (32, 32), (shade, shade, shade)).save(image)
        record = {
            "id": f"{target}-q{i:02d}",
            "subset": target,
            "modality": "CT",
            "area": "Lung",
            "task": "Cancer",
            "image": str(image),
            "label": TRUTH[i],
            "options": options(i),
            "answer": LETTERS[options(i).index(TRUTH[i])],
        }
        lines.append(json.dumps(record) + "\n")
    (directory / "test.jsonl").write_text("".join(lines))


def evaluation(directory: Path, target: str, chosen: list[str | None]) -> Evaluation:
    """predictions.jsonl and results.json as the evaluator writes them (generation: None unparsed)."""
    rows = []
    for i, name in enumerate(chosen):
        opts = options(i)
        rows.append(
            {
                "id": f"{target}-q{i:02d}",
                "subset": target,
                "modality": "CT",
                "area": "Lung",
                "task": "Cancer",
                "options": opts,
                "answer": LETTERS[opts.index(TRUTH[i])],
                "pred": None if name is None else LETTERS[opts.index(name)],
                "correct": name == TRUTH[i],
            }
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = {**results(rows, 0, 0), "method": "generation"}
    (directory / "results.json").write_text(json.dumps(doc))
    return Evaluation(doc, directory)


def target_run(root: Path, target: str, paper: dict | None = None, with_plus: bool = True) -> TargetRun:
    """A target with Baseline, and Baseline+ and Trained over seeds 0 and 1."""
    split = root / target / "splits" / "related"
    write_manifest(split, target)
    subset = {"id": target, "modality": "CT", "area": "Lung", "task": "Cancer"}
    meta = {
        "targets": [subset],
        "train_subsets": [{"id": "03", "modality": "CT", "area": "Lung", "task": "COVID"}],
        "sizes": {"train": 100, "test": N, "seen_test": 0},
        "audit": {"passed": True},
    }
    run = TargetRun(
        f"t{target}", CGTarget(target=target, related=["03"], paper=paper), SplitSummary(split, meta)
    )
    run.baseline = evaluation(root / target / "baseline", target, BASELINE)
    for seed in (0, 1):
        out = root / target / f"seed-{seed}"
        run.seeds[seed] = SeedRun(trained=evaluation(out / "trained", target, TRAINED[seed]))
        if with_plus:
            run.seeds[seed].baseline_plus = evaluation(out / "plus", target, PLUS[seed])
    return run


def png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def pixels_near(image: np.ndarray, hex_colour: str, tolerance: int = 40) -> int:
    rgb = np.array([int(hex_colour[k : k + 2], 16) for k in (1, 3, 5)])
    return int((np.abs(image.astype(int) - rgb).sum(axis=2) < tolerance).sum())


def test_confusion_counts_equal_the_predictions_and_panels_per_arm(tmp_path):
    """Pooled over seeds, by option name (options shown in other orders), unparsed answers in a
    column of their own; one panel per arm, the figure as wide as its panels."""
    run = target_run(tmp_path, "04")
    arms = figures.target_arms(run)
    trained = [figures.read_answers(e.predictions) for e in arms[2].evaluations]
    counts, rows, columns = figures.confusion(trained)
    expected = Counter(
        (TRUTH[i], name or figures.UNPARSED) for seed in (0, 1) for i, name in enumerate(TRAINED[seed])
    )
    assert rows == LABELS and columns == [*LABELS, figures.UNPARSED]
    assert {
        (rows[i], columns[j]): int(counts[i, j]) for i, j in zip(*counts.nonzero(), strict=True)
    } == expected
    picture = figures.confusion_figure(run, arms, tmp_path)
    image = png(tmp_path / picture.file)
    width, height = (round(v * figures.DPI) for v in figures.PANEL_INCHES)
    assert picture.shown == ("Baseline", "Baseline+", "Trained")
    assert image.shape == (height, 3 * width, 3) and picture.size == (3 * width, height)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20  # drawn, not blank
    no_plus = target_run(tmp_path / "b", "05", with_plus=False)
    two = figures.confusion_figure(no_plus, figures.target_arms(no_plus), tmp_path)
    assert two.shown == ("Baseline", "Trained") and png(tmp_path / two.file).shape[1] == 2 * width


def test_example_grid_puts_disagreements_first_and_marks_right_and_wrong(tmp_path, caplog):
    run = target_run(tmp_path, "04")
    firsts = [BASELINE, PLUS[0], TRAINED[0]]
    disagree = {f"04-q{i:02d}" for i in range(N) if len({arm[i] for arm in firsts}) > 1}
    all_wrong = {f"04-q{i:02d}" for i in range(N) if all(arm[i] != TRUTH[i] for arm in firsts)}
    assert disagree == {"04-q00", "04-q01", "04-q02", "04-q03"} and all_wrong == {"04-q20", "04-q21"}
    picture = figures.examples_figure(run, figures.target_arms(run), tmp_path)
    assert len(picture.shown) == figures.GRID_SIZE and len(set(picture.shown)) == figures.GRID_SIZE
    assert set(picture.shown[:4]) == disagree and set(picture.shown[4:6]) == all_wrong
    again = figures.examples_figure(run, figures.target_arms(run), tmp_path / "again")
    assert again.shown == picture.shown  # deterministic
    image = png(tmp_path / picture.file)
    assert image.shape[:2] == picture.size[::-1] and picture.size[0] == round(
        4 * figures.TILE_INCHES * figures.DPI
    )
    assert pixels_near(image, figures.RIGHT) > 50 and pixels_near(image, figures.WRONG) > 50
    shades = [f"#{s:02x}{s:02x}{s:02x}" for s in (60, 140, 220)]  # the test images' greys
    assert all(pixels_near(image, shade, 3) > 10_000 for shade in shades)  # the images are drawn
    for path in (tmp_path / "04" / "splits" / "related" / "images").iterdir():
        path.unlink()  # a report made where the images are not: the same grid, images blank
    blank = figures.examples_figure(run, figures.target_arms(run), tmp_path / "blank")
    assert blank.shown == picture.shown and "example image left blank" in caplog.text
    blank_image = png(tmp_path / "blank" / blank.file)
    assert all(pixels_near(blank_image, shade, 3) < 1_000 for shade in shades)  # text edges only


def test_differences_sorted_with_paper_markers(tmp_path):
    rows = [
        {
            "name": "a",
            "target": "A",
            "paired": {"baseline_plus": {"difference": 0.10, "ci95": [0.02, 0.2]}},
            "paper": {"baseline": 30, "baseline_plus": 40, "trained": 50},
        },
        {"name": "b", "target": "B", "paired": {"baseline_plus": {"difference": -0.05, "ci95": [-0.1, 0.0]}}},
        {
            "name": "c",
            "target": "C",
            "paired": {"baseline_plus": {"difference": 0.30, "ci95": [0.2, 0.4]}},
            "paper": {"baseline": 30, "baseline_plus": 41, "trained": 49.5},
        },
        {"name": "d", "target": "D", "paired": {"baseline": {"difference": 0.5, "ci95": [0.4, 0.6]}}},
    ]
    picture = figures.differences_figure(rows, tmp_path)
    assert picture.shown == ("b", "a", "c")  # sorted; d has no Baseline+
    image = png(tmp_path / picture.file)
    assert image.shape[:2] == picture.size[::-1]
    assert pixels_near(image, "#d62728") > 20  # the paper's markers (C3)
    assert figures._paper_difference(rows[2]) == 8.5 and figures._paper_difference(rows[1]) is None
    assert figures.differences_figure([rows[3]], tmp_path / "none") is None


def test_report_links_every_picture_and_lists_them_in_the_json(tmp_path):
    runs = [
        target_run(tmp_path, "04", paper={"baseline": 30, "baseline_plus": 40, "trained": 70}),
        target_run(tmp_path, "05"),
    ]
    doc = write_report(runs, CGConfig(), tmp_path, EVAL)
    saved = json.loads((tmp_path / "cg_report.json").read_text())
    assert saved["plots"] == doc["plots"]
    for row in saved["targets"]:
        assert row["pictures"] == {
            "confusion": f"pictures/{row['name']}_confusion.png",
            "examples": f"pictures/{row['name']}_examples.png",
        }
    expected = {
        "cg_targets.png",
        "cg_heatmap.png",
        "cg_differences.png",
        *(f for r in saved["targets"] for f in r["pictures"].values()),
    }
    assert set(doc["plots"]) == expected
    md = (tmp_path / "cg_report.md").read_text()
    section = md[md.index("## Pictures") :]
    links = re.findall(r"\]\(([^)]+)\)", section)
    assert set(links) == expected and all((tmp_path / link).is_file() for link in links)
    assert "- 04 CT Lung Cancer (t04): [confusion matrices](pictures/t04_confusion.png)" in section


def test_tensorboard_gets_the_report_scalars_and_images(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    doc = write_report([target_run(tmp_path, "04")], CGConfig(), tmp_path, EVAL)
    for _ in range(2):  # a rerun's report replaces the first one's events
        track_report(doc, tmp_path, TrainConfig(tensorboard=True, wandb=False))
    folder = tmp_path / "tensorboard" / "cg_report"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    events = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars = {tag: events.Scalars(tag)[0].value for tag in events.Tags()["scalars"]}
    expected = report_scalars(doc)
    assert scalars.keys() == expected.keys()
    assert all(scalars[k] == pytest.approx(v, abs=1e-6) for k, v in expected.items())
    row = doc["targets"][0]
    assert expected["t04/trained/accuracy"] == row["trained"]["accuracy"]
    assert expected["t04/trained_minus_baseline_plus"] == row["paired"]["baseline_plus"]["difference"]
    assert set(events.Tags()["images"]) == {p.removesuffix(".png") for p in doc["plots"]}


def wandb_records(path: Path) -> list:
    """The records of an offline run's ``run-<id>.wandb`` (a LevelDB-style log: 7-byte file header,
    32 KiB blocks of chunks: crc32c, little-endian length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def logged_values(records: list, kind: str) -> dict:
    """Every key of the ``summary`` or ``history`` records, nested keys joined with '.'."""
    values = {}
    for record in records:
        if record.WhichOneof("record_type") == kind:
            items = record.summary.update if kind == "summary" else record.history.item
            for item in items:
                values[".".join(item.nested_key) or item.key] = json.loads(item.value_json)
    return values


def test_wandb_offline_run_holds_the_table_summary_and_images(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed: the report's wandb tracking is untested")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    doc = write_report([target_run(tmp_path, "04")], CGConfig(), tmp_path, EVAL)
    track_report(doc, tmp_path, TrainConfig(tensorboard=False, wandb=True, wandb_mode="offline"))
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")  # in the CG run's folder, offline
    (log_file,) = run_dir.glob("run-*.wandb")
    records = wandb_records(log_file)
    for _ in range(100):  # wandb's service may still be writing the log when finish() returns
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.1)
        records = wandb_records(log_file)
    summary, history = logged_values(records, "summary"), logged_values(records, "history")
    expected = report_scalars(doc)
    assert {k: history[k] for k in expected} == pytest.approx(expected)
    assert {k: summary[k] for k in expected} == pytest.approx(expected)
    assert history["cg_report._type"] == "table-file"
    table = json.loads((run_dir / "files" / history["cg_report.path"]).read_text())
    assert table["columns"] == TABLE_COLUMNS and [r[0] for r in table["data"]] == ["t04"]
    assert table["data"][0][TABLE_COLUMNS.index("trained")] == doc["targets"][0]["trained"]["accuracy"]
    for plot in doc["plots"]:
        name = plot.removesuffix(".png")
        assert history[f"{name}._type"] == "image-file"
        with Image.open(tmp_path / plot) as original:
            assert (history[f"{name}.width"], history[f"{name}.height"]) == original.size
        assert (run_dir / "files" / history[f"{name}.path"]).is_file()


def test_tracking_without_wandb_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    doc = {"targets": [], "plots": []}
    assert track_report(doc, tmp_path, TrainConfig(tensorboard=False, wandb=True)) is doc
    assert "wandb is not installed (pip install wandb)" in caplog.text
