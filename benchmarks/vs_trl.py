"""cgmed's trainer against TRL's SFTTrainer on CPU: the same model, split, batches and loss.

Both arms fine-tune the same tiny Qwen2-VL-architecture checkpoint (random weights, built here)
on the same synthetic split (held-out target CT Lung Cancer, trained on its Related subsets),
batch 8, fp32, the same learning rate and schedule (cgmed's 3% linear warm-up then cosine decay,
given to TRL's trainer), gradient clipping at 1, and answer-only loss: cgmed's collator labels
the answer letter and the end-of-turn token; TRL gets prompt-completion records (the chat prompt
with its image, then the answer closed by the same end-of-turn token) with
``completion_only_loss=True``, which labels exactly those tokens. TRL's sampler is sequential
over the records in cgmed's batch order, so step k of both arms sees the same samples (the
first-step losses, printed, agree when it does).

Runs alternate (cgmed, TRL, cgmed, TRL, ...), each in a fresh subprocess. Printed per run: the
median seconds per step after the warm-up steps (cgmed: ``step_time_s`` of ``metrics.jsonl``,
which covers loading and collating the batch and the whole optimizer step; TRL: from the end of
one step's logging to the end of the next step, the same span), peak resident memory during
training, first and last loss, and accuracy of the trained model, option scoring with
``cgmed.eval`` on the split's test set (the held-out target) and seen-test set (the trained-on
subsets), the same scorer for both models. Then the ratio cgmed / TRL of the step times.

TRL is set up for speed (gradient checkpointing off; its own default, fused AdamW, kept);
``--trl-defaults`` leaves TRL's gradient checkpointing on, as ``SFTConfig()`` has it.

    pip install -e '.[bench]'                 # TRL, the optional extra this needs
    python benchmarks/vs_trl.py               # 60 steps x 2 pairs, about a minute on 2 idle cores
    python benchmarks/vs_trl.py --steps 200 --pairs 3
    python benchmarks/vs_trl.py --smoke       # 2 steps, 1 pair: the test suite's check

One run of ``--steps 200 --pairs 3`` on this project's 2-core machine (TRL 1.16, transformers
5.24, torch 2.14): cgmed / TRL time per step 0.84 (pairs 0.97, 0.83, 0.84; 0.075-0.084 s
against 0.078-0.100 s), peak RSS 833 MiB against 1,064 MiB (0.78), the same losses to four
decimals (6.8563 -> 0.6030) and the same accuracy (0.500 on the target's 20 questions, 0.440 on
250 seen-subset questions: 200 steps at batch 8 leave this split at chance). With
``--trl-defaults`` (one pair, 60 steps) TRL took 4x cgmed's time per step. When other jobs
share the cores, ``--threads 1`` keeps the timings steadier.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import (
    batch_plan,
    peak_rss_mib,
    run_child,
    step_clock,
    synthetic_split,
    trl_dataset,
    trl_missing,
    write_result,
)

# The demo's tiny model: big enough to learn the synthetic findings in a few hundred steps.
TINY = dict(image_size=56, text_hidden=128, text_layers=4, vision_hidden=96, vision_layers=3)
EVAL_BATCH = 32


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """(tiny checkpoint, split directory), built once per workdir."""
    from cgmed.models import init_tiny

    workdir = Path(args.workdir)
    split = synthetic_split(
        workdir,
        f"split-{args.images_per_subset}",
        TINY["image_size"],
        args.images_per_subset,
        test_fraction=0.2,
    )
    model_dir = workdir / "tiny-qwen2-vl"
    if not (model_dir / "config.json").is_file():
        init_tiny("qwen2_vl", model_dir, seed=0, **TINY)
    return model_dir, split


def option_accuracy(model: Any, processor: Any, adapter: Any, manifest: Path) -> dict[str, Any]:
    """Accuracy of option scoring (``cgmed.eval``) on ``manifest``, and its number of questions."""
    import torch

    from cgmed.eval import Scorer, read_manifest, score_records

    records = read_manifest(manifest)
    model.eval()
    with torch.no_grad():
        rows = score_records(Scorer(model, processor, adapter, "option_scoring"), records, EVAL_BATCH, False)
    return {"accuracy": sum(r["correct"] for r in rows) / len(rows), "questions": len(rows)}


def accuracies(model: Any, processor: Any, adapter: Any, split: Path) -> dict[str, Any]:
    """Option-scoring accuracy on the held-out target's test set and on the seen subsets' one."""
    return {
        name: option_accuracy(model, processor, adapter, split / f"{name}.jsonl")
        for name in ("test", "seen_test")
    }


# --------------------------------------------------------------------------- the arms


def child_cgmed(args: argparse.Namespace, model_dir: Path, split: Path) -> dict[str, Any]:
    """``cgmed.train.loop.train`` with its defaults but for the shared settings."""
    import torch

    from cgmed.eval import load_for_eval
    from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig
    from cgmed.train.loop import train

    out = Path(args.workdir) / "run-cgmed"
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig(
        max_steps=args.steps,
        per_device_batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress_bar=False,
        tensorboard=False,
    )
    result = train(
        ModelConfig(path=str(model_dir), dtype="float32"),
        cfg,
        PeftConfig(),
        DistributedConfig(),
        str(split / "train.jsonl"),
        out,
    )
    rss = peak_rss_mib()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    model, processor, adapter = load_for_eval(result.final_dir)
    return {
        "step_s": [r["step_time_s"] for r in rows][args.warmup :],
        "losses": [r["loss"] for r in rows],
        "peak_rss_mib": rss,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        **accuracies(model, processor, adapter, split),
    }


def trl_records(split: Path, processor: Any, args: argparse.Namespace) -> Any:
    """The training records in cgmed's batch order, as TRL prompt-completion rows."""
    from cgmed.train.data import ManifestDataset

    manifest = split / "train.jsonl"
    records = ManifestDataset(manifest)
    plan = batch_plan(manifest, processor, args.batch_size, args.seed, args.steps)
    return trl_dataset([records[i] for batch in plan for i in batch], processor)


