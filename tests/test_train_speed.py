"""The trainer's speed settings: AdamW implementation, DataLoader workers, attention kernels, Liger."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from cgmed.data.build import build_from_config
from cgmed.data.source import DataConfig
from cgmed.data.split import OptionsConfig, SplitConfig
from cgmed.data.synth import SynthConfig
from cgmed.errors import ConfigError
from cgmed.models import FAMILIES, get_adapter, init_tiny
from cgmed.models.collate import Collator
from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig
from cgmed.train.loop import train
from cgmed.train.run import loader_settings
from cgmed.train.setup import resolve_num_workers, resolve_optimizer_impl

FAST = dict(progress_bar=False, tensorboard=False, log_every=1, warmup_ratio=0.0, group_by_length=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_speed")
    return {f: init_tiny(f, root / f, seed=0) for f in FAMILIES}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Eight training records of a small synthetic split (56 px images, the tiny models' size)."""
    root = tmp_path_factory.mktemp("speed_split")
    cfg = SplitConfig(
        targets=[{"modality": "CT", "area": "Lung", "task": "Cancer"}],
        options=OptionsConfig(mode="rebuild", order="sorted"),
    )
    data = DataConfig(root=None, cache_dir=str(root / "cache"))
    build_from_config(data, cfg, SynthConfig(images_per_subset=8, image_size=56), root / "split")
    lines = (root / "split" / "train.jsonl").read_text().splitlines()[:8]
    out = root / "m.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def run(model_path: Path, manifest: Path, out: Path, model_kw=None, **train_kw) -> list[dict]:
    train(
        ModelConfig(path=str(model_path), **(model_kw or {})),
        TrainConfig(**{**FAST, **train_kw}),
        PeftConfig(),
        DistributedConfig(),
        str(manifest),
        out,
        resolved_config={"train": {}},
    )
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ optimizer


def test_auto_optimizer_is_foreach_on_cpu_and_fused_on_cuda_with_fp32_or_bf16():
    fp32, bf16, fp16 = (torch.zeros(2, dtype=d) for d in (torch.float32, torch.bfloat16, torch.float16))
    assert resolve_optimizer_impl("auto", "cpu", [fp32]) == "foreach"
    assert resolve_optimizer_impl("auto", "cuda", [fp32, bf16]) == "fused"
    assert resolve_optimizer_impl("auto", "cuda", [fp32, fp16]) == "foreach"
    assert resolve_optimizer_impl("for_loop", "cuda", [fp32]) == "for_loop"
    with pytest.raises(ConfigError, match="train.optimizer_impl"):
        TrainConfig(optimizer_impl="adafactor")


def test_foreach_and_for_loop_adamw_give_the_same_losses(tiny, manifest, tmp_path):
    kw = dict(max_steps=4, per_device_batch_size=2, lr=1e-3, scheduler="constant", seed=3)
    auto = run(tiny["qwen2_vl"], manifest, tmp_path / "auto", **kw)
    loop = run(tiny["qwen2_vl"], manifest, tmp_path / "loop", optimizer_impl="for_loop", **kw)
    assert auto[0]["optimizer_impl"] == "foreach" and loop[0]["optimizer_impl"] == "for_loop"
    assert [r["loss"] for r in auto] == pytest.approx([r["loss"] for r in loop], rel=1e-5, abs=1e-6)
    # the loss moved: the optimizer did step
    assert auto[-1]["loss"] != auto[0]["loss"]


# ------------------------------------------------------------------ DataLoader


def test_num_workers_resolution():
    assert resolve_num_workers(None, "cpu", 16) == 0
    assert resolve_num_workers(None, "cuda", 16) == 4
    assert resolve_num_workers(None, "cuda", 2) == 2
    assert resolve_num_workers(None, "cuda", None) == 1
    assert resolve_num_workers(3, "cpu", 16) == 3  # an explicit value is kept
    assert resolve_num_workers(0, "cuda", 16) == 0
    assert loader_settings(TrainConfig(), "cpu") == {
        "num_workers": 0,
        "pin_memory": False,
        "persistent_workers": False,
    }
    assert loader_settings(TrainConfig(num_workers=2), "cpu")["persistent_workers"] is True
    cuda = loader_settings(TrainConfig(), "cuda")
    assert cuda["pin_memory"] is True and cuda["persistent_workers"] is (cuda["num_workers"] > 0)
    with pytest.raises(ConfigError, match="train.num_workers"):
        TrainConfig(num_workers=-1)


def test_a_run_with_workers_equals_one_without(tiny, manifest, tmp_path):
    kw = dict(max_steps=2, per_device_batch_size=2, lr=1e-3, seed=4)
    inline = run(tiny["qwen2_vl"], manifest, tmp_path / "inline", **kw)
    workers = run(tiny["qwen2_vl"], manifest, tmp_path / "workers", num_workers=1, **kw)
    assert inline[0]["num_workers"] == 0 and workers[0]["num_workers"] == 1
    assert workers[0]["persistent_workers"] is True
    assert [r["loss"] for r in workers] == [r["loss"] for r in inline]


# ------------------------------------------------------------------ attention and kernels


@pytest.mark.parametrize("family", FAMILIES)
def test_sdpa_and_eager_give_the_same_logits(family, tiny, manifest):
    adapter = get_adapter(family)
    record = json.loads(manifest.read_text().splitlines()[0])
    logits = {}
    for attention in ("sdpa", "eager"):
        model, processor = adapter.load(tiny[family], attn_implementation=attention)
        assert model.config._attn_implementation == attention
        batch = Collator(adapter, processor, 4096)([record])
        batch.pop("labels")
        with torch.no_grad():
            logits[attention] = model.eval()(**batch).logits
    torch.testing.assert_close(logits["sdpa"], logits["eager"], rtol=1e-4, atol=1e-4)


def test_the_run_records_its_kernels(tiny, manifest, tmp_path):
    run(tiny["qwen2_vl"], manifest, tmp_path / "run", max_steps=1, per_device_batch_size=2)
    backend = json.loads((tmp_path / "run" / "resolved_config.json").read_text())["backend"]
    assert backend == {
        "attn_implementation": "sdpa",
        "use_liger": False,
        "dtype": "float32",
        "precision": "fp32",
        "gradient_checkpointing": False,
        "optimizer_impl": "foreach",
        "num_workers": 0,
        "pin_memory": False,
        "persistent_workers": False,
    }


def test_unknown_attention_is_refused():
    with pytest.raises(ConfigError, match="model.attn_implementation"):
        ModelConfig(attn_implementation="flash_attention_3")


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed")
def test_flash_attention_without_its_package_is_refused(tiny):
    with pytest.raises(ConfigError, match="flash-attn"):
        get_adapter("qwen2_vl").load(tiny["qwen2_vl"], attn_implementation="flash_attention_2")


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="liger-kernel is installed")
def test_liger_without_its_package_is_refused(tiny, manifest, tmp_path):
    with pytest.raises(ConfigError, match="model.use_liger.*liger-kernel"):
        run(tiny["qwen2_vl"], manifest, tmp_path / "run", model_kw={"use_liger": True}, max_steps=1)
