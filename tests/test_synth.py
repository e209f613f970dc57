"""The synthetic MAT world: release layout, determinism, config checks and learnable pixels."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cgmed.data import synth
from cgmed.data.catalog import build_catalog
from cgmed.data.choices import LETTERS, parse_question_choice
from cgmed.data.source import BadSamples, DataConfig, MedMatSource
from cgmed.data.subsets import MEDMAT_SUBSETS
from cgmed.data.synth import SynthConfig, render, write_release
from cgmed.data.synth.drawing import _place
from cgmed.data.vocab import AREAS, MODALITIES
from cgmed.errors import ConfigError, DataError

FIELDS = {"id", "caption", "image", "Question", "Answer", "Question-choice", "Answer-choice", "data-no"}


def small(**kw) -> SynthConfig:
    """A world that writes in a fraction of a second."""
    base = dict(modalities=["CT", "MRI"], areas=["Lung", "Brain"], images_per_subset=12, image_size=32)
    base.update(kw)
    return SynthConfig(**base)


def read(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int32)


def organ_mask(img: Image.Image, modality: str) -> np.ndarray:
    """Pixels nearer the modality's organ colour than its background colour."""
    pal = synth.palette(modality)
    a = pixels(img)
    to_organ = np.linalg.norm(a - np.array(pal.organ), axis=-1)
    to_bg = np.linalg.norm(a - np.array(pal.background), axis=-1)
    return to_organ < to_bg


def pair(modality, area, task, label, other, seed=7, size=64, labels=None):
    """The same RNG state rendered twice: ``label`` and ``other``."""
    a = render(modality, area, task, label, random.Random(seed), size, labels=labels)
    b = render(modality, area, task, other, random.Random(seed), size, labels=labels)
    return pixels(a), pixels(b)


# ------------------------------------------------------------------ layout


def test_layout_records_and_catalog(tmp_path):
    cfg = small()
    summary = write_release(cfg, tmp_path)
    assert summary["root"] == str(tmp_path)
    assert summary["subsets"] == 8 and summary["images"] == 8 * 12
    assert isinstance(summary["seconds"], float)

    catalog = json.loads((tmp_path / "cgmed_catalog.json").read_text())
    assert catalog["format"] == "cgmed-catalog/1" and catalog["name"] == "synthetic" and catalog["seed"] == 0
    # M outer, A middle, T inner
    expected = [(m, a, t) for m in ("CT", "MRI") for a in ("Lung", "Brain") for t in ("Cancer", "Diseases")]
    listed = [(e["modality"], e["area"], e["task"]) for e in catalog["subsets"]]
    assert listed == expected == cfg.triplets()
    assert [e["id"] for e in catalog["subsets"]] == [f"{i:02d}" for i in range(1, 9)]
    first = catalog["subsets"][0]
    assert first["name"] == "Synthetic CT Lung Cancer" and first["status"] == "ID"
    assert first["labels"] == ["Normal", "Tumor"]

    agg = tmp_path / "Aggregated_Subsets"
    for entry in catalog["subsets"]:
        sid = entry["id"]
        for split in ("train", "test"):
            path = agg / f"Subset--{sid}-{split}.json"
            text = path.read_text(encoding="utf-8")
            records = read(path)
            # one record per line inside the array
            assert text.startswith("[\n{") and text.rstrip().endswith("}\n]")
            assert len(text.strip().splitlines()) == len(records) + 2
            ids = [r["id"] for r in records]
            assert len(set(ids)) == len(ids) and all(isinstance(i, int) for i in ids)
            for r in records:
                assert set(r) == FIELDS
                assert r["caption"] == r["Answer"] and r["caption"] in entry["labels"]
                assert r["data-no"] == str(1000 + int(sid))
                instruction, options = parse_question_choice(r["Question-choice"])
                assert instruction == r["Question"]
                assert options[LETTERS.index(r["Answer-choice"])] == r["caption"]
                assert len(options) == min(4, len(entry["labels"]))
                assert sorted(options) == sorted(entry["labels"])  # every label fits in 4 options here
                assert r["image"].startswith("med-mat/Synth ")
                assert " " in r["image"] and "(" in r["image"] and ")" in r["image"]
                assert f"/{r['caption']}/{r['caption']}- (" in r["image"]
                img_path = tmp_path / r["image"]
                assert img_path.is_file()
            with Image.open(tmp_path / records[0]["image"]) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)
    # train and test ids do not collide either: one id per image of the subset
    train, test = read(agg / "Subset--01-train.json"), read(agg / "Subset--01-test.json")
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    assert len({r["image"] for r in train + test}) == 12


