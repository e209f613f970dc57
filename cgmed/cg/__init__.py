"""The CG protocol of the Med-MAT paper (Baseline / Baseline+ / Trained per held-out target), the
pilot study (Tables 1-2), and their reports.

* ``config``: the ``cg`` group and ``CGApp``, the root config of ``cgmed-cg`` (refuses values of
  keys the command sets itself).
* ``run``: ``run_cg``, the entry: the protocol or the pilot.
* ``protocol`` / ``pilot``: their plans and stages; ``stages``: what both share (main-process
  work, data, base model, splits, training and evaluation stages).
* ``recipe``: what a dry run says about each arm (global batch, steps, learning rate, trained and
  frozen parts, evaluation method) and the plan-time check that few-shot prompts fit the backbone.
* ``results``: typed results handed from the stages to the reports, ``report`` (the CG
  report) and ``pilot_report`` (the pilot's).
* ``stats``: mean and SD over seeds and draws; the CG report's bootstrap over seeds and questions
  and its paired comparison of arms.
* ``status``: a run's record (``cg_run.json``) and where its targets stand; ``merge``: one report
  over many runs and sweeps (``cgmed-cg report``).
"""

from cgmed.cg.config import CGApp, CGConfig, CGTarget, FewShot, Pilot, TinyBase
from cgmed.cg.run import run_cg, run_groups

__all__ = ["CGApp", "CGConfig", "CGTarget", "FewShot", "Pilot", "TinyBase", "run_cg", "run_groups"]
