"""Every config in the repo composes and validates; the cgmed-data CLI runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cgmed.cli.hydra_app import CONF_DIR, register_configs, typed_config

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(
    str(p.relative_to(CONF_DIR / "experiment").with_suffix(""))
    for p in (CONF_DIR / "experiment").rglob("*.yaml")
)


def compose_cfg(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_default_config_validates():
    typed = typed_config(compose_cfg([]))
    assert typed["data"].format == "medmat" and typed["split"].cap_per_subset == 3000


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name):
    groups = ("data", "split", "synth", "model", "train", "peft", "distributed", "eval", "cg", "tiny")
    typed = typed_config(compose_cfg([f"experiment={name}"]), groups)  # every group, every key checked
    assert set(typed) == set(groups)


def test_conversation_data_group():
    assert typed_config(compose_cfg(["data=conversation"]))["data"].format == "conversation"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cgmed.cli.data", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_cli_catalog_and_build(small_release, tmp_path):
    out = tmp_path / "cat"
    res = cli("catalog", f"data.root={small_release}", f"hydra.run.dir={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "28    X-ray    Lung       COVID" in res.stdout
    assert json.loads((out / "catalog.json").read_text())["totals"]["subsets"] == 7

    split_dir = tmp_path / "split"
    res = cli(
        "build",
        f"data.root={small_release}",
        "split.targets=['04']",
        "split.train=related",
        f"hydra.run.dir={split_dir}",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "audit: passed" in res.stdout
    meta = json.loads((split_dir / "split_meta.json").read_text())
    assert [t["id"] for t in meta["targets"]] == ["04"]
    assert meta["config"]["split"]["train"] == "related"
    assert (split_dir / "train.jsonl").read_text().count("\n") == meta["sizes"]["train"] > 0


def test_cli_config_errors_name_the_key(small_release, tmp_path):
    res = cli(
        "build",
        f"data.root={small_release}",
        "split.targets=[{modality: CTT}]",
        f"hydra.run.dir={tmp_path / 'x'}",
        cwd=tmp_path,
    )
    assert res.returncode == 2
    assert "split.targets[0].modality" in res.stderr and "did you mean 'CT'" in res.stderr
    res = cli("build", "data.on_bad_sample=ignore", f"hydra.run.dir={tmp_path / 'y'}", cwd=tmp_path)
    assert res.returncode == 2 and "data.on_bad_sample" in res.stderr and "['fail', 'skip']" in res.stderr
    res = cli("frobnicate", cwd=tmp_path)
    assert res.returncode == 2 and "usage: cgmed-data" in res.stdout


def test_cli_synth_then_default_world_build(tmp_path):
    small = ["synth.images_per_subset=20", "synth.image_size=32"]
    res = cli("synth", f"out={tmp_path / 'world'}", *small, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["subsets"] == 18
    # no data.root: the synthetic world is generated into data.cache_dir and used
    out = tmp_path / "split"
    args = [
        "build",
        "experiment=demo_data",
        f"data.cache_dir={tmp_path / 'cache'}",
        *small,
        f"hydra.run.dir={out}",
    ]
    res = cli(*args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "split_meta.json").read_text())
    assert meta["data_root"].startswith(str(tmp_path / "cache" / "synth-"))
    assert [(t["modality"], t["area"], t["task"]) for t in meta["targets"]] == [("CT", "Lung", "Cancer")]
    first = (out / "train.jsonl").read_bytes()
    res = cli(*args[:-1], f"hydra.run.dir={tmp_path / 'again'}", cwd=tmp_path)  # cached world, same bytes
    assert res.returncode == 0 and (tmp_path / "again" / "train.jsonl").read_bytes() == first
    res = cli("synth", cwd=tmp_path)
    assert res.returncode == 2 and "config key 'out'" in res.stderr
