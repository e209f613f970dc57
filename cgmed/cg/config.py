"""Configs of ``cgmed-cg``: the ``cg`` group (targets, seeds, few-shot, pilot) and ``CGApp``,
the root config holding every group the command reads.

``CGApp`` is built once at start-up; it refuses a value in another group that ``cgmed-cg`` sets
itself for every split and training it runs (``split.targets``, ``train.seed`` ...), naming where
the value belongs (``PROTOCOL_OWNED_KEYS``, ``PILOT_OWNED_KEYS``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from cgmed.data.imaging import ImageConfig
from cgmed.data.source import DataConfig
from cgmed.data.split import SplitConfig
from cgmed.data.synth import SynthConfig
from cgmed.errors import ConfigError
from cgmed.eval.score import EvalConfig
from cgmed.models.tiny import TinySize, check_tiny_family
from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig


@dataclass
class CGTarget:
    """One row of the paper's Table 3: a held-out target and the Related combination trained on."""

    target: Any  # a subset id or a MAT pattern naming exactly one subset
    related: Any = "related"  # the Trained model's data: a rule or a list of subsets / patterns
    without: list[str] = field(default_factory=list)  # ablation of the related rule
    name: str | None = None  # a short name for folders and tables; default derived from the target
    group: str | None = None  # FM / FA / FT / MA, as the paper groups Table 3
    paper: dict[str, float] | None = (
        None  # the paper's numbers for this row (baseline, baseline_plus, trained)
    )
    # the paper's few-shot numbers per arm and shot count: {baseline: {0: 30.0, 2: 28.83}, trained: {...}}
    paper_few_shot: dict[str, dict[str, float]] | None = None
    # what a reader of this row must know (e.g. a two-element composition, an arm that cannot
    # reach the others' size); the dry run and the report print it beside the row
    note: str = ""


@dataclass
class FewShot:
    """Few-shot prompting of the Baseline and Trained models on each target (the paper's Table 16).

    Each question is preceded by N examples per label of the target's training portion
    (``split.shots_per_label`` = max(shots) are set aside, never trained on), drawn anew for
    each of ``repeats`` evaluations; the report gives mean and SD over the repeats.
    """

    shots: list[int] = field(default_factory=lambda: [2, 3, 4])  # examples per label
    repeats: int = 3

    def __post_init__(self) -> None:
        if not self.shots or any(n < 1 for n in self.shots):
            raise ConfigError("cg.few_shot.shots", f"needs shot counts >= 1, got {self.shots}")
        if self.repeats < 1:
            raise ConfigError("cg.few_shot.repeats", "must be >= 1")


@dataclass
class TinyBase(TinySize):
    """A tiny random base model that ``cgmed-cg`` creates when ``model.path`` is null: its
    family, its sizes (the fields of :class:`TinySize`) and the seed of its weights."""

    config_key: ClassVar[str] = "cg.tiny_base"

    family: str = "qwen2_vl"
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_tiny_family(self.family, f"{self.config_key}.family")


@dataclass
class Pilot:
    """The paper's pilot (Tables 1-2), run by ``cgmed-cg`` instead of ``cg.targets``: the untrained
    model, one Multi-task model trained on every subset of ``train_status`` and one Single-task
    model per such subset, scored on their test sets and on the test-only subsets'."""

    train_status: list[str] = field(default_factory=lambda: ["ID"])  # trained on (Table 1)
    test_only_status: list[str] = field(default_factory=lambda: ["OOD"])  # only evaluated (Table 2)
    subsets: list[str] | None = None  # restrict the pilot to these subset ids (null = all)
    single: bool = True  # a Single-task model per trained subset
    multi: bool = True  # the Multi-task model
    paper: dict[str, dict[str, float]] | None = None  # subset id -> {baseline, single, multi}

    def __post_init__(self) -> None:
        if not (self.single or self.multi):
            raise ConfigError("cg.pilot", "single and multi are both false: nothing to train", "enable one")
        overlap = set(self.train_status) & set(self.test_only_status)
        if overlap:
            raise ConfigError(
                "cg.pilot.test_only_status",
                f"{sorted(overlap)} is also in cg.pilot.train_status",
                "keep them apart",
            )


