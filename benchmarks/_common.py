"""What the training benchmarks share: synthetic data, model configs, the trainer's batch order,
peak memory, and running one measured arm in a fresh subprocess.

The scripts import it as a sibling module (``python benchmarks/<script>.py`` puts this folder on
``sys.path``); it is not part of the cgmed package.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

# The synthetic world's held-out target in every benchmark split.
TARGET = {"modality": "CT", "area": "Lung", "task": "Cancer"}


def synthetic_split(
    workdir: Path,
    name: str,
    image_size: int,
    images_per_subset: int,
    train: str = "related",
    test_fraction: float = 0.1,
) -> Path:
    """The split directory ``workdir/name`` (train.jsonl, test.jsonl, seen_test.jsonl), built once.

    Options are written in a fixed (sorted) order, as in the demo: a model trained from random
    weights learns the finding long before it learns to read shuffled letters.
    """
    from cgmed.data.build import build_from_config
    from cgmed.data.source import DataConfig
    from cgmed.data.split import OptionsConfig, SplitConfig
    from cgmed.data.synth import SynthConfig

    split = workdir / name
    if not (split / "train.jsonl").is_file():
        cfg = SplitConfig(
            targets=[TARGET], train=train, options=OptionsConfig(mode="rebuild", order="sorted")
        )
        synth = SynthConfig(
            images_per_subset=images_per_subset, image_size=image_size, test_fraction=test_fraction
        )
        cache = workdir / f"cache-{image_size}-{images_per_subset}-{test_fraction}"
        build_from_config(DataConfig(root=None, cache_dir=str(cache)), cfg, synth, split)
    return split


def qwen2_vl_2b_config(tiny_config: Any) -> Any:
    """Qwen2-VL-2B's dimensions on the tiny checkpoint's config (its token ids match the tokenizer)."""
    from transformers import Qwen2VLConfig

    cfg = tiny_config.to_dict()
    layers = 28
    cfg["text_config"].update(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=layers,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        max_window_layers=layers,
        layer_types=["full_attention"] * layers,
        rms_norm_eps=1e-6,
        rope_parameters={"mrope_section": [16, 24, 24], "rope_theta": 1000000.0, "rope_type": "default"},
    )
    cfg["vision_config"].update(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4)
    cfg["tie_word_embeddings"] = True
    cfg["dtype"] = "bfloat16"
    return Qwen2VLConfig(**cfg)


def load_processor(model_dir: Path, **pixel_bounds: Any) -> Any:
    """The processor exactly as ``BackboneAdapter.load`` builds it, without loading the model."""
    from transformers import AutoProcessor

    from cgmed.models import get_adapter

    kwargs = get_adapter("qwen2_vl").processor_kwargs(**pixel_bounds)
    return AutoProcessor.from_pretrained(str(model_dir), **kwargs)


def batch_plan(
    manifest: Path, processor: Any, batch: int, seed: int, steps: int, group: bool = True
) -> list[list[int]]:
    """The manifest indices of the trainer's first ``steps`` batches (1 process, no accumulation).

    The same function of (manifest, tokenizer, batch size, seed) that ``cgmed.train`` draws its
    batches with, so another loop fed these batches sees exactly the trainer's samples.
    """
    from cgmed.models import get_adapter
    from cgmed.models.collate import Collator
    from cgmed.train.data import BatchPlan, ManifestDataset, micro_batches, text_lengths

    records = ManifestDataset(manifest)
    collator = Collator(get_adapter("qwen2_vl"), processor, 1 << 20)
    lengths = text_lengths(records, collator) if group else None
    plan = BatchPlan(lengths, len(records), batch, seed)
    out: list[list[int]] = []
    for _, _, indices in micro_batches(plan, 1, 0, 0, batch):
        out.append(indices)
        if len(out) == steps:
            break
    return out


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trl_missing() -> str | None:
    """Why TRL cannot be used here (the note to print), or None when it imports."""
    try:
        import trl  # noqa: F401
    except ImportError as err:
        return f"TRL is not installed ({err}); pip install -e '.[bench]' adds it"
    return None


def trl_dataset(records: list[dict[str, Any]], processor: Any) -> Any:
    """Manifest records, in the order given, as TRL prompt-completion rows with their image.

    ``prompt`` is the chat prompt cgmed renders (image placeholder and generation prompt
    included); ``completion`` is the answer up to and including the end-of-turn token: the
    tokens cgmed's collator labels. What the template writes after it (a newline) is in neither
    arm's loss. With ``completion_only_loss=True`` TRL labels the completion only.
    """
    from datasets import Dataset, Image

    from cgmed.models import get_adapter

    adapter = get_adapter("qwen2_vl")
    rows: dict[str, list[str]] = {"image": [], "prompt": [], "completion": []}
    for record in records:
        prompt = adapter.render(processor, record["question"])
        full = adapter.render(processor, record["question"], record["answer"])
        end = full.rindex(adapter.eot_token) + len(adapter.eot_token)
        rows["image"].append(record["image"])
        rows["prompt"].append(prompt)
        rows["completion"].append(full[len(prompt) : end])
    return Dataset.from_dict(rows).cast_column("image", Image(mode="RGB"))


def step_clock() -> Any:
    """A transformers ``TrainerCallback`` whose ``step_s`` lists each optimizer step's seconds.

    A step is timed from the end of the previous step's logging (or the start of training) to
    the end of the step: fetching and collating the batch, forward, backward, clipping, the
    optimizer and the schedule, as cgmed's ``step_time_s`` covers. On a GPU the clock waits for
    the step's kernels, as cgmed's clock does (it reads the loss after the optimizer step).
    """
    import time

    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.mark = 0.0
            self.step_s: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.mark = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.step_s.append(time.perf_counter() - self.mark)

        def on_log(self, args, state, control, **kwargs):
            self.mark = time.perf_counter()

    return StepClock()


def run_child(script: str, argv: list[str], arm: str, result: Path) -> dict[str, Any]:
    """Run ``script --child ARM`` in a fresh interpreter; its JSON result (written to ``result``).

    A fresh process per arm gives each its own memory high-water mark, threads and global torch
    flags. The result goes through a file because trainers print to stdout.
    """
    result.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, script, *argv, "--child", arm, "--result", str(result)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not result.is_file():
        sys.exit(f"the {arm} run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(result.read_text())


def write_result(path: str, result: dict[str, Any]) -> None:
    """A child's result, for :func:`run_child`."""
    Path(path).write_text(json.dumps(result))
