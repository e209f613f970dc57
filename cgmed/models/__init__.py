"""Backbones: what cgmed needs to know about each vision-language model family.

* ``registry``: one :class:`BackboneAdapter` per family (parameter groups, chat formatting,
  loading) and ``detect_family`` for a checkpoint directory;
* ``collate``: the training collator (one processor call per batch, answer-only labels, the BOS
  rule, the over-long-sample policy) and length-grouped batching;
* ``tiny``: tiny random checkpoints of every family, built offline (``init_tiny``), with the
  chat templates in ``templates/*.jinja``;
* ``export``: merging a LoRA adapter into its base model.
"""

from cgmed.models.collate import (
    IGNORE_INDEX,
    Collated,
    Collator,
    LengthGroupedBatchSampler,
    group_by_length,
    load_image,
    padding_fraction,
    random_batches,
    should_add_special_tokens,
)
from cgmed.models.export import merge_lora
from cgmed.models.registry import ADAPTERS, FAMILIES, PARTS, BackboneAdapter, detect_family, get_adapter
from cgmed.models.tiny import TINY_FAMILIES, TinySize, init_tiny

__all__ = [
    "ADAPTERS",
    "FAMILIES",
    "IGNORE_INDEX",
    "PARTS",
    "TINY_FAMILIES",
    "BackboneAdapter",
    "Collated",
    "Collator",
    "LengthGroupedBatchSampler",
    "TinySize",
    "detect_family",
    "get_adapter",
    "group_by_length",
    "init_tiny",
    "load_image",
    "merge_lora",
    "padding_fraction",
    "random_batches",
    "should_add_special_tokens",
]
