"""Run the CG protocol for each target: splits, Baseline, Baseline+ and Trained, evaluations.

Stages write into ``<run>/<target>/``; a finished stage leaves its output (``split_meta.json``,
``final/``, ``results.json``) and is skipped when the command is rerun, so a crash in one
stage keeps the others. Every process of a multi-process launch runs the driver; data
building and reports happen on the main process.

A target may be a detection subset (task ``Det``; the paper's Table 5): its test set holds box
records, which the evaluator answers by generation, and the report compares its arms on cIoU.
Detection subsets have status ``det``, so the ``related`` rule (under the default
``split.train_status: [ID, OOD]``) never trains on them: list them in ``related`` explicitly
(e.g. a Det subset of another modality plus a classification subset of the target's
modality and area), or add ``det`` to ``split.train_status``.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cgmed.cg.config import CGConfig, CGTarget
from cgmed.config import as_dict
from cgmed.data.build import build_split, resolve_root, write_split
from cgmed.data.source import DataConfig, open_source
from cgmed.data.split import SplitConfig, resolve_ids, select_train
from cgmed.data.vocab import DETECTION_TASK
from cgmed.errors import CgmedError, ConfigError
from cgmed.eval.score import EvalConfig
from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclasses.dataclass
class Plan:
    name: str
    spec: CGTarget
    target: str
    related_split: SplitConfig
    unrelated_split: SplitConfig | None


def target_name(spec: CGTarget, target_info: Any) -> str:
    if spec.name:
        return spec.name
    return f"{target_info.id}_{target_info.modality}_{target_info.area}_{target_info.task}".replace("-", "")


def plan_targets(cg: CGConfig, split: SplitConfig, source: Any) -> list[Plan]:
    """Resolve every target (exactly one subset each) and its two training selections."""
    subsets, vocab = source.subsets(), source.vocab
    plans = []
    for i, spec in enumerate(cg.targets):
        key = f"cg.targets[{i}]"
        ids = resolve_ids([spec.target], subsets, vocab, f"{key}.target")
        if len(ids) != 1:
            raise ConfigError(
                f"{key}.target",
                f"names {len(ids)} subsets ({ids}); a CG target is one subset",
                "give a subset id or a fuller MAT pattern",
            )
        tid = ids[0]
        related = dataclasses.replace(
            split,
            targets=[tid],
            train=spec.related,
            without=list(spec.without),
            match_size_of=None,
            shots_per_label=max(cg.few_shot.shots) if cg.few_shot else split.shots_per_label,
        )
        if not select_train(
            spec.related, spec.without, [tid], subsets, vocab, split.train_status, f"{key}.related"
        ):
            raise ConfigError(
                f"{key}.related",
                f"no related data for target {subsets[tid].describe()}",
                "choose another target or widen the related selection",
            )
        unrelated = None
        if cg.baseline_plus:
            match = {"train": spec.related, "without": list(spec.without)}
            unrelated = dataclasses.replace(
                split,
                targets=[tid],
                train="unrelated",
                without=[],
                match_size_of=match,
                seen_test=False,
                shots_per_label=0,
            )
        name = target_name(spec, subsets[tid])
        if cg.few_shot and subsets[tid].task == DETECTION_TASK:
            raise ConfigError(
                "cg.few_shot",
                f"target {subsets[tid].describe()} is a detection subset; few-shot prompting covers "
                "multiple-choice targets",
                "run detection targets in a config without cg.few_shot",
            )
        if subsets[tid].task == DETECTION_TASK:
            # Rules train only on split.train_status (default ID/OOD); a detection target then
            # learns boxes only from Det subsets listed in cg.targets[].related (as Table 5 does).
            log.info("target %s is a detection subset: its arms are scored on cIoU of generated boxes", name)
        if cg.only is None or name in cg.only:
            plans.append(Plan(name, spec, tid, related, unrelated))
    if cg.only is not None:
        missing = set(cg.only) - {p.name for p in plans}
        if missing:
            raise ConfigError(
                "cg.only", f"no target named {sorted(missing)}", f"names: {[p.name for p in plans]}"
            )
    if not plans:
        raise ConfigError(
            "cg.targets", "no target to run", "list targets under cg.targets (see cgmed/conf/experiment/)"
        )
    return plans


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _barrier() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def on_main(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on the main process while the others wait; returns its result there (None
    elsewhere). A failure on the main process is raised on every rank: behind a bare barrier the
    others would wait for it until the process-group timeout."""
    from accelerate import PartialState

    state = PartialState()
    result: T | None = None
    failure: BaseException | None = None
    if state.is_main_process:
        try:
            result = fn()
        except Exception as err:  # re-raised below, after every rank has heard of it
            failure = err
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        news = [None if failure is None else type(failure).__name__]
        broadcast_object_list(news, from_process=0)  # a collective: also the barrier
        if news[0] is not None and failure is None:
            raise CgmedError(
                f"stopped on rank {state.process_index}: the main process failed with {news[0]} (its message is "
                "printed by rank 0)"
            )
    if failure is not None:
        raise failure
    return result


