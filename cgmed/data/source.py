"""Data sources: a Med-MAT-shaped release or a user's conversation JSON/JSONL files.

A source knows which MAT subsets it holds and builds, per subset, a compact *index*
(file, byte offset, label id, split per record) in one streaming pass with every record
validated; records are loaded again by offset only when a split picks them. Nothing
holds decoded images or whole files, so the full 2.36M-record release fits in little memory.

Detection subsets (task ``Det``) hold box records: no ``Question-choice``, the box in ``bbox``
(``[x1, y1, x2, y2]`` on a 0-100 grid) and/or in ``Answer`` (``{<x1><y1><x2><y2>}``). They
become Samples with the instruction as ``question``, no options, the box string as ``answer``,
the box in ``box`` and the finding (``caption``) as ``label``.
"""

from __future__ import annotations

import abc
import json
import math
import os
import posixpath
import re
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cgmed.data.boxes import check_box, format_box
from cgmed.data.choices import LETTERS, parse_question_choice, same_label
from cgmed.data.jsonio import iter_records, read_records_at
from cgmed.data.record import Sample, stable_int
from cgmed.data.subsets import CATALOG_FILE, MEDMAT_SUBSETS, DerivedSubset, SubsetInfo, normalize_subset_id
from cgmed.data.vocab import DEFAULT_TASK_MERGE, DETECTION_TASK, Vocabulary
from cgmed.errors import ConfigError, DataError

SPLITS = ("train", "test")
_SUBSET_FILE = re.compile(r"^Subset-+([A-Za-z0-9_]+?)-(train|test)\.jsonl?$")
_NUM = r"\s*<\s*(-?\d+(?:\.\d+)?)\s*>"
# Strict on purpose (unlike cgmed.eval.parse.parse_box, which reads model output leniently):
# a release record's box must be exactly one well-formed box.
_ANSWER_BOX = re.compile(r"\s*\{" + _NUM * 4 + r"\s*\}\s*")


