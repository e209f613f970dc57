"""Evaluate a model on a test manifest, sharded over processes; writes predictions and results.

cgmed-eval model.path=RUN/final data.test_manifest=SPLIT/test.jsonl [eval.method=generation]
torchrun --nproc_per_node 8 -m cgmed.eval model.path=... data.test_manifest=...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cgmed.atomic import atomic_write_text
from cgmed.data.boxes import is_detection_row
from cgmed.data.imaging import ImageConfig
from cgmed.data.manifest import write_jsonl
from cgmed.eval.bad_images import (
    BadImage,
    bad_image_row,
    check_bad_image_limit,
    check_pool_images,
    find_bad_images,
)
from cgmed.eval.metrics import results
from cgmed.eval.score import (
    DETECTION_IOU,
    EvalConfig,
    Scorer,
    ShotPool,
    load_for_eval,
    model_kernels,
    read_manifest,
    rotations,
    score_records,
)
from cgmed.models.processor_cache import recorded_dir
from cgmed.progress import ProgressMode
from cgmed.progress import progress as progress_reporter

NO_INTERVAL = "none (eval.bootstrap=0)"


def _shard(n: int, world: int, rank: int) -> range:
    """Contiguous, disjoint shards covering every index once (no padding duplicates)."""
    per, extra = divmod(n, world)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (1 if rank < extra else 0))


def results_document(
    rows: list[dict[str, Any]],
    records: list[dict[str, Any]],
    eval_cfg: EvalConfig,
    scorer: Scorer,
    pool: ShotPool | None,
    model_path: str,
    test_manifest: str,
) -> dict[str, Any]:
    """``results.json``: the metrics of ``rows`` and how they were obtained.

    With ``eval.bootstrap=0`` there is no interval: ``ci95`` (and ``ciou_ci95``) are null rather
    than a zero-width interval, and ``interval`` says so. ``bad_images`` counts the questions
    scored wrong because their image cannot be read (:mod:`cgmed.eval.bad_images`).
    """
    doc = results(rows, eval_cfg.bootstrap, eval_cfg.seed)
    if eval_cfg.bootstrap == 0:
        _drop_intervals(doc)
    doc["interval"] = (
        f"95% percentile bootstrap, {eval_cfg.bootstrap} resamples" if eval_cfg.bootstrap else NO_INTERVAL
    )
    doc["method"] = eval_cfg.method + (" (circular)" if eval_cfg.circular else "")
    doc["bad_images"] = sum(1 for r in rows if r.get("bad_image"))
    doc["max_bad_images"] = eval_cfg.max_bad_images
    if any(is_detection_row(r) for r in records):
        doc["detection"] = {
            "method": "generation",
            "max_new_tokens": scorer.box_tokens(),
            "correct_at_iou": DETECTION_IOU,
            "metric": "ciou (sum of intersections / sum of unions)",
        }
    if pool:
        doc["shots"] = {"per_label": pool.per_label, "pool": pool.path, "seed": eval_cfg.shot_seed}
    doc["model"] = str(model_path)
    doc["test_manifest"] = str(test_manifest)
    return doc


def _drop_intervals(doc: dict[str, Any]) -> None:
    """Null every group's interval: without resamples there is none to report."""
    groups = [doc["overall"], *doc["per_subset"].values(), *doc["per_mat"].values()]
    for group in groups:
        for key in ("ci95", "ciou_ci95"):
            if key in group:
                group[key] = None


