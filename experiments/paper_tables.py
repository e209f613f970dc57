"""Write ``cgmed/conf/experiment/paper/*.yaml``, the paper's experiments as ``cgmed-cg`` configs.

    python experiments/paper_tables.py            # (re)write the files
    python experiments/paper_tables.py --check    # exit 1 if a file differs from what this writes

The rows, the paper's numbers and every inferred choice with its reason are data, in
``experiments/paper/*.yaml`` (their format is described in experiments/README.md; the reasons
are explained in docs/paper.md). This script turns them into configs: it fills the text
templates, resolves each Related source to the subsets it names under the config's
``split.same_triplet`` (shown in a comment beside it) and writes the files with ruamel.yaml,
which can attach those comments.

A printed name stands for a MAT triplet, so a source is a MAT pattern whenever its triplet is
shared by several subsets (14/15, 16/34, 18/20, 25/35, 27/36, 29/37): ``split.same_triplet``
then decides, in every config alike, whether it takes all of them (``merge``) or the lowest id
(``first``). A source given by the id of such a subset is refused.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from string import Template
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.scalarstring import FoldedScalarString
from ruamel.yaml.tokens import CommentToken

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "experiments" / "paper"
OUT = REPO / "cgmed" / "conf" / "experiment" / "paper"
sys.path.insert(0, str(REPO))

from cgmed.data.split import resolve_ids  # noqa: E402
from cgmed.data.subsets import MEDMAT_SUBSETS  # noqa: E402
from cgmed.data.vocab import Vocabulary  # noqa: E402
from cgmed.errors import ConfigError  # noqa: E402

VOCAB = Vocabulary()
# Related sources may name detection subsets (Tables 5, 13/14); MAT patterns never match them
# by accident, since their task is Det.
SELECTABLE = {sid: info for sid, info in MEDMAT_SUBSETS.items() if info.status in ("ID", "OOD", "det")}
FOLD_WIDTH = 100  # long strings (cg.note) are written folded (>-) at this width


@dataclass
class Source:
    """One Related source as the paper names it: a MAT pattern or a subset id, and why."""

    name: str
    select: Any
    why: str = ""


@dataclass
class Target:
    """The held-out subset of a row, the name the paper prints for it, and why this id."""

    id: str
    name: str = ""
    why: str = ""


@dataclass
class Row:
    """One ``cg.targets`` entry, with the comment lines written above it."""

    name: str = ""
    row: int | None = None  # the Table 3 row number (Table 3 rows only)
    from_table3: int | None = None  # reuse that Table 3 row's target, Related data and notes
    title: str = ""  # template of the first comment line; the config's `title` by default
    group: str | None = None
    fixed: str | None = None  # the fixed element, when the paper prints it (Table 3)
    cg: bool | None = None  # the paper's CG mark (Table 3)
    target: Target | None = None
    related: list[Source] | str = field(default_factory=list)
    without: list[str] = field(default_factory=list)
    paper: dict[str, Any] = field(default_factory=dict)
    paper_from_table3: list[str] = field(default_factory=list)
    paper_also: dict[str, Any] = field(default_factory=dict)  # numbers shown in the title only
    paper_few_shot: dict[str, dict[int, Any]] | None = None
    notes: list[str] = field(default_factory=list)
    note: str = ""  # cg.targets[i].note: printed beside the row by the dry run and the report


@dataclass
class Config:
    """One output file: header, settings, their end-of-line comments and the targets."""

    header: str
    base: str | None = None  # a base file included through `defaults`
    fields: dict[str, Any] = field(default_factory=dict)  # values for the $templates
    settings: dict[str, Any] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)  # dotted key -> end-of-line comment
    subset_keys: str | None = None  # a mapping keyed by subset id: comment each with its triplet
    title: str = ""
    table3_group: str | None = None  # the targets are Table 3's rows of this group
    targets: list[Row] = field(default_factory=list)


def typed(cls: type, spec: Any, where: str) -> Any:
    """A dataclass from a data-file mapping; an unknown key names the file and the known keys."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(where, f"unknown key(s) {unknown}", f"use one of {sorted(known)}")
    return cls(**spec)


