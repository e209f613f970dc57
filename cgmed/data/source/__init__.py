"""Data sources: a Med-MAT-shaped release, a user's conversation JSON/JSONL files, or Hugging Face datasets.

A source knows which MAT subsets it holds and builds, per subset, a compact *index*
(file, byte offset, label id, split per record) in one streaming pass with every record
validated; records are loaded again by offset only when a split picks them. Nothing
holds decoded images or whole files, so the full 2.36M-record release fits in little memory.

What lives where:

- ``config``: :class:`DataConfig`, the ``data`` config group (with ``data.hf``, :class:`HfConfig`).
- ``bad``: :class:`BadSample` (one rejected record) and :class:`BadSamples` (their summary, with
  the notes: findings that reject nothing).
- ``index``: :class:`SubsetIndex` with its files' size and modification time, the 9:1 hash
  split, unique record ids, reading records back by position (a changed file is refused).
- ``images``: image paths stay inside the data root (as written, and with symlinks resolved);
  image files exist and decode completely.
- ``detection``: the box of a detection record (``bbox`` and/or the answer).
- ``base``: :class:`Source`, the interface of every reader.
- ``medmat_records`` / ``medmat``: Med-MAT release records and :class:`MedMatSource`.
- ``conversation_records`` / ``conversation``: conversation records and :class:`ConversationSource`.
- ``hf_open`` / ``hf_rows`` / ``hf_values`` / ``hf``: opening a Hugging Face dataset, reading its
  split's rows (local Parquet with pyarrow directly), its row values and image bytes (into a
  content-addressed cache), and :class:`HfSource`; rows are indexed by split and row number
  instead of file and offset.
- ``derived``: :class:`DerivedSource`, the subsets of ``data.derived`` on top of another source.

:func:`open_source` picks the reader for ``data.format``.
"""

from __future__ import annotations

from pathlib import Path

from cgmed.data.imaging import ImageConfig
from cgmed.data.source.bad import BadSample, BadSamples
from cgmed.data.source.base import Source
from cgmed.data.source.config import DataConfig, HfConfig, HfDataset, MatElements
from cgmed.data.source.conversation import ConversationSource
from cgmed.data.source.derived import DerivedSource
from cgmed.data.source.hf import HfSource
from cgmed.data.source.index import SubsetIndex, in_hashed_test_split
from cgmed.data.source.medmat import MedMatSource

__all__ = [
    "BadSample",
    "BadSamples",
    "ConversationSource",
    "DataConfig",
    "DerivedSource",
    "HfConfig",
    "HfDataset",
    "HfSource",
    "MatElements",
    "MedMatSource",
    "Source",
    "SubsetIndex",
    "in_hashed_test_split",
    "open_source",
]


def open_source(cfg: DataConfig, root: str | Path, image: ImageConfig | None = None) -> Source:
    """The reader for ``data.format`` (with the subsets of ``data.derived`` on top); its image
    checks convert images as ``image`` (the ``image`` group) says, as training will."""
    readers = {"medmat": MedMatSource, "conversation": ConversationSource, "hf": HfSource}
    base: Source = readers[cfg.format](cfg, root)
    base.image_cfg = image
    if not cfg.derived:
        return base
    derived = DerivedSource(base, cfg.derived, cfg.keep_derived_sources)
    derived.image_cfg = image
    return derived
