"""The trainer on tiny checkpoints: learning, training modes, resume, export, faults, CLI."""

from __future__ import annotations

import dataclasses
import json
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
from cgmed.errors import ConfigError, DataError
from cgmed.models import FAMILIES, get_adapter, init_tiny
from cgmed.models.export import merge_lora
from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig
from cgmed.train.data import SkippingCollate
from cgmed.train.loop import TrainingError, train
from cgmed.train.setup import apply_training_mode, lr_lambda, param_groups

FAST = dict(progress_bar=False, tensorboard=False, log_every=1, warmup_ratio=0.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_train")
    return {f: init_tiny(f, root / f, seed=0) for f in FAMILIES}


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """A small synthetic split (56 px images, the tiny models' size)."""
    root = tmp_path_factory.mktemp("split")
    synth = SynthConfig(images_per_subset=12, image_size=56)
    data = DataConfig(root=None, cache_dir=str(root / "cache"))
    cfg = SplitConfig(
        targets=[{"modality": "CT", "area": "Lung", "task": "Cancer"}],
        options=OptionsConfig(mode="rebuild", order="sorted"),
    )
    build_from_config(data, cfg, synth, root / "split")
    return root / "split"


def small_manifest(split: Path, out: Path, n: int) -> Path:
    lines = (split / "train.jsonl").read_text().splitlines()[:n]
    out.write_text("\n".join(lines) + "\n")
    return out


def run(model_path, manifest, out, peft="full", **train_kw) -> list[dict]:
    tcfg = TrainConfig(**{**FAST, **train_kw})
    train(
        ModelConfig(path=str(model_path)),
        tcfg,
        PeftConfig(method=peft),
        DistributedConfig(),
        str(manifest),
        out,
    )
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_reduces_the_loss_on_a_fixed_batch(family, tiny, split, tmp_path):
    manifest = small_manifest(split, tmp_path / "m.jsonl", 4)
    rows = run(
        tiny[family],
        manifest,
        tmp_path / "run",
        max_steps=8,
        per_device_batch_size=4,
        lr=5e-3,
        scheduler="constant",
        group_by_length=False,
    )
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[-1]["loss"] < rows[0]["loss"] * 0.7, [r["loss"] for r in rows]
    assert all(k in rows[0] for k in ("lr", "grad_norm", "samples_per_s", "tokens_per_s", "step_time_s"))
    assert (tmp_path / "run" / "final" / "config.json").is_file()


def _load(tiny, family="qwen2_vl"):
    return get_adapter(family).load(tiny[family])[0]


def test_lora_targets_the_language_model_only_by_default(tiny):
    adapter = get_adapter("qwen2_vl")
    model = apply_training_mode(_load(tiny), adapter, PeftConfig(method="lora"), TrainConfig())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(".language_model." in n for n in trainable)
    assert not any(".visual." in n for n in trainable)
    with_vision = apply_training_mode(
        _load(tiny), adapter, PeftConfig(method="lora", target_vision=True), TrainConfig()
    )
    assert any(".visual.blocks." in n and p.requires_grad for n, p in with_vision.named_parameters())


def test_lora_training_leaves_the_vision_tower_untouched(tiny, split, tmp_path):
    manifest = small_manifest(split, tmp_path / "m.jsonl", 8)
    run(
        tiny["qwen2_vl"],
        manifest,
        tmp_path / "run",
        peft="lora",
        max_steps=3,
        per_device_batch_size=4,
        lr=1e-2,
    )
    saved = load_file(str(tmp_path / "run" / "final" / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    assert not any("visual" in k for k in saved)
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)  # it did train


@pytest.mark.parametrize(
    ("switches", "expected"),
    [
        ({"freeze_vision": True}, {"vision": False, "projector": True, "language": True}),
        (
            {"freeze_projector": True, "freeze_language": True},
            {"vision": True, "projector": False, "language": False},
        ),
        ({}, {"vision": True, "projector": True, "language": True}),
    ],
)
def test_freeze_switches(tiny, switches, expected):
    adapter = get_adapter("qwen2_vl")
    model = apply_training_mode(_load(tiny), adapter, PeftConfig(), TrainConfig(**switches))
    for part, params in adapter.split_parameters(model).items():
        assert {p.requires_grad for _, p in params} == {expected[part]}, part


def test_separate_learning_rates_per_part(tiny):
    adapter = get_adapter("qwen2_vl")
    cfg = TrainConfig(lr=1e-4, lr_vision=1e-6, lr_projector=5e-5, weight_decay=0.1)
    model = apply_training_mode(_load(tiny), adapter, PeftConfig(), cfg)
    groups = {g["name"]: g for g in param_groups(model, adapter, cfg)}
    assert (
        groups["vision"]["lr"] == 1e-6
        and groups["projector"]["lr"] == 5e-5
        and groups["language"]["lr"] == 1e-4
    )
    assert groups["language_no_decay"]["weight_decay"] == 0.0 and groups["language"]["weight_decay"] == 0.1
    n = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())


def test_warmup_cosine_schedule():
    values = [lr_lambda(s, total=10, warmup=2, kind="cosine", min_ratio=0.1) for s in range(10)]
    assert values[:3] == [0.5, 1.0, 1.0]
    assert values[-1] == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(7 / 8 * torch.pi)).item())
    )
    assert all(a >= b for a, b in zip(values[2:], values[3:], strict=False))


