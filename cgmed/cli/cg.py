"""``cgmed-cg``: the Med-MAT CG protocol for one or more held-out targets.

    cgmed-cg experiment=demo                       # the demo (make demo)
    cgmed-cg experiment=NAME dry_run=true          # print the plan: subsets, sample counts, audit
    cgmed-cg -m experiment=NAME cg.only=[a],[b]    # one job per target (Hydra multirun)

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

from typing import Any

from cgmed.cg import CGApp, run_cg
from cgmed.cli.hydra_app import app_config, run_app, run_dir


def job(cfg: Any) -> None:
    run_cg(app_config(cfg, CGApp), run_dir(), dry_run=bool(cfg.get("dry_run")))


def main() -> None:
    run_app("cgmed-cg", job)


if __name__ == "__main__":
    main()