def test_names_are_canonicalised():
    cfg = SynthConfig(modalities=["xray", "mr"], areas=["lungs"], tasks={"tumour": ["Normal", "Tumor"]})
    assert cfg.modalities == ["X-ray", "MRI"] and cfg.areas == ["Lung"]
    assert list(cfg.tasks) == ["Cancer"]
    assert cfg.triplets() == [("X-ray", "Lung", "Cancer"), ("MRI", "Lung", "Cancer")]
    # None stays "every combination", so replacing a list re-derives the subsets
    assert cfg.combinations is None
    assert dataclasses.replace(cfg, areas=["Bones"]).triplets()[0] == ("X-ray", "Bones", "Cancer")


def test_combinations_choose_and_order_subsets(tmp_path):
    cfg = small(combinations=[["mri", "brain", "diseases"], ["CT", "Lung", "Cancer"]])
    write_release(cfg, tmp_path)
    catalog = json.loads((tmp_path / "cgmed_catalog.json").read_text())
    assert [(e["id"], e["modality"], e["area"], e["task"]) for e in catalog["subsets"]] == [
        ("01", "MRI", "Brain", "Diseases"),
        ("02", "CT", "Lung", "Cancer"),
    ]
    assert sorted(p.name for p in (tmp_path / "Aggregated_Subsets").iterdir()) == [
        "Subset--01-test.json",
        "Subset--01-train.json",
        "Subset--02-test.json",
        "Subset--02-train.json",
    ]


# ------------------------------------------------------------------ determinism


def test_same_config_gives_identical_bytes(tmp_path):
    cfg = small(modalities=["CT"], areas=["Lung", "Bones"])
    write_release(cfg, tmp_path / "a")
    write_release(cfg, tmp_path / "b")
    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert a == b and len(a) == 4 * 12 + 8 + 1

    write_release(small(modalities=["CT"], areas=["Lung", "Bones"], seed=1), tmp_path / "c")
    c = digests(tmp_path / "c")
    assert set(c) == set(a)
    pngs = [k for k in a if k.endswith(".png")]
    assert sum(a[k] != c[k] for k in pngs) > len(pngs) // 2
    assert a["Aggregated_Subsets/Subset--01-train.json"] != c["Aggregated_Subsets/Subset--01-train.json"]


def test_option_order_does_not_change_images(tmp_path):
    write_release(small(modalities=["CT"], areas=["Lung"]), tmp_path / "a")
    write_release(small(modalities=["CT"], areas=["Lung"], option_order="sorted"), tmp_path / "b")
    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert all(a[k] == b[k] for k in a if k.endswith(".png"))
    for r in read(tmp_path / "b" / "Aggregated_Subsets" / "Subset--02-train.json"):
        _, options = parse_question_choice(r["Question-choice"])
        assert options == sorted(options, key=str.lower)


def test_render_is_a_function_of_its_inputs():
    a = render("OCT", "Retina", "Diseases", "Cyst", random.Random(3), 48)
    b = render("OCT", "Retina", "Diseases", "Cyst", random.Random(3), 48)
    assert a.tobytes() == b.tobytes() and a.size == (48, 48)
    # unknown elements fall back to deterministic looks instead of failing
    c = render("PET", "Spleen", "Staging", "Stage II", random.Random(3), 48)
    d = render("PET", "Spleen", "Staging", "Stage II", random.Random(3), 48)
    assert c.tobytes() == d.tobytes()


# ------------------------------------------------------------------ test files and balance