def build_splits(plan: Plan, data: DataConfig, source: Any, out: Path) -> dict[str, dict]:
    """The Related and Unrelated splits of a target (skipped when already written)."""
    metas = {}
    for kind, cfg in (("related", plan.related_split), ("unrelated", plan.unrelated_split)):
        if cfg is None:
            continue
        d = out / "splits" / kind
        if not (d / "split_meta.json").is_file():
            on_main(lambda cfg=cfg, d=d: build_and_write(source, data, cfg, d))
        metas[kind] = json.loads((d / "split_meta.json").read_text())
        check_split_settings(metas[kind], cfg, data, d, "that target's folder")
    return metas


# data settings that change which records a split holds (roots and caches may move)
SPLIT_DATA_KEYS = (
    "format",
    "files",
    "test_fraction",
    "split_seed",
    "extra_elements",
    "task_merge",
    "derived",
    "keep_derived_sources",
)
CHECK_ONLY_SPLIT_KEYS = ("audit_images",)  # switch a check, change no sample


def check_split_settings(meta: dict, cfg: SplitConfig, data: DataConfig, where: Path, folder: str) -> None:
    """Refuse to reuse a split built with other settings: every later stage (models, evaluations)
    was made from it. A key the recorded config lacks (written by an older cgmed) counts as its
    default."""
    recorded = meta.get("config", {})
    changed = []
    for group, now, defaults, keys in (
        ("split", as_dict(cfg), as_dict(SplitConfig()), None),
        ("data", as_dict(data), as_dict(DataConfig()), SPLIT_DATA_KEYS),
    ):
        old = recorded.get(group) or {}
        for k in keys or [k for k in now if k not in CHECK_ONLY_SPLIT_KEYS]:
            if old.get(k, defaults.get(k)) != now[k]:
                changed.append(f"{group}.{k}")
    if changed:
        raise ConfigError(
            "split",
            f"{where} was built with other settings (differing: {changed}); the models and evaluations made "
            "from it belong to those",
            f"run in a new directory (hydra.run.dir=...), or delete {folder} to redo it",
        )


def build_and_write(source: Any, data: DataConfig, cfg: SplitConfig, out: Path) -> None:
    built = build_split(source, data, cfg)
    write_split(
        built, out, {"data": {**as_dict(data), "root": str(source.root)}, "split": as_dict(cfg)}, source
    )


def _free() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def train_stage(
    model: ModelConfig,
    train_cfg: TrainConfig,
    peft: PeftConfig,
    dist: DistributedConfig,
    manifest: Path,
    out: Path,
    seed: int,
    curves: dict[str, str] | None = None,
) -> Path:
    """Train one model (resuming a half-finished one); returns its ``final/`` directory."""
    from cgmed.train.loop import train

    final = out / "final"
    if (final / "config.json").is_file() or (final / "adapter_config.json").is_file():
        log.info("skip (done): %s", out)
        return final
    cfg = dataclasses.replace(train_cfg, seed=seed, resume="auto", output_dir=str(out))
    train(model, cfg, peft, dist, str(manifest), out, None, eval_manifests=curves)
    _free()
    return final


def eval_stage(
    model_path: Path | str, eval_cfg: EvalConfig, manifest: Path, out: Path, model: ModelConfig
) -> dict:
    """Evaluate once; a finished evaluation is read back."""
    from cgmed.eval.run import evaluate

    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    doc = evaluate(
        str(model_path),
        eval_cfg,
        str(manifest),
        out,
        model.family,
        model.dtype,
        {"min_pixels": model.min_pixels, "max_pixels": model.max_pixels},
    )
    _free()
    return doc


def few_shot_stages(
    model_path: Path | str, eval_cfg: EvalConfig, split_dir: Path, out: Path, model: ModelConfig, cg: CGConfig
) -> dict[str, list[dict]]:
    """The target test set with N in-context examples per label, ``repeats`` draws per N."""
    fs = cg.few_shot
    assert fs is not None
    done: dict[str, list[dict]] = {}
    for n in fs.shots:
        done[str(n)] = [
            eval_stage(
                model_path,
                dataclasses.replace(eval_cfg, shots=n, shot_pool=str(split_dir / "shots.jsonl"), shot_seed=r),
                split_dir / "test.jsonl",
                out / f"eval_{n}shot" / f"repeat-{r}",
                model,
            )
            for r in range(fs.repeats)
        ]
    return done


