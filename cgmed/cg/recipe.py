"""What a CG run will do, said before it does it, and the plan-time check that needs the backbone.

* :func:`target_lines`: the dry run's account of one target beyond its splits: the subsets each
  Related entry became, and per arm the training recipe (samples, global batch as per device x
  accumulation x processes, optimizer steps, epochs, learning rate, what trains and what is frozen)
  and the evaluation method.
* :func:`shared_training_lines`: which trainings the run makes once and uses for several arms
  (``cg.reuse``: the same manifest, base model and recipe; :mod:`cgmed.cg.reuse`).
* :func:`check_few_shot_fits`: ``cg.few_shot`` refused before anything trains when its prompts
  (examples per label x labels + the question, each with its image) cannot fit the backbone's
  positions, with the arithmetic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgmed.cg.config import CGApp, CGTarget
from cgmed.cg.records import file_sha256
from cgmed.cg.results import SplitSummary, TargetRun, subset_title
from cgmed.cg.reuse import base_identity, find_training, search_roots, training_identity
from cgmed.cg.stages import curve_manifests, stage_train_config
from cgmed.data.manifest import read_jsonl
from cgmed.data.split import SplitConfig, resolve_ids, select_train
from cgmed.data.vocab import DETECTION_TASK
from cgmed.errors import ConfigError
from cgmed.eval.score import EvalConfig
from cgmed.models.registry import PARTS
from cgmed.train.config import ModelConfig, PeftConfig, TrainConfig, resolve_global_batch
from cgmed.train.data import steps_for


def processes() -> int:
    """Processes of this launch: the global batch is split over them."""
    from cgmed.train.distributed import world_size

    return world_size()


def related_lines(spec: CGTarget, target: str, split: SplitConfig, source: Any) -> list[str]:
    """Each entry of ``spec.related`` (a rule, an id or a MAT pattern) and the subsets it became
    under ``split.same_triplet``."""
    subsets, vocab = source.subsets(), source.vocab
    entries = spec.related if isinstance(spec.related, list) else [spec.related]
    lines = []
    for entry in entries:
        if isinstance(entry, str) and entry in ("related", "unrelated", "all"):
            ids = select_train(entry, spec.without, [target], subsets, vocab, split.train_status)
            shown = f"rule {entry}" + (f" without {spec.without}" if spec.without else "")
            shown += f" (statuses {list(split.train_status)})"
        else:
            ids = resolve_ids([entry], subsets, vocab, "cg.targets[].related", split.same_triplet)
            shown = _entry_text(entry)
        titles = ", ".join(subset_title(subsets[sid]) for sid in ids)
        lines.append(f"    {shown} -> {titles or 'nothing'}")
    return [f"  Related entries (split.same_triplet={split.same_triplet}):", *lines]


def _entry_text(entry: Any) -> str:
    if isinstance(entry, dict):
        return "{" + ", ".join(f"{key}: {value}" for key, value in entry.items()) + "}"
    return repr(str(entry))


def parts_text(train: TrainConfig, peft: PeftConfig) -> str:
    """What trains and what stays frozen: vision / projector / language, in full or by LoRA."""
    frozen = [part for part in PARTS if part in train.frozen_parts()]
    if peft.method == "full":
        trains = [part for part in PARTS if part not in frozen]
        return f"trains {' + '.join(trains)} (full fine-tuning); frozen: {', '.join(frozen) or 'nothing'}"
    kind = "QLoRA (4-bit base)" if peft.method == "qlora" else "LoRA"
    if peft.target_modules is not None:
        on = f"peft.target_modules {list(peft.target_modules)}"
    else:
        on = " + ".join(p for p in PARTS if getattr(peft, f"target_{p}") and p not in frozen) or "nothing"
    return f"trains {kind} r={peft.r} adapters on {on}; frozen: every base weight"


def lr_text(train: TrainConfig) -> str:
    """``lr 5e-06, cosine, warmup 3%`` and any part's own rate."""
    own = [f"{part} {train.part_lr(part):g}" for part in PARTS if getattr(train, f"lr_{part}") is not None]
    warmup = (
        f"warmup {train.warmup_steps} steps"
        if train.warmup_steps is not None
        else f"warmup {100 * train.warmup_ratio:g}%"
    )
    return f"lr {train.lr:g}" + (f" ({', '.join(own)})" if own else "") + f", {train.scheduler}, {warmup}"


def steps_text(train: TrainConfig, world: int, samples: int) -> str:
    """Optimizer steps and epochs that ``samples`` training samples give (``train`` resolved)."""
    batch = train.per_device_batch_size * train.grad_accum * world
    try:
        steps = steps_for(
            samples, train.per_device_batch_size * world, train.grad_accum, train.max_steps, train.epochs
        )
    except ConfigError:
        return (
            f"no step: {samples} samples cannot fill one optimizer step of {batch} (the training would stop)"
        )
    per_epoch = samples // batch
    epoch = f"{per_epoch} step{'s' if per_epoch > 1 else ''}"
    if train.max_steps > 0:
        return f"{steps} steps (train.max_steps; {steps / per_epoch:.2g} epochs of {epoch})"
    return f"{steps} steps ({train.epochs:g} epochs of {epoch})"


