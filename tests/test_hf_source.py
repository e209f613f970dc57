"""``data=hf``: Hugging Face datasets (save_to_disk, Parquet, image folders, streaming) as MAT subsets:
catalog, build with the leakage audit, bad input, training, evaluation and the CG protocol."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before datasets is imported: tests read local data only

import datasets  # noqa: E402
import pytest  # noqa: E402
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from cgmed.config import build_config  # noqa: E402
from cgmed.data.build import build_from_config  # noqa: E402
from cgmed.data.catalog import build_catalog  # noqa: E402
from cgmed.data.source import BadSamples, DataConfig, MedMatSource, in_hashed_test_split, open_source  # noqa: E402
from cgmed.data.split import OptionsConfig, SplitConfig  # noqa: E402
from cgmed.data.synth import SynthConfig, write_release  # noqa: E402
from cgmed.errors import ConfigError, DataError, LeakageError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FINDINGS = ["Normal", "Pneumonia", "Effusion"]
XRAY_CHEST = {"modality": "X-ray", "area": "Chest", "task": "Diseases"}


def png_bytes(seed: int, size: int = 56) -> bytes:
    """A small PNG whose bytes are unique per seed."""
    rng = random.Random(seed)
    image = PILImage.new("RGB", (size, size))
    image.putdata([(rng.randrange(256), rng.randrange(256), seed % 256) for _ in range(size * size)])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def classlabel_dataset(seed: int = 0, per_label: tuple[int, int] = (6, 3)) -> DatasetDict:
    """train / test splits with an Image column (PNG bytes) and a ClassLabel of FINDINGS."""
    features = Features({"image": Image(), "label": ClassLabel(names=FINDINGS)})
    splits = {}
    for split, n in zip(("train", "test"), per_label, strict=True):
        rows = [
            {"image": {"bytes": png_bytes(seed + 1000 * (split == "test") + i), "path": None}, "label": i % 3}
            for i in range(n * len(FINDINGS))
        ]
        splits[split] = Dataset.from_list(rows, features=features)
    return DatasetDict(splits)


def entry(dataset_id: str, path: Path | str, mat: dict | None = XRAY_CHEST, **kw) -> dict:
    return {"id": dataset_id, "path": str(path), **({"mat": mat} if mat else {}), **kw}


def hf_data(tmp: Path, *entries: dict, **kw) -> DataConfig:
    node = {"format": "hf", "cache_dir": str(tmp / "cache"), "hf": {"datasets": list(entries)}, **kw}
    return build_config(DataConfig, node, "data")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The synthetic MAT world (12 subsets, 56 px) in the Med-MAT layout."""
    root = tmp_path_factory.mktemp("world")
    synth = SynthConfig(
        modalities=["CT", "MRI", "X-ray"],
        areas=["Lung", "Brain"],
        images_per_subset=40,
        image_size=56,
        test_fraction=0.2,
    )
    write_release(synth, root)
    return root


@pytest.fixture(scope="module")
def world_parquet(world, tmp_path_factory) -> Path:
    """The world as one Parquet dataset: image bytes, a string label and the MAT triplet in columns;
    its train-*/test-* file names are its official splits."""
    out = tmp_path_factory.mktemp("world_parquet")
    source = MedMatSource(DataConfig(), world)
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    for sid, info in source.subsets().items():
        index = source.index(sid, BadSamples())
        for _, sample in source.load(index, list(range(len(index)))):
            rows[sample.source_split].append(
                {
                    "image": {"bytes": Path(sample.image).read_bytes(), "path": None},
                    "finding": sample.label,
                    "modality": info.modality,
                    "area": info.area,
                    "task": info.task,
                }
            )
    features = Features(
        {"image": Image(), **{name: Value("string") for name in ("finding", "modality", "area", "task")}}
    )
    for split, split_rows in rows.items():
        Dataset.from_list(split_rows, features=features).to_parquet(out / f"{split}-00000-of-00001.parquet")
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """The ClassLabel dataset saved with save_to_disk and written as Parquet files beside it."""
    root = tmp_path_factory.mktemp("saved")
    dataset = classlabel_dataset()
    dataset.save_to_disk(root / "disk")
    (root / "parquet").mkdir()
    for split, part in dataset.items():
        part.to_parquet(root / "parquet" / f"{split}-00000-of-00001.parquet")
    return root


