"""Backbones: family adapters and loading (``registry``), tiny offline checkpoints (``tiny``),
and the training collator with answer-only labels (``collate``)."""

from cgmed.models.collate import (
    IGNORE_INDEX,
    Collator,
    LengthGroupedBatchSampler,
    group_by_length,
    load_image,
    padding_fraction,
    random_batches,
)
from cgmed.models.registry import ADAPTERS, FAMILIES, PARTS, BackboneAdapter, detect_family, get_adapter
from cgmed.models.tiny import TINY_FAMILIES, init_tiny

__all__ = [
    "ADAPTERS",
    "FAMILIES",
    "IGNORE_INDEX",
    "PARTS",
    "TINY_FAMILIES",
    "BackboneAdapter",
    "Collator",
    "LengthGroupedBatchSampler",
    "detect_family",
    "get_adapter",
    "group_by_length",
    "init_tiny",
    "load_image",
    "padding_fraction",
    "random_batches",
]
