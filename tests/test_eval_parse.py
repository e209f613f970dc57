"""Answer parsing (option letters from free text, negation, MiniGPT-v2 boxes, IoU and cumulative
IoU) and the generation side of evaluation: the paper's prompt, unparsed answers counted wrong
and reported per subset."""

from __future__ import annotations

import pytest

from cgmed.data.boxes import ciou, format_box, iou, parse_box
from cgmed.data.choices import ANSWER_SUFFIX, format_question
from cgmed.eval.metrics import results
from cgmed.eval.parse import REASONS, parse_choice, parse_choice_detail
from cgmed.eval.run import results_document
from cgmed.eval.score import Answered, EvalConfig, choice_row, score_records

OPTS = ["Tumor", "Cyst", "Stone", "Normal"]  # A..D; B is Cyst
TWO = ["Yes", "No"]
NORMAL = ["Normal", "Abnormal"]
LEVELS = ["Level 1", "Level 10", "Level 2"]
TUMOR = ["Tumor", "No tumor"]
CELLS = ["Eosinophil, lymphocyte", "Eosinophil", "Neutrophil"]
TEN = [f"Option {k}" for k in range(10)]

CHOICE_CASES = [
    # bare letters, any case, with brackets / punctuation / markdown
    ("B", OPTS, "B"),
    ("b", OPTS, "B"),
    ("B.", OPTS, "B"),
    ("(B)", OPTS, "B"),
    ("B)", OPTS, "B"),
    ("[B]", OPTS, "B"),
    ("  B  \n", OPTS, "B"),
    ("**B**", OPTS, "B"),
    ("`C`", OPTS, "C"),
    ("A", OPTS, "A"),
    ("a", OPTS, "A"),
    # delimited letter with text
    ("B: Cyst", OPTS, "B"),
    ("B. Cyst", OPTS, "B"),
    ("B) Cyst", OPTS, "B"),
    ("(B) Cyst", OPTS, "B"),
    ("**B. Cyst**", OPTS, "B"),
    ("B Cyst", OPTS, "B"),
    ("Cyst (B)", OPTS, "B"),
    ("b. cyst", OPTS, "B"),
    # answer statements
    ("Answer: B", OPTS, "B"),
    ("The answer is B.", OPTS, "B"),
    ("The correct option is (B) Cyst", OPTS, "B"),
    ("The correct answer is option D.", OPTS, "D"),
    ("Answer: **C**", OPTS, "C"),
    ("The answer is a.", OPTS, "A"),
    ("The answer is A", OPTS, "A"),
    ("Option A", OPTS, "A"),
    ("A is correct.", OPTS, "A"),
    ("I think the answer is B", OPTS, "B"),
    ("I think it's B.", OPTS, "B"),
    ("I'd go with (b).", OPTS, "B"),
    ("The answer is B, not A.", OPTS, "B"),
    ("B. Cyst. A tumor would look solid.", OPTS, "B"),
    # option text alone, any case, or named once in a sentence
    ("cyst", OPTS, "B"),
    ("CYST", OPTS, "B"),
    (" Cyst.", OPTS, "B"),
    ("The image shows a cyst in the kidney.", OPTS, "B"),
    ("It is likely a stone.", OPTS, "C"),
    # the article "a" / "A" is not option A; the option text wins
    ("A cyst is visible.", OPTS, "B"),
    ("the answer is a cyst", OPTS, "B"),
    ("Answer: A cyst", OPTS, "B"),
    ("There is a stone", OPTS, "C"),
    ("E.g. a cyst", OPTS, "B"),
    # options containing one another
    ("abnormal", NORMAL, "B"),
    ("normal", NORMAL, "A"),
    ("The finding is abnormal", NORMAL, "B"),
    ("ABNORMAL.", NORMAL, "B"),
    ("Level 10", LEVELS, "B"),
    ("level 1", LEVELS, "A"),
    ("The grade is Level 2.", LEVELS, "C"),
    ("No tumor", TUMOR, "B"),
    ("Tumor", TUMOR, "A"),
    ("There is no tumor.", TUMOR, "B"),
    ("B: No tumor", TUMOR, "B"),
    ("Eosinophil, lymphocyte", CELLS, "A"),
    ("lymphocyte, eosinophil", CELLS, "A"),
    ("eosinophil", CELLS, "B"),
    # letters beyond D with ten options; "I" is a letter only when there are 9+ options
    ("J", TEN, "J"),
    ("The answer is I.", TEN, "I"),
    ("I", TEN, "I"),
    # two different options / letters
    ("A or B", OPTS, None),
    ("A/B", OPTS, None),
    ("(A) and (C)", OPTS, None),
    ("The answer is A or B.", OPTS, None),
    ("Cyst and Tumor", OPTS, None),
    ("It is either a cyst or a stone.", OPTS, None),
    ("B. Actually, the answer is C.", OPTS, None),
    ("A: Tumor\nB: Cyst\nC: Stone\nD: Normal", OPTS, None),
    ("Eosinophil and neutrophil", CELLS, None),
    # out of range
    ("E", OPTS, None),
    ("The answer is F.", OPTS, None),
    ("C", TWO, None),
    ("(C)", TWO, None),
    ("A or E", OPTS, None),
    # letter contradicted by its text
    ("B: Tumor", OPTS, None),
    ("Tumor (B)", OPTS, None),
    ("A: No tumor", TUMOR, None),
    ("B\n\nThe lesion is solid, so it is a tumor.", OPTS, None),
    # refusals, empty, nothing
    ("I cannot determine the answer from this image.", OPTS, None),
    ("I'm sorry", OPTS, None),
    ("I\u2019m sorry, but I can't help with that.", OPTS, None),
    ("I am unable to tell whether this is a cyst.", OPTS, None),
    ("As an AI, I cannot provide a diagnosis.", OPTS, None),
    ("", OPTS, None),
    ("   ", OPTS, None),
    ("**", OPTS, None),
    ("I think so.", OPTS, None),
    ("B-cell lymphoma", OPTS, None),
    ("Yes", OPTS, None),
]


