"""``cgmed-cg report``: a sweep of separate cgmed-cg jobs merged into one report equals one run
over the same targets and seeds; missing, unfinished and failed targets are listed with their
stage; a seed found twice is counted once when its predictions are byte-identical and refused
otherwise; different settings are refused naming the keys; a run made before the run record is
read from Hydra's config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cgmed.cg.config import CGApp, CGConfig, CGTarget, TinyBase
from cgmed.cg.merge import ReportConfig, merge_report
from cgmed.cg.protocol import run_protocol
from cgmed.cg.status import RUN_RECORD, mark_run
from cgmed.config import as_dict
from cgmed.data.source import DataConfig
from cgmed.data.split import OptionsConfig, SplitConfig
from cgmed.data.synth import SynthConfig
from cgmed.errors import ConfigError, DataError
from cgmed.eval.score import EvalConfig
from cgmed.train.config import TrainConfig

T1 = CGTarget(
    name="ct_lung_cancer",
    group="FT",
    target={"modality": "CT", "area": "Lung", "task": "Cancer"},
    related=[
        {"modality": "CT", "area": "Brain", "task": "Cancer"},
        {"modality": "MRI", "area": "Lung", "task": "Cancer"},
    ],
    paper={"baseline": 25, "baseline_plus": 25, "trained": 36},
)
T2 = CGTarget(
    name="mri_brain_diseases",
    group="FM",
    target={"modality": "MRI", "area": "Brain", "task": "Diseases"},
    related=[
        {"modality": "MRI", "area": "Brain", "task": "Cancer"},
        {"modality": "MRI", "area": "Lung", "task": "Diseases"},
    ],
)


def app(cache: Path, seeds: list[int], only: list[str] | None = None) -> CGApp:
    """Both targets in a tiny world, two training steps: what is merged is the bookkeeping."""
    return CGApp(
        cg=CGConfig(targets=[T1, T2], tiny_base=TinyBase(), seeds=seeds, only=only, plots=False),
        data=DataConfig(cache_dir=str(cache)),
        split=SplitConfig(cap_per_subset=12, options=OptionsConfig(mode="rebuild", order="sorted")),
        synth=SynthConfig(
            modalities=["CT", "MRI", "X-ray"],
            areas=["Lung", "Brain"],
            images_per_subset=24,
            image_size=56,
            test_fraction=0.25,
        ),
        train=TrainConfig(
            max_steps=2,
            per_device_batch_size=8,
            lr=2e-3,
            progress_bar=False,
            tensorboard=False,
            warmup_ratio=0.0,
        ),
        eval=EvalConfig(batch_size=32, bootstrap=200),
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A sweep as separate jobs (Hydra multirun layout, and one more job elsewhere) and one run
    over both targets: t1 seed 0 in sweep/0, t2 seed 0 in sweep/1, t1 seed 1 in extra/job."""
    root = tmp_path_factory.mktemp("merge")
    cache = root / "cache"
    jobs = {
        "t1_seed0": root / "sweep" / "0",
        "t2": root / "sweep" / "1",
        "t1_seed1": root / "extra" / "job",
        "single": root / "single",
    }
    run_protocol(app(cache, [0], [T1.name]), jobs["t1_seed0"])
    run_protocol(app(cache, [0], [T2.name]), jobs["t2"])
    run_protocol(app(cache, [1], [T1.name]), jobs["t1_seed1"])
    (root / "sweep" / ".submitit").mkdir()  # launcher logs: no run
    run_protocol(app(cache, [0]), jobs["single"])
    return root, jobs


def rows_by_name(doc: dict) -> dict[str, dict]:
    """The report's rows without the picture files (paths of the folder the report went to)."""
    return {r["name"]: {k: v for k, v in r.items() if k != "pictures"} for r in doc["targets"]}


def merge(tmp_path: Path, *runs: Path, **kw) -> dict:
    return merge_report(ReportConfig(runs=[str(r) for r in runs], plots=False, **kw), tmp_path / "report")


