"""Evaluate a model on a test manifest, sharded over processes; writes predictions and results.

cgmed-eval model.path=RUN/final data.test_manifest=SPLIT/test.jsonl [eval.method=generation]
torchrun --nproc_per_node 8 -m cgmed.eval model.path=... data.test_manifest=...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cgmed.data.boxes import is_detection_row
from cgmed.data.imaging import ImageConfig
from cgmed.data.manifest import write_jsonl
from cgmed.eval.metrics import results
from cgmed.eval.score import (
    DETECTION_IOU,
    EvalConfig,
    Scorer,
    ShotPool,
    load_for_eval,
    read_manifest,
    score_records,
)


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
    """``results.json``: the metrics of ``rows`` and how they were obtained."""
    doc = results(rows, eval_cfg.bootstrap, eval_cfg.seed)
    doc["method"] = eval_cfg.method + (" (circular)" if eval_cfg.circular else "")
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


def _write(out_dir: Path, rows: list[dict[str, Any]], doc: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "predictions.jsonl", rows)
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1) + "\n")


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
) -> dict[str, Any]:
    """Score ``test_manifest``; rank 0 writes ``predictions.jsonl`` and ``results.json`` in ``out_dir``.

    ``model`` may be a ``(model, processor, adapter)`` triple already in memory (evaluation
    during training); otherwise ``model_path`` is loaded. Detection records are answered by
    generation whatever ``eval.method`` is; ``results.json`` then says so under ``detection``.
    ``image`` is the image conversion (the ``image`` group); it must be the one training used.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    records = read_manifest(test_manifest)  # bad manifests fail before the model loads
    pool = ShotPool(eval_cfg.shot_pool, eval_cfg.shots) if eval_cfg.shots else None
    if pool:
        pool.check(records)
    state = PartialState(cpu=not torch.cuda.is_available())
    if model is None:
        model = load_for_eval(model_path, family, dtype, eval_cfg.base, **(processor_kwargs or {}))
        model[0].to(state.device)
    scorer = Scorer(*model, method=eval_cfg.method, max_new_tokens=eval_cfg.max_new_tokens, image=image)
    mine = [records[i] for i in _shard(len(records), state.num_processes, state.process_index)]
    rows = score_records(scorer, mine, eval_cfg.batch_size, eval_cfg.circular, pool, eval_cfg.shot_seed)
    if state.num_processes > 1:
        rows = gather_object(rows)  # rank order = manifest order
    doc = results_document(rows, records, eval_cfg, scorer, pool, model_path, test_manifest)
    doc["image"] = scorer.image.describe()  # how images were converted (the image group)
    if state.is_main_process:
        _write(out_dir, rows, doc)
    state.wait_for_everyone()
    return doc