@pytest.mark.parametrize(
    ("mode", "with_test"),
    [("all", {"01", "02", "03", "04"}), ("none", set()), ("alternate", {"01", "03"})],
)
def test_test_file_modes(tmp_path, mode, with_test):
    cfg = small(modalities=["CT"], test_file=mode, images_per_subset=20, test_fraction=0.25)
    write_release(cfg, tmp_path)
    agg = tmp_path / "Aggregated_Subsets"
    for sid in ("01", "02", "03", "04"):
        train = read(agg / f"Subset--{sid}-train.json")
        test_path = agg / f"Subset--{sid}-test.json"
        if sid in with_test:
            assert len(read(test_path)) == 5 and len(train) == 15
        else:
            assert not test_path.exists() and len(train) == 20


def test_rewrite_replaces_stale_files(tmp_path):
    write_release(small(modalities=["CT"], areas=["Lung"]), tmp_path)
    write_release(
        small(modalities=["CT"], areas=["Lung"], test_file="none", tasks={"Cancer": ["Normal", "Tumor"]}),
        tmp_path,
    )
    assert sorted(p.name for p in (tmp_path / "Aggregated_Subsets").iterdir()) == ["Subset--01-train.json"]
    assert [p.name for p in (tmp_path / "med-mat").iterdir()] == ["Synth CT_Lung (Cancer)"]


def test_refuses_to_write_over_a_real_release(tmp_path):
    (tmp_path / "Aggregated_Subsets").mkdir()
    (tmp_path / "Aggregated_Subsets" / "Subset--02-train.json").write_text("[]")
    (tmp_path / "med-mat" / "CT_Kindney_Dataset").mkdir(parents=True)
    with pytest.raises(DataError, match="did not write"):
        write_release(small(), tmp_path)
    assert (tmp_path / "Aggregated_Subsets" / "Subset--02-train.json").exists()


def test_labels_are_balanced(tmp_path):
    cfg = small(modalities=["CT"], areas=["Lung"], images_per_subset=31, test_fraction=0.2)
    write_release(cfg, tmp_path)
    agg = tmp_path / "Aggregated_Subsets"
    for sid, labels in (("01", cfg.tasks["Cancer"]), ("02", cfg.tasks["Diseases"])):
        train, test = read(agg / f"Subset--{sid}-train.json"), read(agg / f"Subset--{sid}-test.json")
        assert len(test) == round(31 * 0.2)
        for records in (train, test, train + test):
            counts = Counter(r["caption"] for r in records)
            assert set(counts) == set(labels)
            assert max(counts.values()) - min(counts.values()) <= 1
        # the image number counts per label
        numbers = [r["image"] for r in train + test]
        assert len(set(numbers)) == len(numbers)


# ------------------------------------------------------------------ config errors


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"modalities": ["CT", "Xrayy-scan"]}, "synth.modalities"),
        ({"modalities": []}, "synth.modalities"),
        ({"modalities": ["CT", "ct"]}, "synth.modalities"),
        ({"areas": ["Lung", "Elbow-ish"]}, "synth.areas"),
        ({"tasks": {"Cancer": ["Tumor"]}}, "synth.tasks.Cancer"),
        ({"tasks": {"Cancer": ["Tumor", "tumor"]}}, "synth.tasks.Cancer"),
        ({"tasks": {"Cancer": ["Normal", "a/b"]}}, "synth.tasks.Cancer"),
        ({"tasks": {"Detection": ["Normal", "Tumor"]}}, "synth.tasks.Detection"),
        ({"tasks": {"Nonsense": ["Normal", "Tumor"]}}, "synth.tasks"),
        ({"combinations": [["CT", "Lung", "Level"]]}, "synth.combinations[0]"),
        ({"combinations": [["CT", "Lung"]]}, "synth.combinations[0]"),
        ({"image_size": 8}, "synth.image_size"),
        ({"image_size": 1024}, "synth.image_size"),
        ({"test_fraction": 1.0}, "synth.test_fraction"),
        ({"test_fraction": 0.0}, "synth.test_fraction"),
        ({"test_file": "some"}, "synth.test_file"),
        ({"option_order": "random"}, "synth.option_order"),
        ({"layout": "lattice"}, "synth.layout"),
        ({"images_per_subset": 5}, "synth.images_per_subset"),
        ({"images_per_subset": 6, "test_fraction": 0.6}, "synth.test_fraction"),
    ],
)
def test_bad_config(kwargs, key):
    with pytest.raises(ConfigError) as err:
        small(**kwargs)
    assert err.value.key == key
    assert key in str(err.value)


