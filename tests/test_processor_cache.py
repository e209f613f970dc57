"""The processed-pixel cache (cgmed.models.processor_cache): bit-identical batches, losses and
predictions with and without it, hit and miss counts, invalidation, memory-mapped entries whose
reading does not grow resident memory, atomic and concurrent writes."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cgmed.data.build import build_from_config
from cgmed.data.imaging import ImageConfig
from cgmed.data.source import DataConfig
from cgmed.data.split import OptionsConfig, SplitConfig
from cgmed.data.synth import SynthConfig
from cgmed.errors import ConfigError
from cgmed.eval.run import evaluate
from cgmed.eval.score import EvalConfig
from cgmed.models import FAMILIES, Collator, get_adapter, init_tiny, load_image
from cgmed.models.processor_cache import (
    ProcessorCache,
    cache_dir,
    recorded_dir,
    with_run_cache,
)
from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig
from cgmed.train.loop import train

OFF = ImageConfig(processor_cache=None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_cache")
    return {family: init_tiny(family, root / family, seed=0) for family in FAMILIES}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Four records: images of different sizes and colour modes, two of them the same size."""
    root = tmp_path_factory.mktemp("cache_images")
    rng = random.Random(0)
    out = []
    for i, (size, mode) in enumerate(
        [((64, 64), "RGB"), ((120, 80), "L"), ((30, 200), "RGB"), ((64, 64), "RGB")]
    ):
        pixels = bytes(rng.randrange(256) for _ in range(len(mode) * size[0] * size[1]))
        path = root / f"img{i}.png"
        Image.frombytes(mode, size, pixels).save(path)
        question = f"What does this image show{' here' * i}?\nA: Tumor\nB: Normal"
        out.append({"id": f"r{i}", "image": str(path), "question": question, "answer": "AB"[i % 2]})
    return out


def cached(tmp_path: Path) -> ImageConfig:
    return ImageConfig(processor_cache=str(tmp_path / "cache"))


