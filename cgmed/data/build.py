"""Build one experiment's train and test sets: select, sample, write questions, audit, write.

``build_split`` is the library entry point behind ``cgmed-data build``. Same source, config
and seed give byte-identical ``train.jsonl`` / ``test.jsonl`` / ``seen_test.jsonl`` (and
``shots.jsonl``, the in-context examples of ``split.shots_per_label``) and ``split_meta.json``: every random draw uses an RNG keyed by (seed, subset, label, purpose).

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
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cgmed.config import as_dict
from cgmed.data.audit import AuditReport, audit_split
from cgmed.data.boxes import format_box
from cgmed.data.choices import format_question, instruction, make_options
from cgmed.data.record import Sample, rng_for
from cgmed.data.source import BadSamples, DataConfig, Source, SubsetIndex, open_source
from cgmed.data.split import SplitConfig, balanced_quota, resolve_ids, select_train
from cgmed.errors import ConfigError, DataError

log = logging.getLogger(__name__)
MANIFESTS = ("train", "test", "seen_test", "shots")
OPTIONAL_MANIFESTS = ("shots",)  # written only when asked for (split.shots_per_label)


@dataclass
class BuiltSplit:
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


def _take(source: Source, idx: SubsetIndex, candidates: list[int], k: int, bad: BadSamples) -> list[Sample]:
    """The first ``k`` usable samples of ``candidates`` (a seeded permutation); bad ones are replaced."""
    out: list[Sample] = []
    start = 0
    while len(out) < k and start < len(candidates):
        batch = candidates[start : start + (k - len(out))]
        start += len(batch)
        out.extend(s for _, s in source.load_checked(idx, batch, bad))
    return out


def _by_label(idx: SubsetIndex, split: str, seed: int, purpose: str) -> dict[str, list[int]]:
    """Positions of each label in ``split``, each list in its own seeded random order."""
    groups: dict[str, list[int]] = {}
    for pos in idx.positions(split):
        groups.setdefault(idx.labels[idx.label_id[pos]], []).append(pos)
    for label, positions in groups.items():
        rng_for(seed, purpose, idx.info.id, label).shuffle(positions)
    return dict(sorted(groups.items()))


def sample_train(source: Source, idx: SubsetIndex, quota: int, seed: int, bad: BadSamples) -> list[Sample]:
    """``quota`` training samples of one subset, labels as balanced as availability allows."""
    groups = _by_label(idx, "train", seed, "train")
    per_label = balanced_quota({lab: len(p) for lab, p in groups.items()}, quota)
    out: list[Sample] = []
    for label, positions in groups.items():
        out += _take(source, idx, positions, per_label[label], bad)
    return out


def sample_shots(
    source: Source,
    idx: SubsetIndex,
    per_label: int,
    seed: int,
    bad: BadSamples,
    exclude: frozenset[str] = frozenset(),
) -> list[Sample]:
    """Up to ``per_label`` samples of each label of a subset's training portion (in-context
    examples), none of the ``exclude`` ids (samples already trained on)."""
    out: list[Sample] = []
    for positions in _by_label(idx, "train", seed, "shots").values():
        got: list[Sample] = []
        start = 0
        while len(got) < per_label and start < len(positions):
            batch = positions[start : start + per_label - len(got)]
            start += len(batch)
            got += [s for s in _take(source, idx, batch, len(batch), bad) if s.id not in exclude]
        out += got
    return out


def record_overlaps(
    indexes: Mapping[str, SubsetIndex], targets: list[str], train_ids: list[str]
) -> dict[str, tuple[str, int]]:
    """Training subsets that hold records of a target: derived subsets cut from the same parent
    records (a parent and its child, or siblings whose shares overlap). Only subsets with a common
    root are compared, so plain releases cost nothing."""

    def root(sid: str) -> str:
        return indexes[sid].info.derived_from or sid

    def records(sid: str) -> set[tuple[str, int]]:
        idx = indexes[sid]
        return {(str(idx.files[idx.file_id[p]]), idx.offset[p]) for p in range(len(idx))}

    out: dict[str, tuple[str, int]] = {}
    for t in targets:
        for sid in train_ids:
            if sid != t and sid not in out and root(sid) == root(t):
                shared = len(records(sid) & records(t))
                if shared:
                    out[sid] = (t, shared)
    return out


def sample_balanced_test(
    source: Source, idx: SubsetIndex, per_label_cap: int | None, seed: int, bad: BadSamples
) -> list[Sample]:
    """A strictly label-balanced test set: the same count for every label, as large as allowed."""
    groups = _by_label(idx, "test", seed, "test")
    if not groups:
        return []
    n = min(len(p) for p in groups.values())
    if per_label_cap is not None:
        n = min(n, per_label_cap)
    picked = {lab: _take(source, idx, pos, n, bad) for lab, pos in groups.items()}
    n = min(len(v) for v in picked.values())  # a bad image may leave a label short: keep balance
    return [s for lab in picked for s in picked[lab][:n]]


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
    sample.options, sample.answer = options, letter
    sample.question = format_question(instruction(sample.task, sample.modality, sample.area, rng), options)


def _sort(samples: list[Sample]) -> list[Sample]:
    return sorted(samples, key=lambda s: (s.subset, s.id))


def build_split(source: Source, data_cfg: DataConfig, cfg: SplitConfig) -> BuiltSplit:
    """Select, sample, write questions and audit one experiment's split (see module docstring)."""
    vocab = source.vocab
    subsets = source.subsets()
    targets = resolve_ids(cfg.targets, subsets, vocab, "split.targets")
    rule = cfg.train if isinstance(cfg.train, str) else None
    if rule in ("related", "unrelated") and not targets:
        raise ConfigError(
            "split.targets", f"split.train={rule} needs held-out targets", "set split.targets=[...]"
        )
    train_ids = select_train(cfg.train, cfg.without, targets, subsets, vocab, cfg.train_status)
    if rule == "related" and not train_ids:
        names = ", ".join(subsets[t].describe() for t in targets)
        raise ConfigError(
            "split.train",
            f"no subset in the data is related to the target(s) {names} (after split.without={cfg.without})",
            "choose another target, relax split.without / split.train_status, or list training subsets",
        )
    ref_ids: list[str] = []
    ref_spec = cfg.match_size_of
    if ref_spec is not None:
        ref_sel, ref_without = (
            (ref_spec.get("train", "related"), ref_spec.get("without", []))
            if isinstance(ref_spec, Mapping)
            else (ref_spec, [])
        )
        ref_ids = select_train(
            ref_sel, ref_without, targets, subsets, vocab, cfg.train_status, "split.match_size_of"
        )

    bad = BadSamples(data_cfg.max_bad_examples)
    indexes: dict[str, SubsetIndex] = {}
    for sid in dict.fromkeys([*targets, *train_ids, *ref_ids]):
        indexes[sid] = source.index(sid, bad)
    bad.raise_if_any(data_cfg.on_bad_sample)

    def capped(sid: str) -> int:
        counts = indexes[sid].label_counts("train")
        return sum(balanced_quota(counts, cfg.cap_per_subset).values())

    quotas = {sid: capped(sid) for sid in train_ids}
    notes: list[str] = []
    if ref_spec is not None:
        wanted = sum(capped(sid) for sid in ref_ids)
        have = sum(quotas.values())
        if have < wanted:
            raise ConfigError(
                "split.match_size_of",
                f"the training selection has {have} samples (after the cap of {cfg.cap_per_subset} per subset) "
                f"but must match {wanted} from {ref_ids}",
                "raise split.cap_per_subset, widen split.train, or add data",
            )
        quotas = balanced_quota(quotas, wanted)
        notes.append(f"size matched to {wanted} samples of {ref_ids}")
    if cfg.max_train_samples is not None and sum(quotas.values()) > cfg.max_train_samples:
        quotas = balanced_quota(quotas, cfg.max_train_samples)
        notes.append(f"training set capped at {cfg.max_train_samples} samples")

    train: list[Sample] = []
    for sid in train_ids:
        if quotas.get(sid, 0) > 0:
            train += sample_train(source, indexes[sid], quotas[sid], cfg.seed, bad)
    allowed: frozenset[str] = frozenset()
    if cfg.target_train_samples:
        own = []
        for sid in targets:
            # the target's training portion only: its test portion is what gets scored
            own += sample_train(source, indexes[sid], cfg.target_train_samples, cfg.seed, bad)
        train += own
        allowed = frozenset(s.id for s in own)
        notes.append(
            f"{len(own)} samples of the targets' own training portion added (split.target_train_samples)"
        )
    test: list[Sample] = []
    for sid in targets:
        got = sample_balanced_test(source, indexes[sid], cfg.test_per_label, cfg.seed, bad)
        if not got:
            raise DataError(
                f"target subset {subsets[sid].describe()}",
                "has no test samples",
                "add a Subset--NN-test.json, or pick another target",
            )
        test += got
    shots: list[Sample] = []
    for sid in targets if cfg.shots_per_label else ():
        # never an example the model trains on (split.target_train_samples draws from the same portion)
        shots += sample_shots(source, indexes[sid], cfg.shots_per_label, cfg.seed, bad, exclude=allowed)
    if cfg.shots_per_label:
        notes.append(f"{len(shots)} in-context examples of the targets' training portion in shots.jsonl")
    seen: list[Sample] = []
    if cfg.seen_test:
        for sid in train_ids:
            if sid not in targets:
                seen += sample_balanced_test(source, indexes[sid], cfg.test_per_label, cfg.seed, bad)
    bad.raise_if_any(data_cfg.on_bad_sample)

    for samples in (train, test, seen, shots):
        for s in samples:
            write_question(s, indexes[s.subset].labels, cfg)
    report = audit_split(
        train,
        test,
        [subsets[t] for t in targets],
        seen,
        check_images=cfg.audit_images,
        allowed_target_train=allowed,
        shots=shots,
        shared_records=record_overlaps(indexes, targets, train_ids),
    )
    asked = ("shots",) if cfg.shots_per_label else ()
    return BuiltSplit(
        _sort(train), _sort(test), _sort(seen), targets, train_ids, report, bad, notes, _sort(shots), asked
    )


