"""``cgmed-data``: the synthetic world, the catalog of a data root, and CG split building.

    cgmed-data synth out=DIR [synth.images_per_subset=200 ...]
    cgmed-data catalog data.root=DIR
    cgmed-data build data.root=DIR "split.targets=['04']" split.train=related [hydra.run.dir=OUT]

``data.root`` may be left out: the synthetic MAT world (the ``synth`` group) is generated
into ``data.cache_dir`` and used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cgmed.cli.hydra_app import app_config, run_dir, run_subcommands
from cgmed.data.imaging import ImageConfig
from cgmed.data.source import DataConfig
from cgmed.data.split import SplitConfig
from cgmed.data.synth import SynthConfig
from cgmed.errors import ConfigError


@dataclass
class DataApp:
    """Root config of ``cgmed-data``: the groups its commands read."""

    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    image: ImageConfig = field(default_factory=ImageConfig)


def synth(cfg: Any) -> None:
    from cgmed.data.synth import write_release

    app = app_config(cfg, DataApp)
    if not cfg.get("out"):
        raise ConfigError(
            "out", "is required: where to write the synthetic release", "cgmed-data synth out=DIR"
        )
    summary = write_release(app.synth, Path(str(cfg.out)).expanduser())
    print(json.dumps(summary, indent=1))


def catalog(cfg: Any) -> None:
    from cgmed.data.build import resolve_root
    from cgmed.data.catalog import build_catalog
    from cgmed.data.source import open_source

    app = app_config(cfg, DataApp)
    data = app.data
    source = open_source(data, resolve_root(data, app.synth))
    cat = build_catalog(source, data.max_bad_examples)
    out = run_dir() / "catalog.json"
    cat.write(out)
    print(cat.table())
    print(f"catalog written to {out}")
    if cat.bad.total:
        print(cat.bad.report())
        cat.bad.raise_if_any(data.on_bad_sample)


def build(cfg: Any) -> None:
    from cgmed.data.build import build_from_config

    app = app_config(cfg, DataApp)
    out = run_dir()
    meta = build_from_config(app.data, app.split, app.synth, out, image=app.image)
    targets = (
        ", ".join(f"{t['id']} ({t['modality']} {t['area']} {t['task']})" for t in meta["targets"]) or "none"
    )
    print(f"targets: {targets}")
    print(f"train subsets: {', '.join(t['id'] for t in meta['train_subsets']) or 'none'}")
    print(f"sizes: {meta['sizes']}")
    for note in meta["notes"]:
        print(f"note: {note}")
    audit = meta["audit"]
    print(f"audit: {'passed' if audit['passed'] else 'FAILED'} {audit['checks']}")
    if meta["bad_samples"]["total"]:
        print(f"skipped bad samples: {meta['bad_samples']['by_kind']}")
    if meta["bad_samples"]["notes"]:
        print(f"data notes (nothing rejected): {meta['bad_samples']['notes']}")
    print(f"content hash: {meta['content_hash']}")
    print(f"written to {out}")


COMMANDS = {"synth": synth, "catalog": catalog, "build": build}


def main() -> None:
    run_subcommands("cgmed-data", COMMANDS)


if __name__ == "__main__":
    main()
