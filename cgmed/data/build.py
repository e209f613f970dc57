"""Build one experiment's train and test sets, in stages: select, index, quota, draw, questions, audit.

``build_split`` is the library entry point behind ``cgmed-data build``; each stage is a function
with a typed result:

1. :func:`select_subsets` -> :class:`Selection`: the held-out targets, the training subsets and
   the size reference of ``split.match_size_of`` (callers that have already selected, such as
   ``cgmed-cg``, can compute it once and reuse it);
2. every selected subset is indexed (one pass over its records; bad records are counted);
3. :func:`training_quotas` -> :class:`TrainingQuotas`: samples per training subset, after the
   per-subset cap, the size match and the total cap;
4. :func:`draw_samples` -> :class:`DrawnSamples`: training, target test, seen-test and in-context
   samples, label-balanced (:mod:`cgmed.data.sampling`; test sets under the rules stated in
   :class:`~cgmed.data.split.SplitConfig`, each target's rule, size and a warning when it is too
   small to tell arms apart in ``split_meta.json``'s ``test_sets``);
5. :func:`write_questions`: every sample gets its final prompt and answer;
6. :func:`audit_drawn`: the leakage audit (:mod:`cgmed.data.audit`).

Same source, config and seed give byte-identical ``train.jsonl`` / ``test.jsonl`` /
``seen_test.jsonl`` (and ``shots.jsonl``, the in-context examples of ``split.shots_per_label``)
and ``split_meta.json``: every random draw uses an RNG keyed by (seed, subset, label, purpose).

Detection samples (a ``box``, no options) keep their instruction and box answer: no
multiple-choice question is built for them, and their label (the finding) balances sampling
like any label. Detection subsets (status ``det``) are trained on only when ``split.train``
names them or ``split.train_status`` includes ``det``; the leakage audit treats them like any
subset (a Det target's triplet keeps other Det subsets of the same modality and area out).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cgmed.atomic import atomic_write_bytes
from cgmed.config import as_dict
from cgmed.data.audit import AuditReport, audit_split, record_overlaps
from cgmed.data.boxes import format_box
from cgmed.data.choices import canonical_label, format_question, instruction, label_parts, make_options
from cgmed.data.imaging import ImageConfig
from cgmed.data.record import Sample, rng_for
from cgmed.data.sampling import balance_rule, sample_balanced_test, sample_shots, sample_train
from cgmed.data.source import BadSamples, DataConfig, Source, SubsetIndex, open_source
from cgmed.data.split import SMALL_TEST_SET, SplitConfig, balanced_quota, resolve_ids, select_train
from cgmed.data.subsets import SubsetInfo
from cgmed.data.vocab import Vocabulary
from cgmed.errors import ConfigError, DataError

log = logging.getLogger(__name__)
MANIFESTS = ("train", "test", "seen_test", "shots")
OPTIONAL_MANIFESTS = ("shots",)  # written only when asked for (split.shots_per_label)
SPLIT_META = "split_meta.json"  # written last: a split with it is complete
# synth switches whose false value adds nothing to the world: kept out of its cache key, so a
# world has one folder whether or not its config spells them (and from before they existed)
SYNTH_SWITCHES_OFF_BY_DEFAULT = ("medmat_detection", "medmat_multi_label")


@dataclass
class Selection:
    """Which subsets one split reads: the result of :func:`select_subsets`."""

    targets: list[str]  # held-out subsets, in catalog order
    train: list[str]  # training subsets
    # split.match_size_of's selection: the training set draws as many samples as these subsets
    # give (after the per-subset cap); None when the size is not matched
    size_reference: list[str] | None = None

    def subset_ids(self) -> list[str]:
        """Every subset the split reads, each once: targets, training subsets, size reference."""
        return list(dict.fromkeys([*self.targets, *self.train, *(self.size_reference or [])]))


@dataclass
class TrainingQuotas:
    """How many samples each training subset gives, and the notes saying why."""

    per_subset: dict[str, int]
    notes: list[str] = field(default_factory=list)


@dataclass
class DrawnSamples:
    """Every sample of a split, in draw order (before questions are written and sorting)."""

    train: list[Sample]
    test: list[Sample]
    seen_test: list[Sample]
    shots: list[Sample]
    # training samples from the targets' own training portion (split.target_train_samples): the
    # leakage audit lets exactly these through its id and triplet checks
    target_train_ids: frozenset[str] = frozenset()
    notes: list[str] = field(default_factory=list)
    test_sets: dict[str, dict[str, Any]] = field(default_factory=dict)  # per target: describe_test_set()


@dataclass
class BuiltSplit:
    """One experiment's split, ready for :func:`write_split`."""

    train: list[Sample]
    test: list[Sample]
    seen_test: list[Sample]
    targets: list[str]
    train_subsets: list[str]
    audit: AuditReport
    bad: BadSamples
    notes: list[str] = field(default_factory=list)
    shots: list[Sample] = field(default_factory=list)
    asked: tuple[str, ...] = ()  # optional manifests the config asked for (written even when empty)
    test_sets: dict[str, dict[str, Any]] = field(default_factory=dict)  # per target: describe_test_set()