@pytest.fixture(scope="module")
def folder(world, tmp_path_factory) -> Path:
    """A class-per-folder image folder (no split folders) from the world's CT Lung Cancer images."""
    root = tmp_path_factory.mktemp("folder")
    source = MedMatSource(DataConfig(), world)
    (sid,) = [s for s, info in source.subsets().items() if info.triplet == ("CT", "Lung", "Cancer")]
    index = source.index(sid, BadSamples())
    for n, (_, sample) in enumerate(source.load(index, list(range(len(index))))):
        # no split name in a file name: datasets would read it as the file's split
        target = root / "scans" / sample.label / f"{n:03d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(sample.image).read_bytes())
    return root / "scans"


@pytest.fixture(scope="module")
def multi_label(tmp_path_factory) -> Path:
    """A multi-label dataset: List(ClassLabel) labels, some empty (no finding)."""
    root = tmp_path_factory.mktemp("multi")
    features = Features(
        {"image": Image(), "findings": List(ClassLabel(names=["Nodule", "Effusion", "Mass"]))}
    )
    sets = [[], [0], [1, 0], [2], [1], [0, 2]]
    for split, offset in (("train", 0), ("test", 500)):
        rows = [
            {"image": {"bytes": png_bytes(offset + i + 7000), "path": None}, "findings": sets[i % 6]}
            for i in range(18 if split == "train" else 12)
        ]
        Dataset.from_list(rows, features=features).save_to_disk(root / "multi" / split)
    DatasetDict({s: datasets.load_from_disk(root / "multi" / s) for s in ("train", "test")}).save_to_disk(
        root / "dict"
    )
    return root / "dict"


def index_of(data: DataConfig, subset: str, root: Path):
    source = open_source(data, root)
    bad = BadSamples()
    return source, source.index(subset, bad), bad


# -- reading ---------------------------------------------------------------------------------


def test_save_to_disk_and_parquet_read_alike(saved, tmp_path):
    xray_lung = {**XRAY_CHEST, "area": "Lung"}  # another triplet: two subsets of one catalog
    data = hf_data(tmp_path, entry("disk", saved / "disk"), entry("files", saved / "parquet", xray_lung))
    catalog = build_catalog(open_source(data, tmp_path)).to_json()
    by_id = {e["id"]: e for e in catalog["subsets"]}
    for sid in ("disk", "files"):
        assert by_id[sid]["test_file"] is True  # the official test split is used
        assert by_id[sid]["labels"] == {
            name: {"train": 6, "test": 3} for name in sorted(FINDINGS, key=str.lower)
        }
    assert (by_id["disk"]["modality"], by_id["disk"]["area"], by_id["disk"]["task"]) == (
        "X-ray",
        "Chest",
        "Diseases",
    )
    _, disk, _ = index_of(data, "disk", tmp_path)
    _, files, _ = index_of(data, "files", tmp_path)
    assert [disk.labels[i] for i in disk.label_id] == [files.labels[i] for i in files.label_id]
    assert list(disk.is_test) == list(files.is_test) and list(disk.offset) == list(files.offset)


def test_images_are_read_lazily_into_a_content_addressed_cache(saved, tmp_path):
    source, index, _ = index_of(hf_data(tmp_path, entry("disk", saved / "disk")), "disk", tmp_path)
    cache = tmp_path / "cache" / "hf-images"
    assert not cache.exists()  # indexing reads no image
    picked = index.positions("test")[:2]
    samples = dict(source.load(index, picked))
    assert len(list(cache.rglob("*.png"))) == 2  # only the picked rows' images
    expected = datasets.load_from_disk(saved / "disk")["test"].cast_column("image", Image(decode=False))
    for pos, sample in samples.items():
        image = Path(sample.image)
        data = expected[index.offset[pos]]["image"]["bytes"]
        assert image.read_bytes() == data and image.parent.parent == cache
        assert image.name == hashlib.blake2b(data, digest_size=16).hexdigest() + ".png"
        assert sample.id == f"disk-test-{index.offset[pos]}" and sample.source_split == "test"
        assert sample.label == FINDINGS[expected[index.offset[pos]]["label"]]
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*.png")}
    dict(source.load(index, picked))
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.png")} == before  # written once