def cgmed_schedule_trainer() -> Any:
    """SFTTrainer with cgmed's learning-rate schedule (``cgmed.train.setup.lr_lambda``).

    transformers' cosine schedule starts its warm-up one step earlier, at lr 0, so the same
    nominal settings would not give the same updates.
    """
    import functools

    from torch.optim.lr_scheduler import LambdaLR
    from trl import SFTTrainer

    from cgmed.train.config import TrainConfig
    from cgmed.train.setup import lr_lambda

    class CgmedScheduleSFTTrainer(SFTTrainer):
        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if self.lr_scheduler is None:
                warmup = math.ceil(num_training_steps * TrainConfig().warmup_ratio)
                schedule = functools.partial(
                    lr_lambda, total=num_training_steps, warmup=warmup, kind="cosine", min_ratio=0.0
                )
                self.lr_scheduler = LambdaLR(optimizer or self.optimizer, schedule)
            return self.lr_scheduler

    return CgmedScheduleSFTTrainer


def trl_config(args: argparse.Namespace) -> Any:
    """The SFTConfig of the TRL arm: the settings shared with cgmed, TRL's defaults otherwise."""
    from trl import SFTConfig

    speed = {}
    if not args.trl_defaults:  # transformers 5.x renames the switch; the old name still works
        renamed = "activation_checkpointing" in SFTConfig.__dataclass_fields__
        speed["activation_checkpointing" if renamed else "gradient_checkpointing"] = False
    return SFTConfig(
        output_dir=str(Path(args.workdir) / "run-trl"),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=args.lr,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=False,
        fp16=False,
        seed=args.seed,
        completion_only_loss=True,
        max_length=None,  # cgmed never truncates (it would cut visual tokens)
        train_sampling_strategy="sequential",  # the records are already in cgmed's batch order
        dataloader_drop_last=True,
        logging_steps=1,  # cgmed logs every step too
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        **speed,
    )


def child_trl(args: argparse.Namespace, model_dir: Path, split: Path) -> dict[str, Any]:
    """TRL's SFTTrainer on the same checkpoint (loaded as cgmed loads it), records and schedule."""
    import torch

    from cgmed.models import get_adapter

    adapter = get_adapter("qwen2_vl")
    model, processor = adapter.load(str(model_dir), dtype="float32")
    clock = step_clock()
    trainer = cgmed_schedule_trainer()(
        model=model,
        args=trl_config(args),
        train_dataset=trl_records(split, processor, args),
        processing_class=processor,
        callbacks=[clock],
    )
    trainer.train()
    rss = peak_rss_mib()
    return {
        "step_s": clock.step_s[args.warmup :],
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "peak_rss_mib": rss,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        **accuracies(model, processor, adapter, split),
    }