def batch_text(train: TrainConfig, world: int) -> str:
    """``global batch 32 = 4 per device x 8 accumulation x 1 process`` (``train`` resolved)."""
    batch = train.effective_batch(world)
    return (
        f"global batch {batch['global_batch_size']} = {batch['per_device_batch_size']} per device x "
        f"{batch['grad_accum']} accumulation x {world} process{'es' if world > 1 else ''}"
    )


def eval_text(eval_cfg: EvalConfig, detection: bool = False) -> str:
    """How an arm is scored on the target's test set."""
    if detection:
        return "eval generation of boxes, scored on cIoU (a detection target, whatever eval.method says)"
    if eval_cfg.method == "generation":
        return "eval generation (the answer is generated and parsed; an unparsed answer counts wrong)"
    return "eval option_scoring (the option letter's log-probability; never unparsed)"


def arm_lines(app: CGApp, arm: str, samples: int | None, world: int, scored: str) -> list[str]:
    """One arm's recipe (``samples`` None for the untrained Baseline); ``scored``: how it is evaluated."""
    if samples is None:
        return [f"  {arm}: the untrained model ({app.model.path or 'cg.tiny_base'}); {scored}"]
    train = resolve_global_batch(app.train, world)
    return [
        f"  {arm}: {samples} samples, {batch_text(train, world)}, {steps_text(train, world, samples)}",
        f"    {lr_text(train)}; {parts_text(train, app.peft)}; {scored}",
    ]


def target_lines(
    app: CGApp,
    spec: CGTarget,
    target: str,
    related: SplitSummary,
    unrelated: SplitSummary | None,
    source: Any,
) -> list[str]:
    """The dry run's lines for one target: Related entries, then each arm's recipe."""
    world = processes()
    scored = eval_text(app.eval, detection=related.targets[0].task == DETECTION_TASK)
    lines = related_lines(spec, target, app.split, source)
    lines += arm_lines(app, "Baseline", None, world, scored)
    arms = [("Trained", related)] if unrelated is None else [("Baseline+", unrelated), ("Trained", related)]
    for arm, split in arms:
        own = sum(split.meta["counts"]["train"].get(target, {}).values())
        if own:  # split.target_train_samples: the same draw of the target's own samples in each arm
            arm += f" ({own} of them the target's own)"
        lines += arm_lines(app, arm, split.sizes["train"], world, scored)
    few_shot = app.cg.few_shot
    if few_shot:
        lines.append(
            f"  few-shot: Baseline and Trained with {few_shot.shots} examples per label, {few_shot.repeats} draws each"
        )
    if spec.note:
        lines.append(f"  note: {spec.note}")
    return lines


def shared_training_lines(app: CGApp, runs: list[TargetRun]) -> dict[str, list[str]]:
    """Per target, its ``trains once:`` lines: each arm and seed whose training is the same as an
    earlier one of the run (or, with a configured base model, a finished one in ``cg.reuse_from``)
    and so is not trained again. Empty with ``cg.reuse=false``."""
    if not app.cg.reuse:
        return {}
    # a tiny base is made when the run starts: the same one for every training of the run
    base = base_identity(app.model.path) if app.model.path else "cg.tiny_base"
    roots = search_roots(app.cg, None) if app.model.path else []
    first: dict[str, str] = {}
    lines: dict[str, list[str]] = {}
    for run in runs:
        arms = [("trained", "Trained", run.related)]
        if run.unrelated is not None:
            arms.append(("baseline_plus", "Baseline+", run.unrelated))
        for seed in app.cg.seeds:
            for folder, label, split in arms:
                here = f"{run.name}/seed-{seed}/{folder}"
                curves = curve_manifests(app.cg, run.related) if folder == "trained" else None
                cfg = stage_train_config(app, Path(here), seed)
                identity = training_identity(app, cfg, file_sha256(split.manifest("train")), curves, base)
                same = first.setdefault(identity, here)
                if same == here and roots:
                    found = find_training(identity, roots)
                    same = str(found) if found is not None else here
                if same != here:
                    lines.setdefault(run.name, []).append(
                        f"  trains once: {label} seed {seed} uses {same}'s training (the same training data, "
                        "base model and recipe)"
                    )
    return lines