def parse_row(spec: dict, where: str) -> Row:
    row = typed(Row, dict(spec), where)
    if row.target is not None:
        row.target = typed(Target, row.target, f"{where}.target")
    if not isinstance(row.related, str):
        row.related = [typed(Source, s, f"{where}.related[{i}]") for i, s in enumerate(row.related)]
    return row


def load_data() -> tuple[dict[str, Config], dict[int, Row]]:
    """Every data file's configs and Table 3's rows (by row number)."""
    configs: dict[str, Config] = {}
    table3: dict[int, Row] = {}
    for path in sorted(DATA.glob("*.yaml")):
        where = os.path.relpath(path, REPO)
        doc = YAML().load(path)  # round trip: numbers keep their spelling (5e-6 stays 5e-6)
        for spec in doc.get("table3_rows", []):
            table3[spec["row"]] = parse_row(spec, f"{where}: row {spec['row']}")
        for name, spec in doc.get("configs", {}).items():
            if name in configs:
                raise ConfigError(f"{where}: {name}", "the config is defined twice", "keep one definition")
            config = typed(Config, dict(spec), f"{where}: {name}")
            config.targets = [
                parse_row(r, f"{where}: {name}.targets[{i}]") for i, r in enumerate(config.targets)
            ]
            configs[name] = config
    for n, row in table3.items():
        row.name = f"t3_row{n:02d}"
    return configs, table3


def number(value: Any) -> int | float:
    """The paper's number as the configs hold it: 49.00 is written 49."""
    return int(value) if float(value).is_integer() else float(value)


def numbers(table: dict) -> dict:
    """A mapping of the paper's numbers (nested or not) with each number as number() writes it."""
    return {key: numbers(v) if isinstance(v, dict) else number(v) for key, v in table.items()}


def fill(text: str, values: dict[str, Any], where: str) -> str:
    """``text`` with its $placeholders replaced; an unknown one names where it was written."""
    try:
        return Template(str(text)).substitute(values)
    except KeyError as missing:
        raise ConfigError(
            where, f"unknown placeholder ${missing.args[0]}", f"use one of {sorted(values)}"
        ) from None


def triplet(sid: str) -> str:
    """``'04'`` -> ``'CT Lung Cancer'``."""
    return " ".join(MEDMAT_SUBSETS[sid].triplet)


def resolved(row: Row, table3: dict[int, Row], where: str) -> tuple[Row, Row | None]:
    """A row with what it reuses from Table 3 filled in, and that Table 3 row."""
    if row.from_table3 is None:
        if row.target is None:
            raise ConfigError(where, "the row has no target", "give `target: {id: ...}` or `from_table3: N`")
        return row, None
    if row.from_table3 not in table3:
        raise ConfigError(where, f"from_table3: {row.from_table3} is not a Table 3 row", "use 1-43")
    source = table3[row.from_table3]
    paper = {key: source.paper[key] for key in row.paper_from_table3} | dict(row.paper)
    own = {
        "name": row.name,
        "title": row.title,
        "paper": paper,
        "paper_few_shot": row.paper_few_shot,
        "note": row.note,
    }
    return replace(source, **own), source


def title_values(row: Row, source: Row | None, index: int) -> dict[str, Any]:
    """The $placeholders a row's title may use (experiments/README.md lists them)."""
    related = row.related if isinstance(row.related, str) else " + ".join(s.name for s in row.related)
    values = {
        "index": index,
        "row": row.row,
        "group": row.group,
        "where": f"{row.group} {row.fixed}" if row.fixed else row.group,
        "cg": "yes" if row.cg else "no",
        "printed": f"{related} -> {row.target.name}",
    }
    values |= {key: number(v) for key, v in (row.paper | row.paper_also).items()}
    if source is not None:
        values |= {f"t3_{key}": number(v) for key, v in source.paper.items()}
    return values


def same_triplet_of(name: str, config: Config, configs: dict[str, Config]) -> str:
    """The ``split.same_triplet`` a config runs with: its own setting, else its base's."""
    for holder in (config, configs.get(config.base or "")):
        rule = (holder.settings.get("split") or {}).get("same_triplet") if holder else None
        if rule is not None:
            return str(rule)
    raise ConfigError(
        f"{name}.settings.split.same_triplet",
        "is set neither by the config nor by its base",
        "set it in the base (setups.yaml): every paper config reads same-triplet names one way",
    )


