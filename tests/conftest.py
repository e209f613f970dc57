"""Shared fixtures: tiny hand-made Med-MAT-shaped releases written in the released format."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from cgmed.data.choices import LETTERS


def write_png(path: Path, seed: int, size: int = 8) -> None:
    """A tiny PNG whose bytes are unique per seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    im = Image.new("RGB", (size, size))
    im.putdata([(rng.randrange(256), rng.randrange(256), seed % 256) for _ in range(size * size)])
    im.save(path, format="PNG")


def medmat_record(rid: int, label: str, options: list[str], image: str, sep: str = ":") -> dict:
    letter = LETTERS[options.index(label)]
    lines = ["Look at this image and state which condition it shows."]
    lines += [f"{LETTERS[i]}{sep} {o}" for i, o in enumerate(options)]
    lines.append("Answer with the option's letter from the given choices directly.")
    return {
        "id": rid,
        "caption": label,
        "image": image,
        "Question": lines[0],
        "Answer": label,
        "Question-choice": "\n".join(lines),
        "Answer-choice": letter,
        "data-no": "7",
    }


def make_release(
    root: Path,
    spec: dict[str, dict],
    sep: str = ":",
    catalog: list[dict] | None = None,
) -> Path:
    """Write ``root/Aggregated_Subsets/Subset--NN-*.json`` and images.

    ``spec[id] = {"labels": [...], "train": n_per_label, "test": n_per_label (0 = no test file)}``.
    Image paths carry spaces and parentheses like the real release.
    """
    agg = root / "Aggregated_Subsets"
    agg.mkdir(parents=True, exist_ok=True)
    seed = 0
    for sid, s in spec.items():
        labels = s["labels"]
        for split in ("train", "test"):
            n = s.get(split, 0)
            if not n:
                continue
            records = []
            for lab in labels:
                for k in range(n):
                    seed += 1
                    rel = f"med-mat/Set {sid} (v1)/{lab}/{lab}- ({k}) {split}.png"
                    write_png(root / rel, seed)
                    opts = sorted(labels)[:4] if lab in sorted(labels)[:4] else [lab, *sorted(labels)[:3]]
                    records.append(medmat_record(len(records), lab, opts, rel, sep))
            (agg / f"Subset--{sid}-{split}.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    if catalog is not None:
        (root / "cgmed_catalog.json").write_text(
            json.dumps({"format": "cgmed-catalog/1", "subsets": catalog})
        )
    return root


# A small world on the built-in Med-MAT table: CT Lung COVID (03), CT Lung Cancer (04),
# CT Brain State (05), X-ray Lung COVID (28), X-ray Lung Diseases (30), Der Skin Cancer (07),
# FP Fundus Level (16). Subset 16 has no test file (9:1 rule).
SMALL_SPEC = {
    "03": {"labels": ["COVID", "Normal"], "train": 12, "test": 3},
    "04": {"labels": ["Adenocarcinoma", "Normal", "Squamous cell carcinoma"], "train": 6, "test": 2},
    "05": {"labels": ["Hemorrhage", "Normal"], "train": 8, "test": 4},
    "07": {"labels": ["Melanoma", "Nevus"], "train": 10, "test": 2},
    "16": {"labels": ["Level 0", "Level 1", "Level 2"], "train": 20, "test": 0},
    "28": {"labels": ["COVID", "Normal", "Pneumonia"], "train": 10, "test": 3},
    "30": {"labels": ["Normal", "Tuberculosis"], "train": 9, "test": 3},
}


@pytest.fixture
def small_release(tmp_path: Path) -> Path:
    return make_release(tmp_path / "release", SMALL_SPEC)