def select_subsets(source: Source, cfg: SplitConfig) -> Selection:
    """The targets, training subsets and size reference ``cfg`` names in ``source``'s catalog.

    Raises ConfigError, before any record is read, when a rule needs targets that are missing or
    when a rule (``related``, ``unrelated``, ``all``) selects nothing: an empty training manifest
    is asked for with ``split.train=none`` (the Baseline), never reached by accident.
    """
    subsets, vocab = source.subsets(), source.vocab
    targets = resolve_ids(cfg.targets, subsets, vocab, "split.targets", cfg.same_triplet)
    rule = cfg.train if isinstance(cfg.train, str) else None
    if rule in ("related", "unrelated") and not targets:
        raise ConfigError(
            "split.targets", f"split.train={rule} needs held-out targets", "set split.targets=[...]"
        )
    train = select_train(
        cfg.train, cfg.without, targets, subsets, vocab, cfg.train_status, same_triplet=cfg.same_triplet
    )
    if rule == "related" and not train:
        names = ", ".join(subsets[t].describe() for t in targets)
        raise ConfigError(
            "split.train",
            f"no subset in the data is related to the target(s) {names} (after split.without={cfg.without})",
            "choose another target, relax split.without / split.train_status, or list training subsets",
        )
    if rule in ("unrelated", "all") and not train:
        raise ConfigError(
            "split.train",
            f"the rule {rule!r} selects no subset (split.train_status={list(cfg.train_status)}); the "
            "training manifest would be empty",
            "relax split.train_status, list training subsets, or set split.train=none for no training data",
        )
    return Selection(targets, train, _size_reference(cfg, targets, subsets, vocab))


def _size_reference(
    cfg: SplitConfig, targets: Sequence[str], subsets: Mapping[str, SubsetInfo], vocab: Vocabulary
) -> list[str] | None:
    """The subsets ``split.match_size_of`` names (a selector, or ``{train: ..., without: [...]}``)."""
    spec = cfg.match_size_of
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        selector, without = spec.get("train", "related"), spec.get("without", [])
    else:
        selector, without = spec, []
    return select_train(
        selector, without, targets, subsets, vocab, cfg.train_status, "split.match_size_of", cfg.same_triplet
    )


def training_quotas(
    selection: Selection, indexes: Mapping[str, SubsetIndex], cfg: SplitConfig
) -> TrainingQuotas:
    """Samples per training subset: the label-balanced cap per subset (``split.cap_per_subset``),
    then spread evenly to match the size reference's total, then to ``split.max_train_samples``."""

    def capped(sid: str) -> int:
        counts = indexes[sid].label_counts("train")
        return sum(balanced_quota(counts, cfg.cap_per_subset).values())

    quotas = {sid: capped(sid) for sid in selection.train}
    notes: list[str] = []
    reference = selection.size_reference
    if reference is not None:
        wanted = sum(capped(sid) for sid in reference)
        have = sum(quotas.values())
        if have < wanted:
            raise ConfigError(
                "split.match_size_of",
                f"the training selection has {have} samples (after the cap of {cfg.cap_per_subset} per subset) "
                f"but must match {wanted} from {reference}",
                "raise split.cap_per_subset, widen split.train, or add data",
            )
        quotas = balanced_quota(quotas, wanted)
        notes.append(f"size matched to {wanted} samples of {reference}")
    if cfg.max_train_samples is not None and sum(quotas.values()) > cfg.max_train_samples:
        quotas = balanced_quota(quotas, cfg.max_train_samples)
        notes.append(f"training set capped at {cfg.max_train_samples} samples")
    return TrainingQuotas(quotas, notes)


