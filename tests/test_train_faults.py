"""The trainer under faults and bad settings: the global batch, validation at the boundary,
resuming only the same run, damaged checkpoints, atomic ``final/`` and metrics, a full disk, and
a run directory that another process holds."""

from __future__ import annotations

import errno
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cgmed.data.build import build_from_config
from cgmed.data.source import DataConfig
from cgmed.data.split import OptionsConfig, SplitConfig
from cgmed.data.synth import SynthConfig
from cgmed.errors import ConfigError
from cgmed.models import get_adapter, init_tiny
from cgmed.train import checkpoint as ckpt
from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig, resolve_global_batch
from cgmed.train.distributed import fill_deepspeed_auto
from cgmed.train.files import DiskFullError
from cgmed.train.lock import LOCK_NAME, RunDirectoryInUse
from cgmed.train.loop import train
from cgmed.train.setup import apply_training_mode, lr_lambda, param_groups

FAST = dict(progress_bar=False, tensorboard=False, log_every=1, warmup_ratio=0.0)
# a run that checkpoints every step, for the resume tests
RESUMABLE = dict(max_steps=4, per_device_batch_size=2, lr=1e-3, save_every=1, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return init_tiny("qwen2_vl", tmp_path_factory.mktemp("tiny_faults") / "qwen2_vl", seed=0)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """24 records of a small synthetic split (56 px images, the tiny model's size)."""
    root = tmp_path_factory.mktemp("split_faults")
    cfg = SplitConfig(
        targets=[{"modality": "CT", "area": "Lung", "task": "Cancer"}],
        options=OptionsConfig(mode="rebuild", order="sorted"),
    )
    build_from_config(
        DataConfig(root=None, cache_dir=str(root / "cache")),
        cfg,
        SynthConfig(images_per_subset=12, image_size=56),
        root / "split",
    )
    out = root / "m.jsonl"
    out.write_text("\n".join((root / "split" / "train.jsonl").read_text().splitlines()[:24]) + "\n")
    return out


def run(tiny: Path, manifest: Path, out: Path, **train_kw) -> list[dict]:
    train(
        ModelConfig(path=str(tiny)),
        TrainConfig(**{**FAST, **train_kw}),
        PeftConfig(),
        DistributedConfig(),
        str(manifest),
        out,
    )
    return rows(out)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tiny, manifest, tmp_path_factory) -> Path:
    """The 4-step run the interrupted ones must reproduce."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run(tiny, manifest, out, **RESUMABLE)
    return out


def interrupted(tiny: Path, manifest: Path, out: Path) -> Path:
    """Stopped after step 3; checkpoints step-2 and step-3 are left (keep_last=2)."""
    run(tiny, manifest, out, stop_after_steps=3, **RESUMABLE)
    assert [p.name for p in ckpt.complete_checkpoints(out)] == ["step-000002", "step-000003"]
    return out


def assert_same_as(out: Path, reference: Path) -> None:
    assert [r["step"] for r in rows(out)] == [1, 2, 3, 4]
    for got, want in zip(rows(out), rows(reference), strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6, abs=1e-7), (got, want)
    a = load_file(str(out / "final" / "model.safetensors"))
    b = load_file(str(reference / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- global batch


def test_global_batch_size_derives_grad_accum_from_the_process_count():
    cfg = TrainConfig(global_batch_size=32, per_device_batch_size=4)
    assert [resolve_global_batch(cfg, world).grad_accum for world in (1, 2, 4, 8)] == [8, 4, 2, 1]
    assert resolve_global_batch(TrainConfig(grad_accum=3), 2).grad_accum == 3  # null: as given
    with pytest.raises(ConfigError, match=r"train.global_batch_size.*not a multiple of 12") as err:
        resolve_global_batch(cfg, 3)
    assert "start a process count that divides it" in str(err.value)
    with pytest.raises(ConfigError, match=r"train.per_device_batch_size to one of \[1, 2\]"):
        resolve_global_batch(TrainConfig(global_batch_size=8, per_device_batch_size=3), 2)
    with pytest.raises(ConfigError, match=r"train.grad_accum.*is 2, but train.global_batch_size=32.*needs 4"):
        resolve_global_batch(TrainConfig(global_batch_size=32, per_device_batch_size=4, grad_accum=2), 2)
    with pytest.raises(ConfigError, match="train.global_batch_size"):
        TrainConfig(global_batch_size=0)


def test_deepspeed_auto_values_follow_the_global_batch():
    auto = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
    }
    filled = fill_deepspeed_auto(dict(auto), TrainConfig(global_batch_size=32, per_device_batch_size=4), 2)
    assert (filled["train_micro_batch_size_per_gpu"], filled["gradient_accumulation_steps"]) == (4, 4)
    assert filled["train_batch_size"] == 32


def test_a_global_batch_size_run_equals_its_explicit_settings(tiny, manifest, tmp_path):
    kw = dict(max_steps=3, per_device_batch_size=2, lr=1e-3, save_every=3, seed=1)
    derived = run(tiny, manifest, tmp_path / "derived", global_batch_size=8, **kw)
    explicit = run(tiny, manifest, tmp_path / "explicit", grad_accum=4, **kw)
    assert [r["loss"] for r in derived] == [r["loss"] for r in explicit]
    batch = {"global_batch_size": 8, "per_device_batch_size": 2, "grad_accum": 4, "world_size": 1}
    assert {k: derived[0][k] for k in batch} == batch and derived[0]["engine"] == "ddp"
    state = ckpt.read_state(tmp_path / "derived" / "checkpoints" / "step-000003")
    assert (state["global_batch"], state["grad_accum"], state["world_size"]) == (8, 4, 1)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ({"lr": -1e-5}, "train.lr"),
        ({"lr_vision": -1e-5}, "train.lr_vision"),
        ({"lr_projector": -1.0}, "train.lr_projector"),
        ({"weight_decay": -0.1}, "train.weight_decay"),
        ({"max_grad_norm": -1.0}, "train.max_grad_norm"),
        ({"max_grad_norm": 0.0}, "train.max_grad_norm"),
        ({"adam_beta1": 1.5}, "train.adam_beta1"),
        ({"adam_beta2": 1.0}, "train.adam_beta2"),
        ({"adam_beta1": -0.1}, "train.adam_beta1"),
        ({"num_workers": -1}, "train.num_workers"),
        ({"resume_allow_changes": ["seed"]}, "train.resume_allow_changes"),
        ({"lr": 0.0}, "train.lr"),  # every part at lr 0: nothing would train
    ],
)
def test_optimizer_settings_are_checked_at_the_boundary(setting, key):
    with pytest.raises(ConfigError, match=rf"config key '{key}'") as err:
        TrainConfig(**setting)
    assert "fix:" in str(err.value) or "must be" in str(err.value)


def test_a_learning_rate_of_zero_freezes_that_part(tiny):
    adapter = get_adapter("qwen2_vl")
    cfg = TrainConfig(lr=1e-4, lr_vision=0.0)
    model = apply_training_mode(adapter.load(tiny)[0], adapter, PeftConfig(), cfg)
    parts = adapter.split_parameters(model)
    assert not any(p.requires_grad for _, p in parts["vision"])
    assert all(p.requires_grad for _, p in parts["language"])
    groups = {g["name"]: g["lr"] for g in param_groups(model, adapter, cfg)}
    assert not any(name.startswith("vision") for name in groups)  # not trained at train.lr
    assert groups["language"] == 1e-4
    assert TrainConfig(lr=0.0, lr_language=1e-4).frozen_parts() == {"vision", "projector"}


# --------------------------------------------------------------------------- resume: the same run


@pytest.fixture
def stopped(tiny, manifest, tmp_path) -> Path:
    """A run of 4 steps stopped after 2 (checkpoint step-2)."""
    out = tmp_path / "run"
    run(tiny, manifest, out, stop_after_steps=2, **RESUMABLE)
    return out


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        ({"seed": 4}, "train.seed", "train.seed=3; this run has 4"),
        ({"max_steps": 6}, "train.max_steps", "belongs to a run of 4 steps; this run has 6"),
        (
            {"per_device_batch_size": 4},
            "train.global_batch_size",
            "a global batch of 2 samples per step; this run has 4",
        ),
    ],
)
def test_resume_refuses_a_different_run(tiny, manifest, stopped, change, key, says):
    with pytest.raises(ConfigError, match=rf"config key '{key}'") as err:
        run(tiny, manifest, stopped, **{**RESUMABLE, **change, "resume": "auto"})
    assert says in str(err.value) and "step-000002" in str(err.value)
    assert [r["step"] for r in rows(stopped)] == [1, 2]  # nothing was touched


def test_resume_refuses_another_manifest_and_another_engine(tiny, manifest, stopped, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text("".join(reversed(manifest.read_text().splitlines(keepends=True))))
    with pytest.raises(ConfigError, match=r"data.train_manifest.*content sha256"):
        train(
            ModelConfig(path=str(tiny)),
            TrainConfig(**FAST, **RESUMABLE, resume="auto"),
            PeftConfig(),
            DistributedConfig(),
            str(other),
            stopped,
        )
    state_file = stopped / "checkpoints" / "step-000002" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "engine": "deepspeed_zero2"}))
    with pytest.raises(ConfigError, match=r"'distributed'.*the deepspeed_zero2 engine; this run uses ddp"):
        run(tiny, manifest, stopped, **RESUMABLE, resume="auto")


def test_an_allowed_max_steps_change_follows_the_recomputed_schedule(
    tiny, manifest, stopped, tmp_path, caplog
):
    six = {**RESUMABLE, "max_steps": 6}
    fresh = run(tiny, manifest, tmp_path / "fresh6", **six)
    with caplog.at_level(logging.WARNING, logger="cgmed.train"):
        extended = run(tiny, manifest, stopped, **six, resume="auto", resume_allow_changes=["max_steps"])
    assert [r["step"] for r in extended] == [1, 2, 3, 4, 5, 6]
    # steps 1-2 ran on the 4-step schedule; from the resumed step on, the 6-step one
    four = [1e-3 * lr_lambda(s, total=4, warmup=0, kind="cosine", min_ratio=0.0) for s in (1, 2)]
    assert [r["lr"] for r in extended[:2]] == pytest.approx(four)
    assert [r["lr"] for r in extended[2:]] == pytest.approx([r["lr"] for r in fresh[2:]])
    said = caplog.text
    assert "train.max_steps changed: 4 -> 6 steps" in said and "followed from step 2 on" in said
    with pytest.raises(ConfigError, match=r"is at step 6; this run would end at step 3"):
        run(
            tiny,
            manifest,
            stopped,
            **{**six, "max_steps": 3},
            resume="auto",
            resume_allow_changes=["max_steps"],
        )


# --------------------------------------------------------------------------- damaged checkpoints


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damaged", "damage", "reported"),
    [
        ("model.safetensors", _truncate, "model.safetensors has"),
        ("optimizer.bin", _truncate, "optimizer.bin has"),
        ("scheduler.bin", Path.unlink, "scheduler.bin is missing"),
        ("random_states_0.pkl", _truncate, "random_states_0.pkl has"),
    ],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    tiny, manifest, uninterrupted, tmp_path, caplog, damaged, damage, reported
):
    out = interrupted(tiny, manifest, tmp_path / "run")
    damage(out / "checkpoints" / "step-000003" / damaged)
    with caplog.at_level(logging.WARNING, logger="cgmed.train"):
        run(tiny, manifest, out, **RESUMABLE, resume="auto")
    assert "step-000003 cannot be loaded" in caplog.text and reported in caplog.text
    assert_same_as(out, uninterrupted)  # resumed from step-2, same result


def test_an_rng_state_that_cannot_be_restored_is_an_error(tiny, manifest, tmp_path):
    out = interrupted(tiny, manifest, tmp_path / "run")
    newest = out / "checkpoints" / "step-000003"
    rng = newest / "random_states_0.pkl"
    rng.write_bytes(b"\0" * rng.stat().st_size)  # the recorded size, unreadable content
    with pytest.raises(ConfigError, match=r"train.resume.*random_states_0.pkl cannot be read"):
        run(tiny, manifest, out, **RESUMABLE, resume=str(newest))
    _truncate(out / "checkpoints" / "step-000002" / "model.safetensors")
    with pytest.raises(
        ConfigError, match=r"no checkpoint in .*checkpoints can be loaded: step-000003: .*step-000002"
    ):
        run(tiny, manifest, out, **RESUMABLE, resume="auto")


# --------------------------------------------------------------------------- atomic files


def test_a_kill_while_final_is_written_leaves_no_final(tiny, manifest, tmp_path, monkeypatch):
    from transformers import ProcessorMixin

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt  # as a kill between the weights and the processor files

    out = tmp_path / "run"
    monkeypatch.setattr(ProcessorMixin, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tiny, manifest, out, max_steps=2, per_device_batch_size=4)
    monkeypatch.undo()
    assert not (out / "final" / "config.json").exists()
    assert not ckpt.is_complete(out / "final")
    assert not (out / LOCK_NAME).exists()  # released on the way out
    run(tiny, manifest, out, max_steps=2, per_device_batch_size=4, resume="auto")
    assert ckpt.is_complete(out / "final") and not (out / ".tmp-final").exists()
    marker = json.loads((out / "final" / "cgmed_complete.json").read_text())
    assert marker["step"] == 2 and "model.safetensors" in marker["files"]
    _truncate(out / "final" / "model.safetensors")
    assert not ckpt.is_complete(out / "final")


def test_a_torn_metrics_line_and_leftover_temporaries(tiny, manifest, tmp_path, caplog):
    out = tmp_path / "run"
    run(tiny, manifest, out, stop_after_steps=2, **RESUMABLE)
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 3, "loss": 7.0')  # killed in the middle of a row
    leftovers = [out / "checkpoints" / ".tmp-step-000009", out / ".tmp-final"]
    for leftover in leftovers:
        leftover.mkdir(parents=True)
        (leftover / "optimizer.bin").write_bytes(b"partial")
    with caplog.at_level(logging.WARNING, logger="cgmed.train"):
        resumed = run(tiny, manifest, out, **RESUMABLE, resume="auto")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert "dropped a torn last line" in caplog.text
    assert not any(p.exists() for p in leftovers) and "left by an interrupted run" in caplog.text


class FullDisk:
    """An accelerator whose save_state writes part of a checkpoint and then finds the disk full."""

    is_main_process = True
    num_processes = 1

    def __init__(self, error: Exception):
        self.error = error

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, directory: str, **kwargs) -> None:
        (Path(directory) / "model.safetensors").write_bytes(b"\0" * 1000)
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: file write failed"
        ),
    ],
    ids=["ENOSPC", "torch-writer"],
)
def test_a_full_disk_names_the_directory_and_removes_the_partial_checkpoint(tmp_path, monkeypatch, error):
    class Usage:
        free = 500

    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage)
    model = torch.nn.Linear(64, 64)
    with pytest.raises(DiskFullError) as err:
        ckpt.save_checkpoint(FullDisk(error), tmp_path, 2, {"step": 2}, keep_last=2, model=model)
    said = str(err.value)
    assert f"disk full while writing checkpoint step-000002 into {tmp_path / 'checkpoints'}" in said
    assert "500 B free, about 48.8 KB needed" in said  # 4160 weights + two AdamW moments, fp32
    assert list((tmp_path / "checkpoints").iterdir()) == []


# --------------------------------------------------------------------------- one run per directory

HOLD = """
import sys, time
from pathlib import Path
from cgmed.train.lock import acquire_run_lock
lock = acquire_run_lock(Path(sys.argv[1]), "holder-test")
print("locked", flush=True)
time.sleep(600)
"""


def test_a_training_refuses_a_directory_another_process_holds(tiny, manifest, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryInUse, match=rf"in use by pid {holder.pid} on host .*holder-test"):
            run(tiny, manifest, out, max_steps=2, per_device_batch_size=4)
        assert not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    run(tiny, manifest, out, max_steps=2, per_device_batch_size=4)  # the dead holder's lock is taken over
    assert ckpt.is_complete(out / "final") and not (out / LOCK_NAME).exists()
