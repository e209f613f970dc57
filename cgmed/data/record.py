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
    a 0-100 grid for detection samples.
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

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if out["box"] is None:
            del out["box"]
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
