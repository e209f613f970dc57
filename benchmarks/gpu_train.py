"""GPU training throughput of a Qwen2-VL-2B-sized model: cgmed's trainer, TRL's SFTTrainer and a
bare PyTorch loop on the same batches, at real image sizes, batch sizes swept until memory is full.

The model has Qwen2-VL-2B's dimensions (hidden 1536, 28 layers, 12 heads / 2 KV heads, MLP 8960,
vision depth 32 x 1280, vocabulary 151936) and random weights built from its config: nothing is
downloaded. Images are 448x448 and 1024x1024 (synthetic records resized), with the processor's
``max_pixels`` set so that they keep their size (256 and 1369 visual tokens). Each arm runs in a
fresh subprocess, bf16 weights and autocast, ``--attn-implementation`` (sdpa by default) and,
with ``--liger``, Liger kernels; the trainers load data with ``--num-workers`` workers (4):

  cgmed  ``cgmed.train``'s set-up and loop pieces (``setup_run`` + ``run_steps``: everything
         ``train()`` does but its closing checkpoint and ``final/`` weights, which for this model
         write ~18 GB of weights and AdamW state per sweep point); seconds per step from
         ``metrics.jsonl``;
  trl    TRL's SFTTrainer, prompt-completion records in cgmed's batch order, answer-only loss,
         gradient checkpointing off, its default fused AdamW;
  bare   forward / answer-only loss / backward / clip / AdamW over the same batches, collated
         with cgmed's collator before the clock starts: the step without a framework or data work.

For each image size the batch doubles from ``--batch-start`` until a CUDA out-of-memory error
(the last batch that fit is the arm's maximum) or ``--max-batch``; a time budget keeps the whole
run under 5 minutes on one GPU. Printed per point: samples/s, tokens/s, MFU (model FLOPs per
step / measured seconds / the device's peak) and peak memory (``torch.cuda.max_memory_allocated``).
Model FLOPs follow PaLM's convention: 6 x (matmul parameters) x tokens for the language model
(LM head included) and the vision tower (per patch), plus 12 x layers x width x length^2 for
attention, counted in full; padding is not counted. The peak comes from ``--peak-tflops`` or,
for known devices, the table ``PEAK_TFLOPS`` (dense bf16).

    python benchmarks/gpu_train.py                          # one GPU, under 5 minutes
    python benchmarks/gpu_train.py --image-sizes 448 --arms cgmed,bare --peak-tflops 989
    python benchmarks/gpu_train.py --smoke                  # CPU, tiny model, 3 steps per arm

``--smoke`` runs every arm on CPU with a tiny Qwen2-VL (``cgmed.models.init_tiny``), 56 px images,
one batch size and 3 steps, all in one process (its peak RSS is then the process's so far): the
test suite runs it so the script cannot rot. The TRL arm is skipped with a note when TRL is not
installed (``pip install -e '.[bench]'``).

GPU figures: none yet. No GPU was lent to the session that wrote this script; it has run in
``--smoke`` mode only. Quote the first GPU run's table here.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    batch_plan,
    load_processor,
    peak_rss_mib,
    qwen2_vl_2b_config,
    run_child,
    step_clock,
    synthetic_split,
    trl_dataset,
    trl_missing,
    write_result,
)

# Dense bf16 tensor-core peaks in TFLOP/s, by a substring of torch.cuda.get_device_name();
# the first match wins, so more specific names come first.
PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "H200": 989.0,
    "GH200": 989.0,
    "H800": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}
ARMS = ("cgmed", "trl", "bare")
PATCH = 14  # Qwen2-VL: 14 px patches, merged 2x2 into one visual token
SMOKE_IMAGE = 56


def peak_tflops(args: argparse.Namespace) -> tuple[float | None, str]:
    """(peak TFLOP/s or None, the device's name)."""
    import torch

    if not torch.cuda.is_available():
        return args.peak_tflops, "cpu"
    name = torch.cuda.get_device_name()
    if args.peak_tflops:
        return args.peak_tflops, name
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None), name