def _write(out_dir: Path, rows: list[dict[str, Any]], doc: dict[str, Any]) -> None:
    """``predictions.jsonl``, then ``results.json``, each written atomically. ``results.json``
    marks a finished evaluation (``cgmed-cg`` reads a directory holding it back instead of
    evaluating), so an older one goes first: a write that stops half-way leaves none."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").unlink(missing_ok=True)
    write_jsonl(out_dir / "predictions.jsonl", rows, atomic=True)
    atomic_write_text(out_dir / "results.json", json.dumps(doc, indent=1) + "\n")


def evaluate(
    model_path: str,
    eval_cfg: EvalConfig,
    test_manifest: str,
    out_dir: Path,
    family: str | None = None,
    dtype: str = "float32",
    processor_kwargs: dict[str, Any] | None = None,
    model: Any = None,
    image: ImageConfig | None = None,
    progress: ProgressMode = "auto",
    attn_implementation: str = "sdpa",
    use_liger: bool = False,
) -> dict[str, Any]:
    """Score ``test_manifest``; rank 0 writes ``predictions.jsonl`` and ``results.json`` in ``out_dir``.

    ``model`` may be a ``(model, processor, adapter)`` triple already in memory (evaluation
    during training); otherwise ``model_path`` is loaded. Detection records are answered by
    generation whatever ``eval.method`` is; ``results.json`` then says so under ``detection``.
    ``image`` is the image conversion (the ``image`` group); it must be the one training used.
    ``progress``: the questions' progress on the main process (:func:`cgmed.progress.progress`).
    ``attn_implementation`` / ``use_liger`` (``model.*``) load ``model_path``; results.json records
    the kernels the model ran with (``kernels``) and how answers were generated (``generation``).
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    records = read_manifest(test_manifest)  # bad manifests and images fail before the model loads
    pool = ShotPool(eval_cfg.shot_pool, eval_cfg.shots) if eval_cfg.shots else None
    if pool:
        pool.check(records)
    image = image or ImageConfig()
    state = PartialState(cpu=not torch.cuda.is_available())
    mine = [records[i] for i in _shard(len(records), state.num_processes, state.process_index)]
    bad = _screen_images(state, mine, len(records), eval_cfg, image, pool, test_manifest)
    if model is None:
        loaded_liger: bool | None = use_liger
        model = load_for_eval(
            model_path,
            family,
            dtype,
            eval_cfg.base,
            attn_implementation=attn_implementation,
            use_liger=use_liger,
            **(processor_kwargs or {}),
        )
        model[0].to(state.device)
    else:
        loaded_liger = None  # a model handed over in memory: how it was patched is not known here
    scorer = Scorer(
        *model,
        method=eval_cfg.method,
        max_new_tokens=eval_cfg.max_new_tokens,
        image=image,
        stop_at_answer=eval_cfg.stop_at_answer,
        sort_by_length=eval_cfg.sort_by_length,
    )
    asked = _questions(mine, bad, eval_cfg.circular)
    shown = progress_reporter(asked, "eval", progress if state.is_main_process else False, unit="q")
    try:
        rows = _score_readable(
            scorer if shown is None else _Counted(scorer, shown), mine, bad, eval_cfg, pool
        )
    finally:
        if shown is not None:
            shown.close()
    if state.num_processes > 1:
        rows = gather_object(rows)  # rank order = manifest order
    doc = results_document(rows, records, eval_cfg, scorer, pool, model_path, test_manifest)
    doc["image"] = scorer.image.describe()  # how images were converted (the image group)
    doc["processor_cache"] = recorded_dir(scorer.image)  # where processed pixels were read from
    doc["kernels"] = model_kernels(model[0], loaded_liger)
    if scorer.answers_generated:
        doc["generation"] = scorer.generation_settings()
    if state.is_main_process:
        _write(out_dir, rows, doc)
    state.wait_for_everyone()
    return doc


def _screen_images(
    state: Any,
    mine: list[dict[str, Any]],
    total: int,
    eval_cfg: EvalConfig,
    image: ImageConfig,
    pool: ShotPool | None,
    test_manifest: str,
) -> list[BadImage]:
    """The unreadable images of this process's records; stops when the pool has one, or when the
    whole test set has more than ``eval.max_bad_images``. Every process gets the same count (the
    shards' findings are gathered), so all of them stop or none does."""
    from accelerate.utils import gather_object

    if pool:
        check_pool_images(pool.path, pool.records(), image)
    bad = find_bad_images(mine, image)
    everywhere = gather_object(bad) if state.num_processes > 1 else bad
    check_bad_image_limit(everywhere, total, eval_cfg.max_bad_images, str(test_manifest))
    return bad


def _score_readable(
    scorer: Scorer,
    records: list[dict[str, Any]],
    bad: list[BadImage],
    eval_cfg: EvalConfig,
    pool: ShotPool | None,
) -> list[dict[str, Any]]:
    """Prediction rows of ``records`` in order: the readable ones scored, the others wrong."""
    unreadable = {b.position: b for b in bad}
    readable = [r for i, r in enumerate(records) if i not in unreadable]
    scored = iter(
        score_records(scorer, readable, eval_cfg.batch_size, eval_cfg.circular, pool, eval_cfg.shot_seed)
    )
    return [
        bad_image_row(r, unreadable[i]) if i in unreadable else next(scored) for i, r in enumerate(records)
    ]


def _questions(records: list[dict[str, Any]], bad: list[BadImage], circular: bool) -> int:
    """How many questions the scorer is asked for the readable ``records``: one per detection
    record, one per asked rotation of a multiple-choice record."""
    unreadable = {b.position for b in bad}
    return sum(
        1 if is_detection_row(r) else len(rotations(r, circular))
        for i, r in enumerate(records)
        if i not in unreadable
    )


class _Counted:
    """``scorer`` that moves ``shown`` (a progress reporter) on by each batch it answers; every
    other attribute is the scorer's own."""

    def __init__(self, scorer: Scorer, shown: Any):
        self._scorer, self._shown = scorer, shown

    def answer(self, items: Any, *args: Any, **kwargs: Any) -> Any:
        replies = self._scorer.answer(items, *args, **kwargs)
        self._shown.update(len(items))
        return replies

    def generate(self, items: Any, *args: Any, **kwargs: Any) -> Any:
        texts = self._scorer.generate(items, *args, **kwargs)
        self._shown.update(len(items))
        return texts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scorer, name)
