"""Derived subsets (data.derived): labels, exact label shares, source datasets, hidden parents,
and the splits and audits built on them (the paper's Table 8 construction)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from cgmed.config import build_config
from cgmed.data.build import build_split
from cgmed.data.source import BadSamples, DataConfig, open_source
from cgmed.data.split import SplitConfig
from cgmed.errors import ConfigError, LeakageError

# Table 8: subset 28 (X-ray Lung COVID / Normal / Pneumonia) split into X-ray COVID and X-ray
# Pneumonia, each with its own half of the Normal images
TABLE8 = [
    {
        "id": "28c",
        "source": "28",
        "task": "COVID",
        "labels": ["COVID", "Normal"],
        "share": {"label": "Normal", "part": 0, "parts": 2},
    },
    {
        "id": "28p",
        "source": "28",
        "task": "Pneumonia",
        "labels": ["Normal", "Pneumonia"],
        "share": {"label": "Normal", "part": 1, "parts": 2},
    },
]


def data_cfg(root: Path, derived=TABLE8, **kw) -> DataConfig:
    node = {"root": str(root), "derived": derived, "extra_elements": {"task": ["Pneumonia"]}, **kw}
    return build_config(DataConfig, node, "data")


def positions(idx, label: str | None = None, test: int | None = None) -> set[tuple[int, int]]:
    """(file, offset) of each record: where it lives in the parent's files."""
    return {
        (str(idx.files[idx.file_id[p]].name), idx.offset[p])
        for p in range(len(idx))
        if (label is None or idx.labels[idx.label_id[p]] == label)
        and (test is None or idx.is_test[p] == test)
    }


def test_halves_are_exact_disjoint_and_cover_the_label(small_release):
    src = open_source(data_cfg(small_release), small_release)
    subsets = src.subsets()
    assert "28" not in subsets and {"28c", "28p"} <= set(subsets)  # the parent is hidden from the rules
    assert subsets["28c"].triplet == ("X-ray", "Lung", "COVID")
    assert subsets["28p"].triplet == ("X-ray", "Lung", "Pneumonia") and subsets["28p"].status == "ID"
    c, p = src.index("28c", BadSamples()), src.index("28p", BadSamples())
    parent = src.base.index("28", BadSamples())
    assert c.labels == ["COVID", "Normal"] and p.labels == ["Normal", "Pneumonia"]
    for test in (0, 1):
        n_normal = len(positions(parent, "Normal", test))  # 10 train, 3 test
        mine, theirs = positions(c, "Normal", test), positions(p, "Normal", test)
        assert len(mine) == n_normal // 2 and len(theirs) == n_normal - n_normal // 2
        assert not mine & theirs and mine | theirs == positions(parent, "Normal", test)
        assert positions(c, "COVID", test) == positions(parent, "COVID", test)
    again = open_source(data_cfg(small_release), small_release).index("28c", BadSamples())
    assert positions(again) == positions(c)  # seeded: the same halves every time


def test_samples_carry_the_derived_identity_and_fresh_questions(small_release):
    src = open_source(data_cfg(small_release), small_release)
    idx = src.index("28p", BadSamples())
    samples = [s for _, s in src.load(idx, list(range(len(idx))))]
    assert {s.subset for s in samples} == {"28p"} and {s.task for s in samples} == {"Pneumonia"}
    assert all(s.id.startswith("28p-") for s in samples)
    assert Counter(s.label for s in samples) == Counter({"Pneumonia": 13, "Normal": 7})
    assert all(s.options == [] for s in samples)  # the parent's 3 options named COVID: rebuilt later


def test_split_on_derived_subsets_and_the_audit(small_release):
    data = data_cfg(small_release)
    src = open_source(data, small_release)
    built = build_split(src, data, SplitConfig(targets=["28c"], train=["28p", "03"], cap_per_subset=100))
    assert {s.subset for s in built.train} == {"28p", "03"} and {s.subset for s in built.test} == {"28c"}
    assert all(sorted(s.options) == ["COVID", "Normal"] for s in built.test)
    assert all(sorted(s.options) == ["Normal", "Pneumonia"] for s in built.train if s.subset == "28p")
    assert not {s.image for s in built.train} & {s.image for s in built.test}
    # the related rule sees the X-ray Pneumonia half and CT COVID, never the hidden parent
    rel = build_split(src, data, SplitConfig(targets=["28c"], train="related", cap_per_subset=100))
    assert "28p" in rel.train_subsets and "28" not in rel.train_subsets
    # training on the parent next to a derived target is leakage: the parent holds the target's
    # Pneumonia samples under another triplet (X-ray Lung COVID), so only the parent check sees it
    shown = data_cfg(small_release, keep_derived_sources=True)
    src2 = open_source(shown, small_release)
    assert "28" in src2.subsets()
    with pytest.raises(LeakageError, match=r"28-train-\d+: subset 28 holds 20 records of target 28p"):
        build_split(src2, shown, SplitConfig(targets=["28p"], train=["28"], cap_per_subset=100))
    # the other way round: the parent as target, a child (its own records under a new triplet) in training
    with pytest.raises(LeakageError, match="subset 28p holds 20 records of target 28"):
        build_split(src2, shown, SplitConfig(targets=["28"], train=["28p", "03"], cap_per_subset=100))