@pytest.mark.parametrize(("text", "options", "expected"), CHOICE_CASES)
def test_parse_choice(text, options, expected):
    assert parse_choice(text, options) == expected


def test_case_table_is_large_and_unique():
    assert len(CHOICE_CASES) >= 40
    keys = [(t, tuple(o)) for t, o, _ in CHOICE_CASES]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        ("B", OPTS, ("B", "letter")),
        ("B: Cyst", OPTS, ("B", "letter")),
        ("cyst", OPTS, ("B", "option_text")),
        ("A cyst is visible.", OPTS, ("B", "option_text")),
        ("A or B", OPTS, (None, "ambiguous")),
        ("Cyst and Tumor", OPTS, (None, "ambiguous")),
        ("B: Tumor", OPTS, (None, "ambiguous")),
        ("I'm sorry", OPTS, (None, "refusal")),
        ("I cannot determine whether this is a cyst.", OPTS, (None, "refusal")),
        ("E", OPTS, (None, "out_of_range")),
        ("K", OPTS, (None, "out_of_range")),
        ("C", TWO, (None, "out_of_range")),
        ("", OPTS, (None, "empty")),
        (None, OPTS, (None, "empty")),
        ("The image is blurry.", OPTS, (None, "no_match")),
        # an explicit answer beats a hedge
        ("I'm sorry, but the answer is B.", OPTS, ("B", "letter")),
    ],
)
def test_parse_choice_detail_reasons(text, options, expected):
    got = parse_choice_detail(text, options)
    assert got == expected
    assert got[1] in REASONS


def test_parse_choice_matches_detail_and_accepts_tuples():
    for text, options, _ in CHOICE_CASES:
        assert parse_choice(text, tuple(options)) == parse_choice_detail(text, options)[0]


THREE = ["Tumor", "Cyst", "Stone"]  # no negative option
NON_TUMOR = ["Tumor", "Non-tumor"]
COVID = ["COVID", "Normal"]

