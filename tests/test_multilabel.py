"""Multi-label subsets: a label set is canonical (order-free) wherever labels are compared or
counted, and a multi-label test set is balanced per individual label, never smaller than
``split.min_test_samples`` when the data allow it; small target test sets carry a warning."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from cgmed.config import as_dict, build_config
from cgmed.data.build import build_split, resolve_root, write_split
from cgmed.data.choices import canonical_label, label_parts, make_options, same_label
from cgmed.data.sampling import greedy_per_label
from cgmed.data.source import DataConfig, MedMatSource
from cgmed.data.split import SplitConfig
from cgmed.data.synth import SynthConfig, write_release
from tests.conftest import SMALL_SPEC, make_release, medmat_record, write_png

# X-ray Chest Diseases (31) as in the release: single findings common, pairs rare, and one pair
# written in both orders ("Effusion, Nodule" and "Nodule, Effusion" are one label set).
CHEST_TEST = {
    "Normal": 60,
    "Effusion": 50,
    "Nodule": 40,
    "Cardiomegaly": 45,
    "Pneumothorax": 30,
    "Effusion, Nodule": 3,
    "Nodule, Effusion": 2,
    "Cardiomegaly, Effusion": 1,
    "Nodule, Pneumothorax": 2,
}
CHEST_TRAIN = {label: 2 * n for label, n in CHEST_TEST.items()}


def write_multi_label_subset(root: Path, sid: str, split: str, counts: dict[str, int], seed: int = 0) -> None:
    """``Subset--{sid}-{split}.json`` with ``counts[label]`` records per comma-joined label, written
    as given; each question offers the record's label and up to three other labels of the subset."""
    labels = list(counts)
    records = []
    for k, label in enumerate(labels):
        # one spelling of each other label set (a question never offers one set twice)
        others = list({canonical_label(x): x for x in labels if not same_label(x, label)}.values())
        for j in range(counts[label]):
            rel = f"med-mat/Set {sid}/{split}/{k}-{j}.png"
            # seeds far above conftest's (one per image from 1): no image shares bytes with another
            write_png(root / rel, seed + len(records) + (100_000 if split == "train" else 200_000))
            options = sorted([label, *random.Random(f"{label}{j}").sample(others, min(3, len(others)))])
            records.append(medmat_record(len(records), label, options, rel))
    agg = root / "Aggregated_Subsets"
    agg.mkdir(parents=True, exist_ok=True)
    (agg / f"Subset--{sid}-{split}.json").write_text(json.dumps(records), encoding="utf-8")


def multi_label_release(root: Path, test: dict[str, int] = CHEST_TEST) -> Path:
    """The small single-label world of conftest plus the multi-label subset 31."""
    make_release(root, SMALL_SPEC)
    write_multi_label_subset(root, "31", "train", CHEST_TRAIN)
    write_multi_label_subset(root, "31", "test", test)
    return root


def split_cfg(**kw) -> SplitConfig:
    return build_config(SplitConfig, kw, "split")


def build_and_write(root: Path, out: Path, **kw) -> tuple[object, dict]:
    data = DataConfig()
    source = MedMatSource(data, root)
    built = build_split(source, data, split_cfg(**kw))
    return built, write_split(built, out, {}, source)


def individual_counts(samples) -> Counter:
    return Counter(part for s in samples for part in label_parts(s.label))


# ------------------------------------------------------------------ one canonical label set


@pytest.mark.parametrize(
    ("label", "canonical"),
    [
        ("Nodule, Effusion", "Effusion, Nodule"),
        ("Effusion, Nodule", "Effusion, Nodule"),
        ("  Nodule ,effusion  ", "effusion, Nodule"),
        ("Nodule, Nodule", "Nodule"),
        ("Squamous  cell carcinoma", "Squamous cell carcinoma"),
        ("Normal", "Normal"),
        ("Level 1", "Level 1"),
    ],
)
def test_canonical_label(label, canonical):
    assert canonical_label(label) == canonical
    assert canonical_label(canonical) == canonical  # one spelling: canonical is a fixed point