@dataclass
class DataConfig:
    """``data`` config group: where the samples come from and how bad ones are treated."""

    root: str | None = None  # a release or folder of conversation files; null = the synthetic world
    format: Literal["medmat", "conversation"] = "medmat"
    files: list[str] = field(default_factory=list)  # conversation files under root (default: all)
    test_fraction: float = 0.1  # 9:1 train/test when a subset has no test file
    split_seed: int = 0  # fixes that 9:1 partition; a property of the data, not of an experiment
    on_bad_sample: Literal["fail", "skip"] = "fail"
    max_bad_examples: int = 10
    verify_images: bool = True
    extra_elements: dict[str, list[str]] = field(default_factory=dict)
    task_merge: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_TASK_MERGE))
    cache_dir: str = "~/.cache/cgmed"  # where the synthetic world is generated when root is null
    # subsets made from part of another (by label, label share or source dataset); their parents
    # are hidden from selection rules unless keep_derived_sources (they hold the same images)
    derived: list[DerivedSubset] = field(default_factory=list)
    keep_derived_sources: bool = False
    train_manifest: str | None = None  # a built train.jsonl (read by the trainer)
    test_manifest: str | None = None  # a built test.jsonl (read by the evaluator)

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError("data.test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        if self.max_bad_examples < 0:
            raise ConfigError("data.max_bad_examples", "must be >= 0")
        ids = [d.id for d in self.derived]
        if len(ids) != len(set(ids)):
            raise ConfigError("data.derived", f"ids repeat: {ids}", "give each derived subset its own id")
        for i, d in enumerate(self.derived):
            key = f"data.derived[{i}]"
            if d.share is not None and not (d.share.parts >= 2 and 0 <= d.share.part < d.share.parts):
                raise ConfigError(
                    f"{key}.share",
                    f"part {d.share.part} of {d.share.parts}",
                    "need parts >= 2 and 0 <= part < parts",
                )
            if d.share is not None and d.labels and d.share.label not in d.labels:
                raise ConfigError(f"{key}.share.label", f"{d.share.label!r} is not among labels {d.labels}")

    def vocabulary(self) -> Vocabulary:
        return Vocabulary(extra=self.extra_elements, task_merge=self.task_merge)


class BadSample(Exception):
    """One record that cannot be used; ``kind`` groups it in the summary."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class BadSamples:
    """Every rejected record, counted by kind, with the first examples (file, record, why)."""

    max_examples: int = 10
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, where: str, bad: BadSample) -> None:
        self.counts[bad.kind] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(f"{where}: {bad}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_kind": dict(sorted(self.counts.items())),
            "examples": list(self.examples),
        }

    def report(self) -> str:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
        lines = [f"{self.total} bad sample(s) ({kinds}); first examples:"]
        lines += [f"  - {e}" for e in self.examples]
        return "\n".join(lines)

    def raise_if_any(self, on_bad_sample: str) -> None:
        if self.total and on_bad_sample == "fail":
            raise DataError(
                "data",
                self.report(),
                "fix or remove these records, or set data.on_bad_sample=skip to leave them out (they stay counted)",
            )


@dataclass
class SubsetIndex:
    """Where each record of one subset lives, its label and its split; ~15 bytes per record."""

    info: SubsetInfo
    files: list[Path] = field(default_factory=list)
    file_id: array = field(default_factory=lambda: array("H"))
    offset: array = field(default_factory=lambda: array("q"))
    label_id: array = field(default_factory=lambda: array("I"))
    is_test: bytearray = field(default_factory=bytearray)
    labels: list[str] = field(default_factory=list)
    has_test_file: bool = False
    _label_ids: dict[str, int] = field(default_factory=dict, repr=False)

    def add(self, file_no: int, offset: int, label: str, test: bool) -> None:
        lid = self._label_ids.get(label)
        if lid is None:
            lid = self._label_ids[label] = len(self.labels)
            self.labels.append(label)
        self.file_id.append(file_no)
        self.offset.append(offset)
        self.label_id.append(lid)
        self.is_test.append(1 if test else 0)

    def __len__(self) -> int:
        return len(self.offset)

    def positions(self, split: str) -> list[int]:
        want = 1 if split == "test" else 0
        return [i for i, t in enumerate(self.is_test) if t == want]

    def label_counts(self, split: str) -> Counter:
        want = 1 if split == "test" else 0
        counts: Counter = Counter()
        for lid, t in zip(self.label_id, self.is_test, strict=True):
            if t == want:
                counts[self.labels[lid]] += 1
        return counts


def safe_relpath(path: str) -> str:
    """A relative image path that stays inside the data root, or BadSample."""
    if not isinstance(path, str) or not path.strip():
        raise BadSample("malformed record", "'image' is missing or empty")
    if (
        ".." not in path
        and "\\" not in path
        and "//" not in path
        and not path.startswith(("/", "./"))
        and ":" not in path[:3]
    ):
        return path  # the common case needs no normalisation
    norm = posixpath.normpath(path.replace("\\", "/"))
    if posixpath.isabs(norm) or re.match(r"^[A-Za-z]:", norm) or norm == ".." or norm.startswith("../"):
        raise BadSample("image path escapes the data root", f"image path {path!r} leaves the data root")
    return norm


def derived_test(split_seed: int, subset: str, image: str, test_fraction: float) -> bool:
    """The 9:1 rule for subsets without a test file: a stable hash of the image path.

    Hashing the image (not the record) keeps every copy of one image on the same side.
    """
    return stable_int("split", split_seed, subset, image) % 10_000 < round(test_fraction * 10_000)


def check_image(path: Path) -> None:
    """The image exists, is a file and its header decodes; else BadSample."""
    if not path.is_file():
        raise BadSample("missing image", f"image file not found: {path}")
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.verify()
    except Exception as err:  # PIL raises many types for broken files
        raise BadSample("unreadable image", f"cannot decode image {path}: {err}") from None


def records_at(index: SubsetIndex, positions: list[int]) -> Iterator[tuple[int, Path, int, Any]]:
    """``(position, file, offset, raw record)`` for index positions, read file by file in offset order."""
    by_file: dict[int, list[int]] = {}
    for p in positions:
        by_file.setdefault(index.file_id[p], []).append(p)
    for file_no, plist in sorted(by_file.items()):
        path = index.files[file_no]
        order = sorted(plist, key=lambda p: index.offset[p])
        for p, (offset, obj) in zip(
            order, read_records_at(path, [index.offset[p] for p in order]), strict=True
        ):
            yield p, path, offset, obj


class Source(abc.ABC):
    """Common interface of the readers."""

    root: Path
    cfg: DataConfig
    vocab: Vocabulary

    @abc.abstractmethod
    def subsets(self) -> dict[str, SubsetInfo]:
        """The subsets this source holds, by id."""

    @abc.abstractmethod
    def index(self, subset: str, bad: BadSamples) -> SubsetIndex:
        """One streaming pass over a subset's records; bad records go to ``bad``."""

    @abc.abstractmethod
    def load(self, index: SubsetIndex, positions: list[int]) -> Iterator[tuple[int, Sample]]:
        """The samples at ``positions`` of ``index`` (in file order)."""

    def resolve_image(self, rel: str) -> Path:
        return Path(os.path.abspath(self.root / rel))

    def load_checked(
        self, index: SubsetIndex, positions: list[int], bad: BadSamples
    ) -> Iterator[tuple[int, Sample]]:
        """``load`` plus the image check; bad ones are counted in ``bad`` and not yielded."""
        for pos, sample in self.load(index, positions):
            if self.cfg.verify_images:
                try:
                    check_image(Path(sample.image))
                except BadSample as err:
                    bad.add(f"subset {index.info.id}, record {sample.id}", err)
                    continue
            yield pos, sample


# --------------------------------------------------------------------------- Med-MAT release


def parse_medmat_record(obj: Any) -> tuple[str, str, list[str], str]:
    """Validate one released record; returns (image relpath, instruction, options, answer letter)."""
    if not isinstance(obj, dict):
        raise BadSample("malformed record", f"expected a JSON object, got {type(obj).__name__}")
    for key in ("id", "caption", "image", "Question-choice", "Answer-choice"):
        if key not in obj:
            raise BadSample("malformed record", f"missing field {key!r}")
    image = safe_relpath(obj["image"])
    try:
        instruction, options = parse_question_choice(str(obj["Question-choice"]))
    except ValueError as err:
        raise BadSample("malformed record", f"Question-choice: {err}") from None
    letter = str(obj["Answer-choice"]).strip().rstrip(".:").upper()
    if len(letter) != 1 or letter not in LETTERS[: len(options)]:
        raise BadSample(
            "answer letter points at no option",
            f"Answer-choice {obj['Answer-choice']!r} points at no option (options are A-{LETTERS[len(options) - 1]})",
        )
    answer_text = options[LETTERS.index(letter)]
    if not same_label(answer_text, str(obj["caption"])):
        raise BadSample(
            "answer disagrees with caption",
            f"Answer-choice {letter} is {answer_text!r} but caption is {obj['caption']!r}",
        )
    return image, instruction, options, letter


def _check_box(values: Any, field_name: str) -> list[float]:
    """The record's box (see :func:`check_box`), or BadSample("malformed box") naming the field."""
    try:
        return check_box(values)
    except ValueError as err:
        raise BadSample("malformed box", f"{field_name} {err}") from None


def _rounded(box: list[float]) -> list[int]:
    return [math.floor(v + 0.5) for v in box]  # as format_box writes them (half up)


def parse_detection_record(obj: Any) -> tuple[str, str, list[float], str]:
    """Validate one detection record; returns (image relpath, instruction, box, finding).

    The box comes from ``bbox``, else from ``Answer``; with both, they must agree (``Answer``
    is ``bbox`` written with ``format_box``, i.e. rounded to integers).
    """
    if not isinstance(obj, dict):
        raise BadSample("malformed record", f"expected a JSON object, got {type(obj).__name__}")
    for key in ("id", "caption", "image", "Question"):
        if key not in obj:
            raise BadSample("malformed record", f"missing field {key!r}")
    image = safe_relpath(obj["image"])
    caption = str(obj["caption"]).strip()
    instruction = str(obj["Question"]).strip()
    if not caption or not instruction:
        raise BadSample("malformed record", "empty 'caption' (the finding) or 'Question'")
    from_answer = None
    if "Answer" in obj:
        m = _ANSWER_BOX.fullmatch(str(obj["Answer"]))
        if m is None:
            if "bbox" not in obj:
                raise BadSample(
                    "malformed box", f"Answer {obj['Answer']!r} is not a box {{<x1><y1><x2><y2>}}"
                )
        else:
            from_answer = _check_box([float(m.group(i)) for i in range(1, 5)], "Answer")
    if "bbox" in obj:
        box = _check_box(obj["bbox"], "bbox")
        if from_answer is not None and _rounded(box) != _rounded(from_answer):
            raise BadSample("malformed box", f"Answer {obj['Answer']!r} disagrees with bbox {obj['bbox']!r}")
    elif from_answer is not None:
        box = from_answer
    else:
        raise BadSample("malformed box", "no 'bbox' and no box in 'Answer'")
    return image, instruction, box, caption


def is_detection_record(info: SubsetInfo, obj: Any) -> bool:
    """Whether a record of subset ``info`` is a box record: a Det subset's record without options."""
    return info.task == DETECTION_TASK and not (isinstance(obj, dict) and "Question-choice" in obj)


class MedMatSource(Source):
    """Reader of ``ROOT/Aggregated_Subsets/Subset--NN-{train,test}.json`` with images under ROOT."""

    def __init__(self, cfg: DataConfig, root: str | Path):
        self.cfg = cfg
        self.root = Path(root).expanduser()
        self.vocab = cfg.vocabulary()
        if not self.root.is_dir():
            raise ConfigError(
                "data.root", f"{self.root} is not a directory", "point data.root at the release folder"
            )
        self._files = self._discover()
        self._declared = self._declarations()
        for sid, splits in self._files.items():
            if sid not in self._declared:
                raise DataError(
                    str(next(iter(splits.values()))),
                    f"subset {sid!r} is not a Med-MAT subset and {CATALOG_FILE} does not declare it",
                    f"rename the file, or declare the subset's MAT triplet in {self.root / CATALOG_FILE}",
                )

    def _discover(self) -> dict[str, dict[str, Path]]:
        found: dict[str, dict[str, Path]] = {}
        for folder in (self.root / "Aggregated_Subsets", self.root):
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                m = _SUBSET_FILE.match(path.name)
                if m:
                    found.setdefault(normalize_subset_id(m.group(1)), {}).setdefault(m.group(2), path)
        if not found:
            raise DataError(
                str(self.root),
                "no Subset--NN-train.json files found (looked in Aggregated_Subsets/ and the root)",
                "point data.root at the folder that holds Aggregated_Subsets/",
            )
        return dict(sorted(found.items()))

    def _declarations(self) -> dict[str, SubsetInfo]:
        path = self.root / CATALOG_FILE
        if not path.exists():
            return dict(MEDMAT_SUBSETS)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            entries = doc["subsets"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(str(path), f"not a cgmed catalog file ({err})") from None
        extra = doc.get("elements") or {}
        if extra:
            merged = {k: sorted({*self.cfg.extra_elements.get(k, []), *v}) for k, v in extra.items()}
            self.vocab = Vocabulary(
                extra={**self.cfg.extra_elements, **merged}, task_merge=self.cfg.task_merge
            )
        out: dict[str, SubsetInfo] = {}
        for i, e in enumerate(entries):
            where = f"{path}: subsets[{i}]"
            try:
                sid = normalize_subset_id(e["id"])
                out[sid] = SubsetInfo(
                    id=sid,
                    modality=self.vocab.canonical("modality", e["modality"], where),
                    area=self.vocab.canonical("area", e["area"], where),
                    task=self.vocab.canonical("task", e["task"], where),
                    name=str(e.get("name", "")),
                    status=str(e.get("status", "ID")),
                )
            except KeyError as err:
                raise DataError(where, f"missing field {err}") from None
            except ConfigError as err:
                raise DataError(where, str(err)) from None
        return out

    def subsets(self) -> dict[str, SubsetInfo]:
        return {sid: self._declared[sid] for sid in self._files}

    def split_files(self, subset: str) -> dict[str, Path]:
        return dict(self._files[subset])

    def index(self, subset: str, bad: BadSamples) -> SubsetIndex:
        info = self.subsets()[subset]
        idx = SubsetIndex(info=info, has_test_file="test" in self._files[subset])
        files = self._files[subset]
        for split, path in ((sp, files[sp]) for sp in SPLITS if sp in files):
            idx.files.append(path)
            file_no = len(idx.files) - 1
            for n, (offset, obj) in enumerate(iter_records(path)):
                try:
                    if is_detection_record(info, obj):
                        image, _, _, label = parse_detection_record(obj)
                    else:
                        image, _, options, letter = parse_medmat_record(obj)
                        label = options[LETTERS.index(letter)]
                except BadSample as err:
                    rid = obj.get("id", "?") if isinstance(obj, dict) else "?"
                    bad.add(f"{path.name} record #{n} (id {rid})", err)
                    continue
                if idx.has_test_file:
                    test = split == "test"
                else:
                    test = derived_test(self.cfg.split_seed, subset, image, self.cfg.test_fraction)
                idx.add(file_no, offset, label, test)
        return idx

    def load(self, index: SubsetIndex, positions: list[int]) -> Iterator[tuple[int, Sample]]:
        info = index.info
        for p, path, _, obj in records_at(index, positions):
            split = "test" if path.name.endswith(("-test.json", "-test.jsonl")) else "train"
            box = None
            if is_detection_record(info, obj):
                image, instruction, box, label = parse_detection_record(obj)
                options, answer = [], format_box(box)
            else:
                image, instruction, options, answer = parse_medmat_record(obj)
                label = options[LETTERS.index(answer)]
            yield (
                p,
                Sample(
                    id=f"{info.id}-{split}-{obj['id']}",
                    subset=info.id,
                    modality=info.modality,
                    area=info.area,
                    task=info.task,
                    image=str(self.resolve_image(image)),
                    label=label,
                    question=instruction,
                    options=options,
                    answer=answer,
                    source_split="test" if index.is_test[p] else "train",
                    data_no=None if obj.get("data-no") is None else str(obj["data-no"]),
                    box=box,
                ),
            )


# --------------------------------------------------------------------------- conversation files

_IMAGE_TAG = re.compile(r"<image>\s*", re.IGNORECASE)
_HUMAN = {"human", "user"}
_ASSISTANT = {"gpt", "assistant", "model"}


def _turns(obj: dict) -> tuple[str, str]:
    turns = obj.get("conversations", obj.get("messages"))
    if not isinstance(turns, list) or len(turns) < 2:
        raise BadSample(
            "malformed record", "needs 'conversations' (or 'messages') with a human and a gpt turn"
        )
    human = assistant = None
    for t in turns:
        if not isinstance(t, dict):
            raise BadSample("malformed record", "a turn is not an object")
        who = str(t.get("from", t.get("role", ""))).lower()
        text = t.get("value", t.get("content"))
        if who in _HUMAN and human is None:
            human = text
        elif who in _ASSISTANT and human is not None and assistant is None:
            assistant = text
    if not isinstance(human, str) or not isinstance(assistant, str):
        raise BadSample("malformed record", "no human turn followed by a gpt/assistant turn")
    return human, assistant


class ConversationSource(Source):
    """Users' own data: LLaVA / ShareGPT style records with ``<image>`` tags and MAT fields.

    Each record: ``image`` (relative to data.root), ``modality``, ``area``, ``task``,
    ``conversations`` ([{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": ...}])
    and optionally ``id``, ``subset``, ``split`` (train|test), ``label`` and ``data_no`` (the source
    dataset). A human turn that lists options (``A: x`` lines) is used as is, with the gpt answer
    a letter or an option's text; one without options is label-only, and the split builder writes
    its multiple-choice question.

    Box records (task ``Det``, no options): the gpt answer is a box ``{<x1><y1><x2><y2>}`` on the
    0-100 grid (MiniGPT-v2's format) and/or the record has ``bbox: [x1, y1, x2, y2]`` (they must
    agree); ``label`` names the finding (it balances sampling like any label; default ``object``).
    """

    def __init__(self, cfg: DataConfig, root: str | Path):
        self.cfg = cfg
        self.root = Path(root).expanduser()
        self.vocab = cfg.vocabulary()
        if not self.root.is_dir():
            raise ConfigError("data.root", f"{self.root} is not a directory")
        if cfg.files:
            self.paths = [self.root / f for f in cfg.files]
            for p in self.paths:
                if not p.is_file():
                    raise ConfigError("data.files", f"{p} does not exist")
        else:
            self.paths = sorted(
                p for p in self.root.rglob("*") if p.suffix in (".json", ".jsonl") and p.name != CATALOG_FILE
            )
        if not self.paths:
            raise ConfigError("data.root", f"no .json/.jsonl files under {self.root}", "set data.files=[...]")
        self._index: dict[str, SubsetIndex] | None = None
        self._bad = BadSamples(cfg.max_bad_examples)

    def _parse(self, obj: Any, where: str) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise BadSample("malformed record", "expected a JSON object")
        fields = {}
        for kind in ("modality", "area", "task"):
            if kind not in obj:
                raise BadSample("malformed record", f"missing MAT field {kind!r}")
            name = self.vocab.find(kind, str(obj[kind]))
            if name is None:
                raise BadSample(
                    "unknown MAT element", f"unknown {kind} {obj[kind]!r} (add it with data.extra_elements)"
                )
            fields[kind] = name
        fields["image"] = safe_relpath(obj.get("image", ""))
        human, answer = _turns(obj)
        text = _IMAGE_TAG.sub("", human).strip()
        answer = answer.strip()
        try:
            instruction, options = parse_question_choice(text)
        except ValueError:
            instruction, options = text, []
        if options:
            letter = answer.rstrip(".").upper()
            if len(letter) == 1 and letter in LETTERS:
                if letter not in LETTERS[: len(options)]:
                    raise BadSample(
                        "answer letter points at no option", f"answer {answer!r} points at no option"
                    )
            else:
                hits = [i for i, o in enumerate(options) if same_label(o, answer)]
                if len(hits) != 1:
                    raise BadSample(
                        "answer letter points at no option", f"answer {answer!r} matches no option"
                    )
                letter = LETTERS[hits[0]]
            label = options[LETTERS.index(letter)]
        else:
            label = str(obj.get("label", answer)).strip()
            letter = ""
            if not label:
                raise BadSample("malformed record", "empty answer and no label")
        box = None
        if fields["task"] == DETECTION_TASK and not options:
            box = self._box(obj, answer)
            label = str(obj.get("label") or "object").strip()
            letter = format_box(box)
        split = str(obj.get("split", "")).lower() or None
        if split not in (None, "train", "test"):
            raise BadSample("malformed record", f"split {obj['split']!r} is neither train nor test")
        subset = str(obj.get("subset") or f"{fields['modality']}_{fields['area']}_{fields['task']}")
        return {
            **fields,
            "subset": normalize_subset_id(subset),
            "instruction": instruction,
            "options": options,
            "answer": letter,
            "label": label,
            "split": split,
            "id": str(obj.get("id", "")),
            "box": box,
            # the source dataset, as Med-MAT's data-no (data.derived[].data_no filters on it)
            "data_no": None
            if obj.get("data_no", obj.get("data-no")) is None
            else str(obj.get("data_no", obj.get("data-no"))),
        }

    @staticmethod
    def _box(obj: dict[str, Any], answer: str) -> list[float]:
        """A box record's box: ``bbox`` and/or the gpt answer, agreeing when both are given."""
        m = _ANSWER_BOX.fullmatch(answer)
        from_answer = _check_box([float(m.group(i)) for i in range(1, 5)], "answer") if m else None
        if "bbox" in obj:
            box = _check_box(obj["bbox"], "bbox")
            if from_answer is not None and _rounded(box) != _rounded(from_answer):
                raise BadSample("malformed box", f"answer {answer!r} disagrees with bbox {obj['bbox']!r}")
            return box
        if from_answer is None:
            raise BadSample(
                "malformed box",
                f"a Det record needs a bbox or a box answer {{<x1><y1><x2><y2>}}, got {answer!r}",
            )
        return from_answer

    def _build_index(self) -> dict[str, SubsetIndex]:
        if self._index is not None:
            return self._index
        indexes: dict[str, SubsetIndex] = {}
        for file_no, path in enumerate(self.paths):
            for n, (offset, obj) in enumerate(iter_records(path)):
                where = f"{path.name} record #{n}"
                try:
                    rec = self._parse(obj, where)
                except BadSample as err:
                    self._bad.add(where, err)
                    continue
                sid = rec["subset"]
                idx = indexes.get(sid)
                if idx is None:
                    info = SubsetInfo(
                        sid, rec["modality"], rec["area"], rec["task"], sid.replace("_", " "), "ID"
                    )
                    idx = indexes[sid] = SubsetIndex(info=info, files=list(self.paths))
                elif idx.info.triplet != (rec["modality"], rec["area"], rec["task"]):
                    self._bad.add(
                        where,
                        BadSample(
                            "malformed record",
                            f"subset {sid!r} is {' '.join(idx.info.triplet)} elsewhere, but this record says "
                            f"{rec['modality']} {rec['area']} {rec['task']}",
                        ),
                    )
                    continue
                if rec["split"] is not None:
                    test = rec["split"] == "test"
                    idx.has_test_file = idx.has_test_file or test
                else:
                    test = derived_test(self.cfg.split_seed, sid, rec["image"], self.cfg.test_fraction)
                idx.add(file_no, offset, rec["label"], test)
        self._index = dict(sorted(indexes.items()))
        return self._index

    def subsets(self) -> dict[str, SubsetInfo]:
        return {sid: idx.info for sid, idx in self._build_index().items()}

    def index(self, subset: str, bad: BadSamples) -> SubsetIndex:
        indexes = self._build_index()
        # File-level problems are found once, when every file is read; report them once.
        if self._bad.total:
            for kind, count in self._bad.counts.items():
                bad.counts[kind] += count
            bad.examples.extend(self._bad.examples[: max(0, bad.max_examples - len(bad.examples))])
            self._bad = BadSamples(self.cfg.max_bad_examples)
        return indexes[subset]

    def load(self, index: SubsetIndex, positions: list[int]) -> Iterator[tuple[int, Sample]]:
        info = index.info
        for p, path, offset, obj in records_at(index, positions):
            rec = self._parse(obj, f"{path.name} at byte {offset}")
            rid = rec["id"] or f"{path.stem}@{offset}"
            yield (
                p,
                Sample(
                    id=f"{info.id}-{rid}",
                    subset=info.id,
                    modality=info.modality,
                    area=info.area,
                    task=info.task,
                    image=str(self.resolve_image(rec["image"])),
                    label=rec["label"],
                    question=rec["instruction"],
                    options=rec["options"],
                    answer=rec["answer"],
                    source_split="test" if index.is_test[p] else "train",
                    data_no=rec["data_no"],
                    box=rec["box"],
                ),
            )


def open_source(cfg: DataConfig, root: str | Path) -> Source:
    """The reader for ``data.format`` (with the subsets of ``data.derived`` on top)."""
    base: Source = MedMatSource(cfg, root) if cfg.format == "medmat" else ConversationSource(cfg, root)
    if not cfg.derived:
        return base
    from cgmed.data.derive import DerivedSource

    return DerivedSource(base, cfg.derived, cfg.keep_derived_sources)
