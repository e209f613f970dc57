"""Subsets made from part of another (``data.derived``), on top of any source (:class:`DerivedSource`).

A derived subset keeps some labels of its parent, one share of one label's samples (the
paper's Table 8 gives half of subset 28's Normal images to X-ray COVID and the other half to
X-ray Pneumonia), and/or the samples of some source datasets (``data-no``, e.g. one population
group, Table 7). It gets its own id and MAT triplet (a finer task element such as Pneumonia),
so the selection rules and the leakage audit treat it like any subset.

Parents are hidden from the selection rules unless ``data.keep_derived_sources``: a parent
holds its children's samples (the Pneumonia images of X-ray Pneumonia under subset 28's own
triplet, X-ray Lung COVID), so training on it would teach a derived target's combination; the
leakage audit refuses a parent's samples next to a derived target whatever the selection.

Indexes are filtered copies of the parent's (same files and byte offsets), so memory stays
at ~15 bytes per record and records are read only when picked. Shares are exact: a label's
samples of each split are put in a seeded order and cut into ``parts`` equal runs. Siblings
with different label or ``data_no`` filters may overlap; the leakage audit compares the records
of subsets cut from one parent and refuses a training subset holding a target's records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from cgmed.data.record import Sample, rng_for
from cgmed.data.source.bad import BadSamples
from cgmed.data.source.base import Source
from cgmed.data.source.index import SubsetIndex
from cgmed.data.subsets import DerivedSubset, SubsetInfo, normalize_subset_id
from cgmed.errors import ConfigError


class DerivedSource(Source):
    """``base`` plus the subsets of ``derived`` (see the module docstring)."""

    def __init__(self, base: Source, derived: list[DerivedSubset], keep_sources: bool = False):
        self.base, self.keep_sources = base, keep_sources
        self.root, self.cfg, self.vocab = base.root, base.cfg, base.vocab
        parents = base.subsets()
        self.specs: dict[str, DerivedSubset] = {}
        self.infos: dict[str, SubsetInfo] = {}
        for i, spec in enumerate(derived):
            key = f"data.derived[{i}]"
            # ids as the rest of cgmed spells them (3 -> '03'), so targets and rules can name them
            spec = dataclasses.replace(
                spec, id=normalize_subset_id(spec.id), source=normalize_subset_id(spec.source)
            )
            parent = parents.get(spec.source)
            if parent is None:
                raise ConfigError(
                    f"{key}.source", f"no subset {spec.source!r} in the data", f"ids: {sorted(parents)}"
                )
            if spec.id in parents:
                raise ConfigError(
                    f"{key}.id", f"{spec.id!r} is already a subset of the data", "choose another id"
                )
            self.specs[spec.id] = spec
            self.infos[spec.id] = self._derived_info(spec, parent, key)
        self.hidden = set() if keep_sources else {spec.source for spec in self.specs.values()}

    def _derived_info(self, spec: DerivedSubset, parent: SubsetInfo, key: str) -> SubsetInfo:
        """The derived subset's id and triplet: its own task, modality and area from the parent unless given."""
        return SubsetInfo(
            id=spec.id,
            modality=self.vocab.canonical("modality", spec.modality, f"{key}.modality")
            if spec.modality
            else parent.modality,
            area=self.vocab.canonical("area", spec.area, f"{key}.area") if spec.area else parent.area,
            task=self.vocab.canonical("task", spec.task, f"{key}.task"),
            name=spec.name or f"{parent.name or parent.id}, part (derived from {parent.id})",
            status=parent.status,
            derived_from=parent.id,
        )

    def subsets(self) -> dict[str, SubsetInfo]:
        shown = {sid: info for sid, info in self.base.subsets().items() if sid not in self.hidden}
        return dict(sorted({**shown, **self.infos}.items()))

    def index(self, subset: str, bad: BadSamples) -> SubsetIndex:
        spec = self.specs.get(subset)
        if spec is None:
            return self.base.index(subset, bad)
        parent = self.base.index(spec.source, bad)
        key = f"data.derived[{list(self.specs).index(subset)}]"
        for name in [*spec.labels, *([spec.share.label] if spec.share else [])]:
            if name not in parent.labels:
                raise ConfigError(
                    f"{key}",
                    f"label {name!r} is not a label of subset {spec.source}",
                    f"labels: {parent.labels}",
                )
        keep = [
            pos
            for pos in range(len(parent))
            if not spec.labels or parent.labels[parent.label_id[pos]] in spec.labels
        ]
        if spec.data_no:
            wanted = {str(x) for x in spec.data_no}
            keep = [pos for pos, sample in self.base.load(parent, keep) if sample.data_no in wanted]
            if not keep:
                raise ConfigError(
                    f"{key}.data_no", f"no record of subset {spec.source} has data-no in {sorted(wanted)}"
                )
        if spec.share is not None:
            keep = self._share(spec, parent, keep)
        idx = SubsetIndex(
            info=self.infos[subset],
            files=list(parent.files),
            stamps=list(parent.stamps),
            has_test_file=parent.has_test_file,
        )
        for pos in sorted(keep):
            idx.add(
                parent.file_id[pos],
                parent.offset[pos],
                parent.labels[parent.label_id[pos]],
                bool(parent.is_test[pos]),
            )
        return idx

    def _share(self, spec: DerivedSubset, parent: SubsetIndex, keep: list[int]) -> list[int]:
        """``keep`` with the share's label cut to its part, per split (the other labels untouched)."""
        share = spec.share
        assert share is not None
        share_label_no = parent.labels.index(share.label)
        out = [pos for pos in keep if parent.label_id[pos] != share_label_no]
        for test in (0, 1):
            mine = [
                pos for pos in keep if parent.label_id[pos] == share_label_no and parent.is_test[pos] == test
            ]
            # keyed by the parent and label, not by the derived id: sibling subsets that take
            # parts 0 and 1 of the same label get disjoint runs of one order
            rng_for(self.cfg.split_seed, "share", spec.source, share.label, test).shuffle(mine)
            bounds = [len(mine) * k // share.parts for k in range(share.parts + 1)]
            out += mine[bounds[share.part] : bounds[share.part + 1]]
        return out

    def load(self, index: SubsetIndex, positions: list[int]) -> Iterator[tuple[int, Sample]]:
        for pos, sample in self.base.load(index, positions):
            yield pos, self._own_question(index, sample)

    def load_checked(
        self, index: SubsetIndex, positions: list[int], bad: BadSamples
    ) -> Iterator[tuple[int, Sample]]:
        # the base checks its own samples (a reader may keep its images outside the data root)
        for pos, sample in self.base.load_checked(index, positions, bad):
            yield pos, self._own_question(index, sample)

    def _own_question(self, index: SubsetIndex, sample: Sample) -> Sample:
        spec = self.specs.get(index.info.id)
        if spec is not None and spec.labels and sample.options:
            # the parent's options name labels this subset does not have: rebuild the question
            # from the derived subset's own labels (cgmed.data.build.write_question)
            sample.options, sample.answer = [], ""
        return sample
