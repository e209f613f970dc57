"""The detection path end to end (paper Section 6, Tables 5/13/14): a synthetic world with Det
subsets whose boxes come from the finding masks, the reader, the split builder, the evaluator's
cIoU, the CG report on a detection target, and a tiny model that learns to write boxes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cgmed.cg.config import CGApp, CGConfig, CGTarget, TinyBase
from cgmed.cg.protocol import run_protocol
from cgmed.data.boxes import ciou, format_box, iou, parse_box
from cgmed.data.build import build_split, resolve_root, write_split
from cgmed.data.source import BadSamples, DataConfig, MedMatSource
from cgmed.data.split import SplitConfig
from cgmed.data.synth import MEDMAT_DETECTION_LABELS, SynthConfig, detection_looks, write_release
from cgmed.errors import ConfigError, DataError
from cgmed.eval.metrics import results
from cgmed.eval.run import evaluate
from cgmed.eval.score import EvalConfig, read_manifest
from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig

SIZE = 56  # the tiny model's image size
RELEASE_FIELDS = {"id", "caption", "image", "Question", "Answer", "data-no", "bbox"}


def synth_cfg() -> SynthConfig:
    """CT / MRI / X-ray x Lung / Brain x (Cancer classification, Det with two findings): 12 subsets.

    01 CT Lung Cancer, 02 CT Lung Det, 03 CT Brain Cancer, 04 CT Brain Det,
    05 MRI Lung Cancer, 06 MRI Lung Det, 07 MRI Brain Cancer, 08 MRI Brain Det,
    09 X-ray Lung Cancer, 10 X-ray Lung Det, 11 X-ray Brain Cancer, 12 X-ray Brain Det.
    """
    return SynthConfig(
        modalities=["CT", "MRI", "X-ray"],
        areas=["Lung", "Brain"],
        tasks={"Cancer": ["Normal", "Tumor"], "Det": ["Tumor", "Cyst"]},
        images_per_subset=30,
        image_size=SIZE,
        test_fraction=0.2,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("det")
    data = DataConfig(cache_dir=str(base / "cache"))
    return base, data, resolve_root(data, synth_cfg())


@pytest.fixture(scope="module")
def tiny(world):
    from cgmed.models.tiny import init_tiny

    base, _, _ = world
    init_tiny("qwen2_vl", base / "tiny")
    return base / "tiny"


def det_records(root: Path) -> dict[str, list[dict]]:
    out = {}
    for path in sorted((root / "Aggregated_Subsets").glob("*.json")):
        recs = json.loads(path.read_text())
        if recs and "bbox" in recs[0]:
            out[path.name] = recs
    return out


def finding_pixels(img: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Pixels that are ``colour`` times a brightness in [0.9, 1] (how findings are painted)."""
    c = np.asarray(colour, dtype=np.float64)
    px = img.astype(np.float64)
    b = np.clip((px @ c) / (c @ c), 0.9, 1.0)
    return np.linalg.norm(px - b[..., None] * c, axis=-1) <= 2.0


# ------------------------------------------------------------------ the synthetic world


def test_det_subsets_in_the_catalog(world):
    _, _, root = world
    catalog = json.loads((root / "cgmed_catalog.json").read_text())
    det = [e for e in catalog["subsets"] if e["task"] == "Det"]
    assert [e["id"] for e in det] == ["02", "04", "06", "08", "10", "12"]
    assert all(e["status"] == "det" and e["labels"] == ["Tumor", "Cyst"] for e in det)
    assert all(e["status"] == "ID" for e in catalog["subsets"] if e["task"] != "Det")


