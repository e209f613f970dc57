"""``cg`` group: which targets the protocol runs, with which related data, over which seeds."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from cgmed.errors import ConfigError


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
class TinyBase:
    """Sizes of a tiny random base model that ``cgmed-cg`` creates when ``model.path`` is null."""

    family: str = "qwen2_vl"
    image_size: int = 56
    text_hidden: int = 64
    text_layers: int = 2
    vision_hidden: int = 32
    vision_layers: int = 2
    seed: int = 0


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


@dataclass
class CGConfig:
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
    pilot: Pilot | None = None  # run the pilot study (Tables 1-2) instead of cg.targets
    plots: bool = True
    note: str = ""  # printed in the report (e.g. what a warm-up stage did)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("cg.seeds", "needs at least one seed")
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
