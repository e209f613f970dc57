"""The command-line apps, one module each (``cgmed-data``, ``cgmed-train``, ``cgmed-eval``,
``cgmed-model``, ``cgmed-cg``), each with the root config of the groups it reads (``DataApp``,
``TrainApp``, ``EvalApp``, ``ModelApp``; ``cgmed-cg``'s is ``cgmed.cg.CGApp``), and
``hydra_app``, the Hydra plumbing they share (group registration, typed configs, run directory)."""