def test_zero_test_fraction_is_fine_without_test_files():
    assert small(test_fraction=0.0, test_file="none").test_count(1) == 0


# ------------------------------------------------------------------ pixels: three separate factors


def test_modality_sets_the_colours():
    means = {
        m: pixels(render(m, "Lung", "Cancer", "Normal", random.Random(1), 64)).reshape(-1, 3).mean(0)
        for m in MODALITIES
    }
    names = list(means)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.linalg.norm(means[a] - means[b]) > 8, (a, b)


def test_area_sets_the_outline():
    masks = {a: organ_mask(render("CT", a, "Cancer", "Normal", random.Random(1), 64), "CT") for a in AREAS}
    for a, m in masks.items():
        assert 0.1 < m.mean() < 0.9, a  # organ and background both visible
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.85, (a, b, iou)
    # the outline does not depend on the modality
    mri = organ_mask(render("MRI", "Brain", "Cancer", "Normal", random.Random(1), 64), "MRI")
    assert (mri == masks["Brain"]).mean() > 0.97


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize(
    ("task", "label"), [("Cancer", "Tumor"), ("Diseases", "Cyst"), ("Diseases", "Stone")]
)
def test_label_draws_a_visible_finding_inside_the_organ(size, task, label):
    for modality in ("CT", "MRI", "X-ray", "FP", "Mic"):
        for area in ("Lung", "Brain", "Bones", "Mouth", "Cervix"):
            sick, normal = pair(modality, area, task, label, "Normal", seed=11, size=size)
            changed = np.any(sick != normal, axis=-1)
            assert changed.sum() >= 8, (modality, area)
            organ = organ_mask(Image.fromarray(normal.astype(np.uint8)), modality)
            assert organ[changed].all(), (modality, area)  # never on the background
            organ_colour = np.array(synth.palette(modality).organ)
            contrast = np.linalg.norm(sick[changed] - organ_colour, axis=-1)
            assert contrast.min() > 90, (modality, area)


def test_same_label_looks_the_same_under_every_modality():
    sick_ct, normal_ct = pair("CT", "Lung", "Cancer", "Tumor", "Normal", seed=5)
    sick_mri, normal_mri = pair("MRI", "Lung", "Cancer", "Tumor", "Normal", seed=5)
    finding_ct = np.any(sick_ct != normal_ct, axis=-1)
    finding_mri = np.any(sick_mri != normal_mri, axis=-1)
    # same place, same shape, same colour; everything else is the modality's
    assert (finding_ct == finding_mri).all()
    assert (sick_ct[finding_ct] == sick_mri[finding_mri]).all()
    assert np.abs(sick_ct[~finding_ct] - sick_mri[~finding_ct]).sum(-1).mean() > 40


def test_same_label_looks_the_same_in_every_area():
    found = {}
    for area in ("Lung", "Brain", "Bones", "Kidney"):
        sick, normal = pair("CT", area, "Diseases", "Stone", "Normal", seed=9)
        changed = np.any(sick != normal, axis=-1)
        found[area] = (changed.sum(), {tuple(c) for c in sick[changed]})
    sizes = [n for n, _ in found.values()]
    assert max(sizes) <= 1.25 * min(sizes)
    assert len({frozenset(c) for _, c in found.values()}) == 1  # one colour, whatever the organ


