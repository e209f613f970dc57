"""The pilot (Tables 1-2) end to end at tiny size: splits, the OOD image audit, Baseline /
Single-task / Multi-task numbers recomputed from predictions, rerun skipping, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cgmed.cg.config import CGApp, CGConfig, CGTarget, Pilot, TinyBase
from cgmed.cg.pilot import ood_image_audit, run_pilot
from cgmed.cg.run import run_groups
from cgmed.data.source import DataConfig
from cgmed.data.split import OptionsConfig, SplitConfig
from cgmed.data.synth import SynthConfig, write_release
from cgmed.errors import ConfigError, LeakageError
from cgmed.eval.score import EvalConfig
from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig

# ID 16 FP Fundus Level and 18 Mic Cell Recognition; OOD 34 and 20 share those triplets
SUBSETS = ["16", "18", "20", "34"]
PAPER = {"16": {"baseline": 24, "single": 32, "multi": 57}, "20": {"baseline": 13, "multi": 40}}


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("standin")
    write_release(SynthConfig(layout="medmat", images_per_subset=24, image_size=56, test_fraction=0.25), root)
    return root


def groups(root: Path, **pilot_kw) -> dict:
    return {
        "cg": CGConfig(
            pilot=Pilot(subsets=SUBSETS, paper=PAPER, **pilot_kw), tiny_base=TinyBase(), seeds=[0]
        ),
        "data": DataConfig(root=str(root)),
        "split": SplitConfig(cap_per_subset=12, options=OptionsConfig(mode="rebuild", order="sorted")),
        "synth": SynthConfig(),
        "model": ModelConfig(),
        "train": TrainConfig(
            max_steps=4, per_device_batch_size=8, lr=2e-3, progress_bar=False, tensorboard=False
        ),
        "peft": PeftConfig(),
        "distributed": DistributedConfig(),
        "eval": EvalConfig(batch_size=16, bootstrap=50),
    }


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def pilot_run(standin, tmp_path_factory):
    run = tmp_path_factory.mktemp("pilot")
    return run, run_groups(groups(standin), run)


def test_splits_share_test_sets_and_keep_ood_out_of_training(pilot_run):
    run, _ = pilot_run
    splits = run / "pilot" / "splits"
    multi_train = read(splits / "multi" / "train.jsonl")
    assert {r["subset"] for r in multi_train} == {"16", "18"}
    assert len(multi_train) == 24  # 12 per subset (split.cap_per_subset)
    multi_test = read(splits / "multi" / "seen_test.jsonl")
    for sid in ("16", "18"):
        single = read(splits / f"single-{sid}" / "seen_test.jsonl")
        # the Single-task test set is exactly the subset's part of the Multi-task one: same samples, same questions
        assert single == [r for r in multi_test if r["subset"] == sid]
        assert {r["subset"] for r in read(splits / f"single-{sid}" / "train.jsonl")} == {sid}
    ood = read(splits / "ood" / "test.jsonl")
    assert {r["subset"] for r in ood} == {"20", "34"} and not read(splits / "ood" / "train.jsonl")
    audit = json.loads((run / "pilot" / "pilot_audit.json").read_text())
    assert audit["passed"] and audit["checks"]["train_samples"] == 24


def test_report_numbers_come_from_the_predictions(pilot_run):
    run, doc = pilot_run
    out = run / "pilot"

    def acc(path: Path, sid: str) -> float:
        rows = [r for r in read(path / "predictions.jsonl") if r["subset"] == sid]
        assert rows and all(r["correct"] == (r["pred"] == r["answer"]) for r in rows)
        return sum(r["correct"] for r in rows) / len(rows)

    t1 = {r["subset"].split()[0]: r for r in doc["table1_id"]}
    t2 = {r["subset"].split()[0]: r for r in doc["table2_ood"]}
    assert sorted(t1) == ["16", "18"] and sorted(t2) == ["20", "34"]
    for sid, row in t1.items():
        assert row["baseline"] == pytest.approx(acc(out / "baseline" / "eval_id", sid))
        assert row["single"]["accuracy"] == pytest.approx(acc(out / "seed-0" / f"single-{sid}" / "eval", sid))
        assert row["multi"]["accuracy"] == pytest.approx(acc(out / "seed-0" / "multi" / "eval_id", sid))
    for sid, row in t2.items():
        assert row["baseline"] == pytest.approx(acc(out / "baseline" / "eval_ood", sid))
        assert row["multi"]["accuracy"] == pytest.approx(acc(out / "seed-0" / "multi" / "eval_ood", sid))
        assert "single" not in row
    assert t1["16"]["paper"] == PAPER["16"] and t2["20"]["paper"] == PAPER["20"] and "paper" not in t1["18"]
    md = (out / "pilot_report.md").read_text()
    assert "| Subset | n | Baseline | Single-task | Multi-task | Paper (Base / Single / Multi) |" in md
    table_rows = [line[2:4] for line in md.splitlines() if line.startswith("| ") and line[2:4].isdigit()]
    assert table_rows == ["16", "18", "20", "34"]  # Table 1's rows, then Table 2's
    assert json.loads((out / "pilot_report.json").read_text())["table1_id"] == doc["table1_id"]
    assert (out / "pilot.png").stat().st_size > 1000
    # the three trained models: one Multi-task, one Single-task per ID subset
    assert sorted(p.parent.name for p in (out / "seed-0").glob("*/final")) == [
        "multi",
        "single-16",
        "single-18",
    ]


def test_rerun_skips_finished_stages(pilot_run, standin):
    run, doc = pilot_run
    watched = sorted((run / "pilot").rglob("results.json")) + sorted(
        (run / "pilot").rglob("model.safetensors")
    )
    before = {p: p.stat().st_mtime_ns for p in watched}
    again = run_groups(groups(standin), run)
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert again["table1_id"] == doc["table1_id"]
    with pytest.raises(ConfigError, match="other settings"):
        g = groups(standin)
        g["split"] = SplitConfig(cap_per_subset=6, options=g["split"].options)
        run_groups(g, run, dry_run=True)


def test_an_ood_image_seen_in_training_stops_the_pilot(pilot_run):
    run, _ = pilot_run
    out = run / "pilot"
    train_image = Path(read(out / "splits" / "multi" / "train.jsonl")[0]["image"])
    ood_image = Path(read(out / "splits" / "ood" / "test.jsonl")[0]["image"])
    saved = ood_image.read_bytes()
    (out / "pilot_audit.json").rename(out / "pilot_audit.saved")
    try:
        ood_image.write_bytes(train_image.read_bytes())
        with pytest.raises(LeakageError, match="same bytes as target test sample"):
            ood_image_audit(out, check_images=True)
    finally:
        ood_image.write_bytes(saved)
        (out / "pilot_audit.saved").rename(out / "pilot_audit.json")


def test_config_errors_name_the_key(standin, tmp_path):
    with pytest.raises(ConfigError, match="cg.pilot"):
        CGConfig(pilot=Pilot(), targets=[CGTarget(target="03")])
    with pytest.raises(ConfigError, match="cg.pilot.test_only_status"):
        Pilot(train_status=["ID"], test_only_status=["ID"])
    with pytest.raises(ConfigError, match="(?s)cg.only.*pilot.subsets"):
        CGConfig(pilot=Pilot(), only=["x"])
    with pytest.raises(ConfigError, match="nothing to train"):
        Pilot(single=False, multi=False)
    g = groups(standin)
    g["cg"] = CGConfig(pilot=Pilot(subsets=["16", "77"]))
    with pytest.raises(ConfigError, match=r"cg.pilot.subsets.*no subset \['77'\]"):
        run_pilot(CGApp(**g), tmp_path, dry_run=True)