def draw_samples(
    source: Source,
    indexes: Mapping[str, SubsetIndex],
    selection: Selection,
    quotas: Mapping[str, int],
    cfg: SplitConfig,
    bad: BadSamples,
) -> DrawnSamples:
    """Every sample of the split: training samples by quota, the targets' own training samples
    (``split.target_train_samples``), the targets' balanced test sets, in-context examples
    (``split.shots_per_label``) and the trained-on subsets' test sets (``split.seen_test``).

    Records are read in that order, so bad samples are reported in the same order on every build.
    """
    targets = selection.targets
    train: list[Sample] = []
    for sid in selection.train:
        if quotas.get(sid, 0) > 0:
            train += sample_train(source, indexes[sid], quotas[sid], cfg.seed, bad)
    notes: list[str] = []
    own: list[Sample] = []
    if cfg.target_train_samples:
        for sid in targets:
            # the target's training portion only: its test portion is what gets scored
            own += sample_train(source, indexes[sid], cfg.target_train_samples, cfg.seed, bad)
        notes.append(
            f"{len(own)} samples of the targets' own training portion added (split.target_train_samples)"
        )
    own_ids = frozenset(s.id for s in own)
    test = _draw_target_tests(source, indexes, targets, cfg, bad)
    test_sets = {
        sid: describe_test_set(sid, indexes[sid], [s for s in test if s.subset == sid]) for sid in targets
    }
    notes += [info["warning"] for info in test_sets.values() if "warning" in info]
    shots: list[Sample] = []
    if cfg.shots_per_label:
        for sid in targets:
            # never an example the model trains on (split.target_train_samples draws from the same portion)
            shots += sample_shots(source, indexes[sid], cfg.shots_per_label, cfg.seed, bad, exclude=own_ids)
        notes.append(f"{len(shots)} in-context examples of the targets' training portion in shots.jsonl")
    seen: list[Sample] = []
    if cfg.seen_test:
        for sid in selection.train:
            if sid not in targets:
                seen += sample_balanced_test(
                    source, indexes[sid], cfg.test_per_label, cfg.seed, bad, cfg.min_test_samples
                )
    return DrawnSamples(train + own, test, seen, shots, own_ids, notes, test_sets)


def _draw_target_tests(
    source: Source,
    indexes: Mapping[str, SubsetIndex],
    targets: Sequence[str],
    cfg: SplitConfig,
    bad: BadSamples,
) -> list[Sample]:
    """The targets' label-balanced test sets (each under its subset's rule, ``SplitConfig``); a
    target without test samples is an error."""
    test: list[Sample] = []
    for sid in targets:
        got = sample_balanced_test(
            source, indexes[sid], cfg.test_per_label, cfg.seed, bad, cfg.min_test_samples
        )
        if not got:
            raise DataError(
                f"target subset {source.subsets()[sid].describe()}",
                "has no test samples",
                "add a Subset--NN-test.json, or pick another target",
            )
        test += got
    return test


def describe_test_set(sid: str, idx: SubsetIndex, test: Sequence[Sample]) -> dict[str, Any]:
    """``split_meta.json``'s ``test_sets`` entry of one target: its balance rule, size, individual
    label counts and, under ``SMALL_TEST_SET`` questions, a warning (also printed by the build)."""
    individual = Counter(part for s in test for part in label_parts(s.label))
    info: dict[str, Any] = {
        "test_balance": balance_rule(idx),
        "n": len(test),
        "individual_labels": dict(sorted(individual.items())),
    }
    if len(test) < SMALL_TEST_SET:
        info["warning"] = (
            f"target {sid} has {len(test)} test questions, fewer than {SMALL_TEST_SET}: too small to tell "
            "arms apart (add test data, or pick another target)"
        )
        log.warning(info["warning"])
    return info


