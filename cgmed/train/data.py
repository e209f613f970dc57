"""Training data: manifest records by byte offset, global batches that ranks slice (resumable), and
the collate step that leaves out unreadable images and over-long samples.

A *global micro-batch* holds ``per_device_batch_size x world_size`` sample indices; rank r
takes the r-th slice. One process with batch 2B therefore sees exactly the samples that two
processes with batch B see together, which is what makes 1-process and 2-process runs equal.
The order is a pure function of (seed, epoch), so a resumed run can jump to any position
without reading the skipped batches.
"""

from __future__ import annotations

import hashlib
import json
import math
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgmed.errors import ConfigError, DataError
from cgmed.models.collate import Collator, group_by_length, random_batches


class ManifestDataset:
    """``train.jsonl`` as a map-style dataset; only line offsets stay in memory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(
                "data.train_manifest", f"{self.path} does not exist", "build one with cgmed-data build"
            )
        self.offsets = array("q")
        with open(self.path, "rb") as fh:
            pos = 0
            for line in fh:
                if line.strip():
                    self.offsets.append(pos)
                pos += len(line)
        if not self.offsets:
            raise DataError(
                str(self.path), "the manifest is empty", "check the split's selection (split_meta.json)"
            )
        self._fh = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._fh is None:  # opened lazily: each DataLoader worker gets its own handle
            self._fh = open(self.path, "rb")  # noqa: SIM115 - lives as long as the dataset
        self._fh.seek(self.offsets[i])
        line = self._fh.readline()
        try:
            return json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{self.path}:{i + 1}", f"malformed manifest line: {err.msg}") from None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fh"] = None
        return state


def text_lengths(dataset: ManifestDataset, collator: Collator) -> list[int]:
    """Token count of each record's text (prompt + answer), for length grouping.

    Images add the same number of visual tokens to every sample of the fixed-size families
    and roughly so for Qwen with bounded pixels; the text is what varies.
    """
    tok = collator.processor.tokenizer
    texts = [collator.adapter.render(collator.processor, r["question"], r["answer"]) for r in _iter(dataset)]
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def _iter(dataset: ManifestDataset) -> Iterator[dict[str, Any]]:
    for i in range(len(dataset)):
        yield dataset[i]


@dataclass
class BatchPlan:
    """The global micro-batches of every epoch, as a pure function of (seed, epoch)."""

    lengths: Sequence[int] | None
    n: int
    global_batch: int  # per_device_batch_size x world_size
    seed: int

    def epoch(self, epoch: int) -> list[list[int]]:
        seed = self.seed + epoch
        if self.lengths is not None:
            # drop_last: every rank must get a full slice in every step
            return group_by_length(self.lengths, self.global_batch, seed, drop_last=True)
        return random_batches(self.n, self.global_batch, seed, drop_last=True)

    def micro_batches_per_epoch(self) -> int:
        return self.n // self.global_batch


def steps_for(n_samples: int, global_micro_batch: int, grad_accum: int, max_steps: int, epochs: float) -> int:
    """Optimizer steps of the run: ``max_steps``, or ``epochs`` worth of full steps when it is -1.

    ``global_micro_batch`` is per_device_batch_size x processes (see :class:`BatchPlan`).
    """
    per_epoch = (n_samples // global_micro_batch) // grad_accum
    if per_epoch < 1:
        raise ConfigError(
            "train.per_device_batch_size",
            f"{n_samples} samples cannot fill one optimizer step of {global_micro_batch * grad_accum} samples",
            "lower train.per_device_batch_size / train.grad_accum / train.global_batch_size or add data",
        )
    return max_steps if max_steps > 0 else max(1, math.floor(per_epoch * epochs))


def manifest_sha256(path: str | Path) -> str:
    """The content hash of a manifest: a resumed run must read the same samples."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def micro_batches(
    plan: BatchPlan, grad_accum: int, start_step: int, rank: int, per_device: int
) -> Iterator[tuple[int, int, list[int]]]:
    """Yield ``(step, micro, indices)`` from optimizer step ``start_step`` on, forever (epochs roll)."""
    per_epoch = (plan.micro_batches_per_epoch() // grad_accum) * grad_accum
    step = start_step
    while True:
        global_micro = step * grad_accum
        epoch, offset = divmod(global_micro, per_epoch)
        batches = plan.epoch(epoch)[:per_epoch]
        for k in range(offset, per_epoch):
            micro = k % grad_accum
            yield step, micro, batches[k][rank * per_device : (rank + 1) * per_device]
            if micro == grad_accum - 1:
                step += 1


class RankBatchSampler:
    """This rank's micro-batches as a torch batch sampler, from optimizer step ``start_step`` to ``total_steps``."""

    def __init__(
        self, plan: BatchPlan, grad_accum: int, start_step: int, total_steps: int, rank: int, per_device: int
    ):
        self.plan = plan
        self.grad_accum = grad_accum
        self.start_step = start_step
        self.rank = rank
        self.per_device = per_device
        self.length = (total_steps - start_step) * grad_accum

    def __iter__(self) -> Iterator[list[int]]:
        batches = micro_batches(self.plan, self.grad_accum, self.start_step, self.rank, self.per_device)
        for i, (_, _, indices) in enumerate(batches):
            if i >= self.length:
                return
            yield indices

    def __len__(self) -> int:
        return self.length


class SkippingCollate:
    """The collator, with unreadable images and over-long samples left out and counted.

    A left-out record is replaced by another record of the same batch, so every rank keeps
    its batch shape (ranks must stay in step). Over-long samples (visual tokens included)
    are never truncated: with ``on_overflow="error"`` the run stops naming the record; more
    than ``max_bad`` unreadable images stop the run too.
    """

    def __init__(self, collator: Collator, max_bad: int):
        self.collator = collator
        self.max_bad = max_bad
        self.bad_images = 0

    def __call__(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        collated = self.collator.collate(records, skip_bad_images=True, fill=True)
        self.bad_images += collated.bad_images
        if self.bad_images > self.max_bad:
            raise DataError(
                "train",
                f"{self.bad_images} unreadable images (limit train.max_bad_images={self.max_bad})",
                "fix the images or rebuild the manifest with data.verify_images=true",
            )
        if not collated.batch:
            ids = [r.get("id") for r in records]
            raise DataError("train", f"no usable sample in a batch (unreadable or too long): {ids}")
        batch = dict(collated.batch)
        batch["_bad_images"] = collated.bad_images
        batch["_too_long"] = collated.too_long
        return batch