CHILDREN = {"cgmed": child_cgmed, "trl": child_trl}


# --------------------------------------------------------------------------- report


def report(args: argparse.Namespace, runs: list[tuple[str, dict[str, Any]]]) -> None:
    import torch

    first = runs[0][1]
    setup = "TRL's defaults (gradient checkpointing on)" if args.trl_defaults else "TRL set up for speed"
    print(
        f"tiny Qwen2-VL ({first['params'] / 1e6:.2f}M parameters), fp32, batch {args.batch_size}, "
        f"lr {args.lr:g}, {args.steps} steps ({args.warmup} warm-up left out), {args.pairs} alternating "
        f"pair(s) (cgmed, TRL), {'cuda' if torch.cuda.is_available() else 'cpu'}, {first['threads']} threads; {setup}"
    )
    test, seen = first["test"]["questions"], first["seen_test"]["questions"]
    print(
        f"{'run':<4}{'arm':<7}{'s/step':>9}{'peak RSS MiB':>14}{'loss first -> last':>22}"
        f"{f'held-out acc ({test})':>21}{f'seen acc ({seen})':>17}"
    )
    for i, (arm, r) in enumerate(runs, 1):
        losses = f"{r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}"
        print(
            f"{i:<4}{arm:<7}{statistics.median(r['step_s']):>9.4f}{r['peak_rss_mib']:>14.0f}{losses:>22}"
            f"{r['test']['accuracy']:>21.3f}{r['seen_test']['accuracy']:>17.3f}"
        )
    by_arm = {arm: [r for a, r in runs if a == arm] for arm in CHILDREN}
    ratios = [
        statistics.median(c["step_s"]) / statistics.median(t["step_s"])
        for c, t in zip(by_arm["cgmed"], by_arm["trl"], strict=True)
    ]
    print(
        f"cgmed / TRL time per step: {statistics.median(ratios):.2f} (pairs: "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + "; below 1: cgmed is faster)"
    )
    rss = {arm: statistics.median(r["peak_rss_mib"] for r in rs) for arm, rs in by_arm.items()}
    print(
        f"peak RSS: cgmed {rss['cgmed']:.0f} MiB, TRL {rss['trl']:.0f} MiB (cgmed / TRL {rss['cgmed'] / rss['trl']:.2f})"
    )
    print(
        f"same batches: first-step loss cgmed {by_arm['cgmed'][0]['losses'][0]:.5f}, "
        f"TRL {by_arm['trl'][0]['losses'][0]:.5f}"
    )


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--steps", type=int, default=60, help="optimizer steps per run (the full comparison: 200)"
    )
    ap.add_argument("--pairs", type=int, default=2, help="alternating (cgmed, TRL) pairs of runs")
    ap.add_argument("--warmup", type=int, default=5, help="first steps left out of the timings")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4, help="both arms (the demo's rate for the tiny model)")
    ap.add_argument("--images-per-subset", type=int, default=100, help="synthetic world size (train + test)")
    ap.add_argument("--trl-defaults", action="store_true", help="keep TRL's gradient checkpointing on")
    ap.add_argument("--smoke", action="store_true", help="2 steps, 1 pair, a small world: checks it runs")
    ap.add_argument(
        "--threads",
        type=int,
        help="torch threads of both arms (default: torch's; 1 is steadier on a busy machine)",
    )
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--workdir", default="/tmp/cgmed-vs-trl")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.pairs, args.warmup, args.images_per_subset = 2, 1, 0, 12
    if args.warmup >= args.steps:
        ap.error(f"--warmup {args.warmup} leaves no timed step of --steps {args.steps}")
    return args


def main() -> None:
    args = parse_args()
    missing = trl_missing()
    if missing:
        sys.exit(missing)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    model_dir, split = prepare(args)
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        write_result(args.result, CHILDREN[args.child](args, model_dir, split))
        return
    result = Path(args.workdir) / "child-result.json"
    runs = [
        (arm, run_child(__file__, sys.argv[1:], arm, result)) for _ in range(args.pairs) for arm in CHILDREN
    ]
    report(args, runs)


if __name__ == "__main__":
    main()