def test_boxes_enclose_exactly_the_finding(world):
    _, _, root = world
    cfg = synth_cfg()
    looks = detection_looks(["Tumor", "Cyst"], cfg.classification_labels())
    # Tumor borrows the classification look of Cancer's Tumor; Cyst has its designed ring
    assert looks["Tumor"].kind == "disc" and looks["Cyst"].kind == "ring"
    files = det_records(root)
    assert len(files) == 12  # train and test file of each Det subset
    n = 0
    for name, recs in files.items():
        for r in recs:
            assert set(r) == RELEASE_FIELDS, (name, r["id"])  # no Question-choice / Answer-choice
            x1, y1, x2, y2 = r["bbox"]
            assert all(isinstance(v, int) for v in r["bbox"])
            assert 0 <= x1 < x2 <= 100 and 0 <= y1 < y2 <= 100
            assert r["Answer"] == format_box(r["bbox"]) and parse_box(r["Answer"]) == tuple(r["bbox"])
            assert r["caption"] in r["Question"]
            img = np.asarray(Image.open(root / r["image"]).convert("RGB"))
            ys, xs = np.nonzero(finding_pixels(img, looks[r["caption"]].colour))
            assert xs.size >= 10, (name, r["id"])
            # pixel edges on the 0-100 grid: inside the box, and each box edge within one grid
            # unit of the outermost finding pixel (the box is rounded outwards, never inwards)
            left, right = xs.min() * 100 / SIZE, (xs.max() + 1) * 100 / SIZE
            top, bottom = ys.min() * 100 / SIZE, (ys.max() + 1) * 100 / SIZE
            assert x1 <= left < x1 + 1 and x2 - 1 < right <= x2, (name, r["id"], r["bbox"], left, right)
            assert y1 <= top < y1 + 1 and y2 - 1 < bottom <= y2, (name, r["id"], r["bbox"], top, bottom)
            n += 1
    assert n == 6 * 30


def test_reader_reads_det_records_and_names_malformed_boxes(world, tmp_path):
    _, _, root = world
    source = MedMatSource(DataConfig(), root)
    bad = BadSamples()
    idx = source.index("06", bad)
    assert sorted(idx.labels) == ["Cyst", "Tumor"] and len(idx) == 30
    samples = [s for _, s in source.load_checked(idx, list(range(len(idx))), bad)]
    assert bad.total == 0, bad.report()
    for s in samples:
        assert s.task == "Det" and s.options == [] and s.label in ("Tumor", "Cyst")
        assert s.answer == format_box(s.box) and len(s.box) == 4 and s.label in s.question
    # a broken copy: three kinds of malformed box, each reported with its file and record
    broken = tmp_path / "broken"
    shutil.copytree(root / "Aggregated_Subsets", broken / "Aggregated_Subsets")
    shutil.copy(root / "cgmed_catalog.json", broken / "cgmed_catalog.json")
    path = broken / "Aggregated_Subsets" / "Subset--06-train.json"
    recs = json.loads(path.read_text())
    recs[0]["bbox"] = [40, 10, 30, 20]  # x1 > x2
    recs[1]["bbox"] = [0, 0, 101, 5]  # off the grid
    del recs[2]["bbox"]
    recs[2]["Answer"] = "somewhere near the middle"
    recs[3]["Answer"] = format_box([1, 2, 3, 4])  # disagrees with its bbox
    path.write_text(json.dumps(recs))
    bad = BadSamples()
    idx = MedMatSource(DataConfig(), broken).index("06", bad)
    assert bad.counts == {"malformed box": 4} and len(idx) == 26
    assert all(e.startswith("Subset--06-train.json record #") for e in bad.examples)
    assert "(id 0)" in bad.examples[0] and "x1 > x2" in bad.examples[0]
    assert "outside the 0-100 grid" in bad.examples[1] and "is not a box" in bad.examples[2]
    assert "disagrees with bbox" in bad.examples[3]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"tasks": {"Det": ["Normal"]}}, "synth.tasks.Det"),  # nothing to box
        ({"tasks": {"Detection": []}}, "synth.tasks.Detection"),
        ({"tasks": {"Det": ["Tumor", "tumor"]}}, "synth.tasks.Det"),
        ({"tasks": {"Segmentation": ["Tumor"]}}, "synth.tasks.Segmentation"),
        ({"medmat_detection": True}, "synth.medmat_detection"),  # grid layout
    ],
)
def test_bad_det_config(kwargs, key):
    with pytest.raises(ConfigError) as err:
        SynthConfig(**kwargs)
    assert err.value.key == key


