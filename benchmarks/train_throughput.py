"""Training throughput: cgmed's trainer against a bare PyTorch loop on the same model and batches.

In one run, each side in a fresh subprocess (its own memory, threads and global torch flags):
  (a) cgmed: the real ``cgmed.train.loop.train`` for N steps; seconds/step from ``metrics.jsonl``
      (``step_time_s``, which includes loading and collating the batch), the first W steps left out;
  (b) bare: forward / the same answer-only loss / backward / clip / AdamW step over the same
      batches, collated with ``cgmed.models.collate.Collator`` before the clock starts;
  (b') the same bare loop collating each batch inside the step, as the trainer's loader does with
      ``train.num_workers=0``: cgmed / (b') is the framework's own overhead, (b') / (b) the data's;
  (c) the data loader alone (``DataLoader`` + ``SkippingCollate``, no model): samples/s, against
      the trainer's samples/s;
  (d) padding: the share of padded text positions with random batches and with length grouping
      (``random_batches`` / ``group_by_length`` on ``text_lengths`` of the manifest).

    python benchmarks/train_throughput.py                      # tiny Qwen2-VL, runs on CPU
    python benchmarks/train_throughput.py --model-size qwen2-vl-2b --peak-tflops 989   # one GPU

``qwen2-vl-2b`` builds a Qwen2-VL-2B-sized model (hidden 1536, 28 layers, 12 heads / 2 KV heads,
MLP 8960, vision depth 32 x 1280, vocabulary 151936; random weights, nothing downloaded) in bf16
and also reports tokens/s and model FLOPs utilisation, 6 x parameters x tokens / time / peak.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import batch_plan, load_processor, qwen2_vl_2b_config, synthetic_split

# --------------------------------------------------------------------------- setup


def prepare(workdir: Path, size: str, image_size: int) -> tuple[Path, Path]:
    """(model directory, train manifest), built once per workdir."""
    from cgmed.models import init_tiny

    manifest = synthetic_split(workdir, f"split-{image_size}", image_size, 24) / "train.jsonl"
    tiny = workdir / f"tiny-{image_size}"
    if not (tiny / "config.json").is_file():
        init_tiny("qwen2_vl", tiny, seed=0, image_size=image_size)
    if size == "tiny":
        return tiny, manifest
    big = workdir / f"qwen2-vl-2b-{image_size}"
    if not (big / "config.json").is_file():
        import torch
        from transformers import AutoProcessor, Qwen2VLConfig, Qwen2VLForConditionalGeneration

        config = qwen2_vl_2b_config(Qwen2VLConfig.from_pretrained(tiny))
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16)
        model.save_pretrained(big)
        AutoProcessor.from_pretrained(tiny).save_pretrained(big)
        del model
    return big, manifest


# --------------------------------------------------------------------------- the children


def child_cgmed(args: argparse.Namespace, model_dir: Path, manifest: Path) -> dict[str, Any]:
    import shutil

    from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig
    from cgmed.train.loop import train

    out = Path(args.workdir) / f"run-{args.model_size}"
    shutil.rmtree(out, ignore_errors=True)
    train(
        ModelConfig(path=str(model_dir), dtype=args.dtype),
        TrainConfig(
            max_steps=args.steps,
            per_device_batch_size=args.batch_size,
            precision=args.precision,
            seed=args.seed,
            group_by_length=True,
            deterministic=bool(args.deterministic),
            progress_bar=False,
            tensorboard=False,
            save_every=0,
            num_workers=args.num_workers,
        ),
        PeftConfig(),
        DistributedConfig(),
        str(manifest),
        out,
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = rows[args.warmup :]
    return {
        "step_s": [r["step_time_s"] for r in timed],
        "samples_per_s": statistics.median(r["samples_per_s"] for r in timed),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
        "first_loss": rows[0]["loss"],
        "last_loss": rows[-1]["loss"],
    }


def child_bare(
    args: argparse.Namespace, model_dir: Path, manifest: Path, collate_inside: bool = False
) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from cgmed.models import get_adapter
    from cgmed.models.collate import IGNORE_INDEX, Collator
    from cgmed.train.data import ManifestDataset
    from cgmed.train.setup import lr_lambda

    torch.manual_seed(args.seed)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ds = ManifestDataset(manifest)
    adapter = get_adapter("qwen2_vl")
    model, processor = adapter.load(str(model_dir), dtype=args.dtype)
    model.to(device).train()
    collator = Collator(adapter, processor, 2048)
    plan = batch_plan(manifest, processor, args.batch_size, args.seed, args.steps)
    # outside the clock, or (collate_inside) in it, as the trainer's num_workers=0 loader does
    batches = plan if collate_inside else [collator([ds[i] for i in idx]) for idx in plan]
    # the trainer's defaults: lr 2e-5, no weight decay, 3% linear warm-up then cosine to 0, clip at 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0)
    warm = math.ceil(args.steps * 0.03)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_lambda, total=args.steps, warmup=warm, kind="cosine", min_ratio=0.0)
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    step_s, samples, tokens, losses = [], [], [], []
    for batch in batches:
        t0 = time.perf_counter()
        if collate_inside:
            batch = collator([ds[i] for i in batch])
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        with autocast:
            logits = model(**batch, use_cache=False).logits
        target = labels[:, 1:]
        mask = target != IGNORE_INDEX
        loss = F.cross_entropy(logits[:, :-1][mask].float(), target[mask], reduction="sum") / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # synchronises, as the trainer's logging does
        step_s.append(time.perf_counter() - t0)
        samples.append(batch["input_ids"].shape[0])
        tokens.append(int(batch["attention_mask"].sum()))
    w = args.warmup
    return {
        "step_s": step_s[w:],
        "samples_per_s": statistics.median(n / s for n, s in zip(samples[w:], step_s[w:], strict=True)),
        "tokens_per_s": statistics.median(n / s for n, s in zip(tokens[w:], step_s[w:], strict=True)),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "params": sum(p.numel() for p in model.parameters()),
    }


def child_loader(args: argparse.Namespace, model_dir: Path, manifest: Path) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from cgmed.models import get_adapter
    from cgmed.models.collate import Collator, group_by_length, padding_fraction, random_batches
    from cgmed.train.data import ManifestDataset, SkippingCollate, text_lengths

    ds = ManifestDataset(manifest)
    adapter = get_adapter("qwen2_vl")
    processor = load_processor(model_dir)
    collator = Collator(adapter, processor, 2048)
    plan = batch_plan(manifest, processor, args.batch_size, args.seed, args.steps)
    loader = DataLoader(
        ds, batch_sampler=plan, collate_fn=SkippingCollate(collator, 100), num_workers=args.num_workers
    )
    n = 0
    t0 = time.perf_counter()
    for batch in loader:
        n += batch["input_ids"].shape[0]
    secs = time.perf_counter() - t0
    lengths = text_lengths(ds, collator)
    b = args.batch_size
    return {
        "samples_per_s": n / secs,
        "padding_random": padding_fraction(random_batches(len(ds), b, args.seed, drop_last=True), lengths),
        "padding_grouped": padding_fraction(group_by_length(lengths, b, args.seed, drop_last=True), lengths),
        "n_records": len(ds),
    }


CHILDREN = {
    "cgmed": child_cgmed,
    "bare": child_bare,
    "bare_inline": functools.partial(child_bare, collate_inside=True),
    "loader": child_loader,
}


# --------------------------------------------------------------------------- report


def run_child(kind: str, argv: list[str]) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, __file__, *argv, "--child", kind], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        sys.exit(f"the {kind} run failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-size", choices=["tiny", "qwen2-vl-2b"], default="tiny")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per side (tiny 40, 2b 30)")
    ap.add_argument("--warmup", type=int, default=5, help="first steps left out of the timings")
    ap.add_argument("--batch-size", type=int, default=None, help="samples per step (tiny 8, 2b 8)")
    ap.add_argument("--image-size", type=int, default=None, help="image side in px (tiny 56, 2b 448)")
    ap.add_argument(
        "--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s (H100/H200: 989)"
    )
    ap.add_argument(
        "--num-workers", type=int, default=0, help="train.num_workers (cgmed and loader-only runs)"
    )
    ap.add_argument(
        "--deterministic", type=int, choices=[0, 1], default=1, help="train.deterministic, both sides"
    )
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--workdir", default="/tmp/cgmed-train-bench")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = ap.parse_args()
    big = args.model_size == "qwen2-vl-2b"
    args.steps = args.steps or (30 if big else 40)
    args.batch_size = args.batch_size or 8
    args.image_size = args.image_size or (448 if big else 56)
    args.dtype, args.precision = ("bfloat16", "bf16") if big else ("float32", "fp32")

    if big:
        import torch

        if not torch.cuda.is_available():
            sys.exit(
                "--model-size qwen2-vl-2b needs a CUDA GPU (a 2.2B-parameter model in bf16 with AdamW "
                "takes ~20 GB and minutes per step on a CPU); use --model-size tiny here"
            )
    if args.warmup >= args.steps:
        sys.exit(f"--warmup {args.warmup} leaves no timed step of --steps {args.steps}")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir, manifest = prepare(workdir, args.model_size, args.image_size)
    if args.child:
        print(json.dumps(CHILDREN[args.child](args, model_dir, manifest)))
        return

    argv = sys.argv[1:]
    res = {kind: run_child(kind, argv) for kind in ("loader", "cgmed", "bare", "bare_inline")}
    report(args, res)


def report(args: argparse.Namespace, res: dict[str, dict[str, Any]]) -> None:
    c, b, bi, d = res["cgmed"], res["bare"], res["bare_inline"], res["loader"]
    med = {k: statistics.median(r["step_s"]) for k, r in res.items() if "step_s" in r}
    big = args.model_size == "qwen2-vl-2b"
    print(
        f"model {args.model_size} ({b['params'] / 1e6:,.1f}M parameters, {args.dtype}, {args.precision}), "
        f"batch {args.batch_size}, {args.image_size} px images, {args.steps} steps ({args.warmup} warm-up "
        f"left out, medians), {d['n_records']} records, {'cuda' if big else 'cpu'}, "
        f"train.num_workers={args.num_workers}"
    )
    rows = [
        ("(a) cgmed trainer (loop.train)", med["cgmed"], c),
        ("(b) bare loop, batches pre-collated", med["bare"], b),
        ("(b') bare loop, collating in the step", med["bare_inline"], bi),
        ("(c) data loader alone (no model)", None, d),
    ]
    print(f"{'':<40}{'s/step':>9}{'samples/s':>11}{'tokens/s':>10}")
    for name, step, r in rows:
        step_txt = f"{step:>9.4f}" if step is not None else f"{'':>9}"
        tok = f"{r['tokens_per_s']:>10,.0f}" if "tokens_per_s" in r else f"{'':>10}"
        print(f"{name:<40}{step_txt}{r['samples_per_s']:>11.1f}{tok}")
    for label, other in (("b", "bare"), ("b'", "bare_inline")):
        ratio = med["cgmed"] / med[other]
        goal = "within" if ratio <= 1.05 else "NOT within"
        print(f"cgmed / ({label}) time per step: {ratio:.3f} ({goal} the 5% goal)")
    print(
        f"data: the loader alone makes {d['samples_per_s']:.0f} samples/s, {d['samples_per_s'] / c['samples_per_s']:.1f}x "
        f"what the trainer consumes; with num_workers=0 loading is inside every step "
        f"(~{args.batch_size / d['samples_per_s'] * 1000:.1f} ms per batch)"
    )
    print(
        f"(d) padded share of text positions, batch {args.batch_size}: random batches "
        f"{d['padding_random']:.1%}, length-grouped {d['padding_grouped']:.1%}"
    )
    print(
        "same maths check, loss first -> last step: "
        + ", ".join(
            f"{k} {res[k]['first_loss']:.4f} -> {res[k]['last_loss']:.4f}"
            for k in ("cgmed", "bare", "bare_inline")
        )
    )
    if big:
        peak = args.peak_tflops * 1e12
        for name, r in (("cgmed", c), ("bare", b)):
            mfu = 6 * b["params"] * r["tokens_per_s"] / peak
            print(
                f"MFU {name}: {mfu:.1%} = 6 x {b['params'] / 1e9:.2f}B params x {r['tokens_per_s']:,.0f} tokens/s "
                f"/ {args.peak_tflops:g} TFLOP/s (every sequence token counted through all parameters)"
            )


if __name__ == "__main__":
    main()