def test_label_sets_compare_order_free():
    assert same_label("Nodule, Effusion", "effusion, nodule")
    assert not same_label("Effusion, Nodule", "Effusion")
    assert label_parts("Nodule, Effusion") == ("Effusion", "Nodule")


def test_options_never_offer_one_label_set_twice():
    labels = ["Effusion, Nodule", "Nodule, Effusion", "Normal", "Nodule", "Effusion"]
    for seed in range(20):
        options, letter = make_options("Nodule, Effusion", labels, random.Random(seed))
        assert len({canonical_label(o) for o in options}) == len(options) == 4
        assert options[ord(letter) - 65] == "Effusion, Nodule"  # the canonical spelling
    # a single-label subset is unchanged: same options, same letter as before label sets
    opts = ["Cyst", "Normal", "Stone", "Tumor"]
    assert make_options("Cyst", opts, random.Random(3)) == make_options(
        "Cyst", list(reversed(opts)), random.Random(3)
    )


# ------------------------------------------------------------------ the per-label rule


def test_greedy_per_label_balances_individual_labels():
    # records 0-5 hold one label each, 6-7 a pair; the rarest label (C) has 3 records
    parts = {0: ("A",), 1: ("A",), 2: ("A",), 3: ("B",), 4: ("B",), 5: ("C",), 6: ("A", "C"), 7: ("B", "C")}
    picked = greedy_per_label(list(parts), parts, cap=None, minimum=0)
    counts = Counter(p for pos in picked for p in parts[pos])
    assert min(counts.values()) == 3 and counts["C"] == 3 and len(set(picked)) == len(picked)
    # a minimum above what balance gives draws on, least-present label first, until records run out
    assert sorted(greedy_per_label(list(parts), parts, cap=None, minimum=100)) == list(range(8))
    # the cap per label stops the draw, whatever the minimum
    capped = greedy_per_label(list(parts), parts, cap=1, minimum=100)
    assert max(Counter(p for pos in capped for p in parts[pos]).values()) <= 2
    assert greedy_per_label([], {}, cap=None, minimum=10) == []


def test_a_multi_label_target_gets_a_large_per_label_test_set(tmp_path):
    root = multi_label_release(tmp_path / "release")
    built, meta = build_and_write(root, tmp_path / "out", targets=["31"], train="related", cap_per_subset=20)
    info = meta["test_sets"]["31"]
    assert info["test_balance"] == "per_label" and info["n"] == len(built.test) >= 100
    assert "warning" not in info
    counts = individual_counts(built.test)
    assert info["individual_labels"] == dict(sorted(counts.items()))
    assert min(counts.values()) >= 32  # Pneumothorax, the rarest label, is in 32 test records
    # one label set whatever its order: counted once, spelt canonically in the manifests
    assert "Nodule, Effusion" not in meta["counts"]["test"]["31"]
    for s in built.test:  # the release's own options are kept (split.options.mode=keep)
        assert s.options[ord(s.answer) - 65] == s.label
        assert len({canonical_label(o) for o in s.options}) == len(s.options)
    # rebuilt questions write every label set canonically
    rebuilt, _ = build_and_write(
        root, tmp_path / "rebuilt", targets=["31"], train="none", options={"mode": "rebuild"}
    )
    assert [s.id for s in rebuilt.test] == [s.id for s in built.test]
    for s in rebuilt.test:
        assert s.label == canonical_label(s.label) == s.options[ord(s.answer) - 65]
        assert all(o == canonical_label(o) for o in s.options) and len(set(s.options)) == len(s.options)


def test_the_per_label_test_set_is_deterministic_and_seeded(tmp_path):
    root = multi_label_release(tmp_path / "release")
    ids = [
        [
            s.id
            for s in build_and_write(root, tmp_path / f"out{k}", targets=["31"], train="none", seed=seed)[
                0
            ].test
        ]
        for k, seed in enumerate((1, 1, 2))
    ]
    assert ids[0] == ids[1] and ids[0] != ids[2]