def pixel_bounds(image_size: int) -> dict[str, int]:
    """``max_pixels`` that keeps an ``image_size`` square at its size (rounded to whole tokens)."""
    side = math.ceil(image_size / (2 * PATCH)) * 2 * PATCH
    return {"max_pixels": side * side}


# --------------------------------------------------------------------------- data and model


def resized_manifest(split: Path, image_size: int, limit: int, workdir: Path) -> Path:
    """The first ``limit`` training records with their images resized to ``image_size`` squares.

    The synthetic world is rendered small (fast) and scaled up: throughput depends on the
    pixel count, not on what the pixels show.
    """
    from PIL import Image

    out_dir = workdir / f"images-{image_size}"
    manifest = workdir / f"train-{image_size}.jsonl"
    if manifest.is_file():
        return manifest
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, line in enumerate((split / "train.jsonl").read_text().splitlines()[:limit]):
        record = json.loads(line)
        target = out_dir / f"{i:05d}.png"
        with Image.open(record["image"]) as im:
            im.convert("RGB").resize((image_size, image_size), Image.BICUBIC).save(target, compress_level=1)
        record["image"] = str(target)
        lines.append(json.dumps(record))
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def build_2b(tiny: Path, out: Path) -> Path:
    """A Qwen2-VL-2B-sized checkpoint with random weights (bf16) and the tiny model's processor."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoProcessor, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = qwen2_vl_2b_config(Qwen2VLConfig.from_pretrained(tiny))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(tiny).save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def prepare(args: argparse.Namespace) -> tuple[Path, dict[int, Path]]:
    """(model directory, image size -> training manifest), built once per workdir."""
    from cgmed.models import init_tiny

    workdir = Path(args.workdir)
    tiny = workdir / "tiny-qwen2-vl"
    if not (tiny / "config.json").is_file():
        init_tiny("qwen2_vl", tiny, seed=0, image_size=SMOKE_IMAGE)
    if args.smoke:
        split = synthetic_split(workdir, "split-smoke", SMOKE_IMAGE, 12)
        return tiny, {SMOKE_IMAGE: split / "train.jsonl"}
    split = synthetic_split(workdir, "split-all", SMOKE_IMAGE, 16, train="all")
    manifests = {size: resized_manifest(split, size, args.max_batch, workdir) for size in args.image_sizes}
    return build_2b(tiny, workdir / "qwen2-vl-2b"), manifests


# --------------------------------------------------------------------------- model FLOPs


@dataclass
class ModelCost:
    """The sizes model FLOPs are computed from (matmul weights only: embeddings are lookups)."""

    language_params: int  # language model Linear weights, LM head included
    vision_params: int  # vision blocks, per patch
    merger_params: int  # patch merger, per visual token (4 patches)
    layers: int
    hidden: int
    vision_layers: int
    vision_hidden: int

    @classmethod
    def of(cls, model_dir: Path) -> ModelCost:
        """From the checkpoint's config, on the meta device (no memory, no weights read)."""
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText

        config = AutoConfig.from_pretrained(model_dir)
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
        sizes = {"language": 0, "vision": 0, "merger": 0}
        for name, module in model.named_modules():
            # the patch embedding is a Conv3d with stride = kernel: one matmul per patch
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv3d)):
                part = "merger" if ".merger." in name else "vision" if ".visual." in name else "language"
                sizes[part] += module.weight.numel()
        text, vision = config.text_config, config.vision_config
        return cls(
            language_params=sizes["language"],
            vision_params=sizes["vision"],
            merger_params=sizes["merger"],
            layers=text.num_hidden_layers,
            hidden=text.hidden_size,
            vision_layers=vision.depth,
            vision_hidden=vision.embed_dim,
        )

    def sample_flops(self, seq_len: int, patches: int) -> float:
        """Training FLOPs (forward + backward) of one sample of ``seq_len`` tokens and one image."""
        text = 6 * self.language_params * seq_len + 12 * self.layers * self.hidden * seq_len**2
        vision = (
            6 * self.vision_params * patches
            + 6 * self.merger_params * patches / 4
            + 12 * self.vision_layers * self.vision_hidden * patches**2
        )
        return text + vision