# A negated mention ("no X", "not X", "without X", "X is absent", "negative for X") is no choice of
# X, and never a guess at its counterpart ("Normal", "Non-tumor", the other option of two).
NEGATION_CASES = [
    # negated only: unparsed, whatever negative option the choices hold
    ("There is no tumor.", OPTS, (None, "negated")),
    ("There is no tumor.", THREE, (None, "negated")),
    ("There is no tumor.", NON_TUMOR, (None, "negated")),
    ("No evidence of a tumor.", OPTS, (None, "negated")),
    ("Not a cyst.", OPTS, (None, "negated")),
    ("This is not a cyst.", ["Cyst", "Tumor"], (None, "negated")),
    ("The kidney is without any stone.", OPTS, (None, "negated")),
    ("Tumor is absent.", OPTS, (None, "negated")),
    ("The tumor is not present.", OPTS, (None, "negated")),
    ("Negative for tumor.", OPTS, (None, "negated")),
    ("COVID negative", COVID, (None, "negated")),
    ("It does not show a tumor.", OPTS, (None, "negated")),
    ("There isn't any tumor.", OPTS, (None, "negated")),
    ("Neither a cyst nor a stone.", OPTS, (None, "negated")),
    ("Not normal.", NORMAL, (None, "negated")),
    ("The answer is not A.", OPTS, (None, "negated")),
    ("A. There is no tumor.", OPTS, (None, "negated")),  # the letter's own option denied
    # a negated mention beside a plain one: the plain one is the answer
    ("It is not a tumor but a cyst.", OPTS, ("B", "option_text")),
    ("This is a cyst, not a tumor.", OPTS, ("B", "option_text")),
    ("No tumor; the kidney is normal.", OPTS, ("D", "option_text")),
    ("Normal, without tumor.", OPTS, ("D", "option_text")),
    ("The finding is not normal: it is abnormal.", NORMAL, ("B", "option_text")),
    ("B. There is no tumor.", OPTS, ("B", "letter")),  # B = Cyst; only another option is denied
    ("B, not A.", OPTS, ("B", "letter")),
    # no negation: "No" as a reply, or the option's own text
    ("No, it is a cyst.", OPTS, ("B", "option_text")),
    ("There is no tumor.", TUMOR, ("B", "option_text")),  # the option "No tumor" itself
    ("Non-tumor", NON_TUMOR, ("B", "option_text")),
    ("Negative", ["Positive", "Negative"], ("B", "option_text")),
    ("Tumor", NON_TUMOR, ("A", "option_text")),
]


@pytest.mark.parametrize(("text", "options", "expected"), NEGATION_CASES)
def test_a_negated_mention_is_no_choice(text, options, expected):
    assert parse_choice_detail(text, options) == expected


def test_negation_table_is_large_and_unique():
    assert len(NEGATION_CASES) >= 15
    assert sum(r is None for _, _, (r, _) in NEGATION_CASES) >= 8
    keys = [(t, tuple(o)) for t, o, _ in NEGATION_CASES]
    assert len(keys) == len(set(keys))
    assert "negated" in REASONS


def test_option_text_containing_a_letter_is_not_a_letter():
    opts = ["Hepatitis A", "Hepatitis B", "Cirrhosis"]
    assert parse_choice("Hepatitis B", opts) == "B"
    assert parse_choice("It looks like hepatitis a.", opts) == "A"
    assert parse_choice("Cirrhosis", opts) == "C"


