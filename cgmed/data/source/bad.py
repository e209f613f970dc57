"""Bad-sample accounting: one rejected record (:class:`BadSample`) and the summary of all (:class:`BadSamples`).

Readers reject a record by raising :class:`BadSample` with a short ``reason`` (the summary groups by
it: "malformed record", "missing image", ...) and a message naming what is wrong; the caller adds
it to a :class:`BadSamples`, which either stops the build (``data.on_bad_sample=fail``) or is
recorded in ``split_meta.json``.
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
    """Every rejected record, counted by reason, with the first examples (file, record, why)."""

    max_examples: int = 10
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, where: str, bad: BadSample) -> None:
        self.counts[bad.reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(f"{where}: {bad}")

    def merge(self, other: BadSamples) -> None:
        """Add the counts and, up to ``max_examples``, the examples of ``other``."""
        self.counts.update(other.counts)
        self.examples.extend(other.examples[: max(0, self.max_examples - len(self.examples))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict[str, Any]:
        """The summary ``split_meta.json`` and the catalog record."""
        return {
            "total": self.total,
            "by_kind": dict(sorted(self.counts.items())),
            "examples": list(self.examples),
        }

    def report(self) -> str:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.counts.items()))
        lines = [f"{self.total} bad sample(s) ({reasons}); first examples:"]
        lines += [f"  - {example}" for example in self.examples]
        return "\n".join(lines)

    def raise_if_any(self, on_bad_sample: str) -> None:
        """DataError listing the bad samples, unless there are none or ``on_bad_sample`` is ``skip``."""
        if self.total and on_bad_sample == "fail":
            raise DataError(
                "data",
                self.report(),
                "fix or remove these records, or set data.on_bad_sample=skip to leave them out (they stay counted)",
            )