def copy_job(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints"))
    return dst


def test_merged_sweep_equals_single_run(runs, tmp_path):
    """cgmed-cg report over a sweep of one job per target gives the rows of one run over both."""
    root, jobs = runs
    out = tmp_path / "merged"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cgmed.cli.cg",
            "report",
            f"runs=[{root / 'sweep'}]",
            f"out={out}",
            "plots=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    merged = json.loads((out / "cg_report.json").read_text())
    single = json.loads((jobs["single"] / "cg_report.json").read_text())
    assert rows_by_name(merged) == rows_by_name(single)
    assert [r["name"] for r in merged["targets"]] == [T2.name, T1.name]  # the paper's group order: FM, FT
    assert merged["merge"]["runs"] == [str(jobs["t1_seed0"]), str(jobs["t2"])]
    assert {r["status"] for r in merged["merge"]["status"]} == {"finished"}
    md = (out / "cg_report.md").read_text()
    assert md.index("**FM (fixed modality)**") < md.index("**FT (fixed task)**") < md.index("## Runs merged")
    assert "Every target planned is finished." in md


def test_seeds_merged_across_jobs(runs, tmp_path):
    """Seed 0 from one job and seed 1 from another make the row of a run with seeds [0, 1] (that
    run made here from the same stages, every one skipped)."""
    root, jobs = runs
    merged = merge(tmp_path, root)  # the sweep, the job elsewhere and the single run: t1 seed 0 twice
    row = rows_by_name(merged)[T1.name]
    assert row["seeds"] == [0, 1]
    assert merged["merge"]["sources"][T1.name]["seeds"] == {
        "0": str(jobs["single"] / T1.name / "seed-0"),  # the first in path order; the same bytes
        "1": str(jobs["t1_seed1"] / T1.name / "seed-1"),
    }
    both = copy_job(jobs["t1_seed0"], tmp_path / "both")
    shutil.copytree(jobs["t1_seed1"] / T1.name / "seed-1", both / T1.name / "seed-1")
    run_protocol(app(root / "cache", [0, 1], [T1.name]), both)
    assert row == rows_by_name(json.loads((both / "cg_report.json").read_text()))[T1.name]
    seeds = [
        json.loads((jobs[j] / "cg_report.json").read_text())["targets"][0] for j in ("t1_seed0", "t1_seed1")
    ]
    assert row["trained"]["per_seed"] == [s["trained"]["accuracy"] for s in seeds]


def test_missing_unfinished_and_failed_targets_are_listed(runs, tmp_path):
    _, jobs = runs
    sweep = tmp_path / "sweep"
    t1_seed0 = copy_job(jobs["t1_seed0"], sweep / "0")
    t2 = copy_job(jobs["t2"], sweep / "1")
    (t2 / T2.name / "seed-0" / "trained" / "eval" / "results.json").unlink()
    t1_seed1 = copy_job(jobs["t1_seed1"], sweep / "2")
    (t1_seed1 / T1.name / "seed-1" / "baseline_plus" / "final" / "cgmed_complete.json").unlink()
    mark_run(t1_seed1, "failed", DataError("img.png", "unreadable image"))
    ghost = sweep / "3"  # a job that planned a target and stopped before making its folder
    ghost.mkdir()
    record = json.loads((t1_seed0 / RUN_RECORD).read_text())
    record["targets"][0]["name"] = "never_made"
    (ghost / RUN_RECORD).write_text(json.dumps(record))

    doc = merge(tmp_path, sweep)
    status = {(r["target"], Path(r["directory"]).parent.name): r for r in doc["merge"]["status"]}
    assert status[T2.name, "1"] == {
        "target": T2.name,
        "group": "FM",
        "directory": str(t2 / T2.name),
        "seeds": [0],
        "status": "unfinished",
        "stage": "seed-0 trained eval",
        "reported": False,
    }
    failed = status[T1.name, "2"]
    assert (failed["status"], failed["stage"]) == ("failed", "seed-1 baseline_plus train")
    assert failed["error"] == "DataError: img.png: unreadable image" and failed["reported_seeds"] == [0]
    assert status[T1.name, "0"]["status"] == "finished" and status[T1.name, "0"]["reported"]
    missing = status["never_made", "3"]
    assert (missing["status"], missing["stage"], missing["directory"]) == (
        "missing",
        "no folder",
        str(ghost / "never_made"),
    )
    assert [(r["name"], r["seeds"]) for r in doc["targets"]] == [(T1.name, [0])]  # the seed that is done
    md = (tmp_path / "report" / "cg_report.md").read_text()
    assert f"| {T2.name} | FM | unfinished | seed-0 trained eval | `{t2 / T2.name}` | not reported |" in md
    assert (
        f"| {T1.name} | FT | failed: DataError: img.png: unreadable image | seed-1 baseline_plus train | "
        f"`{t1_seed1 / T1.name}` | seeds [0] |" in md
    )
    assert "| never_made | FT | missing | no folder |" in md


def test_same_seed_twice(runs, tmp_path):
    """Byte-identical predictions: counted once (the report is that of one copy); else refused."""
    _, jobs = runs
    twin = copy_job(jobs["t1_seed0"], tmp_path / "twin")
    once = merge(tmp_path, jobs["t1_seed0"], twin)
    alone = json.loads((jobs["t1_seed0"] / "cg_report.json").read_text())
    assert rows_by_name(once) == rows_by_name(alone)
    assert any("seed 0: in" in n and "counted once" in n for n in once["merge"]["notes"])

    predictions = twin / T1.name / "seed-0" / "trained" / "eval" / "predictions.jsonl"
    rows = [json.loads(x) for x in predictions.read_text().splitlines()]
    rows[0]["pred"] = "B" if rows[0]["pred"] != "B" else "A"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match="seed 0 of target ct_lung_cancer") as err:
        merge(tmp_path, jobs["t1_seed0"], twin)
    assert str(jobs["t1_seed0"] / T1.name) in str(err.value) and str(twin / T1.name) in str(err.value)
    assert "seed-0 trained eval" in str(err.value)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        ("seed-1/trained/stage.json", "seed-* trained train: train.lr"),
        (RUN_RECORD, "cg.targets[ct_lung_cancer].paper"),
    ],
)
def test_different_settings_refused_naming_the_keys(runs, tmp_path, edit, key):
    _, jobs = runs
    other = copy_job(jobs["t1_seed1"], tmp_path / "other")
    if edit == RUN_RECORD:
        record = json.loads((other / RUN_RECORD).read_text())
        record["targets"][0]["spec"]["paper"]["trained"] = 99
        (other / RUN_RECORD).write_text(json.dumps(record))
    else:
        stage = other / T1.name / edit
        doc = json.loads(stage.read_text())
        doc["settings"]["train.lr"] = 0.5
        stage.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="different settings") as err:
        merge(tmp_path, jobs["t1_seed0"], other)
    message = str(err.value)
    assert f"differing: ['{key}']" in message
    assert str(jobs["t1_seed0"] / T1.name) in message and str(other / T1.name) in message


