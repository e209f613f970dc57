"""The entry of ``cgmed-cg``: the CG protocol, or the pilot when ``cg.pilot`` is set."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cgmed.cg.config import CGApp
from cgmed.cg.pilot import run_pilot
from cgmed.cg.protocol import run_protocol


def run_cg(app: CGApp, run_dir: Path, dry_run: bool = False) -> dict[str, Any]:
    """Run what ``app`` asks for into ``run_dir``; returns the report document (or, with
    ``dry_run``, what would be trained, after printing the plan)."""
    runner = run_pilot if app.cg.pilot is not None else run_protocol
    return runner(app, run_dir, dry_run=dry_run)


def run_groups(groups: Mapping[str, Any], run_dir: Path, dry_run: bool = False) -> dict[str, Any]:
    """:func:`run_cg` from typed config groups by name (``cgmed.cli.hydra_app.typed_config``)."""
    return run_cg(CGApp(**groups), run_dir, dry_run=dry_run)
