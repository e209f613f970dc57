"""The selection rules know the target's triplet, and one rule resolves same-triplet subsets.

Med-MAT ships six pairs of subsets with one MAT triplet (14/15, 16/34, 18/20, 25/35, 27/36,
29/37). A target is a triplet never seen in training, so ``related``, ``unrelated`` and ``all``
never select a subset with the target's exact triplet; ``split.same_triplet`` says whether a MAT
pattern takes every subset of a triplet (``merge``) or only the lowest id (``first``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cgmed.config import build_config
from cgmed.data.build import build_split
from cgmed.data.source import DataConfig, MedMatSource
from cgmed.data.split import SplitConfig, resolve_ids, select_train
from cgmed.data.subsets import MEDMAT_SUBSETS
from cgmed.data.synth import SynthConfig, write_release
from cgmed.data.vocab import Vocabulary
from cgmed.errors import ConfigError
from tests.conftest import make_release

SAME_TRIPLET_PAIRS = [("14", "15"), ("16", "34"), ("18", "20"), ("25", "35"), ("27", "36"), ("29", "37")]
VOCAB = Vocabulary()
CLASSIFICATION = {sid: info for sid, info in MEDMAT_SUBSETS.items() if info.status in ("ID", "OOD")}

# X-ray Bones Level (25, 35), X-ray Bones State (26), X-ray Bones Diseases (27, 36), X-ray Lung
# COVID (28); sharing nothing with them: Co Cervix Quality (01), Der Skin Cancer (07), DP Mouth
# State (09), Mic Cell Cancer (21)
BONES_SPEC = {
    sid: {"labels": ["Normal", f"Finding {sid}"], "train": 6, "test": 2}
    for sid in ("01", "07", "09", "21", "25", "26", "27", "28", "35", "36")
}
UNRELATED = ["01", "07", "09", "21"]


def split_cfg(**kw) -> SplitConfig:
    return build_config(SplitConfig, kw, "split")


@pytest.fixture
def bones(tmp_path) -> MedMatSource:
    return MedMatSource(DataConfig(), make_release(tmp_path / "release", BONES_SPEC))


def test_the_pairs_share_their_triplet():
    for a, b in SAME_TRIPLET_PAIRS:
        assert MEDMAT_SUBSETS[a].triplet == MEDMAT_SUBSETS[b].triplet
    triplets = [info.triplet for info in CLASSIFICATION.values()]
    shared = {t for t in triplets if triplets.count(t) > 1}
    assert len(shared) == len(SAME_TRIPLET_PAIRS)


@pytest.mark.parametrize(
    ("target", "rule", "expected"),
    [
        ("27", "related", ["25", "26", "28", "35"]),  # 36 is X-ray Bones Diseases too
        ("27", "all", [*UNRELATED, "25", "26", "28", "35"]),
        ("27", "unrelated", UNRELATED),
        ("36", "related", ["25", "26", "28", "35"]),
        ("25", "related", ["26", "27", "28", "36"]),  # 35 is X-ray Bones Level too
        ("25", "all", [*UNRELATED, "26", "27", "28", "36"]),
    ],
)
def test_rules_never_select_the_targets_triplet(bones, target, rule, expected):
    assert select_train(rule, [], [target], bones.subsets(), bones.vocab, ["ID", "OOD"]) == expected


def test_a_target_with_a_same_triplet_sibling_builds_and_passes_the_audit(bones):
    for rule in ("related", "all"):
        built = build_split(bones, DataConfig(), split_cfg(targets=["27"], train=rule, cap_per_subset=4))
        assert "36" not in built.train_subsets and built.audit.passed
    # the size reference of Baseline+ follows the same rule
    built = build_split(
        bones,
        DataConfig(),
        split_cfg(targets=["27"], train="unrelated", match_size_of="related", cap_per_subset=1),
    )
    assert built.train_subsets == UNRELATED and len(built.train) == 4  # 25, 26, 28, 35: one each


def test_an_explicit_list_is_taken_as_written_and_the_audit_names_it(bones):
    from cgmed.errors import LeakageError

    with pytest.raises(LeakageError, match="triplet of target 27"):
        build_split(bones, DataConfig(), split_cfg(targets=["27"], train=["36"], cap_per_subset=4))


@pytest.mark.parametrize(
    ("same_triplet", "pattern", "expected"),
    [
        ("merge", {"modality": "X-ray", "area": "Bones", "task": "Level"}, ["25", "35"]),
        ("first", {"modality": "X-ray", "area": "Bones", "task": "Level"}, ["25"]),
        ("merge", {"modality": "X-ray", "area": "Bones"}, ["25", "26", "27", "35", "36"]),
        ("first", {"modality": "X-ray", "area": "Bones"}, ["25", "26", "27"]),  # one per triplet
        ("first", {"modality": "FP", "area": "Fundus", "task": "Level"}, ["16"]),
        ("first", {"modality": "Mic", "area": "Cell", "task": "Recognition"}, ["18"]),
        ("merge", {"modality": "X-ray", "area": "Breast", "task": "Diseases"}, ["29", "37"]),
    ],
)
def test_same_triplet_switch(same_triplet, pattern, expected):
    assert resolve_ids([pattern], CLASSIFICATION, VOCAB, "k", same_triplet=same_triplet) == expected
    # an id names one subset whatever the switch says
    assert resolve_ids(["35"], CLASSIFICATION, VOCAB, "k", same_triplet=same_triplet) == ["35"]


def test_same_triplet_switch_in_a_build(bones):
    pattern = {"modality": "X-ray", "area": "Bones", "task": "Level"}
    for same_triplet, expected in (("merge", ["25", "28", "35"]), ("first", ["25", "28"])):
        cfg = split_cfg(targets=["26"], train=[pattern, "28"], same_triplet=same_triplet, cap_per_subset=4)
        assert build_split(bones, DataConfig(), cfg).train_subsets == expected
    with pytest.raises(ConfigError, match="split.same_triplet"):
        split_cfg(same_triplet="lowest")


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("standin")
    write_release(SynthConfig(layout="medmat", images_per_subset=16, image_size=16, test_fraction=0.25), root)
    return root


def test_every_classification_subset_of_the_standin_can_be_a_related_target(standin):
    data = DataConfig()
    source = MedMatSource(data, standin)
    assert sorted(source.subsets()) == sorted(CLASSIFICATION)
    for sid, info in source.subsets().items():
        built = build_split(source, data, split_cfg(targets=[sid], train="related", cap_per_subset=2))
        assert built.audit.passed and built.train and built.test, sid
        trained = {source.subsets()[t].triplet for t in built.train_subsets}
        assert info.triplet not in trained, sid


def test_a_rule_that_selects_nothing_is_refused(small_release, tmp_path):
    """An empty training manifest comes only from split.train=none, never from a rule by accident."""
    from cgmed.data.build import build_from_config
    from cgmed.data.source import DataConfig
    from cgmed.errors import ConfigError

    data = DataConfig(root=str(small_release))
    for rule in ("unrelated", "all"):
        split = SplitConfig(targets=["04"], train=rule, train_status=["seg"])
        with pytest.raises(ConfigError, match=rf"the rule '{rule}' selects no subset") as err:
            build_from_config(data, split, None, tmp_path / rule)
        assert err.value.key == "split.train"
    meta = build_from_config(data, SplitConfig(targets=["04"], train="none"), None, tmp_path / "none")
    assert meta["sizes"]["train"] == 0
