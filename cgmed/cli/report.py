"""``cgmed-report`` (also ``cgmed-cg report``): one CG report over any number of runs and sweeps.

    cgmed-cg report runs=[multirun/cg/2025-01-01_12-00-00] out=reports/table3
    cgmed-cg report runs=[runs/cg] exclude=[runs/cg/t3_row19]      # leave a job out
    cgmed-cg report runs=[runs/a,runs/b] targets=[t3_row19,t3_row20] plots=false

Finds every ``cgmed-cg`` run directory under ``runs``, rebuilds each target's results from disk
and writes ``cg_report.json``, ``cg_report.md`` and the plots into ``out`` (the Hydra run
directory), with a status table of what is missing, unfinished or failed: see
:mod:`cgmed.cg.merge`. The config is ``cgmed/conf/report.yaml`` (``cgmed.cg.merge.ReportConfig``).
"""

from __future__ import annotations

import sys
from typing import Any

from cgmed.cli.hydra_app import run_app, run_dir
from cgmed.config import as_dict, build_config

CONFIG_NAME = "report"


def job(cfg: Any) -> None:
    from cgmed.cg.merge import ReportConfig, merge_report

    merge_report(build_config(ReportConfig, cfg, ""), run_dir())


def register_schema() -> None:
    """Store :class:`ReportConfig`'s defaults as ``report_schema``, the base of ``report.yaml``."""
    from hydra.core.config_store import ConfigStore

    from cgmed.cg.merge import ReportConfig

    ConfigStore.instance().store(name="report_schema", node=as_dict(ReportConfig()))


def main(argv: list[str] | None = None, prog: str = "cgmed-report") -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    outs = [a.split("=", 1)[1] for a in argv if a.startswith("out=")]
    if outs and not any(a.startswith("hydra.run.dir=") for a in argv):
        argv.append(f"hydra.run.dir={outs[-1]}")  # the report and Hydra's record of it in one folder
    if not any(a.startswith("hydra.job.name=") for a in argv):
        argv.append("hydra.job.name=report")
    register_schema()
    run_app(prog, job, argv, config_name=CONFIG_NAME)


if __name__ == "__main__":
    main()
