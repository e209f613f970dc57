"""The ``tiny`` config group: the checkpoint ``cgmed-model init`` writes."""

from __future__ import annotations

from dataclasses import dataclass

from cgmed.models.tiny import TinySize


@dataclass
class TinyInit(TinySize):
    """``tiny`` group: the sizes of the tiny checkpoint (the fields of :class:`TinySize`) and
    ``seed``, the seed of its random weights. The seed lives here, in the group of the one
    command that uses it, rather than as a top-level ``seed`` key."""

    seed: int = 0