def run_protocol(
    cg: CGConfig,
    data: DataConfig,
    split: SplitConfig,
    synth: Any,
    model: ModelConfig,
    train_cfg: TrainConfig,
    peft: PeftConfig,
    dist: DistributedConfig,
    eval_cfg: EvalConfig,
    run_dir: Path,
    dry_run: bool = False,
) -> dict[str, Any]:
    """The whole protocol; returns the report document (and writes it unless ``dry_run``)."""
    from cgmed.cg.report import print_plan, write_report

    refuse_global_shots(eval_cfg)
    source = open_data(data, synth, dist)
    plans = plan_targets(cg, split, source)
    if not dry_run:
        model = base_model(cg, model, run_dir)

    per_target = []
    for plan in plans:
        out = run_dir / plan.name
        metas = build_splits(plan, data, source, out)
        if dry_run:
            per_target.append({"plan": plan, "metas": metas})
            continue
        rel, unrel = out / "splits" / "related", out / "splits" / "unrelated"
        entry: dict[str, Any] = {"plan": plan, "metas": metas, "baseline": None, "seeds": {}}
        entry["baseline"] = eval_stage(
            model.path, eval_cfg, rel / "test.jsonl", out / "baseline" / "eval", model
        )
        if cg.few_shot:
            entry["baseline_few_shot"] = few_shot_stages(
                model.path, eval_cfg, rel, out / "baseline", model, cg
            )
        for seed in cg.seeds:
            s_out = out / f"seed-{seed}"
            curves = None
            if cg.curve_every:
                curves = {"target": str(rel / "test.jsonl"), "seen": str(rel / "seen_test.jsonl")}
                train_cfg = dataclasses.replace(train_cfg, eval_every=cg.curve_every)
            res: dict[str, Any] = {}
            final = train_stage(
                model, train_cfg, peft, dist, rel / "train.jsonl", s_out / "trained", seed, curves
            )
            res["trained"] = eval_stage(
                final, eval_cfg, rel / "test.jsonl", s_out / "trained" / "eval", model
            )
            if cg.few_shot:
                res["trained_few_shot"] = few_shot_stages(final, eval_cfg, rel, s_out / "trained", model, cg)
            if cg.eval_seen and (rel / "seen_test.jsonl").stat().st_size:
                res["seen"] = eval_stage(
                    final, eval_cfg, rel / "seen_test.jsonl", s_out / "trained" / "eval_seen", model
                )
            if plan.unrelated_split is not None:
                final_p = train_stage(
                    model, train_cfg, peft, dist, unrel / "train.jsonl", s_out / "baseline_plus", seed
                )
                res["baseline_plus"] = eval_stage(
                    final_p, eval_cfg, rel / "test.jsonl", s_out / "baseline_plus" / "eval", model
                )
            entry["seeds"][seed] = res
        per_target.append(entry)
    if dry_run:
        if _is_main():
            print_plan(per_target)
        return {"dry_run": True, "targets": [e["plan"].name for e in per_target]}
    return on_main(lambda: write_report(per_target, cg, run_dir, eval_cfg)) or {}


GROUP_ORDER = ("cg", "data", "split", "synth", "model", "train", "peft", "distributed", "eval")


def run_groups(groups: dict[str, Any], run_dir: Path, dry_run: bool = False) -> dict[str, Any]:
    """The CG protocol (or the pilot, when ``cg.pilot`` is set) from the typed config groups
    (``cgmed.cli.hydra_app.typed_config``)."""
    if groups["cg"].pilot is not None:
        from cgmed.cg.pilot import run_pilot as runner
    else:
        runner = run_protocol
    return runner(*(groups[k] for k in GROUP_ORDER), run_dir, dry_run=dry_run)


def refuse_global_shots(eval_cfg: EvalConfig) -> None:
    """Baseline / Trained / seen evaluations are zero-shot by definition; few-shot arms come from
    cg.few_shot, with each target's own pool."""
    if eval_cfg.shots or eval_cfg.shot_pool:
        raise ConfigError(
            "eval.shots",
            "applies to cgmed-eval runs; in cgmed-cg it would turn every arm (and the 0-shot column) few-shot",
            "set cg.few_shot={shots: [2, 3, 4], repeats: 3} instead",
        )


def open_data(data: DataConfig, synth: Any, dist: DistributedConfig) -> Any:
    """Start the process group, make the data root (the synthetic world once, on the main
    process) and open the source on every rank."""
    from cgmed.train.distributed import init_process_state

    init_process_state(dist)  # every rank runs the driver; its barriers use the training process group
    root = on_main(lambda: resolve_root(data, synth))
    return open_source(data, root or resolve_root(data, synth))


def base_model(cg: CGConfig, model: ModelConfig, run_dir: Path) -> ModelConfig:
    """``model`` with a path: the configured one, or a tiny random base made for the run (``cg.tiny_base``)."""
    if model.path is not None:
        return model
    if cg.tiny_base is None:
        raise ConfigError(
            "model.path", "is required", "model.path=DIR or a hub id (or cg.tiny_base for a demo)"
        )
    return dataclasses.replace(model, path=str(_tiny_base(cg, run_dir)))


def _tiny_base(cg: CGConfig, run_dir: Path) -> Path:
    from cgmed.models.tiny import init_tiny

    t = cg.tiny_base
    out = run_dir / "base"
    if not (out / "config.json").is_file():
        on_main(
            lambda: init_tiny(
                t.family,
                out,
                seed=t.seed,
                image_size=t.image_size,
                text_hidden=t.text_hidden,
                text_layers=t.text_layers,
                vision_hidden=t.vision_hidden,
                vision_layers=t.vision_layers,
            )
        )
    return out