def test_qlora_step_runs(tiny, split, tmp_path):
    import bitsandbytes as bnb

    manifest = small_manifest(split, tmp_path / "m.jsonl", 4)
    adapter = get_adapter("qwen2_vl")
    from cgmed.train.setup import load_model

    model, _ = load_model(ModelConfig(path=str(tiny["qwen2_vl"])), PeftConfig(method="qlora"), adapter)
    quantized = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(".language_model." in n for n in quantized)
    rows = run(
        tiny["qwen2_vl"],
        manifest,
        tmp_path / "run",
        peft="qlora",
        max_steps=2,
        per_device_batch_size=2,
        lr=1e-3,
        group_by_length=False,
    )
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


def test_interrupted_and_resumed_equals_uninterrupted(tiny, split, tmp_path):
    manifest = small_manifest(split, tmp_path / "m.jsonl", 24)
    kw = dict(max_steps=6, per_device_batch_size=2, grad_accum=2, lr=1e-3, save_every=2, seed=3)
    full = run(tiny["qwen2_vl"], manifest, tmp_path / "a", **kw)
    first = run(tiny["qwen2_vl"], manifest, tmp_path / "b", stop_after_steps=3, **kw)
    assert [r["step"] for r in first] == [1, 2, 3]
    assert not (tmp_path / "b" / "final").exists()
    assert (tmp_path / "b" / "checkpoints" / "step-000003" / "trainer_state.json").is_file()
    with (tmp_path / "b" / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": 4, "loss": 0.0}) + "\n")  # logged, then lost before a checkpoint
    resumed = run(tiny["qwen2_vl"], manifest, tmp_path / "b", resume="auto", **kw)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full, resumed, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7), (a, b)
    wa = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    kept = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert kept == ["step-000004", "step-000006"]  # keep_last=2


def test_merged_export_gives_the_same_logits(tiny, split, tmp_path):
    from peft import PeftModel

    from cgmed.models import Collator

    manifest = small_manifest(split, tmp_path / "m.jsonl", 8)
    run(
        tiny["qwen2_vl"],
        manifest,
        tmp_path / "run",
        peft="lora",
        max_steps=3,
        per_device_batch_size=4,
        lr=1e-2,
    )
    merged_dir = merge_lora(tmp_path / "run" / "final", tmp_path / "merged")
    adapter = get_adapter("qwen2_vl")
    merged, processor = adapter.load(merged_dir)
    base, _ = adapter.load(tiny["qwen2_vl"])
    with_adapter = PeftModel.from_pretrained(base, str(tmp_path / "run" / "final"))
    records = [json.loads(x) for x in manifest.read_text().splitlines()[:2]]
    batch = Collator(adapter, processor, 4096)(records)
    batch.pop("labels")
    with torch.no_grad():
        a = with_adapter(**batch).logits
        b = merged(**batch).logits
    assert (a - b).abs().max() < 1e-4
    assert not any("lora" in k for k in load_file(str(merged_dir / "model.safetensors")))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny, split, tmp_path):
    manifest = small_manifest(split, tmp_path / "m.jsonl", 16)
    with pytest.raises(TrainingError, match=r"non-finite loss .* at step \d+.*last good checkpoint is kept"):
        run(
            tiny["qwen2_vl"],
            manifest,
            tmp_path / "run",
            max_steps=8,
            per_device_batch_size=2,
            lr=1e30,
            save_every=1,
            max_grad_norm=None,
        )
    kept = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith("step-")]
    assert kept  # the good ones stay
    assert not (tmp_path / "run" / "final").exists()


def test_unreadable_images_are_skipped_and_counted(tiny, split, tmp_path):
    records = [json.loads(x) for x in (split / "train.jsonl").read_text().splitlines()[:8]]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    records[1]["image"] = str(bad)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = run(
        tiny["qwen2_vl"],
        manifest,
        tmp_path / "run",
        max_steps=2,
        per_device_batch_size=4,
        group_by_length=False,
        max_bad_images=5,
    )
    assert rows[-1]["skipped_bad_images"] == 1
    with pytest.raises(DataError, match=r"1 unreadable images \(limit train.max_bad_images=0\)"):
        run(
            tiny["qwen2_vl"],
            manifest,
            tmp_path / "run2",
            max_steps=2,
            per_device_batch_size=4,
            group_by_length=False,
            max_bad_images=0,
        )


def test_only_image_errors_are_skipped(tiny, split, tmp_path):
    """The skip decision is the error's type: other data errors stop the run, whatever their text."""
    from cgmed.models import Collator

    adapter = get_adapter("qwen2_vl")
    _, processor = adapter.load(tiny["qwen2_vl"])
    collate = SkippingCollate(Collator(adapter, processor, 4096), max_bad=5)
    records = [json.loads(x) for x in (split / "train.jsonl").read_text().splitlines()[:2]]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    batch = collate([records[0], {**records[1], "image": str(broken)}])
    assert batch["_bad_images"] == 1 and batch["input_ids"].shape[0] == 2
    with pytest.raises(DataError, match="field 'image' is missing"):
        collate([records[0], {**records[1], "image": ""}])


