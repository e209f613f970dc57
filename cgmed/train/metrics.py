"""Per-step metrics to ``metrics.jsonl``, TensorBoard and (optionally) Weights & Biases."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


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
        self._tb = self._wandb = None
        self._fh = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "metrics.jsonl"
        kept = []
        if resume_step is not None and path.exists():
            # rows logged after the checkpoint we resume from are replayed; drop them
            kept = [
                ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step
            ]
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - open for the whole run
        self._fh.writelines(ln + "\n" for ln in kept)
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


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
