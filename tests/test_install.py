"""cgmed as users install it: a wheel, installed (not editable) and run from outside the checkout.

Configs, DeepSpeed JSONs and chat templates are package data; this test builds the wheel from a
copy of the sources, installs it with ``--no-deps`` into a fresh target directory, and runs the
console scripts from an unrelated working directory with only that install on the path (the
dependencies come from this environment). If any command read a file from beside the source tree,
it would fail here: the checkout is neither the working directory nor importable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 600
SMALL_WORLD = ["synth.images_per_subset=20", "synth.image_size=32"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "cgmed", src / "cgmed", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = root / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    res = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = wheels.glob("cgmed-*.whl")
    site = root / "site"
    res = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    work = root / "elsewhere"
    work.mkdir()
    return {"wheel": wheel, "site": site, "work": work}


def _env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CGMED_CONF_DIR")}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    return env


def run(installed: dict[str, Path], script: str, *args: str) -> subprocess.CompletedProcess:
    exe = installed["site"] / "bin" / script
    res = subprocess.run(
        [sys.executable, str(exe), *args],
        cwd=installed["work"], env=_env(installed["site"]), capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert res.returncode == 0, f"{script} {' '.join(args)}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def test_wheel_carries_the_configs_and_templates(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for needed in (
        "cgmed/conf/config.yaml",
        "cgmed/conf/experiment/demo.yaml",
        "cgmed/conf/distributed/deepspeed_zero2.yaml",
        "cgmed/conf/deepspeed/zero2.json",
        "cgmed/conf/deepspeed/zero3_offload.json",
        "cgmed/conf/hydra/launcher/slurm.yaml",
    ):
        assert needed in names, needed
    shipped = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "cgmed").rglob("*")
        if p.suffix in (".yaml", ".json", ".jinja")
    }
    assert shipped <= names, sorted(shipped - names)


def test_installed_package_is_the_one_imported(installed):
    res = subprocess.run(
        [sys.executable, "-c", "import cgmed.conf as c; print(c.__file__); print(c.CONF_DIR)"],
        cwd=installed["work"], env=_env(installed["site"]), capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    module_file, conf_dir = res.stdout.split()
    assert Path(module_file).is_relative_to(installed["site"])
    assert Path(conf_dir).is_relative_to(installed["site"])


def test_commands_run_from_the_installed_wheel(installed, tmp_path):
    world = tmp_path / "world"
    res = run(installed, "cgmed-data", "synth", f"out={world}", *SMALL_WORLD)
    assert json.loads(res.stdout)["subsets"] == 18

    res = run(installed, "cgmed-data", "catalog", f"data.root={world}", f"hydra.run.dir={tmp_path / 'cat'}")
    assert (tmp_path / "cat" / "catalog.json").is_file()

    split = tmp_path / "split"
    res = run(
        installed,
        "cgmed-data",
        "build",
        "experiment=demo_data",
        f"data.root={world}",
        f"hydra.run.dir={split}",
    )
    assert "audit: passed" in res.stdout
    assert (split / "train.jsonl").stat().st_size > 0

    model = tmp_path / "tiny"
    run(installed, "cgmed-model", "init", "family=qwen2_vl", f"out={model}")
    assert (model / "config.json").is_file()

    out = tmp_path / "train"
    run(
        installed, "cgmed-train", f"model.path={model}", f"data.train_manifest={split / 'train.jsonl'}",
        "train.max_steps=2", "train.per_device_batch_size=2", "train.progress_bar=false",
        "train.tensorboard=false", f"hydra.run.dir={out}",
    )  # fmt: skip
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [r["step"] for r in rows] == [1, 2]
    assert (out / "final" / "model.safetensors").is_file()

    # a shipped DeepSpeed JSON resolves by its packaged name (no checkout to be relative to)
    res = subprocess.run(
        [
            sys.executable, "-c",
            "from cgmed.train.config import TrainConfig; from cgmed.train.distributed import deepspeed_config;"
            "print(deepspeed_config('deepspeed/zero2.json', TrainConfig(), 1)['zero_optimization']['stage'])",
        ],
        cwd=installed["work"], env=_env(installed["site"]), capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip() == "2", res.stderr

    res = run(
        installed, "cgmed-cg", "experiment=demo", "dry_run=true", f"data.root={world}",
        f"hydra.run.dir={tmp_path / 'cg'}",
    )  # fmt: skip
    assert "ct_lung_cancer" in res.stdout and "mri_brain_diseases" in res.stdout


def test_user_config_directory_is_added_with_the_search_path(installed, tmp_path):
    """A user's own experiment next to the shipped ones, through ``hydra.searchpath``."""
    mine = tmp_path / "my_conf" / "experiment"
    mine.mkdir(parents=True)
    (mine / "my_study.yaml").write_text(
        "# @package _global_\nsplit:\n  targets:\n    - {modality: MRI, area: Brain, task: Diseases}\n"
        "  train: related\n"
    )
    world = tmp_path / "world"
    run(installed, "cgmed-data", "synth", f"out={world}", *SMALL_WORLD)
    split = tmp_path / "split"
    run(
        installed, "cgmed-data", "build", f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
        "experiment=my_study", f"data.root={world}", f"hydra.run.dir={split}",
    )  # fmt: skip
    meta = json.loads((split / "split_meta.json").read_text())
    assert [(t["modality"], t["area"], t["task"]) for t in meta["targets"]] == [("MRI", "Brain", "Diseases")]