def _counts(samples: list[Sample]) -> dict[str, dict[str, int]]:
    out: dict[str, Counter] = {}
    for s in samples:
        out.setdefault(s.subset, Counter())[s.label] += 1
    return {sid: dict(sorted(c.items())) for sid, c in sorted(out.items())}


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def write_split(
    built: BuiltSplit, out_dir: str | Path, config: Mapping[str, Any], source: Source
) -> dict[str, Any]:
    """Write the manifests and ``split_meta.json``; returns the meta dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digests = {}
    content = hashlib.sha256()
    names = [n for n in MANIFESTS if n not in OPTIONAL_MANIFESTS or n in built.asked]
    for n in OPTIONAL_MANIFESTS:
        if n not in names:
            (out / f"{n}.jsonl").unlink(missing_ok=True)  # a rebuild must not leave an older pool behind
    for name in names:
        samples = getattr(built, name)
        blob = "".join(json.dumps(s.to_json(), ensure_ascii=False) + "\n" for s in samples).encode("utf-8")
        _atomic_write(out / f"{name}.jsonl", blob)
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
        "notes": built.notes,
        "audit": built.audit.to_json(),
        "bad_samples": built.bad.summary(),
        "files": digests,
        "content_hash": content.hexdigest(),
    }
    _atomic_write(
        out / "split_meta.json", (json.dumps(meta, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    )
    return meta


def resolve_root(data_cfg: DataConfig, synth_cfg: Any | None = None) -> Path:
    """``data.root``, or the synthetic world (generated once into ``data.cache_dir``) when it is null."""
    if data_cfg.root is not None:
        return Path(data_cfg.root).expanduser().resolve()
    from cgmed.data.synth import SynthConfig, write_release

    synth_cfg = synth_cfg or SynthConfig()
    fields = as_dict(synth_cfg)
    if isinstance(fields, dict) and fields.get("medmat_detection") is False:
        del fields["medmat_detection"]  # worlds cached before the flag existed keep their folder
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(data_cfg.cache_dir).expanduser().resolve() / f"synth-{key}"
    if not (root / "cgmed_catalog.json").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
        write_release(synth_cfg, tmp)
        try:
            os.replace(tmp, root)
        except OSError:  # another process finished first; its copy is identical
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        log.info("generated the synthetic MAT world in %s", root)
    return root


def build_from_config(
    data_cfg: DataConfig, split_cfg: SplitConfig, synth_cfg: Any, out_dir: str | Path
) -> dict:
    """Config -> source -> split -> files. The CLI's one call."""
    root = resolve_root(data_cfg, synth_cfg)
    source = open_source(data_cfg, root)
    built = build_split(source, data_cfg, split_cfg)
    config = {"data": {**as_dict(data_cfg), "root": str(root)}, "split": as_dict(split_cfg)}
    return write_split(built, out_dir, config, source)