def pilot_lines(app: CGApp, splits: dict[str, SplitSummary]) -> list[str]:
    """The pilot's arms (cg.pilot): the untrained model, the Multi-task model, the Single-task models."""
    pilot, world = app.cg.pilot, processes()
    assert pilot is not None
    scored = eval_text(app.eval)
    lines = ["pilot arms:", *arm_lines(app, "Baseline", None, world, scored)]
    if pilot.multi:
        lines += arm_lines(app, "Multi-task", splits["multi"].sizes["train"], world, scored)
    singles = sorted((s.sizes["train"], name) for name, s in splits.items() if name.startswith("single-"))
    if pilot.single and singles:
        arm = f"Single-task ({len(singles)} models; the smallest, {singles[0][1]})"
        lines += arm_lines(app, arm, singles[0][0], world, scored)
    return lines


# ---------------------------------------------------------------------------------- few-shot fit


@dataclass(frozen=True)
class PromptBudget:
    """What a prompt may hold: the language model's positions and the tokens each image takes
    (at least: a Qwen image may take more)."""

    positions: int
    image_tokens: int
    model: str


# config.json facts of the paper's backbones, for a dry run that cannot read the hub
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "llava-hf/llava-1.5-7b-hf": {
        "model_type": "llava",
        "image_seq_length": 576,  # 336 x 336 CLIP input, 14-pixel patches: 24 x 24
        "text_config": {"max_position_embeddings": 4096},
    },
    "Qwen/Qwen2-VL-7B-Instruct": {"model_type": "qwen2_vl", "max_position_embeddings": 32768},
    "meta-llama/Llama-3.2-11B-Vision-Instruct": {
        "model_type": "mllama",
        "text_config": {"max_position_embeddings": 131072},
    },
}
QWEN_MIN_PIXELS = 56 * 56  # the Qwen processors' default floor: 4 visual tokens


def _model_config(path: str) -> dict[str, Any] | None:
    """``config.json`` of a local model, of a hub model already in the local cache, or of a
    paper backbone (:data:`KNOWN_CONFIGS`)."""
    local = Path(path).expanduser() / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json")
    except Exception:  # not a hub id; no cache
        cached = None
    if isinstance(cached, str) and Path(cached).is_file():
        return json.loads(Path(cached).read_text())
    return KNOWN_CONFIGS.get(path)


def prompt_budget(model: ModelConfig) -> PromptBudget | None:
    """The positions and per-image tokens of ``model``, or None when they are unknown here (the
    evaluator still refuses an over-long prompt when it meets one)."""
    config = _model_config(model.path) if model.path else None
    if config is None:
        return None
    family = model.family or config.get("model_type")
    text = config.get("text_config") or {}
    positions = text.get("max_position_embeddings") or config.get("max_position_embeddings")
    if not positions:
        return None
    if family == "llava":
        vision = config.get("vision_config") or {}
        tokens = config.get("image_seq_length") or (vision["image_size"] // vision["patch_size"]) ** 2
    elif family in ("qwen2_vl", "qwen2_5_vl"):
        tokens = max(1, (model.min_pixels or QWEN_MIN_PIXELS) // (28 * 28))
    else:  # mllama: images reach the language model through cross-attention
        tokens = 0
    return PromptBudget(int(positions), int(tokens), model.path)


def _fewest_words(split: SplitSummary) -> int:
    """Words of the shortest question the prompts can hold: a lower bound on its tokens (every
    word is at least one token)."""
    rows = [*read_jsonl(split.manifest("test")), *read_jsonl(split.manifest("shots"))]
    return min(len(r["question"].split()) for r in rows)


def check_few_shot_fits(app: CGApp, related: SplitSummary, target: str) -> None:
    """ConfigError naming ``cg.few_shot`` when N examples per label of ``target`` plus the question
    cannot fit the backbone's positions, at the fewest tokens they can take."""
    few_shot = app.cg.few_shot
    budget = prompt_budget(app.model) if few_shot else None
    if few_shot is None or budget is None:
        return
    labels = len(related.meta["counts"]["shots"].get(target, {}))
    words = _fewest_words(related)

    def least(shots: int) -> int:
        images = shots * labels + 1
        return images * (budget.image_tokens + words) + shots * labels  # + one token per example's answer

    too_long = [n for n in few_shot.shots if least(n) > budget.positions]
    if not too_long:
        return
    n = too_long[0]
    images = n * labels + 1
    fits = [k for k in range(1, max(few_shot.shots) + 1) if least(k) <= budget.positions]
    raise ConfigError(
        "cg.few_shot",
        f"{n} examples per label x {labels} labels of target {target} + the question = {images} images x "
        f"{budget.image_tokens} tokens = {images * budget.image_tokens:,} image tokens, plus at least {images} "
        f"questions x {words} words and {n * labels} answers = {least(n):,} tokens > the {budget.positions:,} "
        f"positions of {budget.model} (shot counts that do not fit: {too_long})",
        (f"set cg.few_shot.shots to counts that fit ({fits})" if fits else "no shot count fits")
        + ", or run on a backbone with more positions (e.g. model.path=Qwen/Qwen2-VL-7B-Instruct "
        "model.family=qwen2_vl model.max_pixels=802816)",
    )