def test_labels_of_a_task_look_different():
    tumor, cyst = pair("CT", "Lung", "Diseases", "Tumor", "Cyst", labels=["Cyst", "Tumor", "Normal"])
    assert np.any(tumor != cyst, axis=-1).sum() >= 20
    assert synth.finding_for("Cancer", "Normal") is None and synth.finding_for("Cancer", "NORMAL ") is None
    assert synth.finding_for("Cancer", "Tumor").kind == "disc"
    assert synth.finding_for("Diseases", "Cyst").kind == "ring"
    assert synth.finding_for("Diseases", "Stone").kind == "square"
    labels = ["Normal", "Glioma", "Meningioma", "Pituitary", "Tumor", "Cyst"]
    looks = [synth.finding_for("Diseases", x, labels) for x in labels[1:]]
    assert len(set(looks)) == len(looks)
    levels = ["Level 0", "Level 1", "Level 2", "Level 3", "Level 4"]
    assert [synth.finding_for("Level", x, levels).count for x in levels] == [1, 2, 3, 4, 5]
    words = ["Normal", "Severe", "Mild", "Proliferative", "Moderate"]
    assert [synth.finding_for("Level", x, words) for x in words][0] is None
    assert [synth.finding_for("Level", x, words).count for x in words[1:]] == [3, 1, 4, 2]
    mixed = ["Grade 1", "Grade 2", "Severe", "Unknown grade", "Grade 7"]
    looks = [synth.finding_for("Level", x, mixed) for x in mixed]
    assert len(set(looks)) == len(looks)  # clashes and more than MAX_DOTS levels stay apart


def test_every_finding_fits_inside_every_organ():
    """Placement guarantee: the finding's whole extent lies within the organ (from 32 px up)."""
    findings = [synth.Finding(k, synth.YELLOW) for k in synth.KINDS]
    findings += [synth.Finding("dots", synth.YELLOW, n) for n in range(1, synth.MAX_DOTS + 1)]
    for area in [*AREAS, "Spleen"]:
        shape = synth.area_shape(area)
        for f in findings:
            for size in (32, 64):
                for seed in range(6):
                    rng = random.Random(seed)
                    sc = rng.uniform(0.94, 1.06)
                    _, _, _, extent, room = _place(f, shape, rng, size, sc, 0.0, 0.0)
                    assert extent <= room + 1e-9, (area, f, size)


def test_finding_colours_contrast_with_every_organ():
    for m in [*MODALITIES, "PET", "Thermography"]:
        pal = synth.palette(m)
        assert (
            min(np.linalg.norm(np.subtract(pal.organ, c)) for c in synth.FINDING_COLOURS)
            >= synth.MIN_CONTRAST
        )
    assert len({synth.palette(m) for m in MODALITIES}) == len(MODALITIES)


# ------------------------------------------------------------------ medmat layout (stand-in for the release)

MEDMAT_IDS = [f"{i:02d}" for i in range(1, 38)]


def medmat_cfg(**kw) -> SynthConfig:
    base = dict(layout="medmat", images_per_subset=8, image_size=32, test_fraction=0.5)
    base.update(kw)
    return SynthConfig(**base)


@pytest.fixture(scope="module")
def medmat_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("medmat")
    summary = write_release(medmat_cfg(), root)
    return root, summary


def test_medmat_layout_writes_the_37_classification_subsets(medmat_world):
    root, summary = medmat_world
    assert summary["subsets"] == 37 and summary["images"] == 37 * 8
    catalog = json.loads((root / "cgmed_catalog.json").read_text())
    assert catalog["layout"] == "medmat" and catalog["config"]["layout"] == "medmat"
    assert [e["id"] for e in catalog["subsets"]] == MEDMAT_IDS
    files = sorted(p.name for p in (root / "Aggregated_Subsets").iterdir())
    assert files == sorted(f"Subset--{sid}-{split}.json" for sid in MEDMAT_IDS for split in ("train", "test"))
    for e in catalog["subsets"]:
        info = MEDMAT_SUBSETS[e["id"]]
        assert (e["modality"], e["area"], e["task"]) == info.triplet
        assert e["status"] == info.status and e["status"] in ("ID", "OOD")
        assert e["labels"] == synth.MEDMAT_TASK_LABELS[info.task]
        assert e["name"] == f"Synthetic {info.name}"
        agg = root / "Aggregated_Subsets"
        train, test = read(agg / f"Subset--{e['id']}-train.json"), read(agg / f"Subset--{e['id']}-test.json")
        assert len(train) == len(test) == 4
        for r in train + test:
            assert set(r) == FIELDS and r["caption"] in e["labels"]
            assert r["data-no"] == str(info.sources[0])
            # subsets sharing a triplet (25/35, 27/36, 14/15, 16/34, 29/37) keep separate folders
            assert r["image"].startswith(f"med-mat/Synth {e['id']} ")
            assert (root / r["image"]).is_file()
    # the ID/OOD split of the paper's Tables 1/2: 25 ID and 12 OOD subsets
    statuses = Counter(e["status"] for e in catalog["subsets"])
    assert statuses == {"ID": 25, "OOD": 12}
    assert not any((root / "Aggregated_Subsets" / f"Subset--{i}-train.json").exists() for i in (38, 53))


