"""``init_tiny``: write a tiny random checkpoint of a family to a directory, seeded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cgmed.errors import ConfigError
from cgmed.models.tiny.builders import BUILDERS, TINY_FAMILIES
from cgmed.models.tiny.size import TinySize


def check_tiny_family(family: str, key: str = "family") -> None:
    """ConfigError naming ``key`` unless a tiny builder exists for ``family``."""
    if family not in BUILDERS:
        raise ConfigError(key, f"no tiny builder for {family!r}", f"use one of {list(TINY_FAMILIES)}")


def init_tiny(
    family: str, out: str | Path, seed: int = 0, *, size: TinySize | None = None, **size_fields: Any
) -> Path:
    """Write a tiny random checkpoint of ``family`` (model + processor) to ``out``; return ``out``.

    The dimensions are ``size``, or a :class:`TinySize` made from ``size_fields``
    (``init_tiny("llava", out, image_size=84, text_hidden=128)``). The weights depend only on
    ``seed`` and the size; the global torch RNG is left as it was.
    """
    import torch

    check_tiny_family(family)
    if size is None:
        size = TinySize(**size_fields)
    elif size_fields:
        raise TypeError(f"init_tiny takes size or size fields, not both (got {sorted(size_fields)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        built = BUILDERS[family](size)
    built.model.save_pretrained(out)
    built.processor.save_pretrained(out)
    return out
