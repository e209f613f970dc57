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
    plots: bool = True
    note: str = ""  # printed in the report (e.g. what a warm-up stage did)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("cg.seeds", "needs at least one seed")
        names = [t.name for t in self.targets if t.name]
        if len(names) != len(set(names)):
            raise ConfigError("cg.targets", f"target names repeat: {names}", "give each target a unique name")
        for i, t in enumerate(self.targets):
            if t.name and not re.fullmatch(r"[A-Za-z0-9_.-]+", t.name):
                raise ConfigError(f"cg.targets[{i}].name", f"{t.name!r} is not a folder-safe name")
