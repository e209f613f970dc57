"""Collation speed: the batched collator against the per-sample reference, on the same batches.

For each family, a tiny checkpoint's processor (built here, nothing downloaded) collates the same
batches of training records (images of mixed sizes and colour modes, questions of mixed lengths)
two ways, alternating runs:

  (a) reference: the collation cgmed did before it batched (``reference_collate`` below): per
      sample, the prompt and the whole conversation tokenized to find the answer span, then the
      processor called on that one sample (a third tokenization), then right padding;
  (b) batched: ``cgmed.models.collate.Collator``, one processor call per batch that also gives
      the answer span (token offsets), so each sample is tokenized once;
  (c) cached: the batched collator reading a filled processed-pixel cache
      (``image.processor_cache``, :mod:`cgmed.models.processor_cache`): no image decoded or
      processed, what every epoch after the first and every later training of a study sees.

All produce identical tensors (checked on every batch before the clock starts;
tests/test_models_collate.py and tests/test_processor_cache.py run the same checks). Printed per
family: samples/s of each and the ratios batched / reference and cached / batched.

    python benchmarks/collate_speed.py                        # the demo's image size (84 px)
    python benchmarks/collate_speed.py --image-size 336 --batch-size 16 --threads 1
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100
# The per-token tensors of the reference's padding (right-padded with these values); every other
# tensor is per image and concatenated along the first dimension.
SEQ_PAD = {
    "attention_mask": 0,
    "labels": IGNORE_INDEX,
    "mm_token_type_ids": 0,
    "token_type_ids": 0,
    "cross_attention_mask": 0,
}


# --------------------------------------------------------------------------- the reference


def reference_encode(collator: Any, record: dict[str, Any]) -> dict[str, Any]:
    """One record as the per-sample collator encoded it: three tokenizations, one processor call."""
    import torch

    from cgmed.models.collate import load_image, should_add_special_tokens

    adapter, processor = collator.adapter, collator.processor
    tok = processor.tokenizer
    prompt = adapter.render(processor, record["question"])
    full = adapter.render(processor, record["question"], record["answer"])
    add = should_add_special_tokens(tok, full)
    prompt_ids = tok(prompt, add_special_tokens=add)["input_ids"]
    full_ids = tok(full, add_special_tokens=add)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids, "the prompt is not a token prefix"
    tail = full_ids[len(prompt_ids) :]
    n_labels = tail.index(tok.convert_tokens_to_ids(adapter.eot_token)) + 1
    enc = processor(
        images=[load_image(record["image"])], text=[full], add_special_tokens=add, return_tensors="pt"
    )
    out = {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}
    ids = out["input_ids"][0]
    start = ids.numel() - len(tail)
    assert ids[start:].tolist() == tail, "the processor's tail differs from the tokenizer's"
    labels = torch.full_like(out["input_ids"], IGNORE_INDEX)
    labels[0, start : start + n_labels] = ids[start : start + n_labels]
    out["labels"] = labels
    return out


def reference_pad(samples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad per-token tensors, concatenate per-image tensors (the reference's batching)."""
    import torch

    width = max(s["input_ids"].shape[1] for s in samples)
    batch = {}
    for key in samples[0]:
        if key == "input_ids" or key in SEQ_PAD:
            value = pad_id if key == "input_ids" else SEQ_PAD[key]
            parts = []
            for s in samples:
                t = s[key]
                fill = t.new_full((t.shape[0], width - t.shape[1], *t.shape[2:]), value)
                parts.append(torch.cat([t, fill], dim=1))
            batch[key] = torch.cat(parts, dim=0)
        else:
            batch[key] = torch.cat([s[key] for s in samples], dim=0)
    return batch