def test_image_folder_class_names_and_hash_split(folder, tmp_path):
    data = hf_data(tmp_path, entry("scans", folder, {"modality": "CT", "area": "Lung", "task": "Cancer"}))
    source, index, bad = index_of(data, "scans", tmp_path)
    assert bad.total == 0 and not index.has_test_file
    assert sorted(index.labels) == sorted(p.name for p in folder.iterdir())
    assert len(index) == 40 and 1 <= len(index.positions("test")) <= 10  # ~10% by a stable hash
    files = datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(tmp_path / "c"))["train"]
    paths = files.cast_column("image", Image(decode=False))["image"]
    for pos in range(len(index)):
        relative = Path(paths[index.offset[pos]]["path"]).relative_to(folder).as_posix()
        assert bool(index.is_test[pos]) == in_hashed_test_split(0, "scans", relative, 0.1)


def test_multi_label_sets_are_sorted_and_comma_joined(multi_label, tmp_path):
    data = hf_data(tmp_path, entry("multi", multi_label, label_column="findings"))
    _, index, _ = index_of(data, "multi", tmp_path)
    assert index.label_counts("train") == {
        "Normal": 3,
        "Nodule": 3,
        "Effusion, Nodule": 3,
        "Mass": 3,
        "Effusion": 3,
        "Mass, Nodule": 3,
    }
    built = build_from_config(data, SplitConfig(targets=["multi"], train="none"), None, tmp_path / "split")
    lines = [json.loads(x) for x in (tmp_path / "split" / "test.jsonl").read_text().splitlines()]
    assert built["sizes"]["test"] == 12 and all(
        r["options"][ord(r["answer"]) - 65] == r["label"] for r in lines
    )


def test_mat_columns_make_one_subset_per_triplet(world_parquet, tmp_path):
    columns = {"modality": "modality", "area": "area", "task": "task"}
    data = hf_data(tmp_path, entry("world", world_parquet, None, mat_columns=columns, label_column="finding"))
    subsets = open_source(data, tmp_path).subsets()
    assert len(subsets) == 12 and "world_CT_Lung_Cancer" in subsets
    assert subsets["world_MRI_Brain_Diseases"].triplet == ("MRI", "Brain", "Diseases")
    # a fixed element next to columns: the area is the same for every row
    mixed = hf_data(
        tmp_path,
        entry(
            "world",
            world_parquet,
            {"area": "Chest"},
            mat_columns={"modality": "modality", "task": "task"},
            label_column="finding",
        ),
    )
    assert {info.area for info in open_source(mixed, tmp_path).subsets().values()} == {"Chest"}


@pytest.mark.parametrize("stored", ["parquet", "disk"])
def test_streaming_indexes_and_loads_as_the_memory_mapped_dataset(saved, tmp_path, stored):
    def read(streaming: bool):
        data = hf_data(tmp_path, entry("files", saved / stored, streaming=streaming))
        source, index, _ = index_of(data, "files", tmp_path)
        picked = [index.positions("train")[5], index.positions("test")[1], index.positions("train")[0]]
        return index, [(pos, s.image, s.label) for pos, s in source.load(index, picked)]

    (memory_index, memory), (stream_index, streamed) = read(False), read(True)
    assert list(stream_index.offset) == list(memory_index.offset)
    assert list(stream_index.is_test) == list(memory_index.is_test)
    assert streamed == memory


def test_own_question_is_kept(saved, tmp_path):
    data = hf_data(tmp_path, entry("disk", saved / "disk", question=["Which finding is on this chest film?"]))
    build_from_config(data, SplitConfig(targets=["disk"], train="none"), None, tmp_path / "split")
    first = json.loads((tmp_path / "split" / "test.jsonl").read_text().splitlines()[0])
    assert first["question"].startswith("Which finding is on this chest film?\nA: ")


# -- builds and the leakage audit ---------------------------------------------------------------


def mixed_data(tmp: Path, saved: Path, folder: Path, multi_label: Path, **kw) -> DataConfig:
    return hf_data(
        tmp,
        entry("chest", saved / "disk", {"modality": "X-ray", "area": "Chest", "task": "Diseases"}),
        entry("scans", folder, {"modality": "X-ray", "area": "Lung", "task": "Cancer"}),
        entry(
            "multi",
            multi_label,
            {"modality": "CT", "area": "Chest", "task": "Diseases"},
            label_column="findings",
        ),
        test_fraction=0.25,
        **kw,
    )


