"""Scoring multiple-choice answers: option log-likelihood (one forward pass) or generation + parsing.

Option scoring reads, after the prompt, the log-probability of each option's letter token and
takes the best: no sampling, no parsing errors, one batched forward pass. Generation is the
paper's evaluation: the question ends with the released sentence asking for the letter
(``ANSWER_SUFFIX``, added where a hand-made manifest lacks it), the model decodes greedily and
:func:`cgmed.eval.parse.parse_choice` reads the text; an answer it cannot read (``pred`` None,
the reason in the row's ``parse``) counts as wrong. Circular evaluation asks each question once
per rotation of its options and counts it right only if every rotation is right.

Generation costs what it must: decoding is greedy with the KV cache, a multiple-choice answer
ends once it is decided (:data:`cgmed.eval.generate.STOP_RULE`, ``eval.stop_at_answer``), and
questions are asked longest first (:func:`asking_order`, ``eval.sort_by_length``) so that a batch
holds prompts of similar length; rows come back in manifest order either way. Circular
evaluation's rotations are each prefilled in full (``PREFIX_CACHE`` says why).

Detection records (a ``box``, no options) are always answered by generation, whatever
``eval.method`` says (there are no options to score), with room for a whole box
(:meth:`Scorer.box_tokens`); the text is read with :func:`cgmed.data.boxes.parse_box` and the
row gets ``pred_box``, ``box``, ``iou`` and ``correct`` = IoU >= 0.5 (``DETECTION_IOU``).
A manifest may mix detection and multiple-choice records.

Few-shot prompting (``eval.shots=N``; the paper's Table 16) puts N examples per label of the
question's subset before it, as earlier chat turns each with its image and its answer letter.
Examples come from ``eval.shot_pool`` (a split's ``shots.jsonl``: the target's training
portion, audited against its test images) and are drawn per question with an RNG keyed by
(``eval.shot_seed``, question id), so a draw does not depend on batching or sharding and
``shot_seed`` = 0, 1, 2 gives the paper's three repeats.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cgmed.data.boxes import check_box, format_box, iou, is_detection_row, parse_box
from cgmed.data.choices import (
    ANSWER_SUFFIX,
    LETTERS,
    canonical_label,
    format_question,
    parse_question_choice,
    same_label,
)
from cgmed.data.imaging import ImageConfig
from cgmed.data.manifest import iter_jsonl_numbered
from cgmed.data.record import rng_for
from cgmed.errors import ConfigError, DataError
from cgmed.eval.generate import NO_STOP_RULE, STOP_RULE, generate_batch
from cgmed.eval.model_dir import check_adapter_dir, check_model_dir
from cgmed.eval.parse import parse_choice, parse_choice_detail
from cgmed.models.collate import Collator, should_add_special_tokens
from cgmed.models.registry import BackboneAdapter, detect_family, get_adapter

DETECTION_IOU = 0.5  # a detection counts as correct at IoU >= 0.5 (the usual Acc@0.5)
MIN_BOX_TOKENS = 24  # a floor on the generation budget of a box answer
# Circular evaluation's rotations share the image and the instruction, but each rotation is
# prefilled in full: reusing a prefix's KV cache would need the rotations' options to start at the
# same position in every row of a left-padded batch, and Qwen2-VL's multimodal rotary positions
# (rope_deltas, kept on the model between calls) to be carried across the copied cache.
PREFIX_CACHE = "off: each rotation is prefilled in full"


@dataclass
class EvalConfig:
    """``eval`` group of ``cgmed-eval``."""

    method: Literal["option_scoring", "generation"] = "option_scoring"
    batch_size: int = 8
    max_new_tokens: int = 16
    circular: bool = False
    bootstrap: int = 1000  # resamples for the 95% interval (0: no interval)
    seed: int = 0
    base: str | None = None  # base model of a LoRA adapter (default: the one the adapter records)
    shots: int = 0  # in-context examples per label before each question (few-shot prompting)
    shot_pool: str | None = None  # the manifest they come from (a split's shots.jsonl)
    shot_seed: int = 0  # which draw of examples (one repeat of a few-shot evaluation)
    # questions whose image cannot be read, scored wrong (and kept in the denominator) before the
    # evaluation stops; 0 stops at the first
    max_bad_images: int = 0
    # generation: end a multiple-choice answer at the end of its first line that parses to a letter
    # (cgmed.eval.generate.STOP_RULE) instead of at end of sequence or max_new_tokens
    stop_at_answer: bool = True
    # ask questions in batches of similar prompt length (less padding); rows are written in
    # manifest order either way
    sort_by_length: bool = True

    def __post_init__(self) -> None:
        if self.bootstrap < 0:
            raise ConfigError(
                "eval.bootstrap",
                f"must be >= 0 (resamples of the 95% interval; 0 = no interval), got {self.bootstrap}",
            )
        if self.max_bad_images < 0:
            raise ConfigError(
                "eval.max_bad_images",
                f"must be >= 0 (unreadable images scored wrong before the evaluation stops), got {self.max_bad_images}",
            )
        if self.shots < 0:
            raise ConfigError("eval.shots", f"must be >= 0, got {self.shots}")
        if self.shots and not self.shot_pool:
            raise ConfigError(
                "eval.shot_pool",
                f"eval.shots={self.shots} needs a pool of in-context examples",
                "set eval.shot_pool=SPLIT/shots.jsonl (build the split with split.shots_per_label >= eval.shots)",
            )
        if self.batch_size < 1:
            raise ConfigError("eval.batch_size", f"must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ConfigError("eval.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")


def load_for_eval(
    path: str | Path,
    family: str | None = None,
    dtype: str = "float32",
    base: str | None = None,
    attn_implementation: str = "sdpa",
    use_liger: bool = False,
    **processor_kwargs: Any,
) -> tuple[Any, Any, BackboneAdapter]:
    """A model directory (base, fine-tuned or merged) or a LoRA adapter directory -> (model, processor, adapter).

    A local directory is checked before anything loads (:mod:`cgmed.eval.model_dir`): a missing
    weight, processor, tokenizer or chat-template file is a ConfigError naming it.
    ``attn_implementation`` and ``use_liger`` are ``model.attn_implementation`` / ``model.use_liger``
    (the attention kernel and Liger kernels, as in training).
    """
    kernels = {"attn_implementation": attn_implementation, "use_liger": use_liger}
    p = Path(str(path)).expanduser()
    if p.is_dir() and (p / "adapter_config.json").is_file():
        from peft import PeftModel

        check_adapter_dir(p)
        base = base or json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise ConfigError(
                "eval.base", f"{p} is a LoRA adapter without a recorded base model", "set eval.base=PATH"
            )
        adapter = get_adapter(family or detect_family(base))
        if Path(base).is_dir():
            check_model_dir(Path(base), adapter.family)
        model, processor = adapter.load(base, dtype=dtype, **kernels, **processor_kwargs)
        model = PeftModel.from_pretrained(model, str(p))
        return model.eval(), processor, adapter
    if p.is_dir() and not (p / "config.json").is_file():
        raise ConfigError(
            "model.path",
            f"{p} is not a model: it holds neither config.json nor adapter_config.json",
            "point at a model directory, a run's final/ directory, or a merged export",
        )
    adapter = get_adapter(family or detect_family(str(path)))
    if p.is_dir():
        check_model_dir(p, adapter.family)
    model, processor = adapter.load(str(path), dtype=dtype, **kernels, **processor_kwargs)
    return model.eval(), processor, adapter


def model_kernels(model: Any, use_liger: bool | None) -> dict[str, Any]:
    """The kernels ``model`` runs with, for results.json: its attention implementation (as
    transformers resolved it) and whether Liger kernels were applied (None: not known)."""
    config = getattr(model, "config", None)
    return {"attn_implementation": getattr(config, "_attn_implementation", None), "use_liger": use_liger}


def _check_detection(r: dict[str, Any], where: str) -> None:
    """A detection record: a well-formed box, no options, and the box as its answer."""
    box = r["box"]
    try:
        check_box(box)
    except ValueError as err:
        raise DataError(
            where, f"box {box!r} is not [x1, y1, x2, y2] on the 0-100 grid with x1 <= x2, y1 <= y2 ({err})"
        ) from None
    if r.get("options"):
        raise DataError(where, f"a detection record (with a box) has options {r['options']!r}")
    if r.get("answer") != format_box(box):
        raise DataError(where, f"answer {r.get('answer')!r} is not the box {format_box(box)}")


def _check_choice(r: dict[str, Any], where: str) -> None:
    """A multiple-choice record: its answer letter points at one of its options, the label's."""
    opts = r.get("options") or []
    if not (2 <= len(opts) <= len(LETTERS)) or r.get("answer") not in LETTERS[: len(opts)]:
        raise DataError(where, f"answer {r.get('answer')!r} does not point at one of {len(opts)} options")
    chosen = opts[LETTERS.index(r["answer"])]
    if not same_label(chosen, r.get("label", chosen)):
        raise DataError(where, f"answer {r['answer']} is {chosen!r}, label is {r['label']!r}")


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Test records, each checked: the answer letter must point at one of its options, or for a
    detection record (``box`` present) the answer must be that box with no options. A record
    that fails is named by ``file:line``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("data.test_manifest", f"{p} does not exist", "build one with cgmed-data build")
    rows = []
    for line, record in iter_jsonl_numbered(p):
        check = _check_detection if is_detection_row(record) else _check_choice
        check(record, f"{p}:{line}")
        rows.append(record)
    if not rows:
        raise DataError(str(p), "the test set is empty", "check the split (split_meta.json)")
    return rows


