"""Evaluation: answer parsing, option scoring / generation, accuracy with intervals.

- :mod:`cgmed.eval.parse`: the option letter a generated answer means (:func:`parse_choice`);
- :mod:`cgmed.eval.score`: the ``eval`` config group, loading a model for evaluation, reading and
  checking a test manifest, few-shot example pools, the :class:`Scorer` (option scoring or
  generation) and the prediction rows;
- :mod:`cgmed.eval.metrics`: accuracy with bootstrap intervals, overall, per subset and per MAT
  combination, and cIoU for detection rows;
- :mod:`cgmed.eval.model_dir`: the files a model or LoRA adapter directory needs, checked before loading;
- :mod:`cgmed.eval.bad_images`: unreadable test images, scored wrong up to ``eval.max_bad_images``;
- :mod:`cgmed.eval.run`: :func:`evaluate`, the sharded evaluation behind ``cgmed-eval``.
"""

from cgmed.eval.metrics import results
from cgmed.eval.parse import parse_choice, parse_choice_detail
from cgmed.eval.run import evaluate
from cgmed.eval.score import EvalConfig, Scorer, ShotPool, load_for_eval, read_manifest, score_records

__all__ = [
    "EvalConfig",
    "Scorer",
    "ShotPool",
    "evaluate",
    "load_for_eval",
    "parse_choice",
    "parse_choice_detail",
    "read_manifest",
    "results",
    "score_records",
]
