"""DICOM and NIfTI files as they come from scanners, through the whole pipeline.

A conversation dataset whose images are DICOM files made from pydicom's own CT and MR test files
(CT_small.dcm, MR_small.dcm: real scanner headers, rescale and window tags) and NIfTI volumes
written with nibabel: catalog, split with the leakage audit (image bytes), a few training steps
and an evaluation, with a window per modality from the ``image`` group. A truncated DICOM is a
bad sample named by file, never a crash.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
nibabel = pytest.importorskip("nibabel")

from cgmed.data.build import build_from_config  # noqa: E402
from cgmed.data.catalog import build_catalog  # noqa: E402
from cgmed.data.imaging import ImageConfig, open_image  # noqa: E402
from cgmed.data.source import DataConfig, open_source  # noqa: E402
from cgmed.data.split import OptionsConfig, SplitConfig  # noqa: E402
from cgmed.errors import DataError, LeakageError  # noqa: E402

LABELS = ("Normal", "Tumor")


def dicom_with_blob(template: str, out: Path, seed: int, tumor: bool) -> None:
    """A copy of a real DICOM file whose stored pixels carry noise and, for Tumor, a bright disc."""
    ds = pydicom.dcmread(pydicom.data.get_testdata_file(template))
    pixels = ds.pixel_array.astype(np.int32)
    rng = np.random.default_rng(seed)
    pixels = pixels + rng.integers(-20, 20, size=pixels.shape)
    if tumor:
        yy, xx = np.mgrid[: pixels.shape[0], : pixels.shape[1]]
        cy, cx = rng.integers(pixels.shape[0] // 4, 3 * pixels.shape[0] // 4, size=2)
        pixels[(yy - cy) ** 2 + (xx - cx) ** 2 < (pixels.shape[0] // 6) ** 2] = int(pixels.max())
    info = np.iinfo(ds.pixel_array.dtype)
    ds.PixelData = np.clip(pixels, info.min, info.max).astype(ds.pixel_array.dtype).tobytes()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out)


def nifti_with_blob(out: Path, seed: int, tumor: bool) -> None:
    rng = np.random.default_rng(seed)
    volume = rng.normal(100.0, 10.0, size=(48, 48, 5)).astype(np.float32)
    if tumor:
        volume[16:32, 16:32, :] += 400.0
    out.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), out)


def record(i: int, image: str, modality: str, area: str, label: str, split: str) -> dict:
    return {
        "id": f"{modality}-{area}-{i}",
        "image": image,
        "modality": modality,
        "area": area,
        "task": "Cancer",
        "split": split,
        "conversations": [
            {"from": "human", "value": "<image>\nIs there a tumor in this scan?"},
            {"from": "gpt", "value": label},
        ],
    }


@pytest.fixture(scope="module")
def scanner_root(tmp_path_factory) -> Path:
    """CT Lung and MRI Brain from DICOM, MRI Lung from NIfTI; 8 train + 2 test per label."""
    root = tmp_path_factory.mktemp("scans")
    rows = []
    kinds = [
        ("CT", "Lung", "dcm", "CT_small.dcm"),
        ("MRI", "Brain", "dcm", "MR_small.dcm"),
        ("MRI", "Lung", "nii.gz", None),
    ]
    seed = 0
    for modality, area, ext, template in kinds:
        for label in LABELS:
            for k in range(10):
                seed += 1
                rel = f"{modality}_{area}/{label}/{k}.{ext}"
                if template:
                    dicom_with_blob(template, root / rel, seed, label == "Tumor")
                else:
                    nifti_with_blob(root / rel, seed, label == "Tumor")
                rows.append(record(seed, rel, modality, area, label, "test" if k >= 8 else "train"))
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def data_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(format="conversation", root=str(root), **kw)


IMAGE = ImageConfig(windows={"CT": "ct_lung"})
SPLIT = SplitConfig(
    targets=[{"modality": "CT", "area": "Lung", "task": "Cancer"}],
    train="related",
    options=OptionsConfig(mode="rebuild", order="sorted"),
)


def test_the_window_comes_from_the_image_group(scanner_root):
    ct = next(scanner_root.glob("CT_Lung/Tumor/*.dcm"))
    lung = np.asarray(open_image(ct, IMAGE, modality="CT"))
    own = np.asarray(open_image(ct, ImageConfig(), modality="CT"))  # the file's own window
    assert lung.shape == own.shape and lung.dtype == np.uint8
    assert not np.array_equal(lung, own)


def test_catalog_and_split_with_the_audit_on_dicom_and_nifti(scanner_root, tmp_path):
    data = data_cfg(scanner_root)
    catalog = build_catalog(open_source(data, scanner_root, IMAGE)).to_json()
    names = {s["id"] for s in catalog["subsets"]}
    assert names == {"CT_Lung_Cancer", "MRI_Brain_Cancer", "MRI_Lung_Cancer"}
    meta = build_from_config(data, SPLIT, None, tmp_path / "split", image=IMAGE)
    assert meta["audit"]["passed"]
    assert meta["image"]["windows"]["CT"] == {"center": -600.0, "width": 1500.0}
    train = [json.loads(x) for x in (tmp_path / "split" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (tmp_path / "split" / "test.jsonl").read_text().splitlines()]
    assert {Path(r["image"]).suffix for r in train} == {".dcm", ".gz"}  # MRI Brain (DICOM) + MRI Lung (NIfTI)
    assert {r["subset"] for r in test} == {"CT_Lung_Cancer"} and all(
        r["image"].endswith(".dcm") for r in test
    )


def test_a_dicom_reachable_twice_is_caught_by_the_audit(scanner_root, tmp_path):
    root = tmp_path / "copy"
    rows = [json.loads(x) for x in (scanner_root / "data.jsonl").read_text().splitlines()]
    leaked = next(r for r in rows if r["modality"] == "CT" and r["split"] == "test")
    twin = dict(leaked, id="twin", modality="MRI", area="Lung", split="train", image="twin.dcm")
    (root).mkdir()
    for sub in ("CT_Lung", "MRI_Brain", "MRI_Lung"):
        (root / sub).symlink_to(scanner_root / sub)
    (root / "twin.dcm").write_bytes((scanner_root / leaked["image"]).read_bytes())
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, twin]))
    data = data_cfg(root, linked_dirs=[str(scanner_root)])
    split = SplitConfig(targets=SPLIT.targets, train="related", cap_per_subset=100, options=SPLIT.options)
    with pytest.raises(LeakageError, match=r"(?s)image.*twin\.dcm|twin\.dcm.*image"):
        build_from_config(data, split, None, tmp_path / "split", image=IMAGE)


def test_a_truncated_dicom_is_a_named_bad_sample(scanner_root, tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    for sub in ("CT_Lung", "MRI_Brain", "MRI_Lung"):
        (root / sub).symlink_to(scanner_root / sub)
    rows = [json.loads(x) for x in (scanner_root / "data.jsonl").read_text().splitlines()]
    whole = (scanner_root / rows[0]["image"]).read_bytes()
    (root / "cut.dcm").write_bytes(whole[: len(whole) // 2])
    cut = dict(rows[0], id="cut", image="cut.dcm", split="train")
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, cut]))
    base = {"linked_dirs": [str(scanner_root)]}
    split = SplitConfig(targets=[{"modality": "MRI", "area": "Brain", "task": "Cancer"}], train="related",
                        cap_per_subset=100, options=SPLIT.options)  # fmt: skip
    with pytest.raises(
        DataError, match=r"(?s)unreadable image: 1.*cut\.dcm: cannot decode the DICOM pixel data"
    ):
        build_from_config(data_cfg(root, **base), split, None, tmp_path / "a", image=IMAGE)
    meta = build_from_config(
        data_cfg(root, on_bad_sample="skip", **base), split, None, tmp_path / "b", image=IMAGE
    )
    assert meta["bad_samples"]["by_kind"] == {"unreadable image": 1}
    assert "cut.dcm" in " ".join(meta["bad_samples"]["examples"])


def test_training_and_evaluation_on_dicom_and_nifti(scanner_root, tmp_path):
    from cgmed.eval.run import evaluate
    from cgmed.eval.score import EvalConfig
    from cgmed.models import init_tiny
    from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig
    from cgmed.train.loop import train

    build_from_config(data_cfg(scanner_root), SPLIT, None, tmp_path / "split", image=IMAGE)
    tiny = init_tiny("qwen2_vl", tmp_path / "tiny", seed=0)
    config = TrainConfig(
        max_steps=3, per_device_batch_size=4, progress_bar=False, tensorboard=False, warmup_ratio=0.0
    )
    train(
        ModelConfig(path=str(tiny)), config, PeftConfig(), DistributedConfig(),
        str(tmp_path / "split" / "train.jsonl"), tmp_path / "out", image=IMAGE,
    )  # fmt: skip
    metrics = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m][-1] == 3
    doc = evaluate(
        str(tmp_path / "out" / "final"), EvalConfig(bootstrap=0), str(tmp_path / "split" / "test.jsonl"),
        tmp_path / "eval", image=IMAGE,
    )  # fmt: skip
    assert doc["overall"]["n"] == 4 and doc["image"]["windows"]["CT"]["center"] == -600.0