def test_run_without_record_read_from_hydra_config(runs, tmp_path):
    """A run made before cg_run.json: its plan comes from .hydra/config.yaml (cg.only included)."""
    from omegaconf import OmegaConf

    _, jobs = runs
    old = copy_job(jobs["t2"], tmp_path / "old")
    (old / RUN_RECORD).unlink()
    (old / ".hydra").mkdir()
    config = as_dict(app(tmp_path / "cache", [0, 1], [T2.name]))
    OmegaConf.save(OmegaConf.create(config), old / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"job": {"name": "cg"}}}), old / ".hydra" / "hydra.yaml")
    doc = merge(tmp_path, tmp_path)
    assert doc["merge"]["runs"] == [str(old)]
    assert rows_by_name(doc) == rows_by_name(json.loads((jobs["t2"] / "cg_report.json").read_text()))


def test_reused_training_is_done_while_its_original_is(runs, tmp_path, capsys):
    """A train stage that reuses an identical finished training (cgmed.cg.reuse) holds no final/
    of its own: it is done as long as the original's final/ is complete."""
    _, jobs = runs
    original = copy_job(jobs["t1_seed0"], tmp_path / "original") / T1.name / "seed-0" / "trained"
    job = copy_job(jobs["t1_seed0"], tmp_path / "runs" / "job")
    trained = job / T1.name / "seed-0" / "trained"
    shutil.rmtree(trained / "final")
    record = json.loads((trained / "stage.json").read_text())
    record.update(reused_from=os.path.relpath(original, trained), reused_from_absolute=str(original))
    (trained / "stage.json").write_text(json.dumps(record))
    doc = merge(tmp_path, tmp_path / "runs")
    assert [(r["status"], r["stage"]) for r in doc["merge"]["status"]] == [("finished", None)]
    assert [r["name"] for r in doc["targets"]] == [T1.name]

    (original / "final" / "cgmed_complete.json").unlink()
    with pytest.raises(ConfigError, match="no target under"):
        merge(tmp_path, tmp_path / "runs")
    assert (
        f"| {T1.name} | FT | unfinished | seed-0 trained train | `{job / T1.name}` |"
        in capsys.readouterr().out
    )


def test_report_config_composes_and_names_bad_keys():
    from hydra import compose, initialize_config_dir

    from cgmed.cli.hydra_app import CONF_DIR
    from cgmed.cli.report import CONFIG_NAME, register_schema
    from cgmed.config import build_config

    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        good = compose(config_name=CONFIG_NAME, overrides=["runs=[a,b]", "plots=false", "exclude=[a/1]"])
        bad = compose(config_name=CONFIG_NAME, overrides=["runs=a"])
        plain = compose(config_name=CONFIG_NAME)
    assert build_config(ReportConfig, plain, "") == ReportConfig()  # the yaml shows the dataclass's defaults
    assert build_config(ReportConfig, good, "") == ReportConfig(runs=["a", "b"], exclude=["a/1"], plots=False)
    with pytest.raises(ConfigError, match="config key 'runs': expected a list"):
        build_config(ReportConfig, bad, "")