def test_errors_before_training(tiny, split, tmp_path, monkeypatch):
    manifest = small_manifest(split, tmp_path / "m.jsonl", 4)
    dist = DistributedConfig()
    with pytest.raises(ConfigError, match=r"model.family.*unknown|model.family"):
        train(
            ModelConfig(path=str(tiny["qwen2_vl"]), family="gpt4v"),
            TrainConfig(**FAST),
            PeftConfig(),
            dist,
            str(manifest),
            tmp_path / "a",
        )
    with pytest.raises(ConfigError, match=r"peft.target_modules.*match no linear module"):
        train(
            ModelConfig(path=str(tiny["qwen2_vl"])),
            TrainConfig(**FAST),
            PeftConfig(method="lora", target_modules=["no_such_proj"]),
            dist,
            str(manifest),
            tmp_path / "b",
        )
    with pytest.raises(ConfigError, match=r"train.resume.*holds no complete checkpoint"):
        train(
            ModelConfig(path=str(tiny["qwen2_vl"])),
            TrainConfig(**FAST, resume=str(tmp_path)),
            PeftConfig(),
            dist,
            str(manifest),
            tmp_path / "c",
        )
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"peft.method.*qlora needs bitsandbytes"):
        train(
            ModelConfig(path=str(tiny["qwen2_vl"])),
            TrainConfig(**FAST),
            PeftConfig(method="qlora"),
            dist,
            str(manifest),
            tmp_path / "d",
        )
    with pytest.raises(ConfigError, match=r"data.train_manifest.*does not exist"):
        train(
            ModelConfig(path=str(tiny["qwen2_vl"])),
            TrainConfig(**FAST),
            PeftConfig(),
            dist,
            str(tmp_path / "none.jsonl"),
            tmp_path / "e",
        )
    assert not (tmp_path / "a" / "metrics.jsonl").exists()


def test_config_validation():
    with pytest.raises(ConfigError, match="train.per_device_batch_size"):
        TrainConfig(per_device_batch_size=0)
    with pytest.raises(ConfigError, match="nothing would train"):
        TrainConfig(freeze_vision=True, freeze_projector=True, freeze_language=True)
    with pytest.raises(ConfigError, match="LoRA has no target"):
        PeftConfig(method="lora", target_language=False)
    assert dataclasses.asdict(TrainConfig())["resume"] is None


def test_cli_public_keys(tiny, split, tmp_path):
    manifest = small_manifest(split, tmp_path / "m.jsonl", 12)
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "cgmed.train",
        f"model.path={tiny['qwen2_vl']}",
        f"data.train_manifest={manifest}",
        "train.max_steps=4",
        "train.save_every=2",
        "train.seed=5",
        "train.per_device_batch_size=2",
        "train.progress_bar=false",
        "train.stop_after_steps=2",
        f"hydra.run.dir={out}",
    ]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "stopped early" in res.stdout
    res = subprocess.run(
        [*args[:-2], "train.resume=auto", f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all("loss" in r for r in rows)
    assert json.loads((out / "resolved_config.json").read_text())["train"]["seed"] == 5
    assert (out / "final" / "model.safetensors").is_file()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "cgmed.train",
            "model.family=gpt4v",
            f"model.path={tiny['qwen2_vl']}",
            f"data.train_manifest={manifest}",
            f"hydra.run.dir={tmp_path / 'x'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "model.family" in bad.stderr


def test_cgmed_model_init_cli(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "cgmed.cli.model",
            "init",
            "family=llava",
            f"out={tmp_path / 'm'}",
            "tiny.text_layers=1",
            f"hydra.run.dir={tmp_path / 'h'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_type"] == "llava" and cfg["text_config"]["num_hidden_layers"] == 1


def test_evaluation_during_training_gives_a_learning_curve(tiny, split, tmp_path):
    manifest = small_manifest(split, tmp_path / "m.jsonl", 8)
    tcfg = TrainConfig(**{**FAST, "max_steps": 4, "per_device_batch_size": 4, "eval_every": 2})
    curves = {"target": str(split / "test.jsonl"), "seen": str(split / "seen_test.jsonl")}
    train(
        ModelConfig(path=str(tiny["qwen2_vl"])),
        tcfg,
        PeftConfig(),
        DistributedConfig(),
        str(manifest),
        tmp_path / "run",
        eval_manifests=curves,
    )
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    points = {r["step"]: r for r in rows if "eval/target/accuracy" in r}
    assert sorted(points) == [2, 4]
    for step, row in points.items():
        preds = (tmp_path / "run" / "curve" / f"step-{step:06d}" / "seen" / "predictions.jsonl").read_text()
        correct = [json.loads(x)["correct"] for x in preds.splitlines()]
        assert row["eval/seen/accuracy"] == pytest.approx(sum(correct) / len(correct))
