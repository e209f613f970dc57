"""Catalog a generated Med-MAT-sized release (2.4M records) and report records/s and peak memory.

Side by side in one run, each in a fresh subprocess so peak RSS is its own:
  - cgmed's streaming catalog (index + full validation of every record: options parsed,
    answer letter checked against options and caption, image path checked), and
  - the naive way: ``json.load`` of each subset file, counting captions (no validation).

    python benchmarks/catalog_scale.py [--records 2400000] [--workdir /tmp/cgmed-bench]

Images are not written: cataloguing reads only the JSON (image files are checked at build time).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

LABELS = ["Normal", "Cyst", "Tumor", "Stone", "Eosinophil, lymphocyte", "Level 2"]
SUFFIX = "Answer with the option's letter from the given choices directly."


def generate(root: Path, total: int) -> None:
    """37 classification subsets with a skewed size distribution (a few very large, like the release)."""
    from cgmed.data.subsets import MEDMAT_SUBSETS

    ids = [s.id for s in MEDMAT_SUBSETS.values() if s.status in ("ID", "OOD")]
    weights = [8 if i % 9 == 0 else (1 if i % 4 else 3) for i in range(len(ids))]
    agg = root / "Aggregated_Subsets"
    agg.mkdir(parents=True, exist_ok=True)
    done = 0
    for k, (sid, w) in enumerate(zip(ids, weights, strict=True)):
        n = total - done if k == len(ids) - 1 else total * w // sum(weights)
        done += n
        with open(agg / f"Subset--{sid}-train.json", "w", encoding="utf-8") as fh:
            fh.write("[\n")
            for i in range(n):
                opts = [LABELS[(i + j) % len(LABELS)] for j in range(4)]
                ans = i % 4
                q = (
                    "This is a CT image of the lung. Which finding does it show?\n"
                    + "\n".join(f"{'ABCD'[j]}: {o}" for j, o in enumerate(opts))
                    + "\n"
                    + SUFFIX
                )
                rec = {
                    "id": i,
                    "caption": opts[ans],
                    "image": f"med-mat/Dataset {sid} (release)/{opts[ans]}/img- ({i}).png",
                    "Question": "This is a CT image of the lung. Which finding does it show?",
                    "Answer": opts[ans],
                    "Question-choice": q,
                    "Answer-choice": "ABCD"[ans],
                    "data-no": str(k + 1),
                }
                fh.write(("," if i else "") + json.dumps(rec) + "\n")
            fh.write("]\n")


def run_cgmed(root: str) -> dict:
    from cgmed.data.catalog import build_catalog
    from cgmed.data.source import DataConfig, MedMatSource

    t0 = time.perf_counter()
    cat = build_catalog(MedMatSource(DataConfig(), root))
    secs = time.perf_counter() - t0
    totals = cat.to_json()["totals"]
    return {"records": totals["train"] + totals["test"], "seconds": secs, "bad": cat.bad.total}


def run_naive(root: str) -> dict:
    from collections import Counter

    t0 = time.perf_counter()
    n = 0
    for path in sorted((Path(root) / "Aggregated_Subsets").glob("Subset--*.json")):
        with open(path, encoding="utf-8") as fh:
            records = json.load(fh)
        Counter(r["caption"] for r in records)
        n += len(records)
        del records
    return {"records": n, "seconds": time.perf_counter() - t0, "bad": None}


def child(kind: str, root: str) -> None:
    out = run_cgmed(root) if kind == "cgmed" else run_naive(root)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=2_400_000)
    ap.add_argument("--workdir", default="/tmp/cgmed-bench")
    ap.add_argument("--child", choices=["cgmed", "naive"])
    args = ap.parse_args()
    root = Path(args.workdir) / f"release-{args.records}"
    if args.child:
        child(args.child, str(root))
        return
    stamp = root / ".complete"
    if not stamp.exists():
        t0 = time.perf_counter()
        generate(root, args.records)
        stamp.touch()
        print(f"generated {args.records} records in {time.perf_counter() - t0:.0f}s at {root}")
    size_gb = sum(p.stat().st_size for p in (root / "Aggregated_Subsets").iterdir()) / 1e9
    print(f"release: {args.records:,} records, {size_gb:.2f} GB of JSON in 37 subset files")
    rows = {}
    for kind in ("cgmed", "naive"):
        res = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                kind,
                "--records",
                str(args.records),
                "--workdir",
                args.workdir,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows[kind] = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"{'reader':<34}{'records':>11}{'seconds':>9}{'records/s':>12}{'peak RSS MB':>13}")
    names = {"cgmed": "cgmed catalog (stream+validate)", "naive": "json.load per file (no checks)"}
    for kind, r in rows.items():
        print(
            f"{names[kind]:<34}{r['records']:>11,}{r['seconds']:>9.1f}{r['records'] / r['seconds']:>12,.0f}"
            f"{r['peak_rss_mb']:>13,.0f}"
        )
    c, n = rows["cgmed"], rows["naive"]
    print(
        f"ratios cgmed/naive: time {c['seconds'] / n['seconds']:.2f}x, peak memory {c['peak_rss_mb'] / n['peak_rss_mb']:.2f}x"
    )


if __name__ == "__main__":
    main()
