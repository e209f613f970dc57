"""MAT vocabulary, subset table, multiple-choice parsing/building and streaming JSON."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from cgmed.data.choices import (
    ANSWER_SUFFIX,
    TEMPLATES,
    format_question,
    instruction,
    make_options,
    parse_question_choice,
    same_label,
)
from cgmed.data.jsonio import iter_records, read_records_at
from cgmed.data.subsets import MEDMAT_SUBSETS, normalize_subset_id
from cgmed.data.vocab import Vocabulary
from cgmed.errors import ConfigError, DataError


def test_vocabulary_aliases_and_unknown_names():
    v = Vocabulary()
    for name in ("X-ray", "X-Ray", "Xray", "x ray", "XRAY"):
        assert v.canonical("modality", name, "k") == "X-ray"
    assert v.canonical("modality", "Ultrasound", "k") == "US"
    assert v.canonical("modality", "Fundus photography", "k") == "FP"
    assert v.canonical("area", "Teeth", "k") == "Mouth"
    with pytest.raises(
        ConfigError, match=r"(?s)split.targets\[0\].modality.*unknown modality 'CTT'.*did you mean 'CT'"
    ):
        v.canonical("modality", "CTT", "split.targets[0].modality")
    extended = Vocabulary(extra={"modality": ["PET"]})
    assert extended.canonical("modality", "pet", "k") == "PET"


def test_task_merge_rule():
    v = Vocabulary()
    assert v.task_elements("COVID") == {"COVID", "State"}
    assert v.share_task("COVID", "State") and v.share_task("Cancer", "COVID")
    assert not v.share_task("Level", "State")
    no_merge = Vocabulary(task_merge={})
    assert not no_merge.share_task("COVID", "State")


def test_subset_table_matches_the_paper():
    assert len(MEDMAT_SUBSETS) == 53
    status = Counter(s.status for s in MEDMAT_SUBSETS.values())
    assert status["ID"] == 25 and status["OOD"] == 12 and status["det"] + status["seg"] == 16
    assert MEDMAT_SUBSETS["03"].triplet == ("CT", "Lung", "COVID")
    assert MEDMAT_SUBSETS["28"].triplet == ("X-ray", "Lung", "COVID")
    assert MEDMAT_SUBSETS["18"].task == "Recognition"
    assert MEDMAT_SUBSETS["49"].kind == "detection"
    v = Vocabulary()
    for s in MEDMAT_SUBSETS.values():  # every triplet is in the vocabulary
        assert v.find("modality", s.modality) == s.modality
        assert v.find("area", s.area) == s.area
        assert v.find("task", s.task) == s.task
    assert normalize_subset_id(4) == "04" and normalize_subset_id("Subset--04") == "04"


@pytest.mark.parametrize("sep", [":", "."])
def test_parse_question_choice_both_styles(sep):
    text = f"Is it normal?\nA{sep} Normal\nB{sep} Cyst\nC{sep} Tumor\n{ANSWER_SUFFIX}"
    instr, options = parse_question_choice(text)
    assert instr == "Is it normal?"
    assert options == ["Normal", "Cyst", "Tumor"]


def test_parse_question_choice_multilabel_and_limits():
    text = f"Which labels?\nA: Eosinophil, lymphocyte\nB: Neutrophil\n{ANSWER_SUFFIX}"
    assert parse_question_choice(text)[1] == ["Eosinophil, lymphocyte", "Neutrophil"]
    two = f"Q\nA: x\nB: y\n{ANSWER_SUFFIX}"
    assert len(parse_question_choice(two)[1]) == 2
    with pytest.raises(ValueError, match="2 to 4 options, found 1"):
        parse_question_choice(f"Q\nA: x\n{ANSWER_SUFFIX}")
    with pytest.raises(ValueError, match="found 5"):
        parse_question_choice("Q\n" + "\n".join(f"{c}: {c.lower()}" for c in "ABCDE"))
    with pytest.raises(ValueError, match="no option lines"):
        parse_question_choice("just a question")
    assert same_label("lymphocyte,Eosinophil", "Eosinophil, lymphocyte")
    assert not same_label("Normal", "Abnormal")


def test_make_options_distractors_from_subset_labels():
    labels = ["Normal", "Cyst", "Tumor", "Stone", "Polyp", "Ulcer"]
    seen_positions = set()
    for seed in range(40):
        options, letter = make_options("Cyst", labels, random.Random(seed))
        assert len(options) == 4 and len(set(options)) == 4
        assert set(options) <= set(labels)
        assert options["ABCD".index(letter)] == "Cyst"
        seen_positions.add(letter)
    assert seen_positions == set("ABCD")  # the answer moves around
    assert make_options("Cyst", labels, random.Random(3)) == make_options("Cyst", labels, random.Random(3))
    binary, letter = make_options("Normal", ["Normal", "Hemorrhage"], random.Random(0), order="sorted")
    assert binary == ["Hemorrhage", "Normal"] and letter == "B"
    with pytest.raises(ValueError, match="no other label"):
        make_options("Normal", ["Normal"], random.Random(0))


def test_instruction_templates_per_task():
    for task, templates in TEMPLATES.items():
        assert len(set(templates)) >= 6, task
    seen = {instruction("Cancer", "CT", "Lung", random.Random(s)) for s in range(100)}
    assert len(seen) == 6 and all("CT" in q and "lung" in q for q in seen)
    q = format_question("Q?", ["a", "b"])
    assert q == f"Q?\nA: a\nB: b\n{ANSWER_SUFFIX}"


def test_iter_records_streams_arrays_and_jsonl(tmp_path):
    recs = [{"id": i, "caption": "Tümor, ça" if i % 3 == 0 else "x" * (i % 50)} for i in range(300)]
    a = tmp_path / "a.json"
    a.write_text(json.dumps(recs, ensure_ascii=False, indent=2), encoding="utf-8")
    b = tmp_path / "b.json"
    b.write_text(json.dumps(recs), encoding="utf-8")  # \\u escapes
    c = tmp_path / "c.jsonl"
    c.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    for path in (a, b, c):
        got = list(iter_records(path, chunk_size=64))  # records straddle many chunk borders
        assert [r for _, r in got] == recs
        offsets = [o for o, _ in got][::-13]
        back = dict(read_records_at(path, offsets))
        assert [back[o] for o in offsets] == [recs[i] for i in range(0, 300)][::-13]


def test_iter_records_names_the_broken_record(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('[{"id": 0}, {"id": 1,, }, {"id": 2}]')
    with pytest.raises(DataError, match=r"bad.json: malformed JSON in record 1"):
        list(iter_records(p))
    q = tmp_path / "obj.json"
    q.write_text('{"id": 0}')
    with pytest.raises(DataError, match="not a JSON array"):
        list(iter_records(q))
    t = tmp_path / "trunc.json"
    t.write_text('[{"id": 0}, {"id": 1}')
    with pytest.raises(DataError, match="ends"):
        list(iter_records(t))
