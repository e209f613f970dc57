"""Work that one process of a multi-process launch does for all: every rank of a ``cgmed-cg``
launch runs the driver, and what must happen once (building data, writing records and reports)
runs on the main process while the others wait."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from cgmed.errors import CgmedError

T = TypeVar("T")


def on_main(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on the main process while the others wait; returns its result there (None
    elsewhere). A failure on the main process is raised on every rank: behind a bare barrier the
    others would wait for it until the process-group timeout."""
    from accelerate import PartialState

    state = PartialState()
    result: T | None = None
    failure: BaseException | None = None
    if state.is_main_process:
        try:
            result = fn()
        except Exception as err:  # re-raised below, after every rank has heard of it
            failure = err
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        news = [None if failure is None else type(failure).__name__]
        broadcast_object_list(news, from_process=0)  # a collective: also the barrier
        if news[0] is not None and failure is None:
            raise CgmedError(
                f"stopped on rank {state.process_index}: the main process failed with {news[0]} (its message is "
                "printed by rank 0)"
            )
    if failure is not None:
        raise failure
    return result