def test_min_test_samples_and_the_small_test_set_warning(tmp_path, capsys):
    root = multi_label_release(tmp_path / "release")
    built, meta = build_and_write(root, tmp_path / "a", targets=["31"], train="none", min_test_samples=0)
    assert min(individual_counts(built.test).values()) >= 32 and meta["test_sets"]["31"]["n"] < 200
    # a small multi-label subset: every test record, and a warning
    small = multi_label_release(tmp_path / "small", {"Normal": 10, "Effusion": 8, "Nodule, Effusion": 2})
    built, meta = build_and_write(small, tmp_path / "b", targets=["31"], train="none")
    assert len(built.test) == 20 and meta["test_sets"]["31"]["test_balance"] == "per_label"
    warning = meta["test_sets"]["31"]["warning"]
    assert warning == (
        "target 31 has 20 test questions, fewer than 100: too small to tell arms apart "
        "(add test data, or pick another target)"
    )
    assert warning in meta["notes"]
    # a single-label target keeps the paper's strict balance, and is warned about too
    built, meta = build_and_write(root, tmp_path / "c", targets=["04"], train="related", cap_per_subset=4)
    info = meta["test_sets"]["04"]
    assert info["test_balance"] == "per_label_set" and info["n"] == 6 and "fewer than 100" in info["warning"]
    assert set(meta["test_sets"]) == {"04"}  # targets only, not the seen test sets


def test_a_trained_multi_label_subset_uses_label_sets_in_training_and_per_label_in_seen_test(tmp_path):
    root = multi_label_release(tmp_path / "release")
    built, meta = build_and_write(root, tmp_path / "out", targets=["30"], train=["31"], cap_per_subset=90)
    train = Counter(canonical_label(s.label) for s in built.train)
    assert train["Effusion, Nodule"] == 10  # 6 + 4 records of one label set, both orders, all taken
    assert sum(train.values()) == 90 and "Nodule, Effusion" not in meta["counts"]["train"]["31"]
    assert len([s for s in built.seen_test if s.subset == "31"]) >= 100


def test_a_bad_test_image_is_replaced_by_the_per_label_rule(tmp_path):
    root = multi_label_release(tmp_path / "release")
    records = json.loads((root / "Aggregated_Subsets" / "Subset--31-test.json").read_text())
    pair = next(r for r in records if r["Answer"] == "Nodule, Pneumothorax")
    (root / pair["image"]).unlink()
    data = DataConfig(on_bad_sample="skip")
    built = build_split(MedMatSource(data, root), data, split_cfg(targets=["31"], train="none"))
    assert built.bad.total == 1 and len(built.test) >= 100
    assert min(individual_counts(built.test).values()) >= 31


# ------------------------------------------------------------------ the synthetic stand-in


def test_the_multi_label_switch_keeps_the_cache_folder_of_existing_worlds(tmp_path):
    cfg = SynthConfig(layout="medmat", images_per_subset=32, image_size=16)
    fields = {k: v for k, v in as_dict(cfg).items() if k not in ("medmat_detection", "medmat_multi_label")}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    existing = tmp_path / f"synth-{key}"  # the folder the world had before the switch existed
    existing.mkdir()
    (existing / "cgmed_catalog.json").write_text("{}")
    data = DataConfig(cache_dir=str(tmp_path))
    assert resolve_root(data, cfg) == existing.resolve()
    assert resolve_root(data, dataclasses.replace(cfg, medmat_multi_label=False)) == existing.resolve()


@pytest.fixture(scope="module")
def multi_label_standin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("standin")
    cfg = SynthConfig(
        layout="medmat", images_per_subset=48, image_size=16, test_fraction=0.5, medmat_multi_label=True
    )
    write_release(cfg, root)
    return root


@pytest.mark.parametrize("target", ["15", "20", "31", "33", "37"])
def test_multi_label_targets_of_the_standin(multi_label_standin, target, tmp_path):
    built, meta = build_and_write(
        multi_label_standin,
        tmp_path / "out",
        targets=[target],
        train="related",
        cap_per_subset=4,
        min_test_samples=20,
    )
    info = meta["test_sets"][target]
    assert info["test_balance"] == "per_label" and built.audit.passed
    assert info["n"] >= 20 and "fewer than 100" in info["warning"]
    labels = meta["counts"]["test"][target]
    assert all(label == canonical_label(label) for label in labels)
    assert len(info["individual_labels"]) >= 3  # Normal and at least two findings
