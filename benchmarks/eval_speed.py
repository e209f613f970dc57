"""Option scoring against generation + parsing, on the same questions and the same trained model.

Side by side, best of ``--repeat`` runs each: option scoring (one forward pass), generation with
the stop rule (``eval.stop_at_answer``, the default), generation to end of sequence or
``--max-new-tokens`` without it, circular generation (every rotation of the options, with the
rule), and option scoring after ``--shots`` examples per label. Prints samples/s (questions per
second; a circular question counts once however many rotations it takes), accuracy, generated
tokens per answer, how often scoring and generation pick the same letter, and whether the stop
rule ever read another letter than generation without it.

    python benchmarks/eval_speed.py [--model DIR --manifest test.jsonl --shot-pool train.jsonl]
                                    [--steps 150] [--answer-style letter|sentence] [--repeat 3]
                                    [--shots 2] [--limit N] [--smoke]

Without ``--model``, a tiny Qwen2-VL-architecture model is trained for ``--steps`` steps on a small
synthetic world first (so that generation produces answers, not noise). ``--answer-style
sentence`` trains it to write a sentence after its letter ("B.\\nThe image shows it."), as chatty
models do: the case the stop rule is for (a model that answers with the letter alone stops at
its end-of-sequence token either way). ``--smoke``: 12 questions, one run, 20 training steps.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

SENTENCE = "The image shows it."


def prepare(work: Path, steps: int, answer_style: str = "letter") -> tuple[Path, Path, Path]:
    """Train a tiny model on a synthetic split: (final model dir, seen_test.jsonl, train.jsonl)."""
    from cgmed.data.build import build_from_config
    from cgmed.data.manifest import write_jsonl
    from cgmed.data.source import DataConfig
    from cgmed.data.split import OptionsConfig, SplitConfig
    from cgmed.data.synth import SynthConfig
    from cgmed.eval.score import read_manifest
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
    train_manifest = work / "split" / "train.jsonl"
    if answer_style == "sentence":
        rows = read_manifest(train_manifest)
        train_manifest = work / "train_sentence.jsonl"
        write_jsonl(train_manifest, [{**r, "answer": f"{r['answer']}.\n{SENTENCE}"} for r in rows])
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
        ModelConfig(path=str(base)), cfg, PeftConfig(), DistributedConfig(), str(train_manifest), work / "run"
    )
    return work / "run" / "final", work / "split" / "seen_test.jsonl", work / "split" / "train.jsonl"


def timed(
    model: Any,
    records: list[dict[str, Any]],
    args: argparse.Namespace,
    method: str,
    circular: bool = False,
    stop: bool = True,
    pool: Any = None,
) -> tuple[float, list[dict[str, Any]], Any]:
    """Best wall time of ``args.repeat`` runs over ``records`` (after a one-batch warm-up), the
    rows and the scorer of the last run."""
    from cgmed.eval.score import Scorer, score_records

    def run() -> tuple[list[dict[str, Any]], Any]:
        scorer = Scorer(*model, method, max_new_tokens=args.max_new_tokens, stop_at_answer=stop)
        return score_records(scorer, records, args.batch_size, circular, pool, 0), scorer

    score_records(Scorer(*model, method), records[: args.batch_size], args.batch_size, False)
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        rows, scorer = run()
        best = min(best, time.perf_counter() - t0)
    return best, rows, scorer


def agreement(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    """Fraction of questions where two runs picked the same letter."""
    return sum(x["pred"] == y["pred"] for x, y in zip(a, b, strict=True)) / len(a)


def measure(model: Any, records: list[dict[str, Any]], args: argparse.Namespace, pool: Any) -> dict[str, Any]:
    """Every arm's (seconds, rows, scorer), by name."""
    arms = {
        "option_scoring": timed(model, records, args, "option_scoring"),
        "generation_stop": timed(model, records, args, "generation"),
        "generation_full": timed(model, records, args, "generation", stop=False),
        "circular_generation": timed(model, records, args, "generation", circular=True),
    }
    if pool is not None:
        arms["few_shot"] = timed(model, records, args, "option_scoring", pool=pool)
    return arms