def reference_collate(collator: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-sample collation of ``records`` under ``collator``'s settings; over-long samples
    are left out (the ``on_overflow="drop"`` policy); ``{}`` when none is left."""
    samples = [reference_encode(collator, r) for r in records]
    samples = [s for s in samples if s["input_ids"].shape[1] <= collator.max_length]
    return reference_pad(samples, collator.pad_id) if samples else {}


def assert_same_batch(expected: dict[str, Any], actual: dict[str, Any], what: str) -> None:
    """The two collations hold the same tensors: same keys, shapes, dtypes and values."""
    import torch

    assert sorted(expected) == sorted(actual), (what, sorted(expected), sorted(actual))
    for key, value in expected.items():
        other = actual[key]
        assert value.dtype == other.dtype and value.shape == other.shape, (
            what,
            key,
            value.shape,
            other.shape,
        )
        assert torch.equal(value, other), (what, key)


# --------------------------------------------------------------------------- data


SUFFIX = "Answer with the option's letter from the given choices directly."
FINDINGS = ["Tumor", "Normal", "Cyst", "Nodule", "Effusion", "Fracture"]


def make_records(root: Path, n: int, max_side: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` training records with images of mixed sizes and modes and questions of mixed length."""
    from PIL import Image

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        size = (rng.randint(max_side // 4, max_side), rng.randint(max_side // 4, max_side))
        mode = rng.choice(["RGB", "L"])
        image = Image.frombytes(mode, size, rng.randbytes(len(mode) * size[0] * size[1]))
        path = root / f"img{i}.png"
        image.save(path)
        options = rng.sample(FINDINGS, rng.randint(2, 4))
        body = "\n".join(f"{'ABCD'[k]}: {o}" for k, o in enumerate(options))
        detail = " in the upper lobe" * rng.randint(0, 4)
        question = f"What does this CT image of the lung show{detail}?\n{body}\n{SUFFIX}"
        records.append({"id": f"rec{i}", "image": str(path), "question": question, "answer": "AB"[i % 2]})
    return records


# --------------------------------------------------------------------------- timing


def samples_per_second(collate: Any, batches: list[list[dict[str, Any]]]) -> float:
    start = time.perf_counter()
    for batch in batches:
        collate(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def bench_family(family: str, root: Path, args: argparse.Namespace) -> tuple[float, float, float]:
    """(reference, batched, cached samples/s): medians over alternating runs."""
    from cgmed.data.imaging import ImageConfig
    from cgmed.models import Collator, get_adapter, init_tiny

    adapter = get_adapter(family)
    path = init_tiny(family, root / family, image_size=args.image_size)
    processor = adapter.load(path)[1]
    collator = Collator(adapter, processor, max_length=1 << 20)
    image = ImageConfig(processor_cache=str(root / f"{family}_cache"))
    cached = Collator(adapter, processor, max_length=1 << 20, image=image)
    records = make_records(root / f"{family}_images", args.batches * args.batch_size, 2 * args.image_size)
    batches = [records[i : i + args.batch_size] for i in range(0, len(records), args.batch_size)]
    for i, batch in enumerate(batches):  # identical output, and a warm-up of both paths
        assert_same_batch(reference_collate(collator, batch), collator(batch), f"{family} batch {i}")
        assert_same_batch(collator(batch), cached(batch), f"{family} batch {i}, cache filled")
        assert_same_batch(collator(batch), cached(batch), f"{family} batch {i}, cache read")
    reference, batched, from_cache = [], [], []
    for _ in range(args.repeats):
        reference.append(samples_per_second(lambda b: reference_collate(collator, b), batches))
        batched.append(samples_per_second(collator, batches))
        from_cache.append(samples_per_second(cached, batches))
    return statistics.median(reference), statistics.median(batched), statistics.median(from_cache)


def main() -> None:
    from cgmed.models import FAMILIES

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument(
        "--image-size", type=int, default=84, help="the tiny model's image side (the demo's: 84)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="alternating timed runs per path")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (a DataLoader worker uses 1; default: torch's)",
    )
    args = parser.parse_args()
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"image size {args.image_size}, batch {args.batch_size}, {args.batches} batches, "
        f"{torch.get_num_threads()} torch threads, median of {args.repeats}"
    )
    print(f"{'family':<12} {'reference/s':>12} {'batched/s':>10} {'ratio':>6} {'cached/s':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            reference, batched, cached = bench_family(family, Path(tmp), args)
            print(
                f"{family:<12} {reference:>12.1f} {batched:>10.1f} {batched / reference:>5.2f}x "
                f"{cached:>9.1f} {cached / batched:>5.2f}x"
            )


if __name__ == "__main__":
    main()