def test_siblings_sharing_records_are_refused(small_release):
    # both keep every Normal image (no share): the X-ray Pneumonia half would train on X-ray COVID's Normals
    overlapping = [
        {"id": "28c", "source": "28", "task": "COVID", "labels": ["COVID", "Normal"]},
        {"id": "28p", "source": "28", "task": "Pneumonia", "labels": ["Normal", "Pneumonia"]},
    ]
    data = data_cfg(small_release, overlapping)
    src = open_source(data, small_release)
    with pytest.raises(LeakageError, match="subset 28p holds 13 records of target 28c"):
        build_split(src, data, SplitConfig(targets=["28c"], train=["28p"], cap_per_subset=100))
    # with disjoint halves (Table 8) the same selection passes
    ok = data_cfg(small_release)
    assert build_split(
        open_source(ok, small_release), ok, SplitConfig(targets=["28c"], train=["28p"])
    ).audit.passed


def test_ids_are_normalised_and_recorded(small_release):
    derived = [{"id": 9, "source": 3, "task": "COVID", "labels": ["COVID"]}]
    src = open_source(data_cfg(small_release, derived), small_release)
    info = src.subsets()["09"]  # 9 -> "09", as targets and rules spell ids
    assert info.derived_from == "03" and info.to_json()["derived_from"] == "03"
    assert "03" not in src.subsets()


def test_source_dataset_filter(small_release):
    kept = 0
    for split in ("train", "test"):
        path = small_release / "Aggregated_Subsets" / f"Subset--03-{split}.json"
        records = json.loads(path.read_text())
        for i, r in enumerate(records):
            r["data-no"] = "5" if i % 3 == 0 else "6"
            kept += r["data-no"] == "5"
        path.write_text(json.dumps(records))
    derived = [{"id": "03a", "source": "03", "task": "COVID", "data_no": ["5"]}]
    src = open_source(data_cfg(small_release, derived), small_release)
    idx = src.index("03a", BadSamples())
    samples = [s for _, s in src.load(idx, list(range(len(idx))))]
    assert len(samples) == kept and {s.data_no for s in samples} == {"5"}
    assert {s.source_split for s in samples} == {"train", "test"} and all(s.subset == "03a" for s in samples)
    nothing = [{"id": "03b", "source": "03", "task": "COVID", "data_no": ["99"]}]
    with pytest.raises(ConfigError, match=r"data.derived\[0\].data_no"):
        open_source(data_cfg(small_release, nothing), small_release).index("03b", BadSamples())


def test_errors_name_the_key(small_release):
    def opened(derived, **kw):
        return open_source(data_cfg(small_release, derived, **kw), small_release)

    with pytest.raises(ConfigError, match=r"data.derived\[0\].source.*no subset '99'"):
        opened([{"id": "x", "source": "99", "task": "COVID"}])
    with pytest.raises(ConfigError, match=r"data.derived\[0\].id.*already a subset"):
        opened([{"id": "03", "source": "28", "task": "COVID"}])
    with pytest.raises(ConfigError, match=r"label 'Flu' is not a label of subset 28"):
        opened([{"id": "x", "source": "28", "task": "COVID", "labels": ["Flu"]}]).index("x", BadSamples())
    with pytest.raises(ConfigError, match=r"data.derived\[0\].task"):
        opened([{"id": "x", "source": "28", "task": "Influenza"}])
    with pytest.raises(ConfigError, match=r"data.derived\[0\].share"):
        data_cfg(
            small_release,
            [{"id": "x", "source": "28", "task": "COVID", "share": {"label": "Normal", "part": 2}}],
        )
    with pytest.raises(ConfigError, match="ids repeat"):
        data_cfg(small_release, [TABLE8[0], TABLE8[0]])
