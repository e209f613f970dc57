"""Which subsets go into training and which are held out: the CG selection rules.

A *selector* is a subset id (``"04"``), a MAT pattern (``{modality: CT, area: Lung}``; every
given element must match, the task matching after the merge rule), or a rule name:

- ``related``: shares at least one MAT element with a target, is not a target;
- ``unrelated``: shares no element with any target;
- ``all``: every subset but the targets; ``none``: no training data (the Baseline).

A rule never selects a subset with a target's exact MAT triplet (Med-MAT ships six pairs of
subsets with one triplet: 14/15, 16/34, 18/20, 25/35, 27/36, 29/37): a target is a combination
never seen in training. **Same-triplet subsets** under a MAT pattern follow ``split.same_triplet``:
``merge`` (default; the paper merged same-triplet data into one subset) takes every subset with a
matched triplet, ``first`` only the first of them in catalog order (the lowest id). A subset id
always names that one subset.

``without: [modality]`` drops related subsets that share the modality with a target (the
paper's w/o Modality / Area / Task ablation). Only subsets whose status is in
``train_status`` are trained on (detection subsets join only when asked for).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cgmed.data.subsets import SubsetInfo, normalize_subset_id
from cgmed.data.vocab import ELEMENT_KINDS, Vocabulary
from cgmed.errors import ConfigError

RULES = ("related", "unrelated", "all", "none")
SMALL_TEST_SET = 100  # a target test set with fewer questions is too small to tell arms apart
SAME_TRIPLET = ("merge", "first")


@dataclass
class OptionsConfig:
    """How multiple-choice questions are written."""

    mode: Literal["keep", "rebuild"] = "keep"  # keep a source's own options, or rebuild every question
    # order of built options (sorted = fixed letters per label)
    order: Literal["shuffle", "sorted"] = "shuffle"
    max_options: int = 4

    def __post_init__(self) -> None:
        if not 2 <= self.max_options <= 10:
            raise ConfigError("split.options.max_options", f"must be in 2..10, got {self.max_options}")


@dataclass
class SplitConfig:
    """``split`` config group: one experiment's held-out targets and training selection.

    **Test sets** are label-balanced, one of two rules per subset (``split_meta.json`` names it
    under ``test_sets.<id>.test_balance``):

    - ``per_label_set`` (single-label subsets): strictly balanced, every label the same count,
      the count of the rarest label (at most ``test_per_label``), as in the paper;
    - ``per_label`` (multi-label subsets, whose labels are comma-joined sets such as
      ``"Effusion, Nodule"``, compared order-free): greedy per individual label. The test records
      are put in a seeded random order; repeatedly, the individual label present least often so far
      (ties by name) takes its next unused record, until every label is present as often as the
      rarest label's records allow (at most ``test_per_label``), and then on, the same way, until
      the set holds ``min_test_samples`` records, records run out, or every label reaches
      ``test_per_label``. A record brings all its labels, so counts come out about equal, not
      exactly.

    A target test set of fewer than ``SMALL_TEST_SET`` (100) questions is too small to tell arms
    apart: ``split_meta.json`` carries a warning for it (``test_sets.<id>.warning``) and the build
    prints it among its notes.
    """

    targets: list[Any] = field(default_factory=list)
    train: Any = "related"  # a rule name, or a list of subset ids / MAT patterns
    without: list[Literal["modality", "area", "task"]] = field(default_factory=list)
    match_size_of: Any = None  # null | rule | list | {train: ..., without: [...]}: draw as many samples
    train_status: list[str] = field(default_factory=lambda: ["ID", "OOD"])
    cap_per_subset: int = 3000  # label-balanced cap per training subset (paper: 3,000)
    max_train_samples: int | None = None  # cap on the whole training set (scaling study: 15,000)
    test_per_label: int | None = None  # cap per label of each test set (null = as large as balance allows)
    # floor on a multi-label (per_label) test set when the data allow it; see the class docstring
    min_test_samples: int = 100
    same_triplet: Literal["merge", "first"] = "merge"  # which same-triplet subsets a MAT pattern takes
    # add N samples of each target's own training portion to the training set (label-balanced): the
    # paper's limited-target-data study (Figure 6) and the detection experiments (Table 5)
    target_train_samples: int = 0
    # write shots.jsonl: up to N samples per label of each target's training portion, never trained
    # on, as in-context examples for few-shot evaluation (eval.shots; the paper's Table 16)
    shots_per_label: int = 0
    seen_test: bool = True  # also write seen_test.jsonl: test sets of the trained-on subsets
    seed: int = 42
    options: OptionsConfig = field(default_factory=OptionsConfig)
    audit_images: bool = True  # hash image bytes in the leakage audit

    def __post_init__(self) -> None:
        check_selector(self.train, "split.train")
        if self.match_size_of is not None:
            if isinstance(self.match_size_of, Mapping):
                unknown = set(self.match_size_of) - {"train", "without"}
                if unknown:
                    raise ConfigError(
                        f"split.match_size_of.{sorted(unknown)[0]}", "unknown key", "use train / without"
                    )
                check_selector(self.match_size_of.get("train", "related"), "split.match_size_of.train")
            else:
                check_selector(self.match_size_of, "split.match_size_of")
        if not isinstance(self.targets, list):
            raise ConfigError("split.targets", "must be a list of subset ids or MAT patterns")
        for i, t in enumerate(self.targets):
            check_selector([t], f"split.targets[{i}]")
        if self.target_train_samples < 0:
            raise ConfigError("split.target_train_samples", "must be >= 0")
        if self.shots_per_label < 0:
            raise ConfigError("split.shots_per_label", "must be >= 0")
        if self.cap_per_subset < 1:
            raise ConfigError("split.cap_per_subset", "must be >= 1")
        if self.min_test_samples < 0:
            raise ConfigError("split.min_test_samples", "must be >= 0")
        if self.same_triplet not in SAME_TRIPLET:
            raise ConfigError(
                "split.same_triplet",
                f"{self.same_triplet!r} is not one of {list(SAME_TRIPLET)}",
                "merge: a MAT pattern takes every subset with its triplet; first: only the lowest id",
            )
        for key in ("max_train_samples", "test_per_label"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"split.{key}", "must be >= 1 or null")


def check_selector(sel: Any, key: str) -> None:
    """Shape check of a selector (no data needed)."""
    if isinstance(sel, str) and sel in RULES:
        return
    if isinstance(sel, (str, int)):
        return  # a single subset id
    if isinstance(sel, Sequence):
        for i, item in enumerate(sel):
            if isinstance(item, Mapping):
                unknown = set(item) - set(ELEMENT_KINDS)
                if unknown or not item:
                    raise ConfigError(
                        f"{key}[{i}]", f"a MAT pattern takes keys {list(ELEMENT_KINDS)}, got {sorted(item)}"
                    )
            elif isinstance(item, str) and item in RULES:
                raise ConfigError(
                    f"{key}[{i}]", f"rule {item!r} cannot be mixed into a list", f"write {key}={item}"
                )
            elif not isinstance(item, (str, int)):
                raise ConfigError(f"{key}[{i}]", f"expected a subset id or a MAT pattern, got {item!r}")
        return
    raise ConfigError(
        key, f"expected one of {list(RULES)}, a subset id, or a list of ids / MAT patterns; got {sel!r}"
    )


def resolve_pattern(pattern: Mapping[str, str], vocab: Vocabulary, key: str) -> dict[str, str]:
    """Canonical element names of a pattern; unknown names raise ConfigError at start-up."""
    return {k: vocab.canonical(k, str(v), f"{key}.{k}") for k, v in pattern.items()}


def matches(info: SubsetInfo, pattern: Mapping[str, str], vocab: Vocabulary) -> bool:
    """True when the subset has every element the (canonical) pattern gives; the task after merging."""
    if "modality" in pattern and info.modality != pattern["modality"]:
        return False
    if "area" in pattern and info.area != pattern["area"]:
        return False
    return not ("task" in pattern and pattern["task"] not in vocab.task_elements(info.task))


def shared_elements(a: SubsetInfo, b: SubsetInfo, vocab: Vocabulary) -> set[str]:
    """Which MAT elements two subsets share (the task after merging)."""
    out = set()
    if a.modality == b.modality:
        out.add("modality")
    if a.area == b.area:
        out.add("area")
    if vocab.share_task(a.task, b.task):
        out.add("task")
    return out


def first_of_each_triplet(ids: Sequence[str], subsets: Mapping[str, SubsetInfo]) -> list[str]:
    """``ids`` (in catalog order) keeping only the first subset of each MAT triplet."""
    seen: set[tuple[str, str, str]] = set()
    out = []
    for sid in ids:
        if subsets[sid].triplet not in seen:
            seen.add(subsets[sid].triplet)
            out.append(sid)
    return out


def resolve_ids(
    items: Sequence[Any],
    subsets: Mapping[str, SubsetInfo],
    vocab: Vocabulary,
    key: str,
    same_triplet: str = "merge",
) -> list[str]:
    """Subset ids and patterns -> the ids they name, in catalog order; nothing matched is an error.

    A pattern takes every matching subset (``same_triplet="merge"``) or the first subset of each
    matching triplet (``"first"``); see the module docstring."""
    chosen: set[str] = set()
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if isinstance(item, Mapping):
            pat = resolve_pattern(item, vocab, where)
            hit = [sid for sid, info in subsets.items() if matches(info, pat, vocab)]
            if not hit:
                raise ConfigError(
                    where,
                    f"MAT pattern {pat} matches no subset in the data",
                    "run `cgmed-data catalog data.root=...` to list the subsets and their triplets",
                )
            chosen.update(first_of_each_triplet(hit, subsets) if same_triplet == "first" else hit)
        else:
            sid = normalize_subset_id(item)
            if sid not in subsets:
                raise ConfigError(
                    where, f"unknown subset id {item!r}", f"subsets in the data are: {', '.join(subsets)}"
                )
            chosen.add(sid)
    return [sid for sid in subsets if sid in chosen]


def select_train(
    selector: Any,
    without: Sequence[str],
    targets: Sequence[str],
    subsets: Mapping[str, SubsetInfo],
    vocab: Vocabulary,
    train_status: Sequence[str],
    key: str = "split.train",
    same_triplet: str = "merge",
) -> list[str]:
    """The training subsets named by ``selector`` (rule or explicit list).

    Explicit lists are taken as written (a target, or a subset with a target's triplet, in one
    is caught by the leakage audit, which names it); rules never return a target or a subset
    with a target's triplet, and respect ``train_status``.
    """
    if not (isinstance(selector, str) and selector in RULES):
        items = selector if isinstance(selector, Sequence) and not isinstance(selector, str) else [selector]
        return resolve_ids(items, subsets, vocab, key, same_triplet)
    if selector == "none":
        return []
    target_infos = [subsets[t] for t in targets]
    target_triplets = {t.triplet for t in target_infos}
    out = []
    for sid, info in subsets.items():
        if sid in targets or info.triplet in target_triplets or info.status not in train_status:
            continue
        shared = (
            set().union(*(shared_elements(info, t, vocab) for t in target_infos)) if target_infos else set()
        )
        if selector == "related" and not shared:
            continue
        if selector == "unrelated" and shared:
            continue
        if selector == "related" and shared & set(without):
            continue
        out.append(sid)
    return out


def balanced_quota(available: Mapping[str, int], total: int) -> dict[str, int]:
    """Split ``total`` over keys as evenly as availability allows (water-filling).

    Used for labels within a subset (label balance) and for subsets within a size-matched
    or capped training set. Ties in the remainder go to keys in sorted order.
    """
    keys = sorted(available)
    quota = {k: 0 for k in keys}
    remaining = min(total, sum(available.values()))
    open_keys = [k for k in keys if available[k] > 0]
    while remaining > 0 and open_keys:
        share = max(1, remaining // len(open_keys))
        for k in list(open_keys):
            take = min(share, available[k] - quota[k], remaining)
            quota[k] += take
            remaining -= take
            if quota[k] >= available[k]:
                open_keys.remove(k)
            if remaining == 0:
                break
    return quota