def assert_same_batch(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert torch.equal(got[key], want[key]), key


# ------------------------------------------------------------------ identical batches, counts


@pytest.mark.parametrize("family", FAMILIES)
def test_batches_are_identical_with_and_without_the_cache(family, tiny, records, tmp_path):
    adapter = get_adapter(family)
    processor = adapter.load(tiny[family])[1]
    want = Collator(adapter, processor, 4096, image=OFF)(records)
    collator = Collator(adapter, processor, 4096, image=cached(tmp_path))
    assert_same_batch(collator(records), want)  # every image a miss, processed and stored
    assert (collator.cache.hits, collator.cache.misses, collator.cache.writes) == (0, 4, 4)
    assert_same_batch(collator(records), want)  # every image a hit, none decoded
    assert (collator.cache.hits, collator.cache.misses, collator.cache.writes) == (4, 4, 4)
    # a batch of other rows and order, from a fresh process's view (a new collator, same folder)
    again = Collator(adapter, processor, 4096, image=cached(tmp_path))
    assert_same_batch(
        again(records[::-1][:3]), Collator(adapter, processor, 4096, image=OFF)(records[::-1][:3])
    )
    assert (again.cache.hits, again.cache.misses) == (3, 0)
    assert type(processor.image_processor).__name__ != "_CachingImageProcessor"  # the proxy is gone


def test_a_hit_is_not_decoded(tiny, records, tmp_path, monkeypatch):
    adapter = get_adapter("llava")
    collator = Collator(adapter, adapter.load(tiny["llava"])[1], 4096, image=cached(tmp_path))
    collator(records)
    import cgmed.models.processor_cache as module

    def refuse(*args, **kwargs):
        raise AssertionError("a cached image was decoded")

    monkeypatch.setattr(module, "load_image", refuse)
    collator(records)
    assert collator.cache.hits == len(records)


@pytest.mark.parametrize("family", ["qwen2_vl", "mllama"])
def test_prompts_with_several_images_are_identical(family, tiny, records, tmp_path):
    """Few-shot prompts: an example's image before the question's, and rows with 2 and 1 images."""
    adapter = get_adapter(family)
    processor = adapter.load(tiny[family])[1]
    texts = [
        adapter.render(processor, records[0]["question"], shots=[(records[1]["question"], "B")]),
        adapter.render(processor, records[2]["question"]),
    ]
    paths = [[records[1]["image"], records[0]["image"]], [records[2]["image"]]]
    kwargs = dict(text=texts, padding=True, return_tensors="pt")
    want = processor(images=[[load_image(p) for p in row] for row in paths], **kwargs)
    collator = Collator(adapter, processor, 4096, image=cached(tmp_path))
    for _ in range(2):  # misses, then hits
        got = collator.run_processor(
            images=[[collator.load_image(p) for p in row] for row in paths], **kwargs
        )
        assert_same_batch(dict(got), dict(want))
    assert (collator.cache.hits, collator.cache.misses) == (3, 3)


def test_a_call_with_other_image_settings_bypasses_the_cache(tiny, records, tmp_path):
    adapter = get_adapter("llava")
    processor = adapter.load(tiny["llava"])[1]
    collator = Collator(adapter, processor, 4096, image=cached(tmp_path))
    collator(records)  # filled: the images below are placeholders
    texts = [adapter.render(processor, r["question"]) for r in records]
    kwargs = dict(text=texts, padding=True, return_tensors="pt", do_normalize=False)
    got = collator.run_processor(images=[[collator.load_image(r["image"])] for r in records], **kwargs)
    want = processor(images=[[load_image(r["image"])] for r in records], **kwargs)
    assert collator.cache.hits == len(records)
    assert_same_batch(dict(got), dict(want))


# ------------------------------------------------------------------ invalidation


def test_changed_max_pixels_is_a_new_key(tiny, records, tmp_path):
    adapter = get_adapter("qwen2_vl")
    small = adapter.load(tiny["qwen2_vl"], max_pixels=56 * 56)[1]
    large = adapter.load(tiny["qwen2_vl"], max_pixels=112 * 112)[1]
    first = Collator(adapter, small, 4096, image=cached(tmp_path))
    first(records)
    second = Collator(adapter, large, 4096, image=cached(tmp_path))
    batch = second(records)
    assert (second.cache.hits, second.cache.misses) == (0, 4)
    assert_same_batch(batch, Collator(adapter, large, 4096, image=OFF)(records))
    assert batch["pixel_values"].shape != first(records)["pixel_values"].shape  # the setting mattered
    path = records[1]["image"]
    assert first.cache.key(path) != second.cache.key(path)


def test_a_changed_image_file_is_a_miss(tiny, records, tmp_path):
    adapter = get_adapter("llava")
    processor = adapter.load(tiny["llava"])[1]
    record = dict(records[0], image=str(tmp_path / "scan.png"))
    Image.new("RGB", (64, 64), (10, 20, 30)).save(record["image"])
    collator = Collator(adapter, processor, 4096, image=cached(tmp_path))
    collator([record])
    stat = Path(record["image"]).stat()
    Image.new("RGB", (64, 64), (200, 20, 30)).save(record["image"])  # same size on disk, other bytes
    assert Path(record["image"]).stat().st_size == stat.st_size
    os.utime(record["image"], ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    batch = collator([record])
    assert (collator.cache.hits, collator.cache.misses) == (0, 2)
    assert_same_batch(batch, Collator(adapter, processor, 4096, image=OFF)([record]))


def test_the_window_of_the_modality_is_part_of_the_key(tiny, records, tmp_path):
    processor = get_adapter("llava").load(tiny["llava"])[1]
    image = dataclasses.replace(cached(tmp_path), windows={"CT": "ct_lung"})
    cache = ProcessorCache(tmp_path / "cache", "llava", processor, image)
    path = records[0]["image"]
    assert cache.key(path, "CT") != cache.key(path, "MRI")
    assert cache.key(path, "MRI") == cache.key(path, "X-ray") == cache.key(path)  # no window: shared
    other_family = ProcessorCache(tmp_path / "cache", "mllama", processor, image)
    assert other_family.key(path) != cache.key(path)


# ------------------------------------------------------------------ memory


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def test_entries_are_memory_mapped_and_reading_does_not_grow_memory(tiny, tmp_path):
    processor = get_adapter("qwen2_vl").load(tiny["qwen2_vl"])[1]
    cache = ProcessorCache(tmp_path / "cache", "qwen2_vl", processor)
    rows = (1 << 20) // (1176 * 4)  # ~1 MiB of pixel_values per entry
    keys = [f"{i:040x}" for i in range(64)]
    for i, key in enumerate(keys):
        pixels = np.full((rows, 1176), i, dtype=np.float32)
        cache.write(key, {"pixel_values": pixels, "image_grid_thw": np.array([1, rows, 1])})

    def read_all(some: list[str]) -> int:
        total = 0
        for key in some:
            arrays = cache.read(key)
            assert isinstance(arrays["pixel_values"], np.memmap)
            total += int(torch.from_numpy(np.array(arrays["pixel_values"]))[0, 0])  # a batch's copy
        gc.collect()
        return total

    read_all(keys[:16])
    after_n = _rss()
    assert read_all(keys) == sum(range(64))
    grown = _rss() - after_n
    assert grown < 16 << 20, f"resident memory grew by {grown >> 20} MiB reading 48 more 1 MiB entries"
    # nothing the cache holds is an array: entries live on disk only
    assert not _holds_arrays(vars(cache)), vars(cache)


def _holds_arrays(value, depth: int = 0) -> bool:
    if isinstance(value, np.ndarray):
        return True
    if depth > 3:
        return False
    if isinstance(value, dict):
        return any(_holds_arrays(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_arrays(v, depth + 1) for v in value)
    return hasattr(value, "__dict__") and _holds_arrays(vars(value), depth + 1)


# ------------------------------------------------------------------ atomic and concurrent writes


def test_a_killed_writer_leaves_no_entry(tiny, tmp_path, monkeypatch):
    processor = get_adapter("llava").load(tiny["llava"])[1]
    cache = ProcessorCache(tmp_path / "cache", "llava", processor)
    arrays = {"pixel_values": np.ones((3, 4, 4), dtype=np.float32)}

    def killed(fh, array, allow_pickle):
        fh.write(b"\x93NUMPY half")
        raise KeyboardInterrupt  # what a kill looks like from inside the process

    monkeypatch.setattr(np, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.write("ab" * 20, arrays)
    monkeypatch.undo()
    assert cache.read("ab" * 20) is None
    assert list((tmp_path / "cache").rglob("*")) == [tmp_path / "cache" / "ab"]  # no half file
    # killed between the two files: the .npy without its .json is no entry either
    cache.write("ab" * 20, arrays)
    cache.entry_path("ab" * 20).with_suffix(".json").unlink()
    assert cache.read("ab" * 20) is None


WRITER = textwrap.dedent(
    """
    import sys, time, types
    from pathlib import Path
    import numpy as np
    from cgmed.models.processor_cache import ProcessorCache

    root, source, go = sys.argv[1:4]
    processor = types.SimpleNamespace(
        image_processor=types.SimpleNamespace(to_dict=lambda: {"size": 56}),
        tokenizer=types.SimpleNamespace(init_kwargs={}),
    )
    cache = ProcessorCache(root, "qwen2_vl", processor)
    arrays = {"pixel_values": np.load(source), "image_grid_thw": np.array([1, 16, 16])}
    while not Path(go).exists():
        time.sleep(0.005)
    for _ in range(60):
        cache.write("cd" * 20, arrays)
        got = cache.read("cd" * 20)
        assert np.array_equal(got["pixel_values"], arrays["pixel_values"])
        assert got["image_grid_thw"].tolist() == [1, 16, 16]
    print(cache.writes)
    """
)


def test_two_processes_filling_the_same_key_leave_a_valid_entry(tmp_path):
    source = tmp_path / "pixels.npy"
    np.save(source, np.random.default_rng(0).standard_normal((256, 1176)).astype(np.float32))
    go = tmp_path / "go"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path / "cache"), str(source), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    go.touch()
    for proc in writers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert out.split() == ["60"]  # every write of both went through
    files = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert files == ["cd" * 20 + ".json", "cd" * 20 + ".npy"]  # no temporary file left
    entry = np.load(tmp_path / "cache" / "cd" / ("cd" * 20 + ".npy"))
    assert np.array_equal(entry, np.load(source))


# ------------------------------------------------------------------ the switch and the records


def test_the_switch(tmp_path):
    assert cache_dir(ImageConfig()) is None  # auto: off outside cgmed-cg
    assert cache_dir(OFF) is None and recorded_dir(OFF) is None
    assert cache_dir(cached(tmp_path)) == tmp_path / "cache"
    in_run = with_run_cache(ImageConfig(), tmp_path / "run")
    assert in_run.processor_cache == str(tmp_path / "run" / "processor_cache")
    assert with_run_cache(OFF, tmp_path / "run") == OFF  # null stays off in cgmed-cg
    assert "processor_cache" not in cached(tmp_path).describe()  # not a conversion setting
    for bad in ("", 3):
        with pytest.raises(ConfigError, match="image.processor_cache"):
            ImageConfig(processor_cache=bad)


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache_split")
    cfg = SplitConfig(
        targets=[{"modality": "CT", "area": "Lung", "task": "Cancer"}],
        options=OptionsConfig(mode="rebuild", order="sorted"),
    )
    data = DataConfig(root=None, cache_dir=str(root / "world"))
    build_from_config(data, cfg, SynthConfig(images_per_subset=8, image_size=56), root / "split")
    lines = (root / "split" / "train.jsonl").read_text().splitlines()[:8]
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    tests = (root / "split" / "test.jsonl").read_text().splitlines()[:6]
    (root / "test.jsonl").write_text("\n".join(tests) + "\n")
    return root


def test_training_and_evaluation_are_identical_with_the_cache(tiny, split, tmp_path):
    fast = dict(progress_bar=False, tensorboard=False, log_every=1, warmup_ratio=0.0, group_by_length=False)
    cfg = TrainConfig(max_steps=4, per_device_batch_size=2, lr=1e-3, seed=1, **fast)
    model = ModelConfig(path=str(tiny["qwen2_vl"]))
    runs = {}
    for name, image in (("off", OFF), ("fill", cached(tmp_path)), ("hit", cached(tmp_path))):
        out = tmp_path / name
        train(model, cfg, PeftConfig(), DistributedConfig(), str(split / "train.jsonl"), out, image=image)
        runs[name] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(runs["off"]) == 4  # one epoch: every image once
    assert runs["fill"] == runs["off"] and runs["hit"] == runs["off"]
    trained = {json.loads(line)["image"] for line in (split / "train.jsonl").read_text().splitlines()}
    assert len(list((tmp_path / "cache").rglob("*.json"))) == len(trained)

    predictions = {}
    for name, image in (("off", OFF), ("on", cached(tmp_path))):
        out = tmp_path / f"eval-{name}"
        doc = evaluate(
            str(tmp_path / "off" / "final"),
            EvalConfig(batch_size=4),
            str(split / "test.jsonl"),
            out,
            image=image,
        )
        assert doc["processor_cache"] == recorded_dir(image)
        predictions[name] = (out / "predictions.jsonl").read_text()
    assert predictions["on"] == predictions["off"]