REDO_STAGES = ("train", "eval")  # the stages cg.redo may name


@dataclass
class CGConfig:
    """``cg`` group: the held-out targets of a CG run (or the pilot), the seeds, the extra arms."""

    targets: list[CGTarget] = field(default_factory=list)
    seeds: list[int] = field(
        default_factory=lambda: [0]
    )  # training seeds (the paper repeats runs in Table 9)
    only: list[str] | None = None  # run just these target names (one job per target with -m)
    baseline_plus: bool = True  # train the size-matched Unrelated control
    eval_seen: bool = True  # the Trained model on the test sets of the combinations it trained on
    curve_every: int = 0  # evaluate target and seen test sets every N training steps (a CG learning curve)
    tiny_base: TinyBase | None = None
    few_shot: FewShot | None = None  # also evaluate Baseline and Trained with in-context examples
    # also score Baseline, Baseline+ and Trained on the target by this method; the report puts both side by side
    second_method: Literal["option_scoring", "generation"] | None = None
    pilot: Pilot | None = None  # run the pilot study (Tables 1-2) instead of cg.targets
    plots: bool = True
    note: str = ""  # printed in the report (e.g. what a warm-up stage did)
    # stages (train, eval) to redo when their recorded settings differ from this run's, with all
    # that was made from them; without it such a stage is refused (cgmed.cg.stages)
    redo: list[str] = field(default_factory=list)
    # use a finished training with the same identity (manifest content, base model, every
    # weight-changing setting; cgmed.cg.reuse) instead of training again; false trains every arm
    reuse: bool = True
    # other run or sweep directories searched (recursively) for such trainings, besides this run's
    reuse_from: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("cg.seeds", "needs at least one seed")
        unknown = sorted(set(self.redo) - set(REDO_STAGES))
        if unknown:
            raise ConfigError(
                "cg.redo",
                f"names no stage that can be redone: {unknown}",
                f"list some of {list(REDO_STAGES)} (a split is redone by deleting its target's folder)",
            )
        if self.pilot is not None:
            if self.targets:
                raise ConfigError(
                    "cg.pilot",
                    "runs instead of cg.targets, but both are set",
                    "leave cg.targets empty for the pilot",
                )
            for key, value, fix in (
                ("only", self.only, "restrict the pilot with cg.pilot.subsets"),
                ("few_shot", self.few_shot, "few-shot prompting belongs to a CG target (cg.targets)"),
                ("curve_every", self.curve_every, "set train.eval_every on a cgmed-train run instead"),
            ):
                if value:
                    raise ConfigError(f"cg.{key}", "does not apply to the pilot (cg.pilot)", fix)
        names = [t.name for t in self.targets if t.name]
        if len(names) != len(set(names)):
            raise ConfigError("cg.targets", f"target names repeat: {names}", "give each target a unique name")
        for i, t in enumerate(self.targets):
            if t.name and not re.fullmatch(r"[A-Za-z0-9_.-]+", t.name):
                raise ConfigError(f"cg.targets[{i}].name", f"{t.name!r} is not a folder-safe name")


# Keys of other groups that the CG protocol sets itself for each split and training, mapped to
# where a value belongs instead: a value there would be overridden without a word.
PROTOCOL_OWNED_KEYS: dict[str, str] = {
    "split.targets": "name each held-out subset in cg.targets[i].target",
    "split.train": "give each target's training data in cg.targets[i].related",
    "split.without": "give an ablation of the related rule in cg.targets[i].without",
    "split.match_size_of": "the Unrelated control (cg.baseline_plus) is size-matched to cg.targets[i].related",
    "split.shots_per_label": "list the few-shot counts in cg.few_shot.shots (the pool holds the largest)",
    "train.seed": "list the training seeds in cg.seeds",
    "train.resume": "cgmed-cg resumes a half-finished training itself: rerun it in the same hydra.run.dir",
    "train.output_dir": "choose the run directory with hydra.run.dir (models go to <run>/<target>/seed-N/)",
    "train.eval_every": "draw a CG learning curve with cg.curve_every",
    "eval.shot_seed": "cg.few_shot.repeats sets the draws (repeat r uses seed r)",
}

