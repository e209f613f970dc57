"""Writing the synthetic world to disk in the Med-MAT release layout (``write_release``).

``Aggregated_Subsets/Subset--NN-{train,test}.json`` with the release's record fields, the PNG
images under ``med-mat/`` and the catalog declaring each subset's triplet, written last so that
its presence marks a complete world.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cgmed.data import choices
from cgmed.data.boxes import format_box
from cgmed.data.record import rng_for
from cgmed.data.subsets import CATALOG_FILE
from cgmed.data.synth.config import SynthConfig
from cgmed.data.synth.drawing import render, render_detection, render_findings, save_png
from cgmed.data.synth.findings import Finding, detection_looks, finding_for
from cgmed.data.synth.layout import (
    CATALOG_FORMAT,
    FOLDER_PREFIX,
    IMAGES_DIR,
    SUBSETS_DIR,
    SubsetSpec,
    parse_label_set,
)
from cgmed.data.vocab import DETECTION_TASK
from cgmed.errors import DataError


@dataclass(frozen=True)
class _ImageSlot:
    """Image ``index`` of a subset: which file it goes to, under which label, as what path."""

    index: int
    split: str  # train | test
    label: str
    path: str  # relative to the release root: the record's "image" field


def write_release(cfg: SynthConfig, out: str | Path) -> dict[str, Any]:
    """Generate the synthetic world under ``out`` in the Med-MAT release layout.

    Writes ``Aggregated_Subsets/Subset--NN-train.json`` (and ``-test.json`` per
    ``cfg.test_file``), the PNG images under ``med-mat/`` and ``cgmed_catalog.json`` (last, so
    its presence marks a complete world). Earlier synthetic output in ``out`` is replaced.
    With ``cfg.layout == "medmat"`` the subsets are Med-MAT's classification subsets 01-37
    (real ids, triplets and ID/OOD status) with ``MEDMAT_TASK_LABELS`` as labels and each
    subset's first source dataset as ``data-no``, plus detection subsets 38/39/42/45/47/49 when
    ``cfg.medmat_detection``, and multi-label subsets 15/20/31/33/37 (label sets) when
    ``cfg.medmat_multi_label``. Det subsets get box records (see the package docstring).
    Returns ``{"root", "subsets", "images", "seconds"}``.
    """
    start = time.perf_counter()
    root = Path(out).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    _prepare(root)
    (root / SUBSETS_DIR).mkdir(exist_ok=True)
    entries = []
    n_images = 0
    for spec in cfg.subsets():
        n_images += _write_subset(cfg, spec, root)
        entries.append(_catalog_entry(spec))
    _write_catalog(cfg, entries, root)
    return {
        "root": str(root),
        "subsets": len(entries),
        "images": n_images,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _prepare(root: Path) -> None:
    """Refuse to write over a folder that holds subsets this generator did not write; clear ours."""
    agg = root / SUBSETS_DIR
    existing = sorted(agg.glob("Subset-*.json*")) if agg.is_dir() else []
    ours = False
    catalog = root / CATALOG_FILE
    if catalog.is_file():
        try:
            doc = json.loads(catalog.read_text(encoding="utf-8"))
            ours = doc.get("format") == CATALOG_FORMAT and doc.get("name") == "synthetic"
        except (json.JSONDecodeError, AttributeError):
            ours = False
    images = root / IMAGES_DIR
    synth_dirs = (
        sorted(p for p in images.iterdir() if p.name.startswith(FOLDER_PREFIX)) if images.is_dir() else []
    )
    if existing and not ours:
        # An interrupted earlier run leaves no catalog (it is written last) but only our folders.
        others = (
            [p for p in images.iterdir() if not p.name.startswith(FOLDER_PREFIX)] if images.is_dir() else []
        )
        if not synth_dirs or others:
            raise DataError(
                str(root),
                "holds Subset files that the synthetic generator did not write",
                "write the synthetic world into an empty or new folder",
            )
    # Stale files of an earlier config would otherwise mix into this one.
    for path in existing:
        path.unlink()
    for path in synth_dirs:
        shutil.rmtree(path)
    if catalog.is_file():
        catalog.unlink()


def _write_subset(cfg: SynthConfig, spec: SubsetSpec, root: Path) -> int:
    """Draw and save every image of ``spec``, write its Subset JSON files; the number of images."""
    labels = list(spec.labels)
    looks = detection_looks(labels, cfg.classification_labels()) if spec.task == DETECTION_TASK else None
    for label in labels:
        (root / IMAGES_DIR / spec.folder / label).mkdir(parents=True, exist_ok=True)
    set_looks = _label_set_looks(cfg, spec)
    records: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for slot in _image_slots(cfg, spec):
        # Text draws from its own RNG, so option settings never change the images.
        text_rng = rng_for(cfg.seed, spec.id, slot.split, slot.index, "text")
        if looks is not None:
            record = _detection_record(cfg, spec, looks[slot.label], slot, root, text_rng)
        else:
            record = _classification_record(cfg, spec, slot, root, text_rng, set_looks)
        records[slot.split].append(record)
    _write_json_array(root / SUBSETS_DIR / f"Subset--{spec.id}-train.json", records["train"])
    if cfg.has_test_file(spec.number):
        _write_json_array(root / SUBSETS_DIR / f"Subset--{spec.id}-test.json", records["test"])
    return cfg.images_per_subset


def _label_set_looks(cfg: SynthConfig, spec: SubsetSpec) -> dict[str, Finding]:
    """The look of each finding of a multi-label subset, chosen among its task tag's labels.

    Choosing among the tag's labels (not the subset's) gives a finding the look it has in
    every other subset of the tag, and keeps it apart from every other label of the tag.
    """
    pool = cfg.classification_labels().get(spec.task, [])
    looks = {name: finding_for(spec.task, name, pool) for name in spec.findings}
    return {name: look for name, look in looks.items() if look is not None}


def _image_slots(cfg: SynthConfig, spec: SubsetSpec) -> Iterator[_ImageSlot]:
    """Every image of ``spec`` in index order: train first, then test."""
    cycle = spec.label_cycle
    n_train = cfg.images_per_subset - cfg.test_count(spec.number)
    seen: Counter[str] = Counter()
    # One label cycle over the whole subset: every consecutive block (train = the first
    # n_train, test = the rest) then holds each label in its share of the cycle, to within one.
    for k in range(cfg.images_per_subset):
        label = cycle[k % len(cycle)]
        seen[label] += 1
        yield _ImageSlot(
            index=k,
            split="train" if k < n_train else "test",
            label=label,
            path=f"{IMAGES_DIR}/{spec.folder}/{label}/{label}- ({seen[label]}).png",
        )


def _classification_record(
    cfg: SynthConfig,
    spec: SubsetSpec,
    slot: _ImageSlot,
    root: Path,
    text_rng: random.Random,
    set_looks: dict[str, Finding],
) -> dict[str, Any]:
    """Draw and save one image of a classification subset; its release record (question with options).

    In a multi-label subset the label is a label set: the image shows each of its findings
    (``set_looks``: finding name -> look) and the options are label sets of the subset.
    """
    m, a, t = spec.modality, spec.area, spec.task
    image_rng = rng_for(cfg.seed, spec.id, slot.split, slot.index)
    if spec.findings:
        findings = [set_looks[name] for name in parse_label_set(slot.label)]
        img = render_findings(m, a, findings, image_rng, cfg.image_size)[0]
    else:
        img = render(m, a, t, slot.label, image_rng, cfg.image_size, labels=list(spec.labels))
    save_png(img, root / slot.path)
    question = choices.instruction(t, m, a, text_rng)
    options, letter = choices.make_options(
        slot.label, list(spec.labels), text_rng, max_options=4, order=cfg.option_order
    )
    return {
        "id": slot.index,
        "caption": slot.label,
        "image": slot.path,
        "Question": question,
        "Answer": slot.label,
        "Question-choice": choices.format_question(question, options),
        "Answer-choice": letter,
        "data-no": spec.data_no,
    }


def _detection_record(
    cfg: SynthConfig,
    spec: SubsetSpec,
    finding: Finding,
    slot: _ImageSlot,
    root: Path,
    text_rng: random.Random,
) -> dict[str, Any]:
    """Draw and save one image of a Det subset; its release record (box in ``Answer`` and ``bbox``)."""
    image_rng = rng_for(cfg.seed, spec.id, slot.split, slot.index)
    try:
        img, box = render_detection(spec.modality, spec.area, finding, image_rng, cfg.image_size)
    except ValueError as err:  # a finding clipped away entirely (only possible far below 32 px)
        where = f"synthetic subset {spec.id} ({spec.name}), {slot.split} image {slot.index}"
        raise DataError(where, str(err)) from None
    save_png(img, root / slot.path)
    return {
        "id": slot.index,
        "caption": slot.label,
        "image": slot.path,
        "Question": choices.detection_instruction(slot.label, spec.modality, spec.area, text_rng),
        "Answer": format_box(box),
        "data-no": spec.data_no,
        "bbox": box,
    }


def _write_json_array(path: Path, records: list[dict[str, Any]]) -> None:
    body = ",\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    path.write_text(f"[\n{body}\n]\n" if records else "[]\n", encoding="utf-8")


def _catalog_entry(spec: SubsetSpec) -> dict[str, Any]:
    """What the catalog declares of one subset (a multi-label one: its label sets and findings)."""
    entry = {
        "id": spec.id,
        "modality": spec.modality,
        "area": spec.area,
        "task": spec.task,
        "name": spec.name,
        "status": spec.status,
        "labels": list(spec.labels),
    }
    if spec.findings:
        entry["findings"] = list(spec.findings)
    return entry


def _write_catalog(cfg: SynthConfig, entries: list[dict[str, Any]], root: Path) -> None:
    """Write the catalog: the subsets and the config that made them."""
    config = asdict(cfg)  # lets a cache tell whether this world matches a requested config
    # Catalogs written before these switches existed stay byte-identical.
    for switch in ("medmat_detection", "medmat_multi_label"):
        if not config[switch]:
            del config[switch]
    if cfg.layout == "grid":
        del config["layout"]  # grid catalogs stay byte-identical to those written before layouts existed
    catalog = {
        "format": CATALOG_FORMAT,
        "name": "synthetic",
        "seed": cfg.seed,
        "config": config,
        "subsets": entries,
    }
    if cfg.layout != "grid":
        catalog["layout"] = cfg.layout
    (root / CATALOG_FILE).write_text(
        json.dumps(catalog, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )
