"""Greedy generation that stops once a multiple-choice answer is decided.

A generating model often goes on after its letter ("B\\nThe image shows a cyst ..."), and a batch
decodes until its slowest row is done. :class:`AnswerStop`, a transformers stopping criterion,
ends each row on its own (a finished row is padded while the others go on; the batch ends
when every row has) under :data:`STOP_RULE`:

- at its end-of-sequence token, as plain generation does;
- at the end of a line (a generated token holding a line break) once the text generated so far
  parses to a letter (:func:`cgmed.eval.parse.parse_choice`; a letter read from the option text
  counts). The row's answer is that text, so the letter recorded is exactly what parsing it gives.

"A" alone, "A or B", "Not A" or a refusal decide nothing, so generation goes on past their line;
"B." or "B" followed by more text on the same line goes on to the line's end, where a negation
("A. There is no tumor.") or a second letter can still undo it. Text on later lines is never
generated, so an answer that changes its mind on a later line ("B\\nThe answer is C.") is read as its
first decided line, not as ambiguous: that is the one way the rule can read an answer differently
from generation to ``max_new_tokens``, and the trained-model test checks it does not happen there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cgmed.eval.parse import parse_choice

#: The stop rule of multiple-choice generation, as results.json states it.
STOP_RULE = (
    "per row: at the end-of-sequence token, or at the end of the first line after which the text "
    "generated so far parses to a letter (the answer is that text)"
)
#: How generation ends without the rule (detection boxes, eval.stop_at_answer=false).
NO_STOP_RULE = "per row: at the end-of-sequence token or max_new_tokens"


class AnswerStop:
    """Per-row stopping for a batch whose prompts end at ``prompt_length`` (left padding): a
    transformers stopping criterion (called after every step, one bool per row).

    ``options`` (the option texts of each row) turns the letter rule on; without it a row ends
    only at an end-of-sequence token in ``eos_ids``. ``lengths[row]`` is the number of tokens the
    row generated, its stop token included (None while it runs).
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_length: int,
        eos_ids: Sequence[int],
        options: Sequence[Sequence[str]] | None = None,
    ):
        self.tok = tokenizer
        self.prompt_length = prompt_length
        self.eos_ids = frozenset(eos_ids)
        self.options = options
        self.lengths: list[int | None] = []
        self._breaks: dict[int, bool] = {}  # token id -> its text holds a line break

    def _ends_line(self, token: int) -> bool:
        if token not in self._breaks:
            self._breaks[token] = "\n" in self.tok.decode([token])
        return self._breaks[token]

    def decided(self, generated: Sequence[int], options: Sequence[str]) -> bool:
        """True when ``generated`` (token ids) ends a line and its text parses to a letter."""
        if not generated or not self._ends_line(int(generated[-1])):
            return False
        text = self.tok.decode(list(generated), skip_special_tokens=True)
        return parse_choice(text, options) is not None

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        new = input_ids[:, self.prompt_length :]
        if not self.lengths:
            self.lengths = [None] * new.shape[0]
        step = new.shape[1]
        for row, token in enumerate(new[:, -1].tolist()):
            if self.lengths[row] is not None:
                continue
            if token in self.eos_ids or (
                self.options is not None and self.decided(new[row].tolist(), self.options[row])
            ):
                self.lengths[row] = step
        return torch.tensor([n is not None for n in self.lengths], dtype=torch.bool, device=input_ids.device)


@dataclass
class Generation:
    """The answers of one batch: text per row, tokens each generated, decoding steps taken."""

    texts: list[str]
    tokens: list[int]
    steps: int


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The end-of-sequence ids generation stops at (the model's generation config, else the tokenizer's)."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def generate_batch(
    model: Any,
    tokenizer: Any,
    inputs: dict[str, Any],
    max_new_tokens: int,
    options: Sequence[Sequence[str]] | None = None,
) -> Generation:
    """Greedy decoding of a left-padded batch with the KV cache; with ``options`` (per row) each
    row stops under :data:`STOP_RULE`, else at end of sequence or ``max_new_tokens``."""
    import torch
    from transformers import StoppingCriteriaList

    prompt_length = inputs["input_ids"].shape[1]
    eos = eos_token_ids(model, tokenizer)
    stop = AnswerStop(tokenizer, prompt_length, eos, options)
    pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else None)
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad,
            stopping_criteria=StoppingCriteriaList([stop]),
        )
    new = out[:, prompt_length:]
    lengths = [n if n is not None else new.shape[1] for n in (stop.lengths or [None] * new.shape[0])]
    texts = [
        tokenizer.decode(new[row, :n].tolist(), skip_special_tokens=True) for row, n in enumerate(lengths)
    ]
    return Generation(texts, lengths, new.shape[1])