# The same for the pilot (cg.pilot), which trains on whole subsets with no held-out target.
PILOT_OWNED_KEYS: dict[str, str] = {
    "split.targets": "choose the test-only subsets with cg.pilot.test_only_status (and cg.pilot.subsets)",
    "split.train": "choose the trained subsets with cg.pilot.train_status (and cg.pilot.subsets)",
    "split.without": "the pilot trains on whole subsets; an ablation belongs to cg.targets[i].without",
    "split.match_size_of": "the pilot has no size-matched control; that is cg.baseline_plus of a CG run",
    "split.target_train_samples": "the pilot has no held-out target; target data belongs to a CG run",
    "split.shots_per_label": "the pilot has no few-shot arm; that is cg.few_shot of a CG run (cg.targets)",
    "split.seen_test": "the pilot always scores its trained subsets' test sets",
    "train.seed": PROTOCOL_OWNED_KEYS["train.seed"],
    "train.resume": PROTOCOL_OWNED_KEYS["train.resume"],
    "train.output_dir": "choose the run directory with hydra.run.dir (models go to <run>/pilot/seed-N/)",
    "train.eval_every": "the pilot draws no learning curves; use train.eval_every in a cgmed-train run",
    "eval.shot_seed": "the pilot has no few-shot arm; that is cg.few_shot of a CG run (cg.targets)",
}

# The value cgmed-cg uses itself is no override: launchers pass train.resume=auto to every module.
SAME_AS_CGMED_CG = {"train.resume": "auto"}


@dataclass
class CGApp:
    """Root config of ``cgmed-cg``: every group it reads, built once at start-up
    (``cgmed.cli.hydra_app.app_config``) and handed to the protocol or the pilot whole."""

    cg: CGConfig = field(default_factory=CGConfig)
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    image: ImageConfig = field(default_factory=ImageConfig)

    def __post_init__(self) -> None:
        refuse_global_shots(self.eval)
        if self.cg.second_method == self.eval.method:
            raise ConfigError(
                "cg.second_method",
                f"is eval.method ({self.eval.method}) already",
                "name the other method or null",
            )
        refuse_owned_keys(self, PILOT_OWNED_KEYS if self.cg.pilot is not None else PROTOCOL_OWNED_KEYS)


def refuse_owned_keys(app: CGApp, owned: dict[str, str]) -> None:
    """ConfigError for the first key of ``owned`` that holds neither its default nor the value
    cgmed-cg sets itself."""
    defaults: dict[str, Any] = {}
    for key, fix in owned.items():
        group, name = key.split(".")
        config = getattr(app, group)
        if group not in defaults:
            defaults[group] = type(config)()
        value, default = getattr(config, name), getattr(defaults[group], name)
        if value == default or (key in SAME_AS_CGMED_CG and value == SAME_AS_CGMED_CG[key]):
            continue
        raise ConfigError(
            key,
            f"is set by cgmed-cg itself for every split and training it runs; {value!r} would be overridden",
            f"leave {key} at its default ({default!r}); {fix}",
        )


def refuse_global_shots(eval_cfg: EvalConfig) -> None:
    """Baseline / Trained / seen evaluations are zero-shot by definition; few-shot arms come from
    cg.few_shot, with each target's own pool."""
    if eval_cfg.shots or eval_cfg.shot_pool:
        raise ConfigError(
            "eval.shots",
            "applies to cgmed-eval runs; in cgmed-cg it would turn every arm (and the 0-shot column) few-shot",
            "set cg.few_shot={shots: [2, 3, 4], repeats: 3} instead",
        )
