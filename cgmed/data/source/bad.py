"""Bad-sample accounting: one rejected record (:class:`BadSample`) and the summary of all (:class:`BadSamples`).

Readers reject a record by raising :class:`BadSample` with a short ``reason`` (the summary groups by
it: "malformed record", "missing image", ...) and a message naming what is wrong; the caller adds
it to a :class:`BadSamples`, which either stops the build (``data.on_bad_sample=fail``) or is
recorded in ``split_meta.json``.

Some findings are worth knowing but reject nothing: a release record whose ``caption`` (the source
dataset's own label) differs from its ``Answer``, a subset file with no records. They are *notes*:
counted and exemplified beside the bad samples, printed by ``cgmed-data catalog`` and ``build``,
recorded in ``split_meta.json``, and never a reason to stop.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cgmed.errors import DataError


class BadSample(Exception):
    """One record that cannot be used; ``reason`` groups it in the summary."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class BadSamples:
    """Every rejected record, counted by reason, with the first examples (file, record, why);
    and the notes (findings that reject nothing), counted and exemplified the same way."""

    max_examples: int = 10
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)
    note_examples: list[str] = field(default_factory=list)

    def add(self, where: str, bad: BadSample) -> None:
        self.counts[bad.reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(f"{where}: {bad}")

    def note(self, where: str, reason: str, message: str) -> None:
        """Count a finding that rejects nothing (module docstring)."""
        self.notes[reason] += 1
        if len(self.note_examples) < self.max_examples:
            self.note_examples.append(f"{where}: {message}")

    def merge(self, other: BadSamples) -> None:
        """Add the counts, notes and, up to ``max_examples`` each, the examples of ``other``."""
        self.counts.update(other.counts)
        self.examples.extend(other.examples[: max(0, self.max_examples - len(self.examples))])
        self.notes.update(other.notes)
        self.note_examples.extend(other.note_examples[: max(0, self.max_examples - len(self.note_examples))])

    @property
    def total(self) -> int:
        """How many records were rejected (notes are not counted)."""
        return sum(self.counts.values())

    def summary(self) -> dict[str, Any]:
        """The summary ``split_meta.json`` and the catalog record."""
        return {
            "total": self.total,
            "by_kind": dict(sorted(self.counts.items())),
            "examples": list(self.examples),
            "notes": dict(sorted(self.notes.items())),
            "note_examples": list(self.note_examples),
        }

    def notes_line(self) -> str:
        """``reason: count, ...`` of the notes ("" when there are none)."""
        return ", ".join(f"{reason}: {count}" for reason, count in sorted(self.notes.items()))

    def report(self) -> str:
        """The bad samples (and notes, if any) for people, with the first examples."""
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.counts.items()))
        lines = []
        if self.total:
            lines.append(f"{self.total} bad sample(s) ({reasons}); first examples:")
            lines += [f"  - {example}" for example in self.examples]
        if self.notes:
            lines.append(f"notes (nothing rejected): {self.notes_line()}; first examples:")
            lines += [f"  - {example}" for example in self.note_examples]
        return "\n".join(lines)

    def raise_if_any(self, on_bad_sample: str) -> None:
        """DataError listing the bad samples, unless there are none or ``on_bad_sample`` is ``skip``."""
        if self.total and on_bad_sample == "fail":
            raise DataError(
                "data",
                self.report(),
                "fix or remove these records, or set data.on_bad_sample=skip to leave them out (they stay counted)",
            )
