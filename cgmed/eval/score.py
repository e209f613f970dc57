"""Scoring multiple-choice answers: option log-likelihood (one forward pass) or generation + parsing.

Option scoring reads, after the prompt, the log-probability of each option's letter token and
takes the best: no sampling, no parsing errors, one batched forward pass. Generation decodes
greedily and maps the text to a letter with :func:`cgmed.eval.parse.parse_choice`. Circular
evaluation asks each question once per rotation of its options and counts it right only if
every rotation is right.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cgmed.data.choices import LETTERS, format_question, parse_question_choice
from cgmed.errors import ConfigError, DataError
from cgmed.models.collate import Collator, load_image
from cgmed.models.registry import BackboneAdapter, detect_family, get_adapter


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


def load_for_eval(path: str | Path, family: str | None = None, dtype: str = "float32",
                  base: str | None = None, **processor_kwargs: Any) -> tuple[Any, Any, BackboneAdapter]:
    """A model directory (base, fine-tuned or merged) or a LoRA adapter directory -> (model, processor, adapter)."""
    p = Path(str(path)).expanduser()
    if p.is_dir() and (p / "adapter_config.json").is_file():
        from peft import PeftModel

        base = base or json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise ConfigError("eval.base", f"{p} is a LoRA adapter without a recorded base model", "set eval.base=PATH")
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


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Test records, each checked: the answer letter must point at one of its options."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("data.test_manifest", f"{p} does not exist", "build one with cgmed-data build")
    rows = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        opts = r.get("options") or []
        if not (2 <= len(opts) <= len(LETTERS)) or r.get("answer") not in LETTERS[: len(opts)]:
            raise DataError(f"{p}:{i}", f"answer {r.get('answer')!r} does not point at one of {len(opts)} options")
        if opts[LETTERS.index(r["answer"])] != r.get("label", opts[LETTERS.index(r["answer"])]):
            raise DataError(f"{p}:{i}", f"answer {r['answer']} is {opts[LETTERS.index(r['answer'])]!r}, "
                                        f"label is {r['label']!r}")
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

    def __init__(self, model: Any, processor: Any, adapter: BackboneAdapter, method: str, max_new_tokens: int = 16):
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

    def _inputs(self, questions: Sequence[str], images: Sequence[str]) -> dict[str, Any]:
        prompts = [self.adapter.render(self.processor, q) for q in questions]
        bos = self.tok.bos_token
        add = not (bos is not None and prompts[0].startswith(bos))
        side = self.tok.padding_side
        self.tok.padding_side = "left"  # the prompt ends at the last position of every row
        try:
            enc = self.processor(
                images=[load_image(p) for p in images], text=prompts, padding=True,
                add_special_tokens=add, return_tensors="pt",
            )
        finally:
            self.tok.padding_side = side
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in enc.items() if hasattr(v, "to")}

    def answer(self, items: Sequence[tuple[str, list[str], str]]) -> list[tuple[str | None, str | None]]:
        """(predicted letter, raw text or None) for each (question, options, image)."""
        import torch

        inputs = self._inputs([q for q, _, _ in items], [img for _, _, img in items])
        with torch.no_grad():
            if self.method == "option_scoring":
                logits = self.model(**inputs, use_cache=False).logits[:, -1].float()
                logp = torch.log_softmax(logits, dim=-1)
                out = []
                for row, (_, opts, _) in enumerate(items):
                    scores = logp[row, self.letter_ids(len(opts))]
                    out.append((LETTERS[int(scores.argmax())], None))
                return out
            from cgmed.eval.parse import parse_choice

            gen = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            texts = self.tok.batch_decode(gen[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            return [(parse_choice(t, opts), t) for t, (_, opts, _) in zip(texts, items, strict=True)]


def score_records(scorer: Scorer, records: Sequence[dict[str, Any]], batch_size: int, circular: bool) -> list[dict]:
    """Prediction rows (as written to predictions.jsonl) for ``records``, in order."""
    asks = []  # (record index, question, options, answer)
    for i, r in enumerate(records):
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
        got = per_record[i]
        first_pred, first_text, _ = got[0]
        row = {
            "id": r["id"], "subset": r["subset"], "modality": r["modality"], "area": r["area"], "task": r["task"],
            "options": r["options"], "answer": r["answer"], "pred": first_pred,
            "correct": all(p == a for p, _, a in got),
        }
        if first_text is not None:
            row["text"] = first_text
        if circular:
            row["circular_preds"] = [p for p, _, _ in got]
        rows.append(row)
    return rows
