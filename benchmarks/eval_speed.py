"""Option scoring against generation + parsing, on the same questions and the same trained model.

Prints samples/s of each method, their ratio, and how often they pick the same letter; and the
cost of few-shot prompting (option scoring with ``--shots`` examples per label before each question).

    python benchmarks/eval_speed.py [--model DIR --manifest test.jsonl --shot-pool train.jsonl]
                                    [--steps 150] [--repeat 3] [--shots 2]

Without ``--model``, a tiny Qwen2-VL-architecture model is trained for ``--steps`` steps on a small
synthetic world first (so that generation produces answers, not noise).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def prepare(work: Path, steps: int) -> tuple[Path, Path]:
    from cgmed.data.build import build_from_config
    from cgmed.data.source import DataConfig
    from cgmed.data.split import OptionsConfig, SplitConfig
    from cgmed.data.synth import SynthConfig
    from cgmed.models.tiny import init_tiny
    from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig
    from cgmed.train.loop import train

    synth = SynthConfig(images_per_subset=60, image_size=56, test_fraction=0.3)
    split = SplitConfig(
        targets=[{"modality": "CT", "area": "Lung", "task": "Cancer"}],
        train="all",
        options=OptionsConfig(mode="rebuild", order="sorted"),
    )
    build_from_config(DataConfig(cache_dir=str(work / "cache")), split, synth, work / "split")
    base = init_tiny(
        "qwen2_vl",
        work / "base",
        image_size=56,
        text_hidden=128,
        text_layers=4,
        vision_hidden=96,
        vision_layers=3,
    )
    cfg = TrainConfig(
        max_steps=steps, per_device_batch_size=16, lr=3e-4, progress_bar=False, tensorboard=False
    )
    train(
        ModelConfig(path=str(base)),
        cfg,
        PeftConfig(),
        DistributedConfig(),
        str(work / "split" / "train.jsonl"),
        work / "run",
    )
    return work / "run" / "final", work / "split" / "seen_test.jsonl", work / "split" / "train.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--manifest")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--shot-pool", help="manifest of in-context examples (default: the tiny run's train.jsonl)"
    )
    ap.add_argument("--shots", type=int, default=2, help="examples per label for the few-shot row (0: skip)")
    args = ap.parse_args()

    import torch

    from cgmed.eval.score import Scorer, ShotPool, load_for_eval, read_manifest, score_records

    work = Path(tempfile.mkdtemp(prefix="cgmed-evalspeed-"))
    if args.model:
        model_dir, manifest = Path(args.model), Path(args.manifest)
        pool_path = Path(args.shot_pool) if args.shot_pool else None
    else:
        print(f"training a tiny model for {args.steps} steps in {work} ...")
        model_dir, manifest, pool_path = prepare(work, args.steps)
    records = read_manifest(manifest)
    model, processor, adapter = load_for_eval(model_dir)
    torch.set_grad_enabled(False)
    rows, times = {}, {}
    for method in ("option_scoring", "generation"):
        scorer = Scorer(model, processor, adapter, method, max_new_tokens=args.max_new_tokens)
        score_records(scorer, records[: args.batch_size], args.batch_size, False)  # warm-up
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            rows[method] = score_records(scorer, records, args.batch_size, False)
            best = min(best, time.perf_counter() - t0)
        times[method] = best
    pool = ShotPool(pool_path, args.shots) if args.shots and pool_path else None
    if pool:
        pool.check(records)
        scorer = Scorer(model, processor, adapter, "option_scoring")
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            rows["few_shot"] = score_records(scorer, records, args.batch_size, False, pool, 0)
            best = min(best, time.perf_counter() - t0)
        times["few_shot"] = best
    n = len(records)
    os_rows, gen_rows = rows["option_scoring"], rows["generation"]
    agree = sum(a["pred"] == b["pred"] for a, b in zip(os_rows, gen_rows, strict=True)) / n
    unparsed = sum(b["pred"] is None for b in gen_rows)
    print(
        f"{n} questions, batch {args.batch_size}, best of {args.repeat} runs, {torch.get_num_threads()} threads"
    )
    print(f"{'method':<28}{'seconds':>9}{'samples/s':>11}{'accuracy':>10}")
    for method, label in (
        ("option_scoring", "option scoring (1 forward)"),
        ("generation", f"generation ({args.max_new_tokens} tok) + parse"),
        ("few_shot", f"option scoring, {args.shots}-shot/label"),
    ):
        if method not in rows:
            continue
        acc = sum(r["correct"] for r in rows[method]) / n
        print(f"{label:<28}{times[method]:>9.2f}{n / times[method]:>11.1f}{acc:>10.3f}")
    print(f"speed ratio option scoring / generation: {times['generation'] / times['option_scoring']:.2f}x")
    print(f"same letter chosen: {agree:.3f}; generation answers that parse to no letter: {unparsed}")
    if "few_shot" in times:
        n_img = 1 + len(rows["few_shot"][0]["shots"])
        print(
            f"few-shot cost: {times['few_shot'] / times['option_scoring']:.2f}x the zero-shot time "
            f"({n_img} images per prompt instead of 1)"
        )
    print(json.dumps({"n": n, "seconds": times, "agreement": agree, "unparsed": unparsed}))


if __name__ == "__main__":
    main()