def siblings(sid: str) -> list[str]:
    """The other classification subsets with ``sid``'s MAT triplet.

    Detection subsets of one triplet detect different findings (the paper names them by finding:
    "Lung Det", "Spinal Error Det"; the triplet's task is only ``Det``), so an id may name one of
    them; a classification name is a triplet."""
    if SELECTABLE[sid].status == "det":
        return []
    mine = MEDMAT_SUBSETS[sid].triplet
    return [other for other, v in SELECTABLE.items() if other != sid and v.triplet == mine]


def same_triplet_note(ids: list[str], same_triplet: str) -> str:
    """What ``split.same_triplet`` did to a pattern's subsets, when a matched triplet has several."""
    shared = [sid for sid in ids if siblings(sid)]
    if not shared:
        return ""
    if same_triplet == "merge":
        return " (same triplet, merged: split.same_triplet=merge)"
    groups = ", ".join("/".join(sorted([sid, *siblings(sid)])) for sid in shared)
    return f" (the lowest id of {groups}: split.same_triplet=first)"


def source_node(source: Source, same_triplet: str, where: str) -> tuple[Any, str]:
    """A Related entry and its comment: the name as printed -> the subsets it takes; why."""
    entry = node(dict(source.select), depth=5) if isinstance(source.select, dict) else str(source.select)
    text = source.name
    if isinstance(entry, str) and entry in SELECTABLE and siblings(entry):
        raise ConfigError(
            where,
            f"{source.name!r} is given by the id {entry}, whose triplet {triplet(entry)} subsets "
            f"{', '.join(siblings(entry))} share",
            "write the MAT pattern, so that split.same_triplet decides which of them it takes",
        )
    if isinstance(entry, dict) or entry in SELECTABLE:  # not a derived subset (data.derived)
        ids = resolve_ids([entry], SELECTABLE, VOCAB, source.name, same_triplet)
        text += (
            " -> " + ", ".join(f"{sid} {triplet(sid)}" for sid in ids) + same_triplet_note(ids, same_triplet)
        )
    return entry, text + (f"; {source.why}" if source.why else "")


def target_node(row: Row, title: str, same_triplet: str, where: str) -> CommentedMap:
    """One ``cg.targets`` entry, its title, target and notes as comment lines above it."""
    target = row.target
    described = target.id  # a derived subset (data.derived) is not in the subset table
    if target.id in MEDMAT_SUBSETS:
        described += f" {triplet(target.id)} ({MEDMAT_SUBSETS[target.id].status})"
    lines = [title, f"target {described}: {target.why}"]
    entry = CommentedMap(name=row.name)
    if row.group:
        entry["group"] = row.group
    entry["target"] = target.id
    entry.yaml_set_comment_before_after_key(list(entry)[1], before="\n".join(lines + row.notes), indent=6)
    if isinstance(row.related, str):
        entry["related"] = row.related  # a rule: related, unrelated, all
    else:
        entry["related"] = CommentedSeq()
        for i, source in enumerate(row.related):
            value, comment = source_node(source, same_triplet, f"{where}.related[{i}]")
            entry["related"].append(value)
            end_comment(entry["related"], i, comment)
    if row.without:
        entry["without"] = node(list(row.without), depth=4)
    entry["paper"] = node(numbers(row.paper), depth=4)
    if row.paper_few_shot:
        entry["paper_few_shot"] = node(numbers(row.paper_few_shot), depth=4)
    if row.note:
        entry["note"] = node(str(row.note), depth=4)
    return entry


def node(value: Any, depth: int) -> Any:
    """Data -> a ruamel node; lists of scalars and leaf mappings deep in the file in flow style."""
    if isinstance(value, dict):
        out = CommentedMap((key, node(v, depth + 1)) for key, v in value.items())
        if depth >= 3 and not any(isinstance(v, (dict, list)) for v in value.values()):
            out.fa.set_flow_style()
        return out
    if isinstance(value, list):
        out = CommentedSeq(node(v, depth + 1) for v in value)
        if depth >= 2 and not any(isinstance(v, (dict, list)) for v in value):
            out.fa.set_flow_style()
        return out
    if isinstance(value, str) and len(value) > FOLD_WIDTH:
        return FoldedScalarString(value)  # written as >- lines of FOLD_WIDTH; loads back unchanged
    return value


