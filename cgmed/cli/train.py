"""``cgmed-train``: fine-tune a backbone on a built split.

    cgmed-train model.path=DIR data.train_manifest=runs/x/train.jsonl train.max_steps=200
    accelerate launch --config_file launch/accelerate/deepspeed_zero2.yaml -m cgmed.train experiment=NAME
    torchrun --nproc_per_node 8 -m cgmed.train experiment=NAME distributed=deepspeed_zero3

Writes to the Hydra run directory (or ``train.output_dir``): ``metrics.jsonl``, ``tensorboard/``,
``checkpoints/step-N/``, ``final/`` and ``resolved_config.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cgmed.cli.hydra_app import app_config, resolved, run_app, run_dir
from cgmed.data.imaging import ImageConfig
from cgmed.data.source import DataConfig
from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig


@dataclass
class TrainApp:
    """Root config of ``cgmed-train``: the groups it reads."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    image: ImageConfig = field(default_factory=ImageConfig)


def job(cfg: Any) -> None:
    from cgmed.train.loop import train

    app = app_config(cfg, TrainApp)
    out = Path(app.train.output_dir).expanduser() if app.train.output_dir else run_dir()
    out.mkdir(parents=True, exist_ok=True)
    result = train(
        app.model,
        app.train,
        app.peft,
        app.distributed,
        app.data.train_manifest,
        out,
        resolved(cfg),
        image=app.image,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        state = "stopped early (resume with train.resume=auto)" if result.stopped_early else "finished"
        print(f"training {state} at step {result.steps}, loss {result.last_loss}; run directory {out}")
        if result.final_dir:
            print(f"model written to {result.final_dir}")
    from accelerate import PartialState

    PartialState().destroy_process_group()


def main() -> None:
    run_app("cgmed-train", job)


if __name__ == "__main__":
    main()
