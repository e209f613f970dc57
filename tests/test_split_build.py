"""CG split rules, caps and balance, question writing, the leakage audit and determinism."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from cgmed.config import build_config
from cgmed.data.build import build_split, write_split
from cgmed.data.choices import ANSWER_SUFFIX
from cgmed.data.source import DataConfig, MedMatSource
from cgmed.data.split import SplitConfig, select_train
from cgmed.errors import ConfigError, DataError, LeakageError
from tests.conftest import make_release


def split_cfg(**kw) -> SplitConfig:
    return build_config(SplitConfig, kw, "split")


def build(root: Path, data: DataConfig | None = None, **kw):
    data = data or DataConfig()
    return build_split(MedMatSource(data, root), data, split_cfg(**kw))


@pytest.mark.parametrize(
    ("rule", "without", "expected"),
    [
        ("related", [], ["03", "05", "07", "28", "30"]),
        ("unrelated", [], ["16"]),
        ("all", [], ["03", "05", "07", "16", "28", "30"]),
        ("none", [], []),
        ("related", ["modality"], ["07", "28", "30"]),
        ("related", ["area"], ["05", "07"]),
        ("related", ["task"], ["30"]),
    ],
)
def test_selection_rules_for_ct_lung_cancer(small_release, rule, without, expected):
    # Target 04 = CT Lung Cancer; Cancer also counts as State (merge rule), so COVID (03, 28)
    # and State (05) subsets share the task element; 07 (Der Skin Cancer) shares only the task.
    src = MedMatSource(DataConfig(), small_release)
    got = select_train(rule, without, ["04"], src.subsets(), src.vocab, ["ID", "OOD"])
    assert got == expected


def test_patterns_and_status_filter(small_release):
    src = MedMatSource(DataConfig(), small_release)
    subsets, vocab = src.subsets(), src.vocab
    assert select_train([{"modality": "xray", "area": "lung"}], [], [], subsets, vocab, []) == ["28", "30"]
    assert select_train([{"task": "State"}], [], [], subsets, vocab, []) == ["03", "04", "05", "07", "28"]
    # 04, 05 are OOD in the paper's table: a rule with train_status=[ID] leaves them out
    assert select_train("all", [], ["03"], subsets, vocab, ["ID"]) == ["07", "16", "28", "30"]


def test_built_split_contents(small_release):
    built = build(
        small_release, targets=[{"modality": "CT", "area": "Lung", "task": "Cancer"}], cap_per_subset=10
    )
    assert built.targets == ["04"] and built.train_subsets == ["03", "05", "07", "28", "30"]
    per = Counter((s.subset, s.label) for s in built.train)
    assert per[("28", "COVID")] == 4 and per[("28", "Normal")] == 3 and per[("28", "Pneumonia")] == 3
    assert per[("03", "COVID")] == 5 and per[("03", "Normal")] == 5
    assert len(built.train) == 50
    assert Counter(s.label for s in built.test) == {
        "Adenocarcinoma": 2,
        "Normal": 2,
        "Squamous cell carcinoma": 2,
    }
    assert {s.subset for s in built.test} == {"04"}
    seen = Counter((s.subset, s.label) for s in built.seen_test)
    assert seen[("05", "Hemorrhage")] == seen[("05", "Normal")] == 4
    for s in built.train + built.test:
        assert s.question.endswith("\n" + ANSWER_SUFFIX)
        assert s.options[ord(s.answer) - 65] == s.label
        assert f"{s.answer}: {s.label}" in s.question
    assert built.audit.passed and built.audit.checks["image_hashes"] > 50


def test_test_sets_are_strictly_label_balanced(small_release):
    built = build(small_release, targets=["16", "28"], train="none", test_per_label=2)
    counts = Counter((s.subset, s.label) for s in built.test)
    assert counts == {("16", f"Level {i}"): 2 for i in range(3)} | {
        ("28", lab): 2 for lab in ("COVID", "Normal", "Pneumonia")
    }
    assert built.train == []


def test_match_size_of_draws_as_many_unrelated_samples(small_release):
    related = build(small_release, targets=["04"], train=["30"], cap_per_subset=20)
    plus = build(small_release, targets=["04"], train=["16"], match_size_of=["30"], cap_per_subset=20)
    assert len(plus.train) == len(related.train) == 18
    assert Counter(s.label for s in plus.train) == {"Level 0": 6, "Level 1": 6, "Level 2": 6}
    assert any("size matched to 18" in n for n in plus.notes)
    # Baseline+ as in the paper: Unrelated data, as much as the Related selection has
    with pytest.raises(ConfigError, match="split.match_size_of.*has 20 samples.*must match 94"):
        build(small_release, targets=["04"], train="unrelated", match_size_of="related", cap_per_subset=20)


def test_total_cap(small_release):
    built = build(small_release, targets=["04"], train="all", max_train_samples=25)
    assert len(built.train) == 25
    assert Counter(s.subset for s in built.train) == {"03": 5, "05": 4, "07": 4, "16": 4, "28": 4, "30": 4}


def test_rebuilt_questions_sorted_options(small_release):
    built = build(small_release, targets=["04"], train=["28"], options={"mode": "rebuild", "order": "sorted"})
    for s in built.train:
        assert s.options == sorted(s.options, key=str.lower)
        assert "X-ray" in s.question.splitlines()[0] and "lung" in s.question.splitlines()[0]
    assert len({s.question.splitlines()[0] for s in built.train}) >= 4  # several templates


def test_audit_fails_on_target_in_training_by_id(small_release):
    with pytest.raises(
        LeakageError,
        match=r"(?s)training sample\(s\) reach held-out targets.*04-train-\d+: subset 04 is a held-out target",
    ):
        build(small_release, targets=["04"], train=["03", "04"])


def test_audit_fails_on_same_triplet(tmp_path):
    spec = {
        "01": {"labels": ["a", "b"], "train": 3, "test": 2},
        "02": {"labels": ["a", "b"], "train": 3, "test": 2},
    }
    cat = [
        {"id": "01", "modality": "CT", "area": "Lung", "task": "Cancer"},
        {"id": "02", "modality": "CT", "area": "Lung", "task": "Cancer"},
    ]
    root = make_release(tmp_path / "r", spec, catalog=cat)
    with pytest.raises(
        LeakageError,
        match=r"01-train-\d+: MAT triplet CT Lung Cancer of subset 01 is the triplet of target 02",
    ):
        build(root, targets=["02"], train=["01"])


def test_audit_fails_on_duplicated_image_bytes(small_release):
    clean = build(small_release, targets=["04"], train=["03"])
    victim = clean.test[0]
    trained = next(s for s in clean.train if s.subset == "03")
    shutil.copyfile(victim.image, trained.image)  # same bytes, another subset and path
    with pytest.raises(
        LeakageError, match=rf"{trained.id}: image .* has the same bytes as target test sample {victim.id}"
    ):
        build(small_release, targets=["04"], train=["03"])
    ok = build(small_release, targets=["04"], train=["03"], audit_images=False)
    assert ok.audit.checks["image_hashes"] == 0


def test_same_config_gives_identical_files(small_release, tmp_path):
    metas = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        data = DataConfig()
        src = MedMatSource(data, small_release)
        built = build_split(src, data, split_cfg(targets=["04"], seed=seed, cap_per_subset=5))
        metas.append(write_split(built, tmp_path / name, {"seed": seed}, src))
    for f in ("train.jsonl", "test.jsonl", "seen_test.jsonl"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert metas[0]["content_hash"] == metas[1]["content_hash"] != metas[2]["content_hash"]
    meta = json.loads((tmp_path / "a" / "split_meta.json").read_text())
    assert meta["audit"]["passed"] and meta["sizes"]["train"] == 25
    assert meta["counts"]["train"]["28"] == {"COVID": 2, "Normal": 2, "Pneumonia": 1}
    line = json.loads((tmp_path / "a" / "train.jsonl").read_text().splitlines()[0])
    assert {
        "id",
        "subset",
        "modality",
        "area",
        "task",
        "image",
        "label",
        "question",
        "options",
        "answer",
    } <= set(line)


def test_bad_images_fail_or_are_skipped_and_replaced(small_release):
    first = build(small_release, targets=["04"], train=["28"], cap_per_subset=6)
    Path(first.train[0].image).unlink()
    with pytest.raises(
        DataError, match=r"(?s)1 bad sample\(s\) \(missing image: 1\).*data.on_bad_sample=skip"
    ):
        build(small_release, targets=["04"], train=["28"], cap_per_subset=6)
    skipped = build(
        small_release, DataConfig(on_bad_sample="skip"), targets=["04"], train=["28"], cap_per_subset=6
    )
    assert len(skipped.train) == 6  # replaced by the next sample of the same label
    assert first.train[0].id not in {s.id for s in skipped.train}
    assert skipped.bad.counts == {"missing image": 1}


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"targets": [{"modality": "CTT"}]}, r"split.targets\[0\].modality.*unknown modality 'CTT'"),
        ({"targets": ["99"]}, r"split.targets\[0\].*unknown subset id '99'.*03, 04"),
        ({"targets": [{"modality": "MRI"}]}, r"split.targets\[0\].*matches no subset"),
        ({"targets": [], "train": "related"}, "needs held-out targets"),
        ({"targets": ["16"], "train": "related", "without": ["task"]}, "no subset in the data is related"),
    ],
)
def test_config_errors_before_any_work(small_release, kw, match):
    with pytest.raises(ConfigError, match=f"(?s){match}"):
        build(small_release, **kw)


def test_split_config_validation():
    with pytest.raises(ConfigError, match=r"(?s)split.trian.: unknown key.*valid keys"):
        build_config(SplitConfig, {"trian": "related"}, "split")
    with pytest.raises(ConfigError, match=r"split.train.*expected one of"):
        build_config(SplitConfig, {"train": 3.5}, "split")
    with pytest.raises(ConfigError, match=r"split.without\[0\].*not one of"):
        build_config(SplitConfig, {"without": ["modalty"]}, "split")
    with pytest.raises(ConfigError, match=r"split.targets\[0\]\[0\].*MAT pattern takes keys"):
        build_config(SplitConfig, {"targets": [{"modaltiy": "CT"}]}, "split")
    with pytest.raises(ConfigError, match="split.cap_per_subset"):
        build_config(SplitConfig, {"cap_per_subset": 0}, "split")


def test_target_train_samples_add_the_targets_own_training_portion(small_release):
    built = build(small_release, targets=["04"], train=["28"], cap_per_subset=6, target_train_samples=3)
    own = [s for s in built.train if s.subset == "04"]
    assert len(own) == 3 and {s.source_split for s in own} == {"train"}
    assert Counter(s.label for s in own) == {"Adenocarcinoma": 1, "Normal": 1, "Squamous cell carcinoma": 1}
    assert not {s.id for s in own} & {s.id for s in built.test}
    assert built.audit.passed and any("target_train_samples" in n for n in built.notes)
    # the image check still guards the test set: a target test image copied into its training portion leaks
    shutil.copyfile(built.test[0].image, own[0].image)
    with pytest.raises(LeakageError, match=rf"{own[0].id}: image .* same bytes as target test sample"):
        build(small_release, targets=["04"], train=["28"], cap_per_subset=6, target_train_samples=3)