# ---------------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{<10><20><30><40>}", (10.0, 20.0, 30.0, 40.0)),
        ("{ <10> <20> <30> <40> }", (10.0, 20.0, 30.0, 40.0)),
        ("{< 10 >< 20 >< 30 >< 40 >}", (10.0, 20.0, 30.0, 40.0)),
        ("<10><20><30><40>", (10.0, 20.0, 30.0, 40.0)),
        ("<p>cyst</p> {<0><5><100><95>}", (0.0, 5.0, 100.0, 95.0)),
        ("{<30><40><10><20>}", (10.0, 20.0, 30.0, 40.0)),  # reordered
        ("{<120><-5><50><60>}", (50.0, 0.0, 100.0, 60.0)),  # clipped, then ordered
        ("first {<1><2><3><4>} then {<5><6><7><8>}", (1.0, 2.0, 3.0, 4.0)),
        ("{<1><2><3>} then {<5><6><7><8>}", (5.0, 6.0, 7.0, 8.0)),  # a 3-number group is no box
    ],
)
def test_parse_box(text, expected):
    assert parse_box(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        None,
        "no box here",
        "{<10><20><30>}",
        "{<10><20><30><40><50>}",
        "<10><20><30><40><50>",
        "{<10.5><20><30><40>}",
        "{<a><b><c><d>}",
        "{<10><20><30><40>",
        "<10><20><30><40>}",
        "[10, 20, 30, 40]",
    ],
)
def test_parse_box_malformed(text):
    assert parse_box(text) is None


def test_format_box_and_round_trip():
    assert format_box((10, 20, 30, 40)) == "{<10><20><30><40>}"
    assert format_box((10.4, 20.5, 29.6, 40.49)) == "{<10><21><30><40>}"  # half up
    assert format_box((-3, 0, 100.2, 250)) == "{<0><0><100><100>}"
    for box in [(0.0, 0.0, 100.0, 100.0), (10.0, 20.0, 30.0, 40.0), (5.0, 5.0, 5.0, 5.0)]:
        assert parse_box(format_box(box)) == box
    for text in ["{<1><2><3><4>}", "{<0><50><99><100>}"]:
        assert format_box(parse_box(text)) == text
    with pytest.raises(ValueError):
        format_box((1, 2, 3))
    with pytest.raises(ValueError):
        format_box((1, 2, 3, float("nan")))


def test_iou_hand_computed():
    a = (0, 0, 10, 10)
    b = (5, 0, 15, 10)  # overlap 5x10 = 50; union 100 + 100 - 50 = 150
    assert iou(a, b) == pytest.approx(50 / 150)
    assert iou(a, a) == 1.0
    assert iou(a, (20, 20, 30, 30)) == 0.0
    assert iou(a, (10, 0, 20, 10)) == 0.0  # touching edges
    assert iou((0, 0, 4, 4), (1, 1, 3, 3)) == pytest.approx(4 / 16)  # contained
    assert iou((5, 5, 5, 5), (5, 5, 5, 5)) == 0.0  # empty union


def test_ciou_hand_computed():
    # pair 1: intersection 50, union 150; pair 2: 2x2 inside 4x4 -> intersection 4, union 16
    pairs = [((0, 0, 10, 10), (5, 0, 15, 10)), ((1, 1, 3, 3), (0, 0, 4, 4))]
    assert ciou(pairs) == pytest.approx(54 / 166)
    # a None prediction adds 0 intersection and the ground-truth area (20x10 = 200) to the union
    assert ciou([*pairs, (None, (0, 0, 20, 10))]) == pytest.approx(54 / 366)
    assert ciou([(None, (0, 0, 10, 10))]) == 0.0
    assert ciou([]) == 0.0
    assert ciou(iter([((0, 0, 10, 10), (0, 0, 10, 10))])) == 1.0
    # cumulative, not the mean of per-pair IoUs (50/150 and 4/16 average to 0.2917)
    assert ciou(pairs) != pytest.approx((50 / 150 + 4 / 16) / 2)


# ---------------------------------------------------------------------------------------------
# Generation: the paper's evaluation (unparsable answers count as wrong)
# ---------------------------------------------------------------------------------------------


def mc_record(rid: str, subset: str, answer: str = "B") -> dict:
    return {
        "id": rid,
        "subset": subset,
        "modality": "CT",
        "area": "Lung",
        "task": "Cancer",
        "image": "/nonexistent.png",
        "label": OPTS[ord(answer) - 65],
        "question": format_question("Which finding?", OPTS),
        "options": OPTS,
        "answer": answer,
    }


