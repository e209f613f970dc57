"""``cgmed-eval``: score a model (base, fine-tuned, LoRA adapter or merged) on a test manifest.

    cgmed-eval model.path=RUN/final data.test_manifest=SPLIT/test.jsonl [eval.method=generation eval.circular=true]

Writes ``predictions.jsonl`` and ``results.json`` (accuracy per subset and per MAT combination with
sample counts, chance level and bootstrap 95% intervals) in the run directory. A model directory
is checked before it loads (missing weights, processor or tokenizer files are named), and a question
whose image cannot be read is scored wrong up to ``eval.max_bad_images`` (default 0: stop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cgmed.cli.hydra_app import app_config, run_app, run_dir
from cgmed.data.imaging import ImageConfig
from cgmed.data.source import DataConfig
from cgmed.errors import ConfigError
from cgmed.eval.score import EvalConfig
from cgmed.train.config import ModelConfig


@dataclass
class EvalApp:
    """Root config of ``cgmed-eval``: the groups it reads."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    image: ImageConfig = field(default_factory=ImageConfig)


def job(cfg: Any) -> None:
    from cgmed.eval.run import evaluate

    app = app_config(cfg, EvalApp)
    model, data = app.model, app.data
    if not model.path:
        raise ConfigError(
            "model.path", "is required", "model.path=RUN/final (or a base model, or an adapter)"
        )
    if not data.test_manifest:
        raise ConfigError("data.test_manifest", "is required", "data.test_manifest=SPLIT/test.jsonl")
    doc = evaluate(
        model.path,
        app.eval,
        data.test_manifest,
        run_dir(),
        model.family,
        model.dtype,
        {"min_pixels": model.min_pixels, "max_pixels": model.max_pixels},
        image=app.image,
        attn_implementation=model.attn_implementation,
        use_liger=model.use_liger,
    )
    print(summary_lines(doc))
    print(f"written to {run_dir()}")


def summary_lines(doc: dict[str, Any]) -> str:
    """The console summary: accuracy (and cIoU when there are detection rows) overall and per MAT,
    with the 95% interval or "no interval" (``eval.bootstrap=0``), and the unreadable images."""
    o = doc["overall"]
    lines = []
    shots = doc.get("shots")
    if shots:
        lines.append(f"{shots['per_label']}-shot per label (draw {shots['seed']}) from {shots['pool']}")
    lines.append(
        f"accuracy {o['accuracy']:.4f} ({_interval(o['ci95'])}) on {o['n']} samples, "
        f"chance {o['chance']:.3f}; unparsed {doc['unparsed']}"
    )
    if doc.get("bad_images"):
        lines.append(
            f"{doc['bad_images']} unreadable images scored wrong (eval.max_bad_images={doc['max_bad_images']}); "
            "their rows in predictions.jsonl have bad_image: true"
        )
    if o.get("n_det"):
        lines.append(
            f"cIoU {o['ciou']:.4f} ({_interval(o['ciou_ci95'])}) on {o['n_det']} "
            f"detection samples; mean IoU {o['mean_iou']:.4f}, accuracy = IoU >= 0.5"
        )
    for k, v in doc["per_mat"].items():
        det = f"  cIoU {v['ciou']:.4f}" if v.get("n_det") else ""
        lines.append(f"  {k:<28} {v['accuracy']:.4f}  n={v['n']}{det}")
    return "\n".join(lines)


def _interval(ci: list[float] | None) -> str:
    return "no interval (eval.bootstrap=0)" if ci is None else f"95% CI {ci[0]:.4f}-{ci[1]:.4f}"


def main() -> None:
    run_app("cgmed-eval", job)


if __name__ == "__main__":
    main()