@dataclass
class Workload:
    """One image size's records: sequence lengths and patches per image, for tokens and FLOPs."""

    manifest: Path
    image_size: int
    processor: Any
    seq_lens: list[int]  # per record, visual tokens included
    patches: int  # per image

    @classmethod
    def of(cls, model_dir: Path, manifest: Path, image_size: int) -> Workload:
        from PIL import Image

        from cgmed.models import Collator, get_adapter
        from cgmed.train.data import ManifestDataset, text_lengths

        processor = load_processor(model_dir, **pixel_bounds(image_size))
        records = ManifestDataset(manifest)
        with Image.open(records[0]["image"]) as im:
            grid = processor.image_processor(images=[im.convert("RGB")], return_tensors="pt")[
                "image_grid_thw"
            ]
        patches = int(grid.prod())
        # the rendered text holds one image placeholder, which the processor expands
        text = text_lengths(records, Collator(get_adapter("qwen2_vl"), processor, 1 << 20))
        return cls(manifest, image_size, processor, [n - 1 + patches // 4 for n in text], patches)

    def step_counts(self, cost: ModelCost, batch: int, args: argparse.Namespace) -> list[tuple[int, float]]:
        """(tokens, model FLOPs) of each planned step."""
        out = []
        for indices in batch_plan(self.manifest, self.processor, batch, args.seed, args.steps):
            lens = [self.seq_lens[i] for i in indices]
            out.append((sum(lens), sum(cost.sample_flops(n, self.patches) for n in lens)))
        return out


# --------------------------------------------------------------------------- the arms


class Arm:
    """One way of training: ``steps(image_size, manifest, batch)`` -> seconds of each step."""

    def __init__(self, args: argparse.Namespace, model_dir: Path):
        import torch

        self.args, self.model_dir = args, model_dir
        self.cuda = torch.cuda.is_available()
        self.dtype = "bfloat16" if self.cuda else "float32"

    def steps(self, image_size: int, manifest: Path, batch: int) -> list[float]:
        raise NotImplementedError

    @property
    def kernels(self) -> dict[str, Any]:
        """The attention kernel and (when asked) Liger, as ``model.*`` keys and adapter arguments."""
        return {"attn_implementation": self.args.attn_implementation} | (
            {"use_liger": True} if self.args.liger else {}
        )

    def load(self, image_size: int) -> tuple[Any, Any]:
        """(model, processor) as cgmed's adapter loads them, with this size's pixel bounds."""
        from cgmed.models import get_adapter

        return get_adapter("qwen2_vl").load(
            str(self.model_dir), dtype=self.dtype, **self.kernels, **pixel_bounds(image_size)
        )


class CgmedArm(Arm):
    def steps(self, image_size: int, manifest: Path, batch: int) -> list[float]:
        from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig
        from cgmed.train.loop import open_metrics, run_steps
        from cgmed.train.run import setup_run

        out = Path(self.args.workdir) / "run-cgmed"
        shutil.rmtree(out, ignore_errors=True)
        model_cfg = ModelConfig(
            path=str(self.model_dir), dtype=self.dtype, **self.kernels, **pixel_bounds(image_size)
        )
        train_cfg = TrainConfig(
            max_steps=self.args.steps,
            per_device_batch_size=batch,
            precision="bf16" if self.cuda else "fp32",
            seed=self.args.seed,
            deterministic=False,  # TRL and the bare loop do not ask for deterministic kernels either
            num_workers=self.args.num_workers,
            progress_bar=False,
            tensorboard=False,
        )
        run = setup_run(model_cfg, train_cfg, PeftConfig(), DistributedConfig(), str(manifest), out)
        metrics = open_metrics(run, None)
        try:
            run_steps(run, metrics, None, None)
        finally:
            metrics.close()
        return [json.loads(line)["step_time_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]


class TrlArm(Arm):
    def steps(self, image_size: int, manifest: Path, batch: int) -> list[float]:
        from trl import SFTConfig, SFTTrainer

        from cgmed.train.data import ManifestDataset

        model, processor = self.load(image_size)
        records = ManifestDataset(manifest)
        plan = batch_plan(manifest, processor, batch, self.args.seed, self.args.steps)
        checkpointing = "activation_checkpointing" in SFTConfig.__dataclass_fields__
        config = SFTConfig(
            output_dir=str(Path(self.args.workdir) / "run-trl"),
            per_device_train_batch_size=batch,
            max_steps=self.args.steps,
            bf16=self.cuda,
            seed=self.args.seed,
            completion_only_loss=True,
            max_length=None,
            train_sampling_strategy="sequential",  # the records are in cgmed's batch order
            dataloader_drop_last=True,
            dataloader_num_workers=self.args.num_workers,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            **{"activation_checkpointing" if checkpointing else "gradient_checkpointing": False},
        )
        clock = step_clock()
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=trl_dataset([records[i] for b in plan for i in b], processor),
            processing_class=processor,
            callbacks=[clock],
        )
        trainer.train()
        return clock.step_s


class BareArm(Arm):
    def steps(self, image_size: int, manifest: Path, batch: int) -> list[float]:
        import torch
        import torch.nn.functional as F

        from cgmed.models import IGNORE_INDEX, Collator, get_adapter
        from cgmed.train.data import ManifestDataset

        model, processor = self.load(image_size)
        device = torch.device("cuda" if self.cuda else "cpu")
        model.to(device).train()
        records = ManifestDataset(manifest)
        collator = Collator(get_adapter("qwen2_vl"), processor, 1 << 20)
        plan = batch_plan(manifest, processor, batch, self.args.seed, self.args.steps)
        batches = [collator([records[i] for i in indices]) for indices in plan]
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.cuda)
        step_s = []
        for cpu_batch in batches:
            started = time.perf_counter()
            inputs = {key: value.to(device) for key, value in cpu_batch.items()}
            labels = inputs.pop("labels")[:, 1:]
            with autocast:
                logits = model(**inputs, use_cache=False).logits[:, :-1]
            mask = labels != IGNORE_INDEX
            loss = F.cross_entropy(logits[mask].float(), labels[mask])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()  # synchronises, as the trainers' logging does
            step_s.append(time.perf_counter() - started)
        return step_s


ARM_CLASSES = {"cgmed": CgmedArm, "trl": TrlArm, "bare": BareArm}


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sweep(arm: Arm, image_size: int, manifest: Path, deadline: float) -> list[dict[str, Any]]:
    """Points of one image size: the batch doubles until out of memory, records, budget or cap."""
    import torch

    args, points = arm.args, []
    n_records = sum(1 for line in manifest.read_text().splitlines() if line.strip())
    batch = args.batch_start
    while True:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            step_s = arm.steps(image_size, manifest, batch)
        except torch.cuda.OutOfMemoryError:
            step_s = None
        free_memory()
        point = {"image_size": image_size, "batch": batch, "step_s": step_s, "oom": step_s is None}
        if torch.cuda.is_available():
            point["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        points.append(point)
        batch *= 2
        if args.smoke or step_s is None or batch > min(args.max_batch, n_records):
            return points
        if time.monotonic() > deadline:
            points.append({"image_size": image_size, "batch": batch, "budget": True})
            return points


def run_arm(args: argparse.Namespace, model_dir: Path, manifests: dict[int, Path]) -> dict[str, Any]:
    """A child's work: every image size's sweep within ``--arm-budget-s``, then the peak RSS."""
    arm = ARM_CLASSES[args.child](args, model_dir)
    started, points = time.monotonic(), []
    for k, (size, manifest) in enumerate(sorted(manifests.items())):
        left = args.arm_budget_s - (time.monotonic() - started)
        points += sweep(arm, size, manifest, time.monotonic() + left / (len(manifests) - k))
    return {"points": points, "peak_rss_mib": peak_rss_mib()}


# --------------------------------------------------------------------------- report


def point_figures(
    point: dict[str, Any], workload: Workload, cost: ModelCost, args: argparse.Namespace, peak: float | None
) -> dict[str, float | None]:
    """samples/s, tokens/s and MFU of one point over its timed steps (the first ``--warmup`` left out)."""
    step_s = point["step_s"][args.warmup :]
    counts = workload.step_counts(cost, point["batch"], args)[args.warmup : len(point["step_s"])]
    seconds = sum(step_s)
    flops = sum(f for _, f in counts)
    return {
        "s_per_step": seconds / len(step_s),
        "samples_per_s": point["batch"] * len(step_s) / seconds,
        "tokens_per_s": sum(t for t, _ in counts) / seconds,
        "mfu": flops / seconds / (peak * 1e12) if peak else None,
    }


def print_points(
    results: dict[str, dict[str, Any]],
    workloads: dict[int, Workload],
    cost: ModelCost,
    args: argparse.Namespace,
    peak: float | None,
) -> dict[tuple[int, int, str], float]:
    """The table of every point; returns seconds per step by (image size, batch, arm)."""
    cuda = "peak_mem_gib" in next(iter(results.values()))["points"][0]
    memory = "peak GiB" if cuda else "peak RSS MiB"
    print(
        f"{'image':>6} {'arm':<6}{'batch':>6}{'s/step':>9}{'samples/s':>11}{'tokens/s':>11}{'MFU':>7}{memory:>14}"
    )
    per_step = {}
    for size, workload in sorted(workloads.items()):
        for arm, result in results.items():
            for point in (p for p in result["points"] if p["image_size"] == size):
                head = f"{size:>6} {arm:<6}{point['batch']:>6}"
                if point.get("budget"):
                    print(f"{head}  not run: the time budget was spent")
                    continue
                mem = f"{point['peak_mem_gib']:>14.1f}" if cuda else f"{result['peak_rss_mib']:>14.0f}"
                if point["oom"]:
                    print(f"{head}{'out of memory':>38}{mem}")
                    continue
                fig = point_figures(point, workload, cost, args, peak)
                per_step[size, point["batch"], arm] = fig["s_per_step"]
                mfu = f"{fig['mfu']:>7.1%}" if fig["mfu"] is not None else f"{'n/a':>7}"
                print(
                    f"{head}{fig['s_per_step']:>9.4f}{fig['samples_per_s']:>11.1f}"
                    f"{fig['tokens_per_s']:>11,.0f}{mfu}{mem}"
                )
    return per_step


def print_summary(
    results: dict[str, dict[str, Any]], per_step: dict[tuple[int, int, str], float], sizes: list[int]
) -> None:
    """Per image size: the largest batch each arm fit, and cgmed's time per step against the others'."""
    for size in sizes:
        fits = [
            f"{arm} {max((p['batch'] for p in r['points'] if p['image_size'] == size and p.get('step_s')), default=0)}"
            for arm, r in results.items()
        ]
        print(f"{size} px, largest batch that fit: " + ", ".join(fits))
        if "cgmed" not in results:
            continue
        for other in (arm for arm in ("trl", "bare") if arm in results):
            ratios = [
                f"b{batch} {seconds / per_step[size, batch, other]:.2f}"
                for (s, batch, arm), seconds in sorted(per_step.items())
                if s == size and arm == "cgmed" and (size, batch, other) in per_step
            ]
            print(f"  cgmed / {other} time per step: " + (", ".join(ratios) or "no common batch"))


def report(
    args: argparse.Namespace, model_dir: Path, manifests: dict[int, Path], results: dict[str, dict[str, Any]]
) -> None:
    """The setting, the table of every point and the summary."""
    peak, device = peak_tflops(args)
    cost = ModelCost.of(model_dir)
    params = cost.language_params + cost.vision_params + cost.merger_params
    workloads = {size: Workload.of(model_dir, m, size) for size, m in manifests.items()}
    print(
        f"{'tiny Qwen2-VL' if args.smoke else 'Qwen2-VL-2B-sized'} ({params / 1e6:,.1f}M matmul parameters), "
        f"{device}, {'bf16' if device != 'cpu' else 'fp32'}, {args.attn_implementation}"
        f"{' + Liger' if args.liger else ''}, "
        f"{args.steps} steps per point ({args.warmup} warm-up left out), peak "
        + (f"{peak:g} TFLOP/s" if peak else "unknown (MFU n/a; pass --peak-tflops)")
    )
    per_step = print_points(results, workloads, cost, args, peak)
    print_summary(results, per_step, sorted(workloads))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, one batch size, 3 steps")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated, of " + ", ".join(ARMS))
    ap.add_argument("--image-sizes", default="448,1024", help="image sides in px, comma-separated")
    ap.add_argument("--batch-start", type=int, default=2, help="first batch size of each sweep")
    ap.add_argument("--max-batch", type=int, default=128, help="largest batch tried (and records per size)")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per point")
    ap.add_argument("--warmup", type=int, default=1, help="first steps of a point left out of the timings")
    ap.add_argument("--budget-s", type=float, default=240.0, help="wall-clock budget of the sweeps")
    ap.add_argument("--peak-tflops", type=float, help="device peak (default: PEAK_TFLOPS by device name)")
    ap.add_argument("--attn-implementation", default="sdpa", help="sdpa, flash_attention_2 or eager")
    ap.add_argument("--liger", action="store_true", help="Liger kernels in every arm (model.use_liger)")
    ap.add_argument("--num-workers", type=int, default=None, help="loader workers, cgmed and TRL (GPU: 4)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--workdir", default="/tmp/cgmed-gpu-train")
    ap.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--arm-budget-s", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := sorted(set(args.arms) - set(ARMS)):
        ap.error(f"--arms: unknown {unknown}; choose from {list(ARMS)}")
    args.image_sizes = [int(s) for s in args.image_sizes.split(",")]
    if args.smoke:
        args.image_sizes, args.batch_start, args.steps = [SMOKE_IMAGE], 2, 3
    if args.num_workers is None:
        args.num_workers = 0 if args.smoke else 4
    if args.warmup >= args.steps:
        ap.error(f"--warmup {args.warmup} leaves no timed step of --steps {args.steps}")
    return args


def main() -> None:
    started = time.monotonic()
    args = parse_args()
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            sys.exit("gpu_train.py needs a CUDA GPU (a 2.2B-parameter model); --smoke runs it on CPU")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    model_dir, manifests = prepare(args)
    if args.child:
        write_result(args.result, run_arm(args, model_dir, manifests))
        return
    arms = list(args.arms)
    if "trl" in arms and (missing := trl_missing()):
        print(f"TRL arm skipped: {missing}")
        arms.remove("trl")
    results, result_file = {}, Path(args.workdir) / "child-result.json"
    for k, arm in enumerate(arms):
        if args.smoke:  # one process: the check stays well under a minute on 2 cores
            args.child = arm
            results[arm] = run_arm(args, model_dir, manifests)
            continue
        share = (args.budget_s - (time.monotonic() - started)) / (len(arms) - k)
        results[arm] = run_child(
            __file__, [*sys.argv[1:], "--arm-budget-s", f"{share:.0f}"], arm, result_file
        )
    report(args, model_dir, manifests, results)


if __name__ == "__main__":
    main()
