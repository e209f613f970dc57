"""Progress of a long loop (training steps, evaluation questions) for the person watching it.

On a terminal it is a tqdm bar (count, it/s, time left, and the loss as a postfix). In a log file
a redrawn bar is a wall of carriage returns, so under SLURM (``SLURM_JOB_ID``), CI (``CI``) or
when stderr is not a terminal, ``mode="auto"`` writes a plain line through logging instead, at
every tenth of the way (at most one per ``min_interval`` seconds, at least one per
``max_interval`` seconds). ``mode=True`` always draws the bar, ``mode=False`` shows nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Literal

__all__ = ["ProgressMode", "LineProgress", "interactive", "progress"]

ProgressMode = bool | Literal["auto"]
log = logging.getLogger(__name__)


def interactive() -> bool:
    """Whether a person watches stderr on a terminal: not a SLURM job, not CI, stderr a TTY."""
    if os.environ.get("SLURM_JOB_ID") or os.environ.get("CI"):
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class LineProgress:
    """The bar's content as a plain log line every ``every`` of the total (none at the end, which
    the caller reports): no redraws.

    Offers the part of tqdm's interface the loops use (``update``, ``set_postfix``, ``close``).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        initial: int = 0,
        every: float = 0.1,
        min_interval: float = 10.0,
        max_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._start_n = initial
        self.every, self.min_interval, self.max_interval = every, min_interval, max_interval
        self._clock = clock
        self._started = self._last_time = clock()
        self._last_fraction = initial / total if total else 0.0
        self.postfix = ""

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        """Values shown after the count (tqdm's signature; a line is written on ``update`` only)."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        fraction = self.n / self.total if self.total else 1.0
        since = now - self._last_time
        milestone = fraction - self._last_fraction >= self.every - 1e-9
        # the end needs no line: the caller says how the loop ended
        if self.n < self.total and ((milestone and since >= self.min_interval) or since >= self.max_interval):
            log.info("%s", self.line(now))
            self._last_time, self._last_fraction = now, fraction

    def line(self, now: float) -> str:
        """``train 120/400 step (30%), loss 0.4123, 3.1 step/s, 1:30 left``."""
        from tqdm import tqdm

        parts = [f"{self.desc} {self.n}/{self.total} {self.unit} ({100 * self.n / max(self.total, 1):.0f}%)"]
        if self.postfix:
            parts.append(self.postfix)
        rate = (self.n - self._start_n) / max(now - self._started, 1e-9)
        if self.n > self._start_n:
            parts.append(f"{rate:.1f} {self.unit}/s")
            parts.append(f"{tqdm.format_interval((self.total - self.n) / rate)} left")
        return ", ".join(parts)

    def close(self) -> None:
        """Nothing to clear: the lines stay in the log as written."""


def progress(total: int, desc: str, mode: ProgressMode = "auto", unit: str = "it", initial: int = 0) -> Any:
    """A progress reporter for ``total`` units (see the module docstring), or None when ``mode`` is
    false. The bar is left off the screen when done: the caller's summary line replaces it."""
    if mode is False:
        return None
    if mode == "auto" and not interactive():
        return LineProgress(total, desc, unit, initial)
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=False, file=sys.stderr
    )
