"""The CG report in the experiment trackers the training uses (``train.tensorboard``, ``train.wandb``).

TensorBoard (``<run>/tensorboard/cg_report``): the per-target scalars of :func:`report_scalars`
at step 0, each plot as an image and ``cg_report.md`` as text. Weights & Biases (a run of job type
``cg-report`` under ``<run>/wandb``): the report table as a ``wandb.Table``, the same scalars as
the run's summary, and the plots as ``wandb.Image``. wandb runs in ``train.wandb_mode``, offline
unless the user sets ``online``: nothing leaves the machine by default (``wandb sync`` uploads an
offline run later).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from cgmed.train.config import TrainConfig

log = logging.getLogger(__name__)

ARMS = ("baseline", "baseline_plus", "trained")
TABLE_COLUMNS = [
    "name",
    "group",
    "target",
    "related",
    "metric",
    "baseline",
    "baseline_plus",
    "trained",
    "cg_helps",
    "cg_helps_significant",
    "trained_minus_baseline_plus",
    "trained_minus_baseline_plus_ci_low",
    "trained_minus_baseline_plus_ci_high",
    "trained_minus_baseline_plus_p",
    "gain",
    "seen_accuracy",
    "paper",
]
TENSORBOARD_DIR = "tensorboard/cg_report"


def _metric(row: dict[str, Any]) -> str:
    return row.get("metric", "accuracy")


def _verdict(value: bool | None) -> float | None:
    return None if value is None else float(value)


def report_scalars(doc: dict[str, Any]) -> dict[str, float]:
    """Per target ``<name>/<what>``: each arm's number (accuracy, or cIoU for a detection target),
    Trained minus each rival (paired) with its interval and p-value, the gain, the accuracy on the
    seen combinations, and the verdicts as 0/1 (left out where untested)."""
    scalars: dict[str, float | None] = {}
    for row in doc["targets"]:
        name, metric = row["name"], _metric(row)
        for arm in ARMS:
            if row.get(arm):
                scalars[f"{name}/{arm}/{metric}"] = row[arm][metric]
        for rival, paired in row.get("paired", {}).items():
            scalars[f"{name}/trained_minus_{rival}"] = paired["difference"]
            scalars[f"{name}/trained_minus_{rival}_ci_low"] = paired["ci95"][0]
            scalars[f"{name}/trained_minus_{rival}_ci_high"] = paired["ci95"][1]
            scalars[f"{name}/trained_minus_{rival}_p"] = paired["p_value"]
        scalars[f"{name}/gain"] = row.get("gain")
        scalars[f"{name}/seen_accuracy"] = (row.get("seen_accuracy") or {}).get("accuracy")
        scalars[f"{name}/cg_helps"] = _verdict(row.get("cg_helps"))
        scalars[f"{name}/cg_helps_significant"] = _verdict(row.get("cg_helps_significant"))
    return {k: float(v) for k, v in scalars.items() if v is not None and math.isfinite(float(v))}


def report_table(doc: dict[str, Any]) -> list[list[Any]]:
    """The report's rows as :data:`TABLE_COLUMNS` (None where a row has no such number)."""
    data = []
    for row in doc["targets"]:
        metric = _metric(row)
        versus_plus = row.get("paired", {}).get("baseline_plus") or {}
        ci = versus_plus.get("ci95") or [None, None]
        data.append(
            [
                row["name"],
                row.get("group") or "",
                row["target"],
                " + ".join(row.get("related", [])),
                metric,
                *((row.get(arm) or {}).get(metric) for arm in ARMS),
                row.get("cg_helps"),
                row.get("cg_helps_significant"),
                versus_plus.get("difference"),
                ci[0],
                ci[1],
                versus_plus.get("p_value"),
                row.get("gain"),
                (row.get("seen_accuracy") or {}).get("accuracy"),
                ", ".join(f"{k} {v}" for k, v in (row.get("paper") or {}).items()),
            ]
        )
    return data


def _plot_paths(doc: dict[str, Any], run_dir: Path) -> dict[str, Path]:
    """Each plot of the report by its name without ``.png`` (``pictures/x_confusion``)."""
    return {file.removesuffix(".png"): run_dir / file for file in doc.get("plots", [])}


def to_tensorboard(doc: dict[str, Any], run_dir: Path) -> Path | None:
    """Scalars, plots and the markdown report to ``<run>/tensorboard/cg_report`` (replacing what
    an earlier report wrote there); None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning(
            "train.tensorboard=true but tensorboard is not installed (pip install tensorboard): "
            "the CG report is not written for TensorBoard"
        )
        return None
    import numpy as np
    from PIL import Image

    folder = run_dir / TENSORBOARD_DIR
    # the report is made whole each time: a rerun's events replace the last run's, not add to them
    for stale in folder.glob("events.out.tfevents.*"):
        stale.unlink()
    writer = SummaryWriter(str(folder))
    try:
        for tag, value in report_scalars(doc).items():
            writer.add_scalar(tag, value, 0)
        for name, path in _plot_paths(doc, run_dir).items():
            with Image.open(path) as image:
                writer.add_image(name, np.asarray(image.convert("RGB")), 0, dataformats="HWC")
        report_md = run_dir / "cg_report.md"
        if report_md.is_file():
            writer.add_text("cg_report", report_md.read_text(encoding="utf-8"), 0)
    finally:
        writer.close()
    return folder


def to_wandb(doc: dict[str, Any], run_dir: Path, project: str, mode: str) -> str | None:
    """The report table, scalars (as the summary) and plots to a wandb run of job type
    ``cg-report``; returns where it went (the run's folder, or its page online), None when wandb
    is not installed."""
    try:
        import wandb
    except ImportError:
        log.warning(
            "train.wandb=true but wandb is not installed (pip install wandb): the CG report is "
            "not sent to wandb; set train.wandb=false to silence this"
        )
        return None
    run = wandb.init(
        project=project,
        mode=mode,
        dir=str(run_dir),
        job_type="cg-report",
        name=f"cg-report {run_dir.name}",
        config={"targets": [row["name"] for row in doc["targets"]]},
        settings=wandb.Settings(silent=True),  # track_report says in one line where the run went
    )
    try:
        logged: dict[str, Any] = {"cg_report": wandb.Table(columns=TABLE_COLUMNS, data=report_table(doc))}
        logged.update({name: wandb.Image(str(path)) for name, path in _plot_paths(doc, run_dir).items()})
        # one step: wandb keeps the last value of each key as the run's summary
        run.log({**logged, **report_scalars(doc)})
        folder = run.url if mode == "online" and run.url else str(Path(run.dir).parent)
    finally:
        run.finish()
    return folder


def track_report(doc: dict[str, Any], run_dir: Path, train: TrainConfig) -> dict[str, Any]:
    """Send the CG report ``doc`` (written in ``run_dir``) to TensorBoard and wandb as
    ``train.tensorboard`` / ``train.wandb`` ask; returns ``doc``."""
    if train.tensorboard:
        folder = to_tensorboard(doc, run_dir)
        if folder is not None:
            log.info("CG report written for TensorBoard to %s", folder)
    if train.wandb and train.wandb_mode != "disabled":
        folder = to_wandb(doc, run_dir, train.wandb_project, train.wandb_mode)
        if folder is not None:
            upload = f"; upload it with: wandb sync {folder}" if train.wandb_mode == "offline" else ""
            log.info("CG report logged to wandb (%s mode) in %s%s", train.wandb_mode, folder, upload)
    return doc
