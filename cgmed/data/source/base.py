"""The interface every reader implements (:class:`Source`): subsets, a per-subset index, loading by position."""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator
from pathlib import Path

from cgmed.data.imaging import ImageConfig
from cgmed.data.record import Sample
from cgmed.data.source.bad import BadSample, BadSamples
from cgmed.data.source.config import DataConfig
from cgmed.data.source.images import check_image, check_inside_root
from cgmed.data.source.index import SubsetIndex
from cgmed.data.subsets import SubsetInfo
from cgmed.data.vocab import Vocabulary


class Source(abc.ABC):
    """Common interface of the readers."""

    root: Path
    cfg: DataConfig
    vocab: Vocabulary
    # how images are converted (the ``image`` group), set by open_source; None = its defaults
    image_cfg: ImageConfig | None = None

    @abc.abstractmethod
    def subsets(self) -> dict[str, SubsetInfo]:
        """The subsets this source holds, by id."""

    @abc.abstractmethod
    def index(self, subset: str, bad: BadSamples) -> SubsetIndex:
        """One streaming pass over a subset's records; bad records go to ``bad``."""

    @abc.abstractmethod
    def load(self, index: SubsetIndex, positions: list[int]) -> Iterator[tuple[int, Sample]]:
        """The samples at ``positions`` of ``index`` (in file order)."""

    def resolve_image(self, rel: str) -> Path:
        """The absolute path of an image path relative to the data root."""
        return Path(os.path.abspath(self.root / rel))

    def load_checked(
        self, index: SubsetIndex, positions: list[int], bad: BadSamples
    ) -> Iterator[tuple[int, Sample]]:
        """``load`` plus the image checks; bad ones are counted in ``bad`` and not yielded.

        The image must resolve (symlinks followed) inside the data root or one of
        ``data.linked_dirs``, and with ``data.verify_images`` exist and decode completely.
        """
        real_roots = [Path(os.path.realpath(d)) for d in (self.root, *self.cfg.linked_dirs)]
        for pos, sample in self.load(index, positions):
            try:
                check_inside_root(Path(sample.image), real_roots)
                if self.cfg.verify_images:
                    check_image(Path(sample.image), self.image_cfg, sample.modality)
            except BadSample as err:
                bad.add(f"subset {index.info.id}, record {sample.id}", err)
                continue
            yield pos, sample
