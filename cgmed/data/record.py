"""The one sample record every source yields and every manifest line holds."""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Sample:
    """One multiple-choice VQA sample of a MAT subset.

    ``image`` is absolute once a source resolved it; ``question`` is the full prompt text
    (instruction, options, trailing sentence); ``options`` are the option texts in shown
    order and ``answer`` the letter of the correct one. ``box`` is ``[x1, y1, x2, y2]`` on
    a 0-100 grid for detection samples. ``caption`` is the source dataset's own label when it
    differs from ``label`` (a Med-MAT record's ``caption``; the label is the release's QA answer).
    """

    id: str
    subset: str
    modality: str
    area: str
    task: str
    image: str
    label: str
    question: str = ""
    options: list[str] = field(default_factory=list)
    answer: str = ""
    source_split: str = "train"
    data_no: str | None = None
    box: list[float] | None = None
    caption: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The manifest line; ``box`` and ``caption`` only when set."""
        out = asdict(self)
        for optional in ("box", "caption"):
            if out[optional] is None:
                del out[optional]
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Sample:
        return cls(**obj)


def stable_int(*keys: object) -> int:
    """A 64-bit integer from keys, stable across processes and Python versions (unlike hash())."""
    digest = hashlib.blake2b("\x1f".join(map(str, keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def rng_for(*keys: object) -> random.Random:
    """A private RNG per (seed, record, purpose): results never depend on iteration order."""
    return random.Random(stable_int(*keys))