def write_question(sample: Sample, subset_labels: list[str], cfg: SplitConfig) -> None:
    """Give ``sample`` its final prompt: keep the source's options, or build them from the label.

    A detection sample keeps its instruction; only its answer is rewritten as ``format_box(box)``
    so that every box answer a model trains on has one spelling.
    """
    if sample.box is not None:
        sample.answer = format_box(sample.box)
        return
    if sample.options and cfg.options.mode == "keep":
        sample.question = format_question(sample.question, sample.options)
        return
    rng = rng_for(cfg.seed, "question", sample.id)
    try:
        options, letter = make_options(
            sample.label, subset_labels, rng, max_options=cfg.options.max_options, order=cfg.options.order
        )
    except ValueError as err:
        raise DataError(
            f"subset {sample.subset}", f"cannot write a multiple-choice question for {sample.id}: {err}"
        ) from None
    # the label in its canonical spelling, as the options write it
    sample.label, sample.options, sample.answer = canonical_label(sample.label), options, letter
    sample.question = format_question(instruction(sample.task, sample.modality, sample.area, rng), options)


def write_questions(drawn: DrawnSamples, indexes: Mapping[str, SubsetIndex], cfg: SplitConfig) -> None:
    """Every drawn sample gets its final prompt (:func:`write_question`), options from its subset's labels."""
    for samples in (drawn.train, drawn.test, drawn.seen_test, drawn.shots):
        for s in samples:
            write_question(s, indexes[s.subset].labels, cfg)


def audit_drawn(
    source: Source,
    indexes: Mapping[str, SubsetIndex],
    selection: Selection,
    drawn: DrawnSamples,
    cfg: SplitConfig,
) -> AuditReport:
    """The leakage audit of the drawn split (:func:`cgmed.data.audit.audit_split`)."""
    subsets = source.subsets()
    return audit_split(
        drawn.train,
        drawn.test,
        [subsets[t] for t in selection.targets],
        drawn.seen_test,
        check_images=cfg.audit_images,
        allowed_target_train=drawn.target_train_ids,
        shots=drawn.shots,
        shared_records=record_overlaps(indexes, selection.targets, selection.train),
    )


def _sort(samples: list[Sample]) -> list[Sample]:
    return sorted(samples, key=lambda s: (s.subset, s.id))


def build_split(
    source: Source, data_cfg: DataConfig, cfg: SplitConfig, selection: Selection | None = None
) -> BuiltSplit:
    """Select, index, quota, draw, write questions and audit one experiment's split (module docstring).

    ``selection`` is what :func:`select_subsets` gives for ``cfg``, when the caller has it already
    (``cgmed-cg`` selects while it plans each target). Bad samples stop the build after indexing
    and after drawing unless ``data.on_bad_sample=skip``.
    """
    selection = selection or select_subsets(source, cfg)
    bad = BadSamples(data_cfg.max_bad_examples)
    indexes = {sid: source.index(sid, bad) for sid in selection.subset_ids()}
    bad.raise_if_any(data_cfg.on_bad_sample)
    quotas = training_quotas(selection, indexes, cfg)
    drawn = draw_samples(source, indexes, selection, quotas.per_subset, cfg, bad)
    bad.raise_if_any(data_cfg.on_bad_sample)
    write_questions(drawn, indexes, cfg)
    report = audit_drawn(source, indexes, selection, drawn, cfg)
    return BuiltSplit(
        train=_sort(drawn.train),
        test=_sort(drawn.test),
        seen_test=_sort(drawn.seen_test),
        targets=selection.targets,
        train_subsets=selection.train,
        audit=report,
        bad=bad,
        notes=quotas.notes + drawn.notes,
        shots=_sort(drawn.shots),
        asked=("shots",) if cfg.shots_per_label else (),
        test_sets=drawn.test_sets,
    )


