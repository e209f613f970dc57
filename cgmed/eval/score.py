"""Scoring multiple-choice answers: option log-likelihood (one forward pass) or generation + parsing.

Option scoring reads, after the prompt, the log-probability of each option's letter token and
takes the best: no sampling, no parsing errors, one batched forward pass. Generation decodes
greedily and maps the text to a letter with :func:`cgmed.eval.parse.parse_choice`. Circular
evaluation asks each question once per rotation of its options and counts it right only if
every rotation is right.

Detection records (a ``box``, no options) are always answered by generation, whatever
``eval.method`` says (there are no options to score), with room for a whole box
(:meth:`Scorer.box_tokens`); the text is read with :func:`cgmed.eval.parse.parse_box` and the
row gets ``pred_box``, ``box``, ``iou`` and ``correct`` = IoU >= 0.5 (``DETECTION_IOU``).
Manifests may mix both kinds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cgmed.data.choices import LETTERS, format_question, parse_question_choice
from cgmed.errors import ConfigError, DataError
from cgmed.eval.parse import format_box, iou, parse_box
from cgmed.models.collate import Collator, load_image
from cgmed.models.registry import BackboneAdapter, detect_family, get_adapter

DETECTION_IOU = 0.5  # a detection counts as correct at IoU >= 0.5 (the usual Acc@0.5)
MIN_BOX_TOKENS = 24  # a floor on the generation budget of a box answer


@dataclass
class EvalConfig:
    """``eval`` group of ``cgmed-eval``."""

    method: Literal["option_scoring", "generation"] = "option_scoring"
    batch_size: int = 8
    max_new_tokens: int = 16
    circular: bool = False
    bootstrap: int = 1000  # resamples for the 95% interval
    seed: int = 0
    base: str | None = None  # base model of a LoRA adapter (default: the one the adapter records)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("eval.batch_size", "must be >= 1")
        if self.max_new_tokens < 1:
            raise ConfigError("eval.max_new_tokens", "must be >= 1")


def load_for_eval(
    path: str | Path,
    family: str | None = None,
    dtype: str = "float32",
    base: str | None = None,
    **processor_kwargs: Any,
) -> tuple[Any, Any, BackboneAdapter]:
    """A model directory (base, fine-tuned or merged) or a LoRA adapter directory -> (model, processor, adapter)."""
    p = Path(str(path)).expanduser()
    if p.is_dir() and (p / "adapter_config.json").is_file():
        from peft import PeftModel

        base = base or json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise ConfigError(
                "eval.base", f"{p} is a LoRA adapter without a recorded base model", "set eval.base=PATH"
            )
        adapter = get_adapter(family or detect_family(base))
        model, processor = adapter.load(base, dtype=dtype, **processor_kwargs)
        model = PeftModel.from_pretrained(model, str(p))
        return model.eval(), processor, adapter
    if p.is_dir() and not (p / "config.json").is_file():
        raise ConfigError(
            "model.path",
            f"{p} is not a model: it holds neither config.json nor adapter_config.json",
            "point at a model directory, a run's final/ directory, or a merged export",
        )
    adapter = get_adapter(family or detect_family(str(path)))
    model, processor = adapter.load(str(path), dtype=dtype, **processor_kwargs)
    return model.eval(), processor, adapter


def is_detection(record: dict[str, Any]) -> bool:
    """A detection record: it carries a ground-truth ``box`` (and no options)."""
    return record.get("box") is not None


def _check_detection(r: dict[str, Any], where: str) -> None:
    box = r["box"]
    if (
        not isinstance(box, list)
        or len(box) != 4
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in box)
        or not all(0 <= v <= 100 for v in box)
        or box[0] > box[2]
        or box[1] > box[3]
    ):
        raise DataError(
            where, f"box {box!r} is not [x1, y1, x2, y2] on the 0-100 grid with x1 <= x2, y1 <= y2"
        )
    if r.get("options"):
        raise DataError(where, f"a detection record (with a box) has options {r['options']!r}")
    if r.get("answer") != format_box(box):
        raise DataError(where, f"answer {r.get('answer')!r} is not the box {format_box(box)}")


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Test records, each checked: the answer letter must point at one of its options, or for a
    detection record (``box`` present) the answer must be that box with no options."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("data.test_manifest", f"{p} does not exist", "build one with cgmed-data build")
    rows = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{p}:{i}", f"malformed manifest line: {err.msg}") from None
        if is_detection(r):
            _check_detection(r, f"{p}:{i}")
            rows.append(r)
            continue
        opts = r.get("options") or []
        if not (2 <= len(opts) <= len(LETTERS)) or r.get("answer") not in LETTERS[: len(opts)]:
            raise DataError(
                f"{p}:{i}", f"answer {r.get('answer')!r} does not point at one of {len(opts)} options"
            )
        if opts[LETTERS.index(r["answer"])] != r.get("label", opts[LETTERS.index(r["answer"])]):
            raise DataError(
                f"{p}:{i}",
                f"answer {r['answer']} is {opts[LETTERS.index(r['answer'])]!r}, label is {r['label']!r}",
            )
        rows.append(r)
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


class Scorer:
    """Answers questions with a loaded model: ``option_scoring`` or ``generation``."""

    def __init__(
        self, model: Any, processor: Any, adapter: BackboneAdapter, method: str, max_new_tokens: int = 16
    ):
        self.model, self.processor, self.adapter = model, processor, adapter
        self.method = method
        self.max_new_tokens = max_new_tokens
        self.tok = processor.tokenizer
        self._letter_ids: dict[int, list[int]] = {}
        self._collator = Collator(adapter, processor, max_length=1 << 30)

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
        if not hasattr(self, "_box_tokens"):
            longest = len(self.tok("{<100><100><100><100>}", add_special_tokens=False)["input_ids"])
            self._box_tokens = max(self.max_new_tokens, MIN_BOX_TOKENS, longest + 8)
        return self._box_tokens

    def generate(self, items: Sequence[tuple[str, str]], max_new_tokens: int) -> list[str]:
        """Greedy answers (text) to (question, image) pairs."""
        import torch

        inputs = self._inputs([q for q, _ in items], [img for _, img in items])
        with torch.no_grad():
            gen = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return self.tok.batch_decode(gen[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    def _inputs(self, questions: Sequence[str], images: Sequence[str]) -> dict[str, Any]:
        prompts = [self.adapter.render(self.processor, q) for q in questions]
        bos = self.tok.bos_token
        add = not (bos is not None and prompts[0].startswith(bos))
        side = self.tok.padding_side
        self.tok.padding_side = "left"  # the prompt ends at the last position of every row
        try:
            enc = self.processor(
                images=[load_image(p) for p in images],
                text=prompts,
                padding=True,
                add_special_tokens=add,
                return_tensors="pt",
            )
        finally:
            self.tok.padding_side = side
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in enc.items() if hasattr(v, "to")}

    def answer(self, items: Sequence[tuple[str, list[str], str]]) -> list[tuple[str | None, str | None]]:
        """(predicted letter, raw text or None) for each (question, options, image)."""
        import torch

        if self.method != "option_scoring":
            from cgmed.eval.parse import parse_choice

            texts = self.generate([(q, img) for q, _, img in items], self.max_new_tokens)
            return [(parse_choice(t, opts), t) for t, (_, opts, _) in zip(texts, items, strict=True)]
        inputs = self._inputs([q for q, _, _ in items], [img for _, _, img in items])
        with torch.no_grad():
            logits = self.model(**inputs, use_cache=False).logits[:, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        out = []
        for row, (_, opts, _) in enumerate(items):
            scores = logp[row, self.letter_ids(len(opts))]
            out.append((LETTERS[int(scores.argmax())], None))
        return out


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


def score_records(
    scorer: Scorer, records: Sequence[dict[str, Any]], batch_size: int, circular: bool
) -> list[dict]:
    """Prediction rows (as written to predictions.jsonl) for ``records``, in order.

    Detection records are generated in batches of their own (see the module docstring);
    classification rows are exactly what they would be in a manifest without detection records.
    """
    det = [i for i, r in enumerate(records) if is_detection(r)]
    det_rows: dict[int, dict] = {}
    for start in range(0, len(det), batch_size):
        chunk = det[start : start + batch_size]
        texts = scorer.generate(
            [(records[i]["question"], records[i]["image"]) for i in chunk], scorer.box_tokens()
        )
        for i, text in zip(chunk, texts, strict=True):
            det_rows[i] = detection_row(records[i], text)
    asks = []  # (record index, question, options, answer)
    for i, r in enumerate(records):
        if i in det_rows:
            continue
        for q, opts, ans in rotations(r, circular):
            asks.append((i, q, opts, ans))
    answers: list[tuple[str | None, str | None]] = []
    for start in range(0, len(asks), batch_size):
        chunk = asks[start : start + batch_size]
        answers += scorer.answer([(q, opts, records[i]["image"]) for i, q, opts, _ in chunk])
    per_record: dict[int, list] = {}
    for (i, _, _, ans), (pred, text) in zip(asks, answers, strict=True):
        per_record.setdefault(i, []).append((pred, text, ans))
    rows = []
    for i, r in enumerate(records):
        if i in det_rows:
            rows.append(det_rows[i])
            continue
        got = per_record[i]
        first_pred, first_text, _ = got[0]
        row = {
            "id": r["id"],
            "subset": r["subset"],
            "modality": r["modality"],
            "area": r["area"],
            "task": r["task"],
            "options": r["options"],
            "answer": r["answer"],
            "pred": first_pred,
            "correct": all(p == a for p, _, a in got),
        }
        if first_text is not None:
            row["text"] = first_text
        if circular:
            row["circular_preds"] = [p for p, _, _ in got]
        rows.append(row)
    return rows