def filled(value: Any, values: dict[str, Any], where: str) -> Any:
    """Every string in ``value`` with its $placeholders replaced."""
    if isinstance(value, dict):
        return {key: filled(v, values, f"{where}.{key}") for key, v in value.items()}
    if isinstance(value, list):
        return [filled(v, values, f"{where}[{i}]") for i, v in enumerate(value)]
    return fill(value, values, where) if isinstance(value, str) else value


def end_comment(parent: CommentedMap | CommentedSeq, key: Any, text: str) -> None:
    """Write ``  # text`` at the end of ``parent[key]``'s line."""
    # ruamel's public yaml_add_eol_comment leaves a single space before '#': the token's own
    # leading space makes the usual two.
    parent._yaml_add_eol_comment([CommentToken(f" # {text}", CommentMark(0)), None], key=key)


def lookup(doc: CommentedMap, dotted: str, where: str) -> tuple[Any, Any]:
    """The container and key that ``a.b.0.c`` names in ``doc``."""
    *path, last = dotted.split(".")
    parent = doc
    try:
        for key in path:
            parent = parent[int(key) if isinstance(parent, list) else key]
        key = int(last) if isinstance(parent, list) else last
        parent[key]
    except (KeyError, IndexError, ValueError, TypeError):
        raise ConfigError(
            where,
            f"comment for {dotted!r}, which the config does not have",
            "name a key the config sets (list items by index, e.g. data.derived.0.id)",
        ) from None
    return parent, key


def render(name: str, config: Config, table3: dict[int, Row], same_triplet: str) -> str:
    """One config file's text; Related names resolved under ``same_triplet``."""
    doc = CommentedMap()
    header = fill(config.header, config.fields, f"{name}.header").rstrip("\n")
    doc.yaml_set_start_comment(f"@package _global_\n{header}")
    if config.base:
        doc["defaults"] = CommentedSeq([f"/experiment/paper/{config.base}", "_self_"])
    for key, value in config.settings.items():
        doc[key] = node(filled(value, config.fields, f"{name}.settings.{key}"), depth=1)
    rows = config.targets
    if config.table3_group:
        rows = [row for _, row in sorted(table3.items()) if row.group == config.table3_group]
    if rows:
        doc["cg"]["targets"] = CommentedSeq()
    for index, spec in enumerate(rows, start=1):
        where = f"{name}.targets.{spec.name}"
        row, source = resolved(spec, table3, where)
        values = config.fields | title_values(row, source, index)
        title = fill(row.title or config.title, values, f"{where}.title")
        doc["cg"]["targets"].append(target_node(row, title, same_triplet, where))
    for dotted, text in config.comments.items():
        end_comment(*lookup(doc, dotted, f"{name}.comments"), fill(text, config.fields, f"{name}.comments"))
    if config.subset_keys:
        parent, key = lookup(doc, config.subset_keys, f"{name}.subset_keys")
        for sid in parent[key]:
            end_comment(parent[key], sid, triplet(sid))
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = FOLD_WIDTH
    text = io.StringIO()
    yaml.dump(doc, text)
    return text.getvalue()


def render_all() -> dict[str, str]:
    """File name -> text of every config the data files describe."""
    configs, table3 = load_data()
    return {
        f"{name}.yaml": render(name, config, table3, same_triplet_of(name, config, configs))
        for name, config in configs.items()
    }


TABLE3 = [row for _, row in sorted(load_data()[1].items())]  # Table 3's 43 rows, in order


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file differs")
    args = parser.parse_args(argv)
    files = render_all()
    stale = [n for n, text in files.items() if not (OUT / n).is_file() or (OUT / n).read_text() != text]
    extra = sorted(p.name for p in OUT.glob("*.yaml") if p.name not in files) if OUT.is_dir() else []
    if args.check:
        for n in stale:
            print(f"out of date: {OUT / n}")
        for n in extra:
            print(f"not written by this script: {OUT / n}")
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for n, text in files.items():
        (OUT / n).write_text(text)
    print(f"wrote {len(files)} files to {OUT} ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
