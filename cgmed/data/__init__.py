"""Data: the MAT vocabulary and subsets, readers, the synthetic world, CG splits and their audit.

What lives where (the pipeline's first stage):

- ``vocab``: canonical Modalities, Areas and Tasks with aliases, the task-merge rule, ``DETECTION_TASK``;
- ``subsets``: the 53 Med-MAT subsets (:data:`MEDMAT_SUBSETS`), derived subsets, ``CATALOG_FILE``;
- ``record``: :class:`Sample`, one question of a split, and the seeded RNG helpers;
- ``boxes``: detection boxes (write, read, validate, IoU / cIoU);
- ``manifest``: the JSON-lines files of the pipeline (one reader, one writer);
- ``jsonio``: streaming JSON-array / JSONL records by byte offset;
- ``source/``: readers (Med-MAT release, conversation files, Hugging Face datasets, derived subsets);
- ``imaging/``: DICOM, NIfTI and high-bit-depth images to the RGB images models see;
- ``synth/``: the synthetic MAT world in the Med-MAT layout;
- ``catalog``: subsets, triplets, counts and labels of a data root;
- ``choices``: questions and options; ``split``: the ``split`` group and the selection rules;
- ``sampling`` / ``build``: label-balanced draws and the split builder (select, quotas, draw,
  questions, audit); ``audit``: the leakage audit.

The names below are exported lazily (``from cgmed.data import build_split``): importing this
package stays cheap, and a submodule never pulls in the rest of the package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DETECTION_TASK": "vocab",
    "Vocabulary": "vocab",
    "MEDMAT_SUBSETS": "subsets",
    "SubsetInfo": "subsets",
    "Sample": "record",
    "DataConfig": "source",
    "open_source": "source",
    "SplitConfig": "split",
    "build_split": "build",
    "build_from_config": "build",
    "write_split": "build",
    "audit_split": "audit",
    "build_catalog": "catalog",
    "SynthConfig": "synth",
    "write_release": "synth",
    "ImageConfig": "imaging",
    "open_image": "imaging",
    "read_jsonl": "manifest",
    "write_jsonl": "manifest",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