def test_build_with_audit_is_reproducible(saved, folder, multi_label, tmp_path):
    data = mixed_data(tmp_path, saved, folder, multi_label)
    split = SplitConfig(targets=["scans"], train="all", cap_per_subset=12)
    meta = build_from_config(data, split, None, tmp_path / "a")
    assert meta["audit"]["passed"] and meta["audit"]["checks"]["image_hashes"] > 0
    assert [t["id"] for t in meta["train_subsets"]] == ["chest", "multi"]
    assert meta["config"]["data"]["hf"]["datasets"][1]["id"] == "scans"
    lines = [json.loads(x) for x in (tmp_path / "a" / "train.jsonl").read_text().splitlines()]
    cache = tmp_path / "cache" / "hf-images"
    assert lines and all(Path(r["image"]).parent.parent == cache for r in lines)
    used = {
        r["image"]
        for name in ("train", "test", "seen_test")
        for r in map(json.loads, (tmp_path / "a" / f"{name}.jsonl").read_text().splitlines())
    }
    assert {str(p) for p in cache.rglob("*.png")} == used  # only the selected images were copied
    again = build_from_config(data, split, None, tmp_path / "b")
    assert again["content_hash"] == meta["content_hash"]


def test_audit_catches_one_image_reachable_through_two_datasets(saved, tmp_path):
    target = classlabel_dataset(seed=0)
    held_out_bytes = target["test"].cast_column("image", Image(decode=False))[4]["image"]["bytes"]
    other = classlabel_dataset(seed=50_000)
    rows = other["train"].cast_column("image", Image(decode=False)).to_list()
    rows[2]["image"] = {"bytes": held_out_bytes, "path": None}
    Dataset.from_list(rows, features=other["train"].features).to_parquet(tmp_path / "other.parquet")
    data = hf_data(
        tmp_path,
        entry("chest", saved / "disk"),
        entry("ct", tmp_path / "other.parquet", {"modality": "CT", "area": "Chest", "task": "Diseases"}),
    )
    with pytest.raises(
        LeakageError, match=r"ct-train-2: image .* has the same bytes as target test sample chest-test-4"
    ):
        build_from_config(data, SplitConfig(targets=["chest"], train=["ct"]), None, tmp_path / "split")


# -- bad input --------------------------------------------------------------------------------


def test_missing_column_names_dataset_key_and_columns(saved, tmp_path):
    data = hf_data(tmp_path, entry("chest", saved / "disk", label_column="diagnosis"))
    with pytest.raises(ConfigError) as err:
        build_catalog(open_source(data, tmp_path))
    text = str(err.value)
    assert "data.hf.datasets[0].label_column" in text and "hf dataset 'chest'" in text
    assert "no column 'diagnosis'" in text and "['image', 'label']" in text


def test_label_outside_the_classlabel_is_a_bad_sample(tmp_path):
    dataset = classlabel_dataset()
    rows = dataset["train"].cast_column("image", Image(decode=False)).to_list()
    rows[4]["label"] = -1  # datasets' "no label"
    DatasetDict(
        train=Dataset.from_list(rows, features=dataset["train"].features.copy()), test=dataset["test"]
    ).save_to_disk(tmp_path / "d")
    data = hf_data(tmp_path, entry("chest", tmp_path / "d"))
    with pytest.raises(DataError) as err:
        build_from_config(data, SplitConfig(targets=["chest"], train="none"), None, tmp_path / "s")
    text = str(err.value)
    assert f"hf dataset 'chest' ({tmp_path / 'd'}), split train row 4" in text
    assert (
        "label -1 of column 'label' is not a class of its ClassLabel (3 names: Normal, Pneumonia, Effusion)"
        in text
    )
    assert "data.hf.datasets[0].label_column" in text and "data.on_bad_sample=skip" in text
    skip = hf_data(tmp_path, entry("chest", tmp_path / "d"), on_bad_sample="skip")
    meta = build_from_config(skip, SplitConfig(targets=["chest"], train="none"), None, tmp_path / "s")
    assert meta["bad_samples"]["by_kind"] == {"label outside the ClassLabel": 1}