def test_medmat_layout_adds_detection_subsets_only_when_asked(tmp_path):
    plain = SynthConfig(layout="medmat", images_per_subset=8, image_size=32)
    with_det = dataclasses.replace(plain, medmat_detection=True)
    write_release(plain, tmp_path / "plain")
    write_release(with_det, tmp_path / "det")

    def digests(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "cgmed_catalog.json"
        }

    a, b = digests(tmp_path / "plain"), digests(tmp_path / "det")
    assert all(b[k] == v for k, v in a.items())  # the classification subsets are untouched
    added = {k.split("--")[1][:2] for k in set(b) - set(a) if k.startswith("Aggregated_Subsets")}
    assert added == set(MEDMAT_DETECTION_LABELS) == {"38", "39", "42", "45", "47", "49"}
    assert (
        "medmat_detection"
        not in json.loads((tmp_path / "plain" / "cgmed_catalog.json").read_text())["config"]
    )
    source = MedMatSource(DataConfig(), tmp_path / "det")
    bad = BadSamples()
    for sid in MEDMAT_DETECTION_LABELS:
        info = source.subsets()[sid]
        assert (info.task, info.status) == ("Det", "det")
        idx = source.index(sid, bad)
        assert idx.labels == MEDMAT_DETECTION_LABELS[sid] and len(idx) == 8
    assert bad.total == 0, bad.report()


# ------------------------------------------------------------------ split builder


