"""``cgmed-cg``: the Med-MAT CG protocol for one or more held-out targets.

    cgmed-cg experiment=demo                       # the demo (make demo)
    cgmed-cg experiment=NAME dry_run=true          # print the plan: subsets, sample counts, audit
    cgmed-cg -m experiment=NAME cg.only=[a],[b]    # one job per target (Hydra multirun)
    cgmed-cg report runs=[SWEEP_DIR] out=DIR       # one report over runs and sweeps (cgmed.cli.report)

Per target: builds the Related and the size-matched Unrelated splits, trains Trained and
Baseline+ from the same base model over ``cg.seeds``, evaluates the base model (Baseline),
Baseline+ and Trained on the target's test set (and Trained on the seen combinations), and
writes ``cg_report.json``, ``cg_report.md`` and plots. Rerunning skips finished stages.

    cgmed-cg experiment=paper/pilot_tables1_2      # cg.pilot: the paper's pilot (Tables 1-2) instead
    cgmed-cg experiment=paper/table16_few_shot     # cg.few_shot: also n-shot Baseline and Trained

The command sets the targets, training data and seeds of every split and model itself, so it
refuses a value in keys it owns (``split.targets``, ``split.train``, ``train.seed`` ...) and
names where the value belongs (``cg.targets[i].related``, ``cg.seeds`` ...): see
``cgmed.cg.config.PROTOCOL_OWNED_KEYS``.
"""

from __future__ import annotations

import sys
from typing import Any

from cgmed.cg import CGApp, run_cg
from cgmed.cg.status import mark_run
from cgmed.cli.hydra_app import app_config, run_app, run_dir


def job(cfg: Any) -> None:
    out = run_dir()
    try:
        run_cg(app_config(cfg, CGApp), out, dry_run=bool(cfg.get("dry_run")))
    except Exception as err:  # the run record says how the job ended (cgmed-cg report lists it)
        mark_run(out, "failed", err)
        raise
    from accelerate import PartialState

    # torn down here, not at interpreter exit, where a rank's gloo threads may abort the process
    PartialState().destroy_process_group()


def main() -> None:
    if sys.argv[1:2] == ["report"]:  # cgmed-cg report runs=[...]: the merged report (cgmed.cli.report)
        from cgmed.cli.report import main as report

        report(sys.argv[2:], prog="cgmed-cg report")
        return
    run_app("cgmed-cg", job)


if __name__ == "__main__":
    main()