def rotations(record: dict[str, Any], circular: bool) -> list[tuple[str, list[str], str]]:
    """(question, options, answer) per asked variant: the record itself, or every rotation of its options."""
    opts, ans = record["options"], record["answer"]
    if not circular:
        return [(record["question"], opts, ans)]
    instruction, _ = parse_question_choice(record["question"])
    label = opts[LETTERS.index(ans)]
    out = []
    for r in range(len(opts)):
        rot = opts[r:] + opts[:r]
        out.append((format_question(instruction, rot), rot, LETTERS[rot.index(label)]))
    return out


Shot = tuple[str, str, str]  # an in-context example: (question, answer, image)


#: An image to show a model: a path, or (path, the record's modality) so that the image group's
#: per-modality window applies in evaluation exactly as in training.
ImageRef = str | tuple[str, str | None]


def _with_modality(path: str, like: ImageRef) -> ImageRef:
    """``path`` with the modality of ``like`` (an in-context example shown with its question)."""
    return path if isinstance(like, str) else (path, like[1])


def image_ref(record: dict[str, Any]) -> tuple[str, str | None]:
    """The (path, modality) of a manifest record's image."""
    return record["image"], record.get("modality")


class ShotPool:
    """In-context examples by subset and label; :meth:`draw` picks ``per_label`` of each label."""

    def __init__(self, path: str | Path, per_label: int):
        self.path, self.per_label = str(path), per_label
        if not Path(path).is_file():
            raise ConfigError(
                "eval.shot_pool",
                f"{path} does not exist",
                "point it at a split's shots.jsonl (built with split.shots_per_label >= eval.shots)",
            )
        self.by_subset: dict[str, dict[str, list[dict[str, Any]]]] = {}
        if not Path(path).read_text(encoding="utf-8").strip():
            raise DataError(
                self.path,
                "holds no in-context examples (the targets' training portions gave none)",
                "check split_meta.json's counts, or evaluate without shots",
            )
        for r in read_manifest(path):
            if is_detection_row(r):
                raise DataError(
                    self.path, f"record {r['id']} is a detection record; shots are multiple-choice"
                )
            label = canonical_label(r.get("label") or r["options"][LETTERS.index(r["answer"])])
            self.by_subset.setdefault(r["subset"], {}).setdefault(label, []).append(r)

    def records(self) -> list[dict[str, Any]]:
        """Every example of the pool."""
        return [r for labels in self.by_subset.values() for rows in labels.values() for r in rows]

    def check(self, records: Sequence[dict[str, Any]]) -> None:
        """Fail before the model loads if some question cannot get its examples."""
        fix = f"rebuild the split with split.shots_per_label >= {self.per_label}, or lower eval.shots"
        for r in records:
            if is_detection_row(r):
                raise DataError(
                    f"record {r['id']}", "few-shot prompting (eval.shots) covers multiple-choice records only"
                )
        for subset in sorted({r["subset"] for r in records}):
            labels = self.by_subset.get(subset)
            if not labels:
                raise DataError(self.path, f"holds no example of subset {subset}", fix)
            asked = {canonical_label(r["label"]) for r in records if r["subset"] == subset and r.get("label")}
            if asked - set(labels):
                raise DataError(
                    self.path,
                    f"holds no example of label(s) {sorted(asked - set(labels))} of subset {subset}, which its "
                    "questions ask about",
                    "the subset's training portion lacks them: add training data, or evaluate without shots",
                )
            short = {lab: len(v) for lab, v in labels.items() if len(v) < self.per_label}
            if short:
                raise DataError(
                    self.path,
                    f"subset {subset} needs {self.per_label} examples per label, but has {short}",
                    fix + " (a label with fewer training samples than eval.shots cannot give that many)",
                )

    def draw(self, record: dict[str, Any], seed: int) -> list[Shot]:
        """``per_label`` examples of every label of the record's subset, in a random order."""
        rng = rng_for(seed, "shots", record["id"])
        picked: list[dict[str, Any]] = []
        for label, rows in sorted(self.by_subset[record["subset"]].items()):
            # a question must never see its own image as an example (the split's audit already
            # keeps test images out of shots.jsonl; a hand-made pool may not)
            candidates = [r for r in rows if r["image"] != record["image"]]
            if len(candidates) < self.per_label:
                raise DataError(
                    self.path,
                    f"label {label!r} of subset {record['subset']} has {len(candidates)} examples other than "
                    f"question {record['id']}'s own image; {self.per_label} needed",
                    "use a pool drawn from the training portion (split.shots_per_label)",
                )
            picked += rng.sample(candidates, self.per_label)
        rng.shuffle(picked)  # labels interleaved, so the last example does not hint at the answer
        return [(r["question"], r["answer"], r["image"]) for r in picked]