def test_split_with_a_det_target(world, tmp_path):
    _, data, root = world
    source = MedMatSource(data, root)
    built = build_split(source, data, SplitConfig(targets=["06"], train=["02", "05"]))
    assert built.audit.passed
    write_split(built, tmp_path, {}, source)
    test = [json.loads(x) for x in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert test and all(r["task"] == "Det" and r["options"] == [] for r in test)
    assert all(parse_box(r["answer"]) == tuple(r["box"]) for r in test)
    assert {r["label"] for r in test} == {"Tumor", "Cyst"}
    train = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    kinds = {(r["subset"], "box" in r) for r in train}
    assert kinds == {("02", True), ("05", False)}  # Det answers are boxes, Cancer ones letters
    assert all(r["answer"] in "AB" and len(r["options"]) == 2 for r in train if r["subset"] == "05")
    # status det: the related rule leaves Det subsets out unless train_status includes det
    default = build_split(source, data, SplitConfig(targets=["06"]))
    assert default.train_subsets == ["01", "05", "07", "09"]
    with_det = build_split(source, data, SplitConfig(targets=["06"], train_status=["ID", "OOD", "det"]))
    assert with_det.train_subsets == ["01", "02", "04", "05", "07", "08", "09", "10", "12"]


# ------------------------------------------------------------------ evaluator and metrics


def test_results_give_the_hand_computed_ciou():
    def det(gt, pred):
        return {
            "subset": "09",
            "modality": "CT",
            "area": "Lung",
            "task": "Det",
            "options": [],
            "box": gt,
            "pred_box": pred,
            "iou": iou(pred, gt) if pred else 0.0,
            "correct": bool(pred) and iou(pred, gt) >= 0.5,
            "pred": format_box(pred) if pred else None,
        }

    rows = [
        det([0, 0, 10, 10], [0, 0, 10, 10]),  # inter 100, union 100
        det([0, 0, 10, 10], [5, 0, 15, 10]),  # inter 50, union 150
        det([0, 0, 20, 20], None),  # no box: inter 0, union 400
        {
            "subset": "01",
            "modality": "CT",
            "area": "Lung",
            "task": "Cancer",
            "options": ["a", "b"],
            "pred": "A",
            "answer": "A",
            "correct": True,
        },
    ]
    doc = results(rows, n_boot=0)
    d = doc["per_subset"]["09"]
    assert d["ciou"] == pytest.approx(150 / 650)
    assert d["mean_iou"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert d["acc_iou50"] == pytest.approx(1 / 3) and d["n_det"] == 3
    assert d["ciou_ci95"] == pytest.approx([150 / 650, 150 / 650])
    assert math.isnan(d["chance"])
    assert "ciou" not in doc["per_subset"]["01"] and doc["per_subset"]["01"]["chance"] == 0.5
    assert doc["overall"]["ciou"] == pytest.approx(150 / 650) and doc["overall"]["accuracy"] == 0.5
    assert doc["unparsed"] == 1
    lo, hi = results(rows, n_boot=500)["per_subset"]["09"]["ciou_ci95"]
    assert 0.0 <= lo <= 150 / 650 <= hi <= 1.0
    # cgmed-eval's console summary reports cIoU beside accuracy where there are boxes
    from cgmed.cli.eval import summary_lines

    text = summary_lines(doc)
    assert f"cIoU {150 / 650:.4f}" in text and "on 3 detection samples" in text
    assert f"  CT Lung Det{' ' * 17} 0.3333  n=3  cIoU {150 / 650:.4f}" in text
    assert "  CT Lung Cancer" in text and "cIoU" not in text.split("CT Lung Cancer")[1].splitlines()[0]


def test_evaluator_scores_a_mixed_manifest(world, tiny, tmp_path):
    _, data, root = world
    source = MedMatSource(data, root)
    split = tmp_path / "split"
    write_split(build_split(source, data, SplitConfig(targets=["06"], train=["02", "05"])), split, {}, source)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text((split / "test.jsonl").read_text() + (split / "seen_test.jsonl").read_text())
    manifest = read_manifest(mixed)
    # option scoring is asked for; detection records are still generated
    doc = evaluate(str(tiny), EvalConfig(bootstrap=50), str(mixed), tmp_path / "eval")
    preds = [json.loads(x) for x in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [r["id"] for r in manifest]
    for p in preds:
        if p["task"] == "Det":
            assert {"pred_box", "box", "iou", "text"} <= set(p)
            assert p["correct"] == (p["iou"] >= 0.5)
            assert p["iou"] == (iou(p["pred_box"], p["box"]) if p["pred_box"] else 0.0)
        else:
            assert "box" not in p and "iou" not in p and p["pred"] in ("A", "B")
    for sid in ("06", "02"):
        rows = [p for p in preds if p["subset"] == sid]
        assert doc["per_subset"][sid]["ciou"] == pytest.approx(ciou((p["pred_box"], p["box"]) for p in rows))
    assert "ciou" not in doc["per_subset"]["05"]
    assert doc["detection"]["method"] == "generation" and doc["detection"]["max_new_tokens"] >= 24
    # a detection record whose answer is not its box is named by file and line
    bad = tmp_path / "bad.jsonl"
    rec = json.loads((split / "test.jsonl").read_text().splitlines()[0])
    bad.write_text(json.dumps({**rec, "answer": "{<1><2><3><4>}"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: answer '\{<1><2><3><4>\}' is not the box"):
        read_manifest(bad)


# ------------------------------------------------------------------ CG protocol and training


def test_protocol_on_a_det_target(world, tmp_path):
    base, data, _ = world
    target = CGTarget(
        name="mri_lung_det",
        target={"modality": "MRI", "area": "Lung", "task": "Det"},
        # as Table 5: a Det subset of another modality + a classification subset of the target's M-A
        related=[
            {"modality": "CT", "area": "Lung", "task": "Det"},
            {"modality": "MRI", "area": "Lung", "task": "Cancer"},
        ],
    )
    doc = run_protocol(
        CGApp(
            cg=CGConfig(targets=[target], tiny_base=TinyBase(), plots=True),
            data=data,
            split=SplitConfig(cap_per_subset=16),
            synth=synth_cfg(),
            model=ModelConfig(),
            train=TrainConfig(
                max_steps=6,
                per_device_batch_size=8,
                lr=2e-3,
                progress_bar=False,
                tensorboard=False,
                warmup_ratio=0.0,
            ),
            peft=PeftConfig(),
            distributed=DistributedConfig(),
            eval=EvalConfig(batch_size=16, bootstrap=100),
        ),
        tmp_path / "run",
    )
    (row,) = doc["targets"]
    assert row["metric"] == "ciou" and row["target"] == "06 MRI Lung Det"
    assert [r.split(" ", 1)[1] for r in row["related"]] == ["CT Lung Det", "MRI Lung Cancer"]
    assert row["unrelated"] == ["03 CT Brain Cancer", "11 X-ray Brain Cancer"]  # no MRI, no Lung, no Det
    for arm in ("baseline", "baseline_plus", "trained"):
        assert 0.0 <= row[arm]["ciou"] <= 1.0 and len(row[arm]["ci95"]) == 2 and "accuracy" not in row[arm]
    assert row["cg_helps"] == (
        row["trained"]["ciou"] > max(row["baseline"]["ciou"], row["baseline_plus"]["ciou"])
    )
    preds = [
        json.loads(x)
        for x in (tmp_path / "run" / "mri_lung_det" / "seed-0" / "trained" / "eval" / "predictions.jsonl")
        .read_text()
        .splitlines()
    ]
    assert row["trained"]["ciou"] == pytest.approx(ciou((p["pred_box"], p["box"]) for p in preds))
    assert "accuracy" in row["seen_accuracy"]  # seen sets mix Det and Cancer rows: accuracy
    md = (tmp_path / "run" / "cg_report.md").read_text()
    assert "06 MRI Lung Det (cIoU)" in md and "are cIoU in %" in md
    saved = json.loads((tmp_path / "run" / "cg_report.json").read_text())
    assert saved["targets"][0]["metric"] == "ciou" and "detection_eval" in saved


def test_tiny_model_learns_the_box_format(world, tiny, tmp_path):
    """Detection-only training: after 80 steps the model writes parseable boxes (the format, not
    yet the place: a 0.3M-parameter model localises little in that time)."""
    from cgmed.train.loop import train

    _, data, root = world
    source = MedMatSource(data, root)
    split = tmp_path / "split"
    built = build_split(source, data, SplitConfig(targets=["06"], train=["02", "04", "08"]))
    write_split(built, split, {}, source)
    assert all("box" in s.to_json() for s in built.train)
    out = tmp_path / "train"
    result = train(
        ModelConfig(path=str(tiny)),
        TrainConfig(
            max_steps=80,
            per_device_batch_size=8,
            lr=5e-3,
            seed=1,
            warmup_ratio=0.0,
            progress_bar=False,
            tensorboard=False,
            output_dir=str(out),
        ),
        PeftConfig(),
        DistributedConfig(),
        str(split / "train.jsonl"),
        out,
    )
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5])
    evaluate(
        str(result.final_dir), EvalConfig(bootstrap=0), str(split / "seen_test.jsonl"), tmp_path / "eval"
    )
    preds = [json.loads(x) for x in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    parsed = sum(parse_box(p["text"]) is not None for p in preds)
    assert parsed >= 0.75 * len(preds), [p["text"] for p in preds]


def test_few_shot_is_refused_for_a_det_target(world):
    from cgmed.cg.config import FewShot
    from cgmed.cg.protocol import plan_targets

    _, data, root = world
    target = CGTarget(target="06", related=[{"modality": "CT", "area": "Lung", "task": "Det"}])
    cg = CGConfig(targets=[target], few_shot=FewShot())
    with pytest.raises(ConfigError, match="(?s)cg.few_shot.*06 \\(MRI Lung Det\\) is a detection subset"):
        plan_targets(cg, SplitConfig(), MedMatSource(data, root))
    assert plan_targets(CGConfig(targets=[target]), SplitConfig(), MedMatSource(data, root))  # fine without