class ScriptedScorer:
    """A scorer whose generated answers are given in advance, one per question in order."""

    method = "generation"

    def __init__(self, texts: list[str]):
        self.texts = iter(texts)
        self.questions: list[str] = []

    def answer(self, items, shots=None):
        out = []
        for question, options, _ in items:
            self.questions.append(question)
            text = next(self.texts)
            out.append((parse_choice(text, options), text))
        return out


def test_generation_counts_unparsed_answers_wrong_and_reports_them_per_subset():
    records = [mc_record("q1", "01"), mc_record("q2", "01"), mc_record("q3", "02"), mc_record("q4", "02")]
    scorer = ScriptedScorer(["B", "There is no tumor.", "I'm sorry", "The answer is B."])
    rows = score_records(scorer, records, batch_size=3, circular=False)
    assert [r["pred"] for r in rows] == ["B", None, None, "B"]
    assert [r["correct"] for r in rows] == [True, False, False, True]
    assert [r.get("parse") for r in rows] == ["letter", "negated", "refusal", "letter"]
    doc = results(rows, n_boot=0)
    assert doc["overall"]["accuracy"] == 0.5  # the unparsed answers count in the denominator
    assert (doc["overall"]["unparsed"], doc["overall"]["unparsed_rate"]) == (2, 0.5)
    assert doc["per_subset"]["01"]["unparsed"] == 1 and doc["per_subset"]["01"]["unparsed_rate"] == 0.5
    assert doc["per_mat"]["CT Lung Cancer"]["unparsed"] == 2
    assert doc["unparsed"] == 2 and doc["unparsed_reasons"] == {"negated": 1, "refusal": 1}
    full = results_document(rows, records, EvalConfig(method="generation"), scorer, None, "m", "t.jsonl")
    assert full["method"] == "generation" and full["overall"]["unparsed"] == 2


def test_option_scoring_rows_have_no_unparsed_answers():
    row = choice_row(mc_record("q1", "01"), [Answered("C", None, "B")], circular=False)
    assert row["correct"] is False and "parse" not in row and "text" not in row
    doc = results([row], n_boot=0)
    assert doc["overall"]["unparsed"] == 0 and doc["overall"]["unparsed_rate"] == 0.0


def test_generation_asks_with_the_papers_trailing_sentence(tmp_path):
    """The prompt a generating model sees ends with the released sentence asking for the letter,
    in the manifest's questions, in every rotation of a circular evaluation, and when a
    hand-made manifest left it out."""
    from PIL import Image

    from cgmed.eval.score import Scorer, load_for_eval
    from cgmed.models.tiny import init_tiny

    model_dir = init_tiny("qwen2_vl", tmp_path / "tiny")
    image = tmp_path / "x.png"
    Image.new("RGB", (56, 56)).save(image)
    scorer = Scorer(*load_for_eval(model_dir), method="generation", max_new_tokens=2)
    seen: list[str] = []

    class SpyAdapter:
        """The model's adapter, noting every question it renders into a prompt."""

        def __init__(self, adapter):
            self.adapter = adapter

        def __getattr__(self, name):
            return getattr(self.adapter, name)

        def render(self, processor, question, answer=None, shots=()):
            seen.append(question)
            return self.adapter.render(processor, question, answer, shots)

    scorer.adapter = SpyAdapter(scorer.adapter)
    record = {**mc_record("q1", "01"), "image": str(image)}
    bare = {**record, "id": "q2", "question": record["question"].removesuffix("\n" + ANSWER_SUFFIX)}
    rows = score_records(scorer, [record], batch_size=4, circular=True)
    rows += score_records(scorer, [record, bare], batch_size=4, circular=False)
    assert len(seen) == len(OPTS) + 2 and all(r["correct"] in (True, False) for r in rows)
    for question in seen:
        *_, last_option, suffix = question.split("\n")
        assert (
            suffix == ANSWER_SUFFIX and last_option.startswith("D: ") and question.count(ANSWER_SUFFIX) == 1
        )