class Scorer:
    """Answers questions with a loaded model: ``option_scoring`` or ``generation``."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        adapter: BackboneAdapter,
        method: str,
        max_new_tokens: int = 16,
        image: ImageConfig | None = None,
        stop_at_answer: bool = True,
        sort_by_length: bool = True,
    ):
        self.model, self.processor, self.adapter = model, processor, adapter
        self.method = method
        self.max_new_tokens = max_new_tokens
        self.stop_at_answer = stop_at_answer  # multiple-choice generation stops under STOP_RULE
        self.sort_by_length = sort_by_length  # batches of similar prompt length (score_records)
        self.answers_generated = 0  # generated answers (multiple choice and boxes) ...
        self.tokens_generated = 0  # ... and the tokens they took, stop tokens included
        self.image = image or ImageConfig()  # the same conversion as training (the image group)
        self.tok = processor.tokenizer
        self._letter_ids: dict[int, list[int]] = {}
        self._collator = Collator(adapter, processor, max_length=1 << 30, image=self.image)
        self._box_tokens: int | None = None

    def letter_ids(self, n: int) -> list[int]:
        """The first answer token of each letter, as the chat template writes the answer."""
        if n not in self._letter_ids:
            ids = []
            for letter in LETTERS[:n]:
                _, tail, _ = self._collator.answer_span("Q?", letter)
                ids.append(tail[0])
            if len(set(ids)) != n:
                raise DataError("eval", f"option letters share a first token under this tokenizer: {ids}")
            self._letter_ids[n] = ids
        return self._letter_ids[n]

    def box_tokens(self) -> int:
        """New tokens a box answer may need: the longest box under this tokenizer, plus room for
        a closing token and a little chatter; at least ``max_new_tokens`` and MIN_BOX_TOKENS."""
        if self._box_tokens is None:
            longest = len(self.tok("{<100><100><100><100>}", add_special_tokens=False)["input_ids"])
            self._box_tokens = max(self.max_new_tokens, MIN_BOX_TOKENS, longest + 8)
        return self._box_tokens

    def generate(
        self,
        items: Sequence[tuple[str, ImageRef]],
        max_new_tokens: int,
        shots: Sequence[Sequence[Shot]] | None = None,
        options: Sequence[Sequence[str]] | None = None,
    ) -> list[str]:
        """Greedy answers (text) to (question, image) pairs, after each item's ``shots``.

        With ``options`` (each item's option texts) and ``stop_at_answer``, a row ends under
        :data:`cgmed.eval.generate.STOP_RULE`; otherwise at end of sequence or ``max_new_tokens``.
        """
        inputs = self._inputs([q for q, _ in items], [img for _, img in items], shots)
        stop_options = options if self.stop_at_answer else None
        out = generate_batch(self.model, self.tok, inputs, max_new_tokens, stop_options)
        self.answers_generated += len(out.tokens)
        self.tokens_generated += sum(out.tokens)
        return out.texts

    def generation_settings(self) -> dict[str, Any]:
        """How answers were generated, for results.json (``generation``); ``answers`` and ``tokens``
        count this process's share of a sharded evaluation."""
        multiple_choice = self.method != "option_scoring"
        return {
            "stop": STOP_RULE if multiple_choice and self.stop_at_answer else NO_STOP_RULE,
            "max_new_tokens": self.max_new_tokens,
            "greedy": True,
            "kv_cache": True,
            "sorted_by_prompt_length": self.sort_by_length,
            "prefix_cache": PREFIX_CACHE,
            "answers": self.answers_generated,
            "tokens": self.tokens_generated,
            "mean_tokens": self.tokens_generated / self.answers_generated if self.answers_generated else None,
        }

    def _load(self, image: ImageRef) -> Any:
        """An image as the model sees it; ``image`` is a path or (path, the record's modality)."""
        path, modality = (image, None) if isinstance(image, str) else image
        return self._collator.load_image(path, modality=modality)  # from the processor cache when on

    def _inputs(
        self,
        questions: Sequence[str],
        images: Sequence[str],
        shots: Sequence[Sequence[Shot]] | None = None,
    ) -> dict[str, Any]:
        shots = shots or [()] * len(questions)
        prompts = [
            self.adapter.render(self.processor, q, shots=[(sq, sa) for sq, sa, _ in ex])
            for q, ex in zip(questions, shots, strict=True)
        ]
        # one list of images per prompt, in placeholder order: the examples' then the question's
        per_prompt = [
            # examples come from the question's own subset (the pool of its target), so its modality
            [self._load(_with_modality(p, img)) for _, _, p in ex] + [self._load(img)]
            for img, ex in zip(images, shots, strict=True)
        ]
        add = should_add_special_tokens(self.tok, prompts[0])
        side = self.tok.padding_side
        self.tok.padding_side = "left"  # the prompt ends at the last position of every row
        try:
            enc = self._collator.run_processor(
                images=per_prompt,
                text=prompts,
                padding=True,
                add_special_tokens=add,
                return_tensors="pt",
            )
        finally:
            self.tok.padding_side = side
        self._check_length(enc["input_ids"].shape[1], any(shots))
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in enc.items() if hasattr(v, "to")}

    def _check_length(self, length: int, with_shots: bool) -> None:
        """Refuse prompts the language model has no positions for (they would be scored past its
        trained length, silently): few-shot prompts of LLaVA-1.5 (576 tokens per image, 4,096
        positions) reach that at 2 examples per label of a 3-label subset."""
        config = getattr(self.model, "config", None)
        text = getattr(config, "text_config", None) or config
        limit = getattr(text, "max_position_embeddings", None)
        need = length + self.max_new_tokens
        if isinstance(limit, int) and need > limit:
            if with_shots:
                raise ConfigError(
                    "eval.shots",
                    f"a few-shot prompt takes {length} tokens (+{self.max_new_tokens} to answer), beyond the "
                    f"model's {limit} positions",
                    "lower eval.shots (or, for Qwen models, model.max_pixels)",
                )
            raise DataError(
                "eval",
                f"a prompt takes {length} tokens (+{self.max_new_tokens} to answer), beyond the model's "
                f"{limit} positions",
                "lower model.max_pixels (Qwen) or shorten the questions",
            )

    def answer(
        self,
        items: Sequence[tuple[str, list[str], str]],
        shots: Sequence[Sequence[Shot]] | None = None,
    ) -> list[tuple[str | None, str | None]]:
        """(predicted letter, raw text or None) for each (question, options, image), after its ``shots``."""
        import torch

        if self.method != "option_scoring":
            asked = [(with_answer_suffix(q), img) for q, _, img in items]
            texts = self.generate(asked, self.max_new_tokens, shots, [opts for _, opts, _ in items])
            return [(parse_choice(t, opts), t) for t, (_, opts, _) in zip(texts, items, strict=True)]
        inputs = self._inputs([q for q, _, _ in items], [img for _, _, img in items], shots)
        with torch.no_grad():
            logits = self.model(**inputs, use_cache=False).logits[:, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        out = []
        for row, (_, opts, _) in enumerate(items):
            scores = logp[row, self.letter_ids(len(opts))]
            out.append((LETTERS[int(scores.argmax())], None))
        return out


def with_answer_suffix(question: str) -> str:
    """``question`` ending with the paper's ``ANSWER_SUFFIX`` (every built manifest has it; a
    hand-made one may not, and a generating model must be asked for the letter)."""
    if question.rstrip().endswith(ANSWER_SUFFIX):
        return question
    return f"{question.rstrip()}\n{ANSWER_SUFFIX}"


def detection_row(record: dict[str, Any], text: str | None) -> dict[str, Any]:
    """The prediction row of a detection record answered with ``text``."""
    pred_box = parse_box(text)
    value = iou(pred_box, record["box"]) if pred_box is not None else 0.0
    row = {
        "id": record["id"],
        "subset": record["subset"],
        "modality": record["modality"],
        "area": record["area"],
        "task": record["task"],
        "options": [],
        "answer": record["answer"],
        "pred": format_box(pred_box) if pred_box is not None else None,
        "correct": value >= DETECTION_IOU,
        "box": list(record["box"]),
        "pred_box": list(pred_box) if pred_box is not None else None,
        "iou": value,
    }
    if text is not None:
        row["text"] = text
    return row


@dataclass
class Ask:
    """One multiple-choice question put to the model: a record (by position) in one option order."""

    record: int
    question: str
    options: list[str]
    answer: str  # the right letter in this option order


@dataclass
class Answered:
    """The model's answer to one :class:`Ask`."""

    pred: str | None  # the letter read from the answer (None: none could be read)
    text: str | None  # the generated text (None under option scoring)
    answer: str  # the right letter


def asking_order(questions: Sequence[tuple[str, Sequence[Shot]]], by_length: bool = True) -> list[int]:
    """The order to ask (question, shots) pairs in: with ``by_length``, longest text first
    (similar lengths share a batch, so little padding; the longest batch first, so a batch too
    large for the device fails at once), ties in the given order; else the given order.

    The length is the text's in characters, the template's and the images' tokens left out: the
    same for every prompt of a family with fixed-size images (Qwen's vary with the image size)."""
    if not by_length:
        return list(range(len(questions)))
    lengths = [len(q) + sum(len(sq) + len(sa) for sq, sa, _ in shots) for q, shots in questions]
    return sorted(range(len(questions)), key=lambda k: -lengths[k])


def _sorts(scorer: Scorer) -> bool:
    """Whether ``scorer`` asks in :func:`asking_order` by length (one that does not say does)."""
    return getattr(scorer, "sort_by_length", True)


def _detection_rows(scorer: Scorer, records: Sequence[dict[str, Any]], batch_size: int) -> dict[int, dict]:
    """Prediction rows of the detection records, by position, generated in batches of their own."""
    det = [i for i, r in enumerate(records) if is_detection_row(r)]
    det = [det[k] for k in asking_order([(records[i]["question"], ()) for i in det], _sorts(scorer))]
    rows: dict[int, dict] = {}
    for start in range(0, len(det), batch_size):
        chunk = det[start : start + batch_size]
        texts = scorer.generate(
            [(records[i]["question"], image_ref(records[i])) for i in chunk], scorer.box_tokens()
        )
        for i, text in zip(chunk, texts, strict=True):
            rows[i] = detection_row(records[i], text)
    return rows


def _answer_choices(
    scorer: Scorer,
    records: Sequence[dict[str, Any]],
    positions: Sequence[int],
    batch_size: int,
    circular: bool,
    drawn: dict[int, list[Shot]] | None,
) -> dict[int, list[Answered]]:
    """The answers to every question of the multiple-choice records at ``positions`` (each
    rotation of its options when ``circular``, in rotation order), asked in batches after the
    drawn examples, in :func:`asking_order`."""
    asks = [Ask(i, q, opts, ans) for i in positions for q, opts, ans in rotations(records[i], circular)]
    order = asking_order([(a.question, drawn[a.record] if drawn else ()) for a in asks], _sorts(scorer))
    replies: dict[int, Answered] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        shots = [drawn[asks[k].record] for k in chunk] if drawn is not None else None
        items = [(asks[k].question, asks[k].options, image_ref(records[asks[k].record])) for k in chunk]
        for k, (pred, text) in zip(chunk, scorer.answer(items, shots), strict=True):
            replies[k] = Answered(pred, text, asks[k].answer)
    answered: dict[int, list[Answered]] = {}
    for k, a in enumerate(asks):
        answered.setdefault(a.record, []).append(replies[k])
    return answered


def choice_row(
    record: dict[str, Any], answers: Sequence[Answered], circular: bool, shots: Sequence[Shot] | None = None
) -> dict[str, Any]:
    """The prediction row of a multiple-choice record; right only if every asked rotation is."""
    first = answers[0]
    row = {
        "id": record["id"],
        "subset": record["subset"],
        "modality": record["modality"],
        "area": record["area"],
        "task": record["task"],
        "options": record["options"],
        "answer": record["answer"],
        "pred": first.pred,
        "correct": all(a.pred == a.answer for a in answers),
    }
    if first.text is not None:
        row["text"] = first.text
        # why the answer was (not) read; the first asked variant has the record's own options
        row["parse"] = parse_choice_detail(first.text, record["options"])[1]
    if circular:
        row["circular_preds"] = [a.pred for a in answers]
    if shots is not None:
        row["shots"] = [image for _, _, image in shots]
    return row


def score_records(
    scorer: Scorer,
    records: Sequence[dict[str, Any]],
    batch_size: int,
    circular: bool,
    shot_pool: ShotPool | None = None,
    shot_seed: int = 0,
) -> list[dict]:
    """Prediction rows (as written to predictions.jsonl) for ``records``, in order.

    Detection records are generated in batches of their own (see the module docstring);
    classification rows are exactly what they would be in a manifest without detection records.
    With a ``shot_pool`` every question (each rotation alike) follows its drawn examples,
    whose images the row lists under ``shots``.
    """
    det_rows = _detection_rows(scorer, records, batch_size)
    choices = [i for i in range(len(records)) if i not in det_rows]
    drawn = {i: shot_pool.draw(records[i], shot_seed) for i in choices} if shot_pool is not None else None
    answered = _answer_choices(scorer, records, choices, batch_size, circular, drawn)
    rows = []
    for i, record in enumerate(records):
        if i in det_rows:
            rows.append(det_rows[i])
        else:
            rows.append(choice_row(record, answered[i], circular, None if drawn is None else drawn[i]))
    return rows