def test_medmat_layout_reads_back_with_no_bad_records(medmat_world, tmp_path):
    root, _ = medmat_world
    source = MedMatSource(DataConfig(), root)
    declared = source.subsets()
    assert list(declared) == MEDMAT_IDS
    bad = BadSamples()
    for sid, info in declared.items():
        idx = source.index(sid, bad)
        assert len(idx) == 8 and idx.has_test_file
        assert sorted(idx.labels) == sorted(synth.MEDMAT_TASK_LABELS[info.task])
        loaded = list(source.load_checked(idx, list(range(len(idx))), bad))
        assert len(loaded) == 8 and all(s.subset == sid for _, s in loaded)
    assert bad.total == 0, bad.report()
    # the catalog file declares the same triplets and status as the built-in Med-MAT table:
    # the reader without the catalog (the real release's case) sees the same subsets
    bare = tmp_path / "bare"
    shutil.copytree(root / "Aggregated_Subsets", bare / "Aggregated_Subsets")
    builtin = MedMatSource(DataConfig(), bare).subsets()
    assert list(builtin) == MEDMAT_IDS
    for sid in MEDMAT_IDS:
        assert builtin[sid].triplet == declared[sid].triplet == MEDMAT_SUBSETS[sid].triplet
        assert builtin[sid].status == declared[sid].status


def test_medmat_layout_is_deterministic_and_ignores_grid_fields(medmat_world, tmp_path):
    root, _ = medmat_world
    other = medmat_cfg(modalities=["MRI"], areas=["Lung"], tasks={"Cancer": ["Normal", "Tumor"]})
    assert other.triplets() == medmat_cfg().triplets() == [MEDMAT_SUBSETS[s].triplet for s in MEDMAT_IDS]
    write_release(other, tmp_path / "again")
    a, b = digests(root), digests(tmp_path / "again")
    assert set(a) == set(b)
    assert all(a[k] == b[k] for k in a if k != "cgmed_catalog.json")  # the catalog records the config
    with pytest.raises(ConfigError) as err:
        medmat_cfg(images_per_subset=6)  # Diseases and Level have 4 labels
    assert err.value.key == "synth.images_per_subset"


def test_grid_catalog_has_no_layout_key(tmp_path):
    write_release(small(modalities=["CT"], areas=["Lung"]), tmp_path)
    catalog = json.loads((tmp_path / "cgmed_catalog.json").read_text())
    assert "layout" not in catalog and "layout" not in catalog["config"]


def test_medmat_findings_are_consistent_and_visible():
    cfg = medmat_cfg()
    by_tag: dict[str, set] = {}
    for spec in cfg.subsets():
        looks = tuple(synth.finding_for(spec.task, lab, spec.labels) for lab in spec.labels)
        by_tag.setdefault(spec.task, set()).add(looks)
        assert len(set(looks)) == len(looks), spec.id  # labels of a subset look different
        for lab in spec.labels:
            for other in spec.labels:
                if other <= lab:
                    continue
                for seed in (0, 1):
                    a, b = pair(
                        spec.modality,
                        spec.area,
                        spec.task,
                        lab,
                        other,
                        seed=seed,
                        size=32,
                        labels=spec.labels,
                    )
                    assert np.any(a != b, axis=-1).sum() >= 5, (spec.id, lab, other)
    assert all(len(v) == 1 for v in by_tag.values())  # one look per label and task tag, in every subset
    # the merge rule in pixels: the diseased label of State, COVID and Cancer is one finding
    diseased = {
        synth.finding_for(t, lab, synth.MEDMAT_TASK_LABELS[t])
        for t, lab in (("State", "Abnormal"), ("COVID", "COVID-19"), ("Cancer", "Tumor"))
    }
    assert len(diseased) == 1