def _counts(samples: list[Sample]) -> dict[str, dict[str, int]]:
    out: dict[str, Counter] = {}
    for s in samples:
        out.setdefault(s.subset, Counter())[canonical_label(s.label)] += 1
    return {sid: dict(sorted(c.items())) for sid, c in sorted(out.items())}


def write_split(
    built: BuiltSplit, out_dir: str | Path, config: Mapping[str, Any], source: Source
) -> dict[str, Any]:
    """Write the manifests and ``split_meta.json``; returns the meta dict.

    Every file is written atomically (:mod:`cgmed.atomic`), and ``split_meta.json``, which
    ``cgmed-cg`` takes as the mark of a finished split, is removed first and written last: a
    write that stops half-way leaves no split that passes for finished.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SPLIT_META).unlink(missing_ok=True)
    digests = {}
    content = hashlib.sha256()
    names = [n for n in MANIFESTS if n not in OPTIONAL_MANIFESTS or n in built.asked]
    for n in OPTIONAL_MANIFESTS:
        if n not in names:
            (out / f"{n}.jsonl").unlink(missing_ok=True)  # a rebuild must not leave an older pool behind
    for name in names:
        samples = getattr(built, name)
        blob = "".join(json.dumps(s.to_json(), ensure_ascii=False) + "\n" for s in samples).encode("utf-8")
        atomic_write_bytes(out / f"{name}.jsonl", blob)
        digests[f"{name}.jsonl"] = hashlib.sha256(blob).hexdigest()
        content.update(blob)
    subsets = source.subsets()
    meta = {
        "format": "cgmed-split/1",
        "config": as_dict(dict(config)),
        "data_root": str(source.root),
        "targets": [subsets[t].to_json() for t in built.targets],
        "train_subsets": [subsets[t].to_json() for t in built.train_subsets],
        "sizes": {name: len(getattr(built, name)) for name in names},
        "counts": {name: _counts(getattr(built, name)) for name in names},
        "test_sets": built.test_sets,
        "notes": built.notes,
        "audit": built.audit.to_json(),
        "bad_samples": built.bad.summary(),
        # how images were checked here and must be converted in training (the image group)
        "image": (source.image_cfg or ImageConfig()).describe(),
        "files": digests,
        "content_hash": content.hexdigest(),
    }
    atomic_write_bytes(
        out / SPLIT_META, (json.dumps(meta, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    )
    return meta


def resolve_root(data_cfg: DataConfig, synth_cfg: Any | None = None) -> Path:
    """``data.root``, or when it is null the synthetic world (generated once into ``data.cache_dir``),
    or for ``data.format=hf`` the working directory."""
    if data_cfg.root is not None:
        return Path(data_cfg.root).expanduser().resolve()
    if data_cfg.format == "hf":  # the datasets name their own paths; relative ones start here
        return Path.cwd()
    from cgmed.data.synth import SynthConfig, write_release

    synth_cfg = synth_cfg or SynthConfig()
    fields = as_dict(synth_cfg)
    for switch in SYNTH_SWITCHES_OFF_BY_DEFAULT:
        if isinstance(fields, dict) and fields.get(switch) is False:
            del fields[switch]
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(data_cfg.cache_dir).expanduser().resolve() / f"synth-{key}"
    if not (root / "cgmed_catalog.json").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
        write_release(synth_cfg, tmp)
        try:
            os.replace(tmp, root)
        except OSError:  # another process finished first; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("generated the synthetic MAT world in %s", root)
    return root


def build_from_config(
    data_cfg: DataConfig,
    split_cfg: SplitConfig,
    synth_cfg: Any,
    out_dir: str | Path,
    image: ImageConfig | None = None,
) -> dict:
    """Config -> source -> split -> files. The CLI's one call; ``image`` (the image group) is how
    the build's image checks convert images, as training will."""
    root = resolve_root(data_cfg, synth_cfg)
    source = open_source(data_cfg, root, image)
    built = build_split(source, data_cfg, split_cfg)
    config = {"data": {**as_dict(data_cfg), "root": str(root)}, "split": as_dict(split_cfg)}
    return write_split(built, out_dir, config, source)
