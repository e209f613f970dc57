"""Evaluator and CG protocol end to end on a tiny world: option scoring vs generation, 1 vs 2
processes, results recomputed from predictions, stage skipping on rerun, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cgmed.cg.config import CGApp, CGConfig, CGTarget, TinyBase
from cgmed.cg.protocol import run_protocol
from cgmed.data.source import DataConfig
from cgmed.data.split import OptionsConfig, SplitConfig
from cgmed.data.synth import SynthConfig
from cgmed.errors import ConfigError, DataError
from cgmed.eval.metrics import results
from cgmed.eval.run import _shard, evaluate
from cgmed.eval.score import EvalConfig, read_manifest, rotations
from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig

TARGET = CGTarget(
    name="ct_lung_cancer",
    target={"modality": "CT", "area": "Lung", "task": "Cancer"},
    related=[
        {"modality": "CT", "area": "Brain", "task": "Cancer"},
        {"modality": "MRI", "area": "Lung", "task": "Cancer"},
    ],
    paper={"baseline": 25, "baseline_plus": 25, "trained": 36},
)


def world() -> SynthConfig:
    """12 subsets: CT / MRI / X-ray x Lung / Brain x Cancer / Diseases, 56 px like the tiny model."""
    return SynthConfig(
        modalities=["CT", "MRI", "X-ray"],
        areas=["Lung", "Brain"],
        images_per_subset=40,
        image_size=56,
        test_fraction=0.2,
    )


def protocol(run_dir: Path, cache: Path, **cg_kw):
    synth = world()
    cg = CGConfig(targets=[TARGET], tiny_base=TinyBase(), **cg_kw)
    split = SplitConfig(cap_per_subset=20, options=OptionsConfig(mode="rebuild", order="sorted"))
    train = TrainConfig(
        max_steps=60,
        per_device_batch_size=8,
        lr=2e-3,
        progress_bar=False,
        tensorboard=False,
        warmup_ratio=0.0,
    )
    return run_protocol(
        CGApp(
            cg=cg,
            data=DataConfig(cache_dir=str(cache)),
            split=split,
            synth=synth,
            model=ModelConfig(),
            train=train,
            peft=PeftConfig(),
            distributed=DistributedConfig(),
            eval=EvalConfig(batch_size=16, bootstrap=200),
        ),
        run_dir,
    )


@pytest.fixture(scope="module")
def cg_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cg")
    doc = protocol(root / "run", root / "cache")
    return root, doc


def test_protocol_report(cg_run):
    root, doc = cg_run
    run = root / "run"
    (row,) = doc["targets"]
    assert row["target"] == "01 CT Lung Cancer" or row["target"].endswith("CT Lung Cancer")
    assert [r.split(" ", 1)[1] for r in row["related"]] == ["CT Brain Cancer", "MRI Lung Cancer"]
    assert all("Diseases" in u and "CT" not in u and "Lung" not in u for u in row["unrelated"])
    for arm in ("baseline", "baseline_plus", "trained", "seen_accuracy"):
        assert 0.0 <= row[arm]["accuracy"] <= 1.0 and len(row[arm]["ci95"]) == 2
    assert row["cg_helps"] == (
        row["trained"]["accuracy"] > max(row["baseline"]["accuracy"], row["baseline_plus"]["accuracy"])
    )
    assert row["paper"] == {"baseline": 25, "baseline_plus": 25, "trained": 36}
    md = (run / "cg_report.md").read_text()
    assert "| Related combination | Target | Baseline | Baseline+ | Trained | CG helps |" in md
    assert (run / "cg_targets.png").stat().st_size > 1000 and (run / "cg_heatmap.png").stat().st_size > 1000
    losses = [
        json.loads(x)["loss"]
        for x in (run / "ct_lung_cancer" / "seed-0" / "trained" / "metrics.jsonl").read_text().splitlines()
    ]
    assert losses[-1] < losses[0]  # it trained (how well a 0.3M model learns is the demo's business)


def test_report_numbers_recomputed_from_predictions(cg_run):
    root, doc = cg_run
    (row,) = doc["targets"]
    base = root / "run" / "ct_lung_cancer"
    for arm, path in (
        ("trained", "seed-0/trained/eval"),
        ("baseline_plus", "seed-0/baseline_plus/eval"),
        ("baseline", "baseline/eval"),
    ):
        preds = [json.loads(x) for x in (base / path / "predictions.jsonl").read_text().splitlines()]
        manifest = read_manifest(base / "splits" / "related" / "test.jsonl")
        assert [p["id"] for p in preds] == [r["id"] for r in manifest]  # each sample scored once, in order
        for p in preds:
            assert p["correct"] == (p["pred"] == p["answer"])
        acc = sum(p["correct"] for p in preds) / len(preds)
        assert row[arm]["accuracy"] == pytest.approx(acc)
        assert results(preds, 200, 0)["overall"]["accuracy"] == pytest.approx(acc)


def test_report_columns_recomputed_from_predictions(cg_run):
    """Each arm's method (its results.json), unparsed answers, per-seed values and the paired
    differences with McNemar's counts (predictions joined by question id), and the split's
    small-test warnings, as cg_report.json and cg_report.md give them."""
    root, doc = cg_run
    (row,) = doc["targets"]
    base = root / "run" / "ct_lung_cancer"
    paths = {
        "trained": "seed-0/trained/eval",
        "baseline_plus": "seed-0/baseline_plus/eval",
        "baseline": "baseline/eval",
    }
    preds = {}
    for arm, path in paths.items():
        lines = (base / path / "predictions.jsonl").read_text().splitlines()
        preds[arm] = {p["id"]: p for p in map(json.loads, lines)}
        assert row[arm]["method"] == json.loads((base / path / "results.json").read_text())["method"]
        assert row[arm]["unparsed_per_run"] == [sum(p["pred"] is None for p in preds[arm].values())]
    assert row["trained"]["per_seed"] == [pytest.approx(row["trained"]["accuracy"])]
    for rival in ("baseline_plus", "baseline"):
        got = row["paired"][rival]
        diffs = [int(p["correct"]) - int(preds[rival][i]["correct"]) for i, p in preds["trained"].items()]
        assert got["difference"] == pytest.approx(sum(diffs) / len(diffs)) and got["n_questions"] == len(
            diffs
        )
        assert got["ci95"][0] <= got["difference"] <= got["ci95"][1]
        assert got["significant"] == (got["p_value"] < 0.05)
        (mcnemar,) = got["mcnemar"]
        assert (mcnemar["trained_only"], mcnemar["rival_only"]) == (diffs.count(1), diffs.count(-1))
    verdicts = [p["significant"] and p["difference"] > 0 for p in row["paired"].values()]
    assert row["cg_helps_significant"] == all(verdicts) and "cg_helps_beyond_ci" not in row
    saved = json.loads((root / "run" / "cg_report.json").read_text())
    meta = json.loads((base / "splits" / "related" / "split_meta.json").read_text())
    warnings = [t["warning"] for t in meta["test_sets"].values() if "warning" in t]
    assert warnings and saved["warnings"] == warnings == row["test_set_warnings"]  # 8 test questions
    assert saved["interval_method"].startswith("two-level bootstrap") and saved["methods"] == [
        "option_scoring"
    ]
    md = (root / "run" / "cg_report.md").read_text()
    head = next(x for x in md.splitlines() if x.startswith("| Related combination"))
    line = next(x for x in md.splitlines() if "CT Lung Cancer †" in x)
    cells = dict(zip(head.strip("| ").split(" | "), line.strip("| ").split(" | "), strict=True))
    assert cells["CG helps"] == ("yes" if row["cg_helps"] else "no")
    assert cells["Significant"] == ("yes" if row["cg_helps_significant"] else "no")
    assert cells["Trained - Baseline+ (paired)"].startswith(
        f"{100 * row['paired']['baseline_plus']['difference']:+.1f} ["
    )
    assert cells["Method"] == "option scoring" and cells["Unparsed (B / B+ / T)"] == "-"
    assert f"† {warnings[0]}" in md


def test_rerun_skips_finished_stages(cg_run):
    root, _ = cg_run
    run = root / "run"
    watched = [
        run / "ct_lung_cancer" / "seed-0" / "trained" / "final" / "model.safetensors",
        run / "ct_lung_cancer" / "seed-0" / "trained" / "eval" / "results.json",
        run / "ct_lung_cancer" / "splits" / "related" / "train.jsonl",
    ]
    before = {p: p.stat().st_mtime_ns for p in watched}
    lost = run / "ct_lung_cancer" / "seed-0" / "baseline_plus" / "eval" / "results.json"
    lost.unlink()  # as if the run had crashed before this stage finished
    doc = protocol(run, root / "cache")
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert lost.is_file()
    assert (
        doc["targets"][0]["trained"]
        == json.loads((run / "cg_report.json").read_text())["targets"][0]["trained"]
    )


def test_second_method_side_by_side(cg_run):
    """cg.second_method scores each arm's target test set by generation too (finished stages
    stay), and the report gives both methods side by side, each from its own results."""
    root, _ = cg_run
    run = root / "run"
    doc = protocol(run, root / "cache", second_method="generation")
    (row,) = doc["targets"]
    second = row["second_method"]
    assert row["trained"]["method"] == "option_scoring" and second["method"] == "generation"
    for arm, path in (
        ("trained", "seed-0/trained"),
        ("baseline_plus", "seed-0/baseline_plus"),
        ("baseline", "baseline"),
    ):
        lines = (
            (run / "ct_lung_cancer" / path / "eval_generation" / "predictions.jsonl").read_text().splitlines()
        )
        preds = [json.loads(x) for x in lines]
        assert second[arm]["accuracy"] == pytest.approx(sum(p["correct"] for p in preds) / len(preds))
        assert second[arm]["unparsed_per_run"] == [sum(p["pred"] is None for p in preds)]
        assert second[arm]["method"] == "generation"
    md = (run / "cg_report.md").read_text()
    assert "| | option scoring | generation | Unparsed (option scoring) | Unparsed (generation) |" in md
    with pytest.raises(ConfigError, match="cg.second_method.*is eval.method"):
        CGApp(cg=CGConfig(second_method="option_scoring"))


def test_option_scoring_and_generation_agree(cg_run, tmp_path):
    root, _ = cg_run
    final = root / "run" / "ct_lung_cancer" / "seed-0" / "trained" / "final"
    manifest = root / "run" / "ct_lung_cancer" / "splits" / "related" / "seen_test.jsonl"
    a = evaluate(str(final), EvalConfig(bootstrap=0), str(manifest), tmp_path / "os")
    b = evaluate(
        str(final),
        EvalConfig(method="generation", bootstrap=0, max_new_tokens=4),
        str(manifest),
        tmp_path / "gen",
    )
    pa = [json.loads(x) for x in (tmp_path / "os" / "predictions.jsonl").read_text().splitlines()]
    pb = [json.loads(x) for x in (tmp_path / "gen" / "predictions.jsonl").read_text().splitlines()]
    agree = sum(x["pred"] == y["pred"] for x, y in zip(pa, pb, strict=True)) / len(pa)
    assert agree >= 0.9, agree
    assert all("text" in y for y in pb) and b["unparsed"] <= 0.1 * len(pb)
    assert abs(a["overall"]["accuracy"] - b["overall"]["accuracy"]) <= 0.1


def test_circular_evaluation(cg_run, tmp_path):
    root, _ = cg_run
    final = root / "run" / "ct_lung_cancer" / "seed-0" / "trained" / "final"
    manifest = root / "run" / "ct_lung_cancer" / "splits" / "related" / "seen_test.jsonl"
    evaluate(str(final), EvalConfig(bootstrap=0, circular=True), str(manifest), tmp_path)
    preds = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    for p in preds:
        assert len(p["circular_preds"]) == len(p["options"])
        rots = rotations(
            {
                "question": "Q?\nA: x\nB: y\nAnswer with the option's letter from the given choices "
                "directly.",
                "options": p["options"],
                "answer": p["answer"],
            },
            True,
        )
        assert p["correct"] == all(
            pred == ans for pred, (_, _, ans) in zip(p["circular_preds"], rots, strict=True)
        )


def test_rotations():
    r = {
        "question": "Q?\nA: Cyst\nB: Normal\nC: Stone\nAnswer with the option's letter from the given choices directly.",
        "options": ["Cyst", "Normal", "Stone"],
        "answer": "C",
    }
    rots = rotations(r, True)
    assert [o for _, o, _ in rots] == [
        ["Cyst", "Normal", "Stone"],
        ["Normal", "Stone", "Cyst"],
        ["Stone", "Cyst", "Normal"],
    ]
    assert [a for _, _, a in rots] == ["C", "B", "A"]
    assert rots[1][0].splitlines()[1:3] == ["A: Normal", "B: Stone"]


def test_shards_cover_each_sample_once():
    for n in (0, 1, 5, 17):
        for world in (1, 2, 3):
            idx = [i for r in range(world) for i in _shard(n, world, r)]
            assert idx == list(range(n))


@pytest.mark.parametrize("few_shot", [False, True], ids=["zero_shot", "one_shot"])
def test_two_processes_give_the_same_predictions(cg_run, tmp_path, few_shot):
    root, _ = cg_run
    final = root / "run" / "ct_lung_cancer" / "seed-0" / "trained" / "final"
    split = root / "run" / "ct_lung_cancer" / "splits" / "related"
    manifest = split / "seen_test.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [f"model.path={final}", f"data.test_manifest={manifest}", "eval.batch_size=5"]
    if few_shot:  # examples drawn per question: the same whichever process scores it
        common += ["eval.shots=1", f"eval.shot_pool={split / 'train.jsonl'}"]
    one = subprocess.run(
        [sys.executable, "-m", "cgmed.eval", *common, f"hydra.run.dir={tmp_path / 'one'}"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "cgmed.eval",
            *common,
            f"hydra.run.dir={tmp_path / 'two'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = (tmp_path / "one" / "predictions.jsonl").read_text()
    b = (tmp_path / "two" / "predictions.jsonl").read_text()
    assert a == b and a.count("\n") == len(read_manifest(manifest))
    ra = json.loads((tmp_path / "one" / "results.json").read_text())
    rb = json.loads((tmp_path / "two" / "results.json").read_text())
    assert ra["per_subset"] == rb["per_subset"]
    assert ("shots" in ra) == few_shot and all(("shots" in json.loads(x)) == few_shot for x in a.splitlines())


def test_bad_inputs_fail_before_work(cg_run, tmp_path):
    root, _ = cg_run
    manifest = root / "run" / "ct_lung_cancer" / "splits" / "related" / "test.jsonl"
    not_a_model = tmp_path / "ckpt"
    not_a_model.mkdir()
    with pytest.raises(ConfigError, match="is not a model"):
        evaluate(str(not_a_model), EvalConfig(), str(manifest), tmp_path / "o")
    bad = tmp_path / "bad.jsonl"
    rec = json.loads(manifest.read_text().splitlines()[0])
    bad.write_text(json.dumps({**rec, "answer": "D"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: answer 'D' does not point at one of 2 options"):
        read_manifest(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="the test set is empty"):
        read_manifest(empty)
    with pytest.raises(ConfigError, match=r"cg.targets\[0\].related.*no related data"):
        no_related = CGTarget(
            target={"modality": "CT", "area": "Lung", "task": "Cancer"},
            related="related",
            without=["modality", "area", "task"],
        )
        from cgmed.cg.protocol import plan_targets
        from cgmed.data.build import resolve_root
        from cgmed.data.source import open_source

        synth = world()
        data = DataConfig(cache_dir=str(root / "cache"))
        plan_targets(
            CGConfig(targets=[no_related]), SplitConfig(), open_source(data, resolve_root(data, synth))
        )


def test_dry_run_prints_the_plan_and_trains_nothing(cg_run, tmp_path):
    root, _ = cg_run
    synth_args = [
        f"data.cache_dir={root / 'cache'}",
        "synth.modalities=[CT,MRI,X-ray]",
        "synth.areas=[Lung,Brain]",
        "synth.images_per_subset=40",
        "synth.image_size=56",
        "synth.test_fraction=0.2",
    ]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "cgmed.cg",
            "experiment=demo",
            "dry_run=true",
            *synth_args,
            "cg.tiny_base.image_size=56",
            f"hydra.run.dir={tmp_path / 'dry'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "target ct_lung_cancer: 01 CT Lung Cancer" in res.stdout
    assert "audit passed" in res.stdout and "dry run: nothing trained" in res.stdout
    assert not list((tmp_path / "dry").rglob("final"))