# ------------------------------------------------------------------ medmat multi-label subsets

MULTI_IDS = ["15", "20", "31", "33", "37"]
# sha256 of the record files and catalog of medmat_cfg()'s world as written before multi-label
# subsets existed: with the switch off the stand-in must not change. A deliberate change of the
# stand-in's records updates it. (PNG bytes depend on the zlib build, so only text is pinned.)
MEDMAT_RECORDS_DIGEST = "10f89f0aa0be62a94a9324afb3b0d863f27a7c41b5c6fda53e131c043912175c"


def multi_cfg(**kw) -> SynthConfig:
    # subset 31 cycles through 16 label sets: 32 images give each set at least two
    return medmat_cfg(medmat_multi_label=True, images_per_subset=32, test_fraction=0.25, **kw)


def records_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in [*sorted((root / "Aggregated_Subsets").iterdir()), root / "cgmed_catalog.json"]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def canonical(parts: list[str]) -> str:
    return ", ".join(sorted(parts, key=str.lower))


@pytest.fixture(scope="module")
def multi_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("medmat_multi")
    write_release(multi_cfg(), root)
    return root


def test_label_set_text():
    assert synth.format_label_set(["Nodule", "Effusion"]) == "Effusion, Nodule"
    assert synth.format_label_set([]) == "Normal"
    assert synth.parse_label_set("Effusion, Nodule") == ["Effusion", "Nodule"]
    assert synth.parse_label_set("Normal") == []
    sets = synth.multi_label_sets(["Mass", "Asymmetry", "Nipple retraction"])
    assert sets == (
        "Normal",
        "Asymmetry",
        "Mass",
        "Nipple retraction",
        "Asymmetry, Mass",
        "Asymmetry, Nipple retraction",
        "Mass, Nipple retraction",
    )


def test_multi_label_subsets_hold_canonical_label_sets(multi_world):
    root = multi_world
    catalog = {e["id"]: e for e in json.loads((root / "cgmed_catalog.json").read_text())["subsets"]}
    agg = root / "Aggregated_Subsets"
    assert catalog["20"]["findings"] == ["Eosinophil", "Lymphocyte", "Neutrophil"]  # subset 18's cells
    for sid in MEDMAT_IDS:
        entry = catalog[sid]
        records = read(agg / f"Subset--{sid}-train.json") + read(agg / f"Subset--{sid}-test.json")
        if sid not in MULTI_IDS:
            assert "findings" not in entry
            assert all(r["caption"] in synth.MEDMAT_TASK_LABELS[entry["task"]] for r in records)
            continue
        findings = synth.MEDMAT_MULTI_LABEL_FINDINGS[sid]
        assert 2 <= len(findings) <= 4 and entry["findings"] == findings
        observed = {r["caption"] for r in records}
        assert observed == set(entry["labels"]) == set(synth.multi_label_sets(findings))
        for r in records:
            assert set(r) == FIELDS and r["caption"] == r["Answer"]
            parts = r["caption"].split(", ")
            if r["caption"] != "Normal":
                assert 1 <= len(parts) <= 2 and set(parts) <= set(findings)
                assert r["caption"] == canonical(parts)  # one written order per set
            _, options = parse_question_choice(r["Question-choice"])
            assert set(options) <= observed and len(set(options)) == len(options) == 4
            assert options[LETTERS.index(r["Answer-choice"])] == r["caption"]
            assert r["image"].startswith(f"med-mat/Synth {sid} ") and (root / r["image"]).is_file()
        counts = Counter(r["caption"] for r in records)
        pairs = [s for s in observed if ", " in s]
        assert pairs and max(counts[s] for s in pairs) <= min(counts[f] for f in findings)  # pairs rarer