def test_unknown_mat_elements(world_parquet, saved, tmp_path):
    with pytest.raises(ConfigError, match=r"data.hf.datasets\[0\].mat.modality': unknown modality 'Xray2'"):
        open_source(
            hf_data(tmp_path, entry("chest", saved / "disk", {**XRAY_CHEST, "modality": "Xray2"})), tmp_path
        )
    rows = (
        Dataset.from_parquet(str(world_parquet / "train-00000-of-00001.parquet"))
        .cast_column("image", Image(decode=False))
        .to_list()[:30]
    )
    rows[3]["modality"] = "PET"
    Dataset.from_list(rows).cast_column("image", Image()).to_parquet(tmp_path / "pet.parquet")
    columns = {"modality": "modality", "area": "area", "task": "task"}
    data = hf_data(
        tmp_path, entry("pet", tmp_path / "pet.parquet", None, mat_columns=columns, label_column="finding")
    )
    source = open_source(data, tmp_path)
    bad = BadSamples()
    for sid in source.subsets():
        source.index(sid, bad)
    assert bad.counts == {"unknown MAT element": 1}
    assert (
        "split train row 3: modality 'PET' in column 'modality' (data.hf.datasets[0].mat_columns.modality)"
        in bad.examples[0]
    )
    assert "data.extra_elements.modality" in bad.examples[0]
    declared = hf_data(
        tmp_path,
        entry("pet", tmp_path / "pet.parquet", None, mat_columns=columns, label_column="finding"),
        extra_elements={"modality": ["PET"]},
    )
    assert any(info.modality == "PET" for info in open_source(declared, tmp_path).subsets().values())


