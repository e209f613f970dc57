"""Index and build a split from a Parquet dataset with an image column (``data=hf``), side by side
with the Med-MAT reader on the same records: rows/s and peak memory, at several dataset sizes.

    python benchmarks/hf_index.py [--rows 50000 200000 400000] [--medmat-rows 200000]
                                  [--workdir /tmp/cgmed-bench-hf]

The same records are written twice: as Parquet files (``train-*`` / ``test-*``, the official split;
an image column of small PNG bytes, a ClassLabel and the modality in a column, so one dataset is
four MAT subsets) and as a Med-MAT-shaped release (subset JSON files, one PNG file per record, a
``cgmed_catalog.json`` declaring the four subsets). Every measurement runs in a fresh subprocess,
so its peak RSS is its own:

- ``index``: the catalog (every subset indexed in one pass). Local Parquet files are read with
  pyarrow in record batches, with no Arrow copy made.
- ``build``: a split holding out CT Chest Diseases and training on the three related subsets (3,000
  samples each, test sets of 250 per label): index, draw, read (hf: copy into the image cache) and
  check the selected images, write the questions, leakage audit.
- ``imports``: the same process with cgmed and datasets imported and nothing read, the floor of the rest.

The ``hf`` side runs at every ``--rows`` count: its peak memory must not grow with the row count
beyond cgmed's own index (~15 bytes a row, as for Med-MAT).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

LABELS = ["Effusion", "Nodule", "Normal", "Pneumonia"]
MODALITIES = ["CT", "MRI", "US", "X-ray"]
SUFFIX = "Answer with the option's letter from the given choices directly."
TARGET = {"modality": "CT", "area": "Chest", "task": "Diseases"}


def record(i: int) -> tuple[str, str, str, bytes]:
    """Row ``i``: its modality, label, split and PNG bytes (8 x 8 pixels, unique per row)."""
    from PIL import Image

    image = Image.new("RGB", (8, 8))
    image.putdata([((i >> 16) & 255, (i >> 8) & 255, i & 255)] + [(0, 0, 0)] * 63)
    out = io.BytesIO()
    image.save(out, format="PNG")
    split = "test" if (i // 16) % 10 == 9 else "train"  # every modality and label has test rows
    return MODALITIES[i % 4], LABELS[(i // 4) % 4], split, out.getvalue()


def write_parquet(out: Path, rows: int) -> None:
    """``out/{train,test}-00000-of-00001.parquet``, written in batches (bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import ClassLabel, Features, Image, Value

    features = Features({"image": Image(), "label": ClassLabel(names=LABELS), "modality": Value("string")})
    out.mkdir(parents=True, exist_ok=True)
    writers = {
        s: pq.ParquetWriter(out / f"{s}-00000-of-00001.parquet", features.arrow_schema)
        for s in ("train", "test")
    }
    for start in range(0, rows, 10_000):
        batch: dict[str, dict[str, list]] = {s: {"image": [], "label": [], "modality": []} for s in writers}
        for i in range(start, min(rows, start + 10_000)):
            modality, label, split, png = record(i)
            batch[split]["image"].append({"bytes": png, "path": None})
            batch[split]["label"].append(LABELS.index(label))
            batch[split]["modality"].append(modality)
        for split, columns in batch.items():
            writers[split].write_table(pa.Table.from_pydict(columns, schema=features.arrow_schema))
    for writer in writers.values():
        writer.close()


def write_release(root: Path, rows: int) -> None:
    """A Med-MAT-shaped release of the same records: one PNG file per record, four subsets h1-h4."""
    agg = root / "Aggregated_Subsets"
    agg.mkdir(parents=True, exist_ok=True)
    files = {
        (m, s): open(agg / f"Subset--h{k + 1}-{s}.json", "w", encoding="utf-8")  # noqa: SIM115
        for k, m in enumerate(MODALITIES)
        for s in ("train", "test")
    }
    first = dict.fromkeys(files, True)
    for i in range(rows):
        modality, label, split, png = record(i)
        image = f"images/{modality}/{i // 1000}/{i}.png"
        (root / image).parent.mkdir(parents=True, exist_ok=True)
        (root / image).write_bytes(png)
        options = "\n".join(f"{'ABCD'[j]}: {o}" for j, o in enumerate(LABELS))
        rec = {
            "id": i,
            "caption": label,
            "image": image,
            "Question": "Which finding does this chest image show?",
            "Answer": label,
            "Question-choice": f"Which finding does this chest image show?\n{options}\n{SUFFIX}",
            "Answer-choice": "ABCD"[LABELS.index(label)],
        }
        fh = files[(modality, split)]
        fh.write(("[\n" if first[(modality, split)] else ",\n") + json.dumps(rec))
        first[(modality, split)] = False
    for fh in files.values():
        fh.write("\n]\n")
        fh.close()
    subsets = [
        {"id": f"h{k + 1}", "modality": m, "area": "Chest", "task": "Diseases"}
        for k, m in enumerate(MODALITIES)
    ]
    (root / "cgmed_catalog.json").write_text(json.dumps({"format": "cgmed-catalog/1", "subsets": subsets}))


def data_config(kind: str, workdir: Path, rows: int):
    from cgmed.config import build_config
    from cgmed.data.source import DataConfig

    if kind == "medmat":
        return DataConfig(root=str(workdir / f"release-{rows}"), cache_dir=str(workdir / "cache-medmat"))
    node = {
        "format": "hf",
        "cache_dir": str(workdir / f"cache-{rows}"),
        "hf": {
            "datasets": [
                {
                    "id": "bench",
                    "path": str(workdir / f"parquet-{rows}"),
                    "mat": {"area": "Chest", "task": "Diseases"},
                    "mat_columns": {"modality": "modality"},
                }
            ]
        },
    }
    return build_config(DataConfig, node, "data")


def child(kind: str, phase: str, workdir: Path, rows: int) -> None:
    import datasets  # noqa: F401  (imported in every phase: the floor is the same)

    from cgmed.data.build import build_from_config, resolve_root
    from cgmed.data.catalog import build_catalog
    from cgmed.data.source import open_source
    from cgmed.data.split import SplitConfig

    data = data_config(kind, workdir, rows)
    t0 = time.perf_counter()
    out: dict = {}
    if phase == "index":
        catalog = build_catalog(open_source(data, resolve_root(data))).to_json()
        out["records"] = catalog["totals"]["train"] + catalog["totals"]["test"]
        out["bad"] = catalog["bad_samples"]["total"]
    elif phase == "build":
        shutil.rmtree(Path(data.cache_dir) / "hf-images", ignore_errors=True)  # copy the images anew
        split = SplitConfig(targets=[TARGET], train="related", cap_per_subset=3000, test_per_label=250)
        meta = build_from_config(data, split, None, workdir / f"split-{kind}-{rows}")
        out["records"] = rows
        out["selected"] = sum(meta["sizes"].values())
        out["audit_passed"] = meta["audit"]["passed"]
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.update(resident())
    print(json.dumps(out))


def resident() -> dict[str, float]:
    """Resident memory now, in MB: anonymous (allocated) and file-backed (mapped files, e.g. the
    memory-mapped Arrow cache, which the kernel drops under pressure); Linux only, else {}."""
    status = Path("/proc/self/status")
    if not status.exists():
        return {}
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    return {
        f"{name}_mb": int(fields[key].split()[0]) / 1024
        for name, key in (("anon", "RssAnon"), ("file", "RssFile"))
        if key in fields
    }


def measure(kind: str, phase: str, workdir: Path, rows: int) -> dict:
    args = [sys.executable, __file__, "--child", kind, phase, "--workdir", str(workdir), "--rows", str(rows)]
    res = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if res.returncode:
        raise SystemExit(f"{kind} {phase} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def prepare(workdir: Path, rows: int, release: bool) -> None:
    """Write the Parquet dataset (and, with ``release``, the Med-MAT release) of ``rows`` records once."""
    for name, write, wanted in (("parquet", write_parquet, True), ("release", write_release, release)):
        target = workdir / f"{name}-{rows}"
        if not wanted or (target / ".complete").exists():
            continue
        shutil.rmtree(target, ignore_errors=True)
        t0 = time.perf_counter()
        write(target, rows)
        (target / ".complete").touch()
        print(f"wrote {name} of {rows:,} records in {time.perf_counter() - t0:.0f}s")
    shutil.rmtree(workdir / f"cache-{rows}", ignore_errors=True)  # the image cache of earlier runs


def report(kind: str, rows: int, workdir: Path) -> None:
    """Index and build ``rows`` records with reader ``kind``, one table line per phase."""
    for phase in ("index", "build"):
        got = measure(kind, phase, workdir, rows)
        notes = (
            f"{got['bad']} bad"
            if phase == "index"
            else f"{got['selected']} samples, audit passed: {got['audit_passed']}"
        )
        speed = rows / got["seconds"]
        memory = f"{got['peak_rss_mb']:>10.0f}{got.get('anon_mb', 0):>6.0f}{got.get('file_mb', 0):>6.0f}"
        print(f"{kind:<8}{rows:>9,}{phase:>7}{got['seconds']:>9.1f}{speed:>11,.0f}{memory}  {notes}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000, 400_000])
    ap.add_argument("--medmat-rows", type=int, default=200_000, help="0: no Med-MAT run")
    ap.add_argument("--workdir", default="/tmp/cgmed-bench-hf")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "PHASE"))
    args = ap.parse_args()
    workdir = Path(args.workdir)
    if args.child:
        child(*args.child, workdir, args.rows[0])
        return
    counts = sorted(set(args.rows))
    for rows in sorted({*counts, args.medmat_rows} - {0}):
        prepare(workdir, rows, release=rows == args.medmat_rows)
    floor = measure("hf", "imports", workdir, counts[0])
    print(
        f"\nwith cgmed and datasets imported, nothing read: peak RSS {floor['peak_rss_mb']:.0f} MB "
        f"(anon {floor.get('anon_mb', 0):.0f}, file {floor.get('file_mb', 0):.0f})\n"
    )
    head = f"{'reader':<8}{'records':>9}{'phase':>7}{'seconds':>9}{'records/s':>11}{'peak RSS':>10}{'anon':>6}{'file':>6}"
    print(f"{head}  notes  (MB; anon/file: resident at the end)")
    for rows in counts:
        report("hf", rows, workdir)
    if args.medmat_rows:
        report("medmat", args.medmat_rows, workdir)


if __name__ == "__main__":
    main()