def test_multi_label_images_show_every_finding_apart():
    cfg = multi_cfg()
    pool = cfg.classification_labels()
    by_name: dict[tuple[str, str], synth.Finding] = {}
    for spec in cfg.subsets():
        if not spec.findings:
            continue
        looks = {name: synth.finding_for(spec.task, name, pool[spec.task]) for name in spec.findings}
        assert len(set(looks.values())) == len(looks), spec.id  # each finding keeps its own look
        for name, look in looks.items():
            assert by_name.setdefault((spec.task, name), look) == look
        for seed in (0, 1, 2):
            drawn = {}
            for label_set in spec.labels:
                names = synth.parse_label_set(label_set)
                img, masks = synth.render_findings(
                    spec.modality, spec.area, [looks[n] for n in names], random.Random(seed), 32
                )
                assert len(masks) == len(names)
                for mask, name in zip(masks, names, strict=True):
                    assert mask.sum() >= 6, (spec.id, label_set, name)  # visible at 32 px
                    painted = pixels(img)[mask]  # whole, in its own colour
                    assert np.all(painted == painted[0])
                    colour = np.array(looks[name].colour)
                    assert np.linalg.norm(painted[0] - colour) <= 0.1 * np.linalg.norm(colour) + 2
                if len(masks) == 2:
                    assert not np.any(masks[0] & masks[1]), (spec.id, label_set)  # apart
                drawn[label_set] = pixels(img)
            for a in spec.labels:
                for b in spec.labels:
                    if a < b:
                        assert np.any(drawn[a] != drawn[b], axis=-1).sum() >= 5, (spec.id, a, b)
    # a finding of a label set looks as in the single-label subsets of its tag: 20's cells as 18's
    cells = synth.MEDMAT_TASK_LABELS["Recognition"]
    for name in cells:
        assert by_name[("Recognition", name)] == synth.finding_for("Recognition", name, cells)


def test_multi_label_world_reads_back(multi_world):
    source = MedMatSource(DataConfig(), multi_world)
    catalog = build_catalog(source)
    assert catalog.bad.total == 0, catalog.bad.report()
    for sid in MULTI_IDS:
        entry = catalog.subsets[sid]
        sets = synth.multi_label_sets(synth.MEDMAT_MULTI_LABEL_FINDINGS[sid])
        assert sorted(entry.labels) == sorted(sets)
        assert entry.train + entry.test == 32 and entry.test == 8
    bad = BadSamples()
    idx = source.index("31", bad)
    for _, sample in source.load_checked(idx, list(range(len(idx))), bad):
        assert sample.options[LETTERS.index(sample.answer)] == sample.label
        assert sample.label == canonical(synth.parse_label_set(sample.label) or ["Normal"])
    assert bad.total == 0


def test_multi_label_world_is_deterministic(multi_world, tmp_path):
    write_release(multi_cfg(), tmp_path / "again")
    assert digests(multi_world) == digests(tmp_path / "again")


def test_multi_label_switch_off_keeps_todays_world(medmat_world, multi_world, tmp_path):
    root, _ = medmat_world
    assert records_digest(root) == MEDMAT_RECORDS_DIGEST
    # switched on, only the five multi-label subsets change (and the catalog that lists them)
    off = tmp_path / "off"
    write_release(dataclasses.replace(multi_cfg(), medmat_multi_label=False), off)
    a, b = digests(off), digests(multi_world)
    changed = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
    assert {k.split(" ")[1] for k in changed if k.startswith("med-mat/")} == set(MULTI_IDS)
    assert {k for k in changed if not k.startswith("med-mat/")} == {
        "cgmed_catalog.json",
        *(
            f"Aggregated_Subsets/Subset--{sid}-{split}.json"
            for sid in MULTI_IDS
            for split in ("train", "test")
        ),
    }
    assert "medmat_multi_label" not in json.loads((off / "cgmed_catalog.json").read_text())["config"]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"medmat_multi_label": True}, "synth.medmat_multi_label"),  # grid layout
        ({"layout": "medmat", "medmat_multi_label": "yes"}, "synth.medmat_multi_label"),
        (
            {"layout": "medmat", "medmat_multi_label": True, "images_per_subset": 30},
            "synth.images_per_subset",
        ),
    ],
)
def test_bad_multi_label_config(kwargs, key):
    with pytest.raises(ConfigError) as err:
        SynthConfig(**kwargs)
    assert err.value.key == key
