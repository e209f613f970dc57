"""Every training and evaluation stage of ``cgmed-cg`` records the settings that made it: a rerun
with other train or eval settings is refused naming the keys, ``cg.redo`` redoes the stage and
what was made from it, and the report states what the stages used, not what the rerun asks for."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cgmed.cg.config import CGApp, CGConfig, CGTarget, TinyBase
from cgmed.cg.protocol import run_protocol
from cgmed.cg.records import (
    OUTPUT_EVAL_KEYS,
    OUTPUT_TRAIN_KEYS,
    PREDICTION_EVAL_KEYS,
    WEIGHT_TRAIN_KEYS,
)
from cgmed.data.source import DataConfig
from cgmed.data.split import OptionsConfig, SplitConfig
from cgmed.data.synth import SynthConfig
from cgmed.errors import ConfigError
from cgmed.eval.score import EvalConfig
from cgmed.train.config import TrainConfig

TARGET = CGTarget(
    name="ct_lung_cancer",
    target={"modality": "CT", "area": "Lung", "task": "Cancer"},
    related=[
        {"modality": "CT", "area": "Brain", "task": "Cancer"},
        {"modality": "MRI", "area": "Lung", "task": "Cancer"},
    ],
)


def tiny_app(cache: Path, train: dict | None = None, evaluation: dict | None = None, **cg_kw) -> CGApp:
    """One target, one seed, no Baseline+: a few training steps on a 12-subset world."""
    return CGApp(
        cg=CGConfig(
            targets=[TARGET], tiny_base=TinyBase(), baseline_plus=False, eval_seen=False, plots=False, **cg_kw
        ),
        data=DataConfig(cache_dir=str(cache)),
        split=SplitConfig(cap_per_subset=8, options=OptionsConfig(mode="rebuild", order="sorted")),
        synth=SynthConfig(
            modalities=["CT", "MRI", "X-ray"],
            areas=["Lung", "Brain"],
            images_per_subset=20,
            image_size=56,
            test_fraction=0.2,
        ),
        train=TrainConfig(
            **{
                "max_steps": 3,
                "per_device_batch_size": 4,
                "lr": 1e-3,
                "progress_bar": False,
                "tensorboard": False,
                **(train or {}),
            }
        ),
        eval=EvalConfig(**{"batch_size": 16, "bootstrap": 20, "max_new_tokens": 2, **(evaluation or {})}),
    )


def test_every_train_and_eval_key_is_classified():
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(WEIGHT_TRAIN_KEYS) | set(OUTPUT_TRAIN_KEYS) == train_keys
    assert not set(WEIGHT_TRAIN_KEYS) & set(OUTPUT_TRAIN_KEYS)
    eval_keys = {f.name for f in dataclasses.fields(EvalConfig)}
    assert set(PREDICTION_EVAL_KEYS) | set(OUTPUT_EVAL_KEYS) == eval_keys
    assert not set(PREDICTION_EVAL_KEYS) & set(OUTPUT_EVAL_KEYS)


def test_unknown_redo_stage_is_refused():
    with pytest.raises(ConfigError, match="cg.redo.*'split'"):
        CGConfig(redo=["split"])


def test_changed_settings_are_refused_then_redone(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    first = run_protocol(tiny_app(cache), run)
    trained_dir = run / "ct_lung_cancer" / "seed-0" / "trained"
    record = json.loads((trained_dir / "stage.json").read_text())
    assert record["stage"] == "train" and record["settings"]["train.max_steps"] == 3
    assert first["targets"][0]["trained"]["training"] == {"max_steps": [3], "lr": [1e-3], "seed": [0]}

    # the reproduction: other steps, lr and method; nothing may be reused silently
    changed = {"train": {"max_steps": 5, "lr": 0.5}, "evaluation": {"method": "generation"}}
    with pytest.raises(ConfigError, match=r"cg.redo.*eval stage.*eval.method") as refused:
        run_protocol(tiny_app(cache, **changed), run)  # the Baseline evaluation comes first
    assert "option_scoring' -> 'generation'" in str(refused.value)
    with pytest.raises(ConfigError, match=r"train stage.*train.lr.*train.max_steps"):
        run_protocol(tiny_app(cache, **changed, redo=["eval"]), run)

    # an unchanged training stays; only evaluations are redone
    final = trained_dir / "final" / "model.safetensors"
    before = final.stat().st_mtime_ns
    doc = run_protocol(tiny_app(cache, evaluation={"method": "generation"}, redo=["eval"]), run)
    assert final.stat().st_mtime_ns == before
    assert doc["methods"] == ["generation"]

    doc = run_protocol(tiny_app(cache, **changed, redo=["train", "eval"]), run)
    (row,) = doc["targets"]
    assert row["trained"]["training"] == {"max_steps": [5], "lr": [0.5], "seed": [0]}
    assert row["trained"]["method"] == row["baseline"]["method"] == "generation"
    assert final.stat().st_mtime_ns != before
    report = json.loads((run / "cg_report.json").read_text())
    assert report["targets"][0]["trained"]["training"]["max_steps"] == [5]
    assert "Trained 5 steps at lr 0.5" in (run / "cg_report.md").read_text()
    assert not list(run.rglob(".tmp-stale-*"))
    # and the rerun with the same settings reuses everything
    assert run_protocol(tiny_app(cache, **changed), run)["targets"][0]["trained"] == row["trained"]
