"""Per-step metrics to ``metrics.jsonl``, TensorBoard and (optionally) Weights & Biases.

The first row a process writes also holds the run's effective batch (global, per device,
accumulation, processes) and engine; a resumed run keeps the rows up to its checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from cgmed.atomic import atomic_write_text
from cgmed.errors import DataError

log = logging.getLogger(__name__)


class MetricsLogger:
    """Rank 0 writes; the others hold a no-op logger. wandb is offline unless configured."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        tensorboard: bool,
        wandb: bool,
        wandb_project: str,
        wandb_mode: str,
        config: dict[str, Any] | None = None,
        resume_step: int | None = None,
    ):
        self.enabled = enabled
        self.rows_written = 0  # by this process, since it opened the file
        self._tb = self._wandb = None
        self._fh = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "metrics.jsonl"
        kept = rows_up_to(path, resume_step) if resume_step is not None and path.exists() else []
        # the kept rows replace the file in one rename: a kill here loses none of them
        atomic_write_text(path, "".join(ln + "\n" for ln in kept))
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional at run time
                self._tb = None
        if wandb and wandb_mode != "disabled":
            import wandb as wb

            self._wandb = wb.init(
                project=wandb_project, mode=wandb_mode, dir=str(run_dir), config=config, resume="allow"
            )

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _clean(v) for k, v in values.items()}}
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        self.rows_written += 1
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def close(self) -> None:
        if self._fh:
            self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def rows_up_to(path: Path, step: int) -> list[str]:
    """The lines of ``metrics.jsonl`` up to ``step`` (the rows a resumed run keeps).

    A torn last line (the process was killed while writing it) is dropped and reported; an
    unreadable line before the last is a DataError naming it.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                log.warning(
                    "%s: dropped a torn last line (%d bytes), written by an interrupted run", path, len(line)
                )
                continue
            raise DataError(
                f"{path}:{number}", f"unreadable metrics row ({err.msg})", "delete the line or the file"
            ) from None
        if row.get("step", 0) <= step:
            # rows logged after the checkpoint we resume from are replayed; drop them
            kept.append(line)
    return kept


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
