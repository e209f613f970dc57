"""The Med-MAT release reader, the conversation reader, the catalog and bad-sample handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cgmed.data.catalog import build_catalog
from cgmed.data.source import BadSamples, ConversationSource, DataConfig, MedMatSource
from cgmed.data.source import in_hashed_test_split as derived_test
from cgmed.errors import ConfigError, DataError
from tests.conftest import SMALL_SPEC, make_release, medmat_record, write_png


def test_medmat_index_counts_and_splits(small_release):
    src = MedMatSource(DataConfig(), small_release)
    assert list(src.subsets()) == sorted(SMALL_SPEC)
    assert src.subsets()["04"].triplet == ("CT", "Lung", "Cancer")  # from the built-in table
    bad = BadSamples()
    idx = src.index("05", bad)
    assert idx.has_test_file and bad.total == 0
    assert idx.label_counts("train") == {"Hemorrhage": 8, "Normal": 8}
    assert idx.label_counts("test") == {"Hemorrhage": 4, "Normal": 4}


def test_subset_without_test_file_is_split_9_to_1_by_image(small_release):
    src = MedMatSource(DataConfig(), small_release)
    idx = src.index("16", BadSamples())
    assert not idx.has_test_file
    n_test, n = len(idx.positions("test")), len(idx)
    assert n == 60 and 1 <= n_test <= 14  # ~10% of 60 by a stable hash
    # the partition is a function of (split_seed, subset, image) only
    samples = dict(src.load(idx, list(range(n))))
    for pos, s in samples.items():
        rel = str(Path(s.image).relative_to(small_release))
        assert bool(idx.is_test[pos]) == derived_test(0, "16", rel, 0.1)
    other = MedMatSource(DataConfig(split_seed=1), small_release).index("16", BadSamples())
    assert list(other.is_test) != list(idx.is_test)


def test_loaded_sample_fields(small_release):
    src = MedMatSource(DataConfig(), small_release)
    idx = src.index("04", BadSamples())
    (_, s), *_ = src.load(idx, [0])
    assert s.subset == "04" and (s.modality, s.area, s.task) == ("CT", "Lung", "Cancer")
    assert Path(s.image).is_absolute() and Path(s.image).exists()
    assert " (" in s.image  # spaces and parentheses survive
    assert s.options[ord(s.answer) - ord("A")] == s.label
    assert s.id == "04-train-0" and s.data_no == "7"


def test_catalog_of_a_release(small_release):
    cat = build_catalog(MedMatSource(DataConfig(), small_release))
    doc = cat.to_json()
    by_id = {e["id"]: e for e in doc["subsets"]}
    assert by_id["28"]["train"] == 30 and by_id["28"]["test"] == 9
    assert by_id["28"]["labels"]["Pneumonia"] == {"train": 10, "test": 3}
    assert doc["totals"]["subsets"] == 7
    table = cat.table()
    assert "28    X-ray    Lung       COVID" in table and "7 subsets" in table


def test_catalog_file_declares_subsets(tmp_path):
    root = make_release(
        tmp_path / "r",
        {"01": {"labels": ["a", "b"], "train": 2, "test": 1}},
        catalog=[{"id": "01", "modality": "PET", "area": "Lung", "task": "Cancer"}],
    )
    doc = json.loads((root / "cgmed_catalog.json").read_text())
    doc["elements"] = {"modality": ["PET"]}
    (root / "cgmed_catalog.json").write_text(json.dumps(doc))
    src = MedMatSource(DataConfig(), root)
    assert src.subsets()["01"].triplet == ("PET", "Lung", "Cancer")


def test_unknown_subset_file_is_named(tmp_path):
    root = make_release(tmp_path / "r", {"03": {"labels": ["a", "b"], "train": 1}})
    (root / "Aggregated_Subsets" / "Subset--99-train.json").write_text("[]")
    with pytest.raises(DataError, match=r"Subset--99-train.json: subset '99' is not a Med-MAT subset"):
        MedMatSource(DataConfig(), root)
    with pytest.raises(ConfigError, match="data.root"):
        MedMatSource(DataConfig(), tmp_path / "missing")


def _inject(root: Path, sid: str, records: list[dict]) -> None:
    path = root / "Aggregated_Subsets" / f"Subset--{sid}-train.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data + records))


def test_bad_records_are_named_and_counted(small_release):
    opts = ["COVID", "Normal"]
    bad_records = [
        {"id": 900, "caption": "COVID"},  # malformed: fields missing
        medmat_record(901, "COVID", opts, "med-mat/x.png") | {"Answer-choice": "E"},  # letter out of range
        medmat_record(902, "COVID", opts, "med-mat/x.png") | {"Answer": "Normal"},  # letter disagrees
        medmat_record(903, "COVID", opts, "../outside.png"),  # escapes the root
    ]
    _inject(small_release, "03", bad_records)
    src = MedMatSource(DataConfig(), small_release)
    bad = BadSamples(max_examples=10)
    idx = src.index("03", bad)
    assert len(idx) == 30  # 24 + 6 test; good records still indexed
    assert bad.counts == {
        "malformed record": 1,
        "answer letter points at no option": 1,
        "Answer-choice disagrees with Answer": 1,
        "image path escapes the data root": 1,
    }
    text = "\n".join(bad.examples)
    assert "Subset--03-train.json record #24 (id 900): missing field 'image'" in text
    assert "Answer-choice 'E' points at no option (options are A-B)" in text
    assert "image path '../outside.png' leaves the data root" in text
    with pytest.raises(DataError, match=r"4 bad sample\(s\)"):
        bad.raise_if_any("fail")
    bad.raise_if_any("skip")  # skip mode: no error, the counts stay


def test_missing_and_unreadable_images_are_caught_at_load(small_release):
    src = MedMatSource(DataConfig(), small_release)
    idx = src.index("05", BadSamples())
    samples = dict(src.load(idx, [0, 1]))
    Path(samples[0].image).unlink()
    Path(samples[1].image).write_bytes(b"not a png")
    bad = BadSamples()
    ok = list(src.load_checked(idx, [0, 1, 2], bad))
    assert [p for p, _ in ok] == [2]
    assert bad.counts == {"missing image": 1, "unreadable image": 1}
    assert "image file not found" in bad.examples[0] and "05-train-0" in bad.examples[0]


def _conv(i, image, m="CT", a="Lung", t="Cancer", human=None, gpt="B", **extra):
    human = (
        human
        or "<image>\nIs there a tumor?\nA: Normal\nB: Tumor\nAnswer with the option's letter from the given choices directly."
    )
    return {
        "id": f"r{i}",
        "image": image,
        "modality": m,
        "area": a,
        "task": t,
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}],
        **extra,
    }


def test_conversation_reader(tmp_path):
    root = tmp_path / "mine"
    for i in range(6):
        write_png(root / "img" / f"a ({i}).png", i)
    records = [
        _conv(0, "img/a (0).png"),
        _conv(1, "img/a (1).png", m="X-Ray", gpt="Tumor"),  # alias + answer by option text
        _conv(2, "img/a (2).png", human="<image>\nWhat is shown?", gpt="Cyst", split="test"),  # label only
        {
            "id": "r3",
            "image": "img/a (3).png",
            "modality": "CT",
            "area": "Lung",
            "task": "Cancer",
            "messages": [
                {"role": "user", "content": "<image>What is shown?"},
                {"role": "assistant", "content": "Normal"},
            ],
        },
        _conv(4, "img/a (4).png", m="Sonar"),  # unknown modality
        _conv(5, "../a (5).png"),  # escapes root
    ]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    src = ConversationSource(DataConfig(format="conversation"), root)
    assert sorted(src.subsets()) == ["CT_Lung_Cancer", "X-ray_Lung_Cancer"]
    bad = BadSamples()
    idx = src.index("CT_Lung_Cancer", bad)
    assert bad.counts == {"unknown MAT element": 1, "image path escapes the data root": 1}
    assert idx.has_test_file and len(idx.positions("test")) == 1
    samples = [s for _, s in src.load(idx, list(range(len(idx))))]
    by_id = {s.id: s for s in samples}
    assert by_id["CT_Lung_Cancer-r0"].answer == "B" and by_id["CT_Lung_Cancer-r0"].label == "Tumor"
    assert by_id["CT_Lung_Cancer-r2"].options == [] and by_id["CT_Lung_Cancer-r2"].label == "Cyst"
    assert by_id["CT_Lung_Cancer-r3"].label == "Normal"
    x = src.index("X-ray_Lung_Cancer", BadSamples())
    ((_, s1),) = src.load(x, [0])
    assert s1.answer == "B" and s1.modality == "X-ray"


def test_conversation_reader_reads_box_records(tmp_path):
    root = tmp_path / "mine"
    for i in range(5):
        write_png(root / "img" / f"d{i}.png", 100 + i)
    ask = "<image>\n[detection] Where is the lesion?"
    records = [
        _conv(0, "img/d0.png", t="Det", human=ask, gpt="{<10><20><30><40>}", label="Polyp"),
        _conv(1, "img/d1.png", t="Det", human=ask, gpt="here", bbox=[5, 5, 50.4, 60]),  # box from bbox
        _conv(2, "img/d2.png", t="Det", human=ask, gpt="{<1><2><3><4>}", bbox=[10, 10, 20, 20]),  # disagree
        _conv(3, "img/d3.png", t="Det", human=ask, gpt="somewhere"),  # no box at all
        _conv(4, "img/d4.png", t="Det", human=ask, gpt="{<50><20><30><40>}"),  # x1 > x2
    ]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    src = ConversationSource(DataConfig(format="conversation"), root)
    bad = BadSamples()
    idx = src.index("CT_Lung_Det", bad)
    assert bad.counts == {"malformed box": 3}
    assert " ".join(e for e in bad.examples).count("disagrees with bbox") == 1
    samples = {s.id: s for _, s in src.load(idx, list(range(len(idx))))}
    s0, s1 = samples["CT_Lung_Det-r0"], samples["CT_Lung_Det-r1"]
    assert s0.box == [10, 20, 30, 40] and s0.answer == "{<10><20><30><40>}" and s0.label == "Polyp"
    assert s0.options == [] and s0.question == "[detection] Where is the lesion?"
    assert s1.box == [5, 5, 50.4, 60] and s1.answer == "{<5><5><50><60>}" and s1.label == "object"