def report(arms: dict[str, Any], args: argparse.Namespace, n: int) -> dict[str, Any]:
    """Print the side-by-side table and the agreements; the figures as one JSON-able dict."""
    import torch

    labels = {
        "option_scoring": "option scoring (1 forward)",
        "generation_stop": "generation, stop rule",
        "generation_full": f"generation to EOS/{args.max_new_tokens} tok",
        "circular_generation": "circular generation, stop rule",
        "few_shot": f"option scoring, {args.shots}-shot/label",
    }
    print(
        f"{n} questions, batch {args.batch_size}, best of {args.repeat} runs, {torch.get_num_threads()} threads"
    )
    print(f"{'method':<34}{'seconds':>9}{'samples/s':>11}{'accuracy':>10}{'tokens/answer':>15}")
    figures: dict[str, Any] = {"n": n}
    for name, (seconds, rows, scorer) in arms.items():
        acc = sum(r["correct"] for r in rows) / n
        per_answer = scorer.generation_settings()["mean_tokens"]
        tokens = f"{per_answer:.2f}" if per_answer is not None else "-"
        print(f"{labels[name]:<34}{seconds:>9.2f}{n / seconds:>11.1f}{acc:>10.3f}{tokens:>15}")
        figures[name] = {
            "seconds": seconds,
            "samples_per_s": n / seconds,
            "accuracy": acc,
            "tokens": per_answer,
        }
    scoring, stop, full = (arms[k][1] for k in ("option_scoring", "generation_stop", "generation_full"))
    figures["agreement_scoring_generation"] = agreement(scoring, stop)
    figures["agreement_stop_full"] = agreement(stop, full)
    figures["unparsed"] = sum(r["pred"] is None for r in stop)
    gen_s, full_s = arms["generation_stop"][0], arms["generation_full"][0]
    print(f"speed ratio generation / option scoring time: {gen_s / arms['option_scoring'][0]:.2f}x")
    print(f"stop rule: {full_s / gen_s:.2f}x the speed of generation without it")
    print(
        f"same letter, scoring vs generation: {figures['agreement_scoring_generation']:.3f}; "
        f"generation with vs without the stop rule: {figures['agreement_stop_full']:.3f}; "
        f"generation answers that parse to no letter: {figures['unparsed']}"
    )
    if "few_shot" in arms:
        n_img = 1 + len(arms["few_shot"][1][0]["shots"])
        print(
            f"few-shot cost: {arms['few_shot'][0] / arms['option_scoring'][0]:.2f}x the zero-shot time "
            f"({n_img} images per prompt instead of 1)"
        )
    return figures


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--manifest")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--answer-style", choices=["letter", "sentence"], default="letter")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--limit", type=int, help="evaluate only the first N questions")
    ap.add_argument(
        "--shot-pool", help="manifest of in-context examples (default: the tiny run's train.jsonl)"
    )
    ap.add_argument("--shots", type=int, default=2, help="examples per label for the few-shot row (0: skip)")
    ap.add_argument("--smoke", action="store_true", help="12 questions, 1 run, 20 training steps")
    args = ap.parse_args()
    if args.smoke:
        args.limit, args.repeat, args.steps = args.limit or 12, 1, min(args.steps, 20)

    import torch

    from cgmed.eval.score import ShotPool, load_for_eval, read_manifest

    if args.model:
        model_dir, manifest = Path(args.model), Path(args.manifest)
        pool_path = Path(args.shot_pool) if args.shot_pool else None
    else:
        work = Path(tempfile.mkdtemp(prefix="cgmed-evalspeed-"))
        print(f"training a tiny model ({args.answer_style} answers) for {args.steps} steps in {work} ...")
        model_dir, manifest, pool_path = prepare(work, args.steps, args.answer_style)
    records = read_manifest(manifest)[: args.limit]
    model = load_for_eval(model_dir)
    torch.set_grad_enabled(False)
    pool = ShotPool(pool_path, args.shots) if args.shots and pool_path else None
    if pool:
        pool.check(records)
    figures = report(measure(model, records, args, pool), args, len(records))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