def test_undecodable_image_is_a_counted_bad_sample(tmp_path):
    dataset = classlabel_dataset()
    rows = dataset["test"].cast_column("image", Image(decode=False)).to_list()
    rows[1]["image"] = {"bytes": png_bytes(1)[:60], "path": None}  # cut short
    DatasetDict(
        train=dataset["train"], test=Dataset.from_list(rows, features=dataset["test"].features)
    ).save_to_disk(tmp_path / "d")
    split = SplitConfig(targets=["chest"], train="none")
    with pytest.raises(DataError) as err:
        build_from_config(hf_data(tmp_path, entry("chest", tmp_path / "d")), split, None, tmp_path / "s")
    assert "split test row 1: cannot decode image" in str(err.value) and "unreadable image: 1" in str(
        err.value
    )
    meta = build_from_config(
        hf_data(tmp_path, entry("chest", tmp_path / "d"), on_bad_sample="skip"), split, None, tmp_path / "s"
    )
    assert (
        meta["bad_samples"]["by_kind"] == {"unreadable image": 1} and meta["sizes"]["test"] == 6
    )  # 2 per label


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"splits": {"train": "train", "test": "validation"}},
            r"splits.test': hf dataset 'chest' .* has no split 'validation'; its splits: \['train', 'test'\]",
        ),
        ({"path": "no/such/dir/here"}, r"datasets\[0\].path': .* does not exist"),
        (
            {"image_column": "label"},
            r"image_column': column 'label' of hf dataset 'chest' .* holds ClassLabel",
        ),
        (
            {"mat": {"modality": "CT"}, "mat_columns": {"modality": "m"}},
            r"mat.modality': is given both fixed and as a column",
        ),
    ],
)
def test_config_mistakes_name_their_key(saved, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        data = hf_data(tmp_path, {**entry("chest", saved / "disk"), **override})
        build_catalog(open_source(data, tmp_path))


def test_hub_id_that_cannot_be_opened(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    data = hf_data(tmp_path, entry("hub", "cgmed-tests/no-such-dataset"))
    with pytest.raises(
        DataError,
        match=r"hf dataset 'hub' \(cgmed-tests/no-such-dataset\), data.hf.datasets\[0\]: cannot be opened as hub",
    ):
        build_catalog(open_source(data, tmp_path))


# -- the commands, training and the CG protocol ----------------------------------------------------


def test_cgmed_data_build_on_hf(saved, tmp_path):
    chest = "{id: chest, path: '%s', mat: {modality: X-ray, area: Chest, task: Diseases}}" % (saved / "disk")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cgmed.cli.data",
            "build",
            "data=hf",
            f"data.hf.datasets=[{chest}]",
            f"data.cache_dir={tmp_path / 'cache'}",
            "split.targets=[chest]",
            "split.train=none",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 0, run.stderr
    assert len((tmp_path / "run" / "test.jsonl").read_text().splitlines()) == 9


def test_training_and_evaluation_on_an_hf_split(saved, folder, multi_label, tmp_path):
    from cgmed.eval.run import evaluate
    from cgmed.eval.score import EvalConfig
    from cgmed.models import init_tiny
    from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig
    from cgmed.train.loop import train

    data = mixed_data(tmp_path, saved, folder, multi_label)
    split = SplitConfig(
        targets=["scans"], cap_per_subset=12, options=OptionsConfig(mode="rebuild", order="sorted")
    )
    build_from_config(data, split, None, tmp_path / "split")
    tiny = init_tiny("qwen2_vl", tmp_path / "tiny", seed=0)
    config = TrainConfig(
        max_steps=3, per_device_batch_size=4, progress_bar=False, tensorboard=False, warmup_ratio=0.0
    )
    train(
        ModelConfig(path=str(tiny)),
        config,
        PeftConfig(),
        DistributedConfig(),
        str(tmp_path / "split" / "train.jsonl"),
        tmp_path / "out",
    )
    metrics = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 3
    results = evaluate(
        str(tmp_path / "out" / "final"),
        EvalConfig(bootstrap=0),
        str(tmp_path / "split" / "test.jsonl"),
        tmp_path / "eval",
    )
    assert results["overall"]["n"] == len((tmp_path / "split" / "test.jsonl").read_text().splitlines())


def cg_target(name: str, target: tuple[str, str, str], *related: tuple[str, str, str]):
    from cgmed.cg import CGTarget

    def pattern(triplet: tuple[str, str, str]) -> dict:
        return dict(zip(("modality", "area", "task"), triplet, strict=True))

    return CGTarget(name=name, target=pattern(target), related=[pattern(r) for r in related])


def test_cg_protocol_with_two_targets_on_an_hf_dataset(world_parquet, tmp_path):
    from cgmed.cg import CGApp, CGConfig, TinyBase, run_cg
    from cgmed.eval.score import EvalConfig
    from cgmed.train.config import TrainConfig

    columns = {"modality": "modality", "area": "area", "task": "task"}
    world = entry("world", world_parquet, None, mat_columns=columns, label_column="finding")
    targets = [
        cg_target(
            "ct_lung_cancer", ("CT", "Lung", "Cancer"), ("CT", "Brain", "Cancer"), ("MRI", "Lung", "Cancer")
        ),
        cg_target(
            "xray_brain_diseases",
            ("X-ray", "Brain", "Diseases"),
            ("X-ray", "Lung", "Diseases"),
            ("MRI", "Brain", "Diseases"),
        ),
    ]
    fast = dict(progress_bar=False, tensorboard=False, warmup_ratio=0.0)
    app = CGApp(
        cg=CGConfig(targets=targets, tiny_base=TinyBase(), plots=False),
        data=hf_data(tmp_path, world),
        split=SplitConfig(cap_per_subset=16, options=OptionsConfig(mode="rebuild", order="sorted")),
        train=TrainConfig(max_steps=6, per_device_batch_size=8, lr=2e-3, **fast),
        eval=EvalConfig(batch_size=16, bootstrap=50),
    )
    doc = run_cg(app, tmp_path / "run")
    assert [row["target"] for row in doc["targets"]] == [
        "world_CT_Lung_Cancer CT Lung Cancer",
        "world_X-ray_Brain_Diseases X-ray Brain Diseases",
    ]
    for row in doc["targets"]:
        assert all(0.0 <= row[arm]["accuracy"] <= 1.0 for arm in ("baseline", "baseline_plus", "trained"))
    split = tmp_path / "run" / "ct_lung_cancer" / "splits" / "related"
    meta = json.loads((split / "split_meta.json").read_text())
    assert meta["audit"]["passed"] and [t["id"] for t in meta["targets"]] == ["world_CT_Lung_Cancer"]
    images = [Path(json.loads(line)["image"]) for line in (split / "train.jsonl").read_text().splitlines()]
    assert all(image.is_relative_to(tmp_path / "cache" / "hf-images") for image in images)
    # the run's splits belong to these datasets: a rerun reading others is refused
    other = hf_data(tmp_path, {**world, "question": "Which finding is shown?"})
    with pytest.raises(ConfigError, match=r"differing: \['data.hf'\]"):
        run_cg(dataclasses.replace(app, data=other), tmp_path / "run")
