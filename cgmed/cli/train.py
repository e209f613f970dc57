"""``cgmed-train``: fine-tune a backbone on a built split.

    cgmed-train model.path=DIR data.train_manifest=runs/x/train.jsonl train.max_steps=200
    accelerate launch --config_file launch/accelerate/deepspeed_zero2.yaml -m cgmed.train experiment=NAME
    torchrun --nproc_per_node 8 -m cgmed.train experiment=NAME distributed=deepspeed_zero3

Writes to the Hydra run directory (or ``train.output_dir``): ``metrics.jsonl``, ``tensorboard/``,
``checkpoints/step-N/``, ``final/`` and ``resolved_config.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cgmed.cli.hydra_app import resolved, run_app, run_dir, typed_config

GROUPS = ("data", "model", "train", "peft", "distributed")


def job(cfg: Any) -> None:
    from cgmed.train.loop import train

    typed = typed_config(cfg, GROUPS)
    tcfg = typed["train"]
    out = Path(tcfg.output_dir).expanduser() if tcfg.output_dir else run_dir()
    out.mkdir(parents=True, exist_ok=True)
    result = train(
        typed["model"],
        tcfg,
        typed["peft"],
        typed["distributed"],
        typed["data"].train_manifest,
        out,
        resolved(cfg),
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
