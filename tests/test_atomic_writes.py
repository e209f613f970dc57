"""Files that later stages read back are written whole or not at all: manifests, split_meta.json,
predictions.jsonl and results.json go to a temporary name beside the target and are renamed over
it; an interrupted write leaves the old file and no temporary, and a full disk is named."""

from __future__ import annotations

import builtins
import errno
import json
import os
from pathlib import Path

import pytest

import cgmed.atomic
from cgmed.atomic import atomic_write_bytes
from cgmed.data.build import build_split, write_split
from cgmed.data.manifest import read_jsonl, write_jsonl
from cgmed.data.source import DataConfig, MedMatSource
from cgmed.data.split import SplitConfig
from cgmed.errors import CgmedError, DataError
from cgmed.eval.run import _write

OLD = [{"id": "old-1"}, {"id": "old-2"}]


def interrupted(n_before: int):
    """Records that fail after ``n_before`` of them, as a killed or crashing writer would."""
    for k in range(n_before):
        yield {"id": f"new-{k}"}
    raise RuntimeError("interrupted")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".tmp-"))


def test_interrupted_jsonl_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "test.jsonl"
    write_jsonl(path, OLD)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_jsonl(path, interrupted(3), atomic=True)
    assert read_jsonl(path) == OLD and leftovers(tmp_path) == []
    # with more records than one buffer holds, part of them reached the temporary file
    with pytest.raises(RuntimeError, match="interrupted"):
        write_jsonl(path, interrupted(5000), atomic=True)
    assert read_jsonl(path) == OLD and leftovers(tmp_path) == []
    assert write_jsonl(path, [{"id": "new"}], atomic=True) == 1
    assert read_jsonl(path) == [{"id": "new"}] and leftovers(tmp_path) == []


def test_atomic_file_keeps_the_usual_permissions(tmp_path):
    plain, atomic = tmp_path / "plain.jsonl", tmp_path / "atomic.jsonl"
    write_jsonl(plain, OLD)
    write_jsonl(atomic, OLD, atomic=True)
    assert (atomic.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_while_writing_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "predictions.jsonl"
    write_jsonl(path, OLD)
    real_open = builtins.open

    def full_disk(file, mode="r", *args, **kwargs):
        # the temporary file is created as usual, but its bytes go to a device that is always full
        if Path(file).name.startswith(".tmp-"):
            real_open(file, mode, *args, **kwargs).close()
            return real_open("/dev/full", mode, *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(cgmed.atomic, "open", full_disk, raising=False)
    with pytest.raises(DataError, match=r"(?s)predictions\.jsonl.*disk full.*free space") as info:
        write_jsonl(path, ({"id": k, "pad": "x" * 100} for k in range(1000)), atomic=True)
    assert isinstance(info.value, CgmedError) and isinstance(info.value.__cause__, OSError)
    assert read_jsonl(path) == OLD and leftovers(tmp_path) == []


def test_disk_full_at_fsync_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_text("{}\n")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cgmed.atomic.os, "fsync", no_space)
    with pytest.raises(DataError, match=r"results\.json.*disk full"):
        atomic_write_bytes(path, b'{"overall": {}}\n')
    assert path.read_text() == "{}\n" and leftovers(tmp_path) == []


def test_other_write_errors_propagate_and_clean_up(tmp_path, monkeypatch):
    path = tmp_path / "results.json"

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(cgmed.atomic.os, "fsync", broken)
    with pytest.raises(OSError, match="Input/output error"):
        atomic_write_bytes(path, b"{}\n")
    assert not path.exists() and leftovers(tmp_path) == []


def _build(root: Path, **split_kw):
    data = DataConfig()
    source = MedMatSource(data, root)
    return build_split(source, data, SplitConfig(**split_kw)), source


def test_split_meta_is_written_last(small_release, tmp_path, monkeypatch):
    built, source = _build(small_release, targets=["04"], train="related", shots_per_label=1)
    renamed = []
    real_replace = os.replace

    def record(src, dst):
        renamed.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(cgmed.atomic.os, "replace", record)
    write_split(built, tmp_path / "split", {}, source)
    assert renamed[-1] == "split_meta.json"
    assert set(renamed) == {"train.jsonl", "test.jsonl", "seen_test.jsonl", "shots.jsonl", "split_meta.json"}
    assert leftovers(tmp_path / "split") == []


def test_interrupted_split_write_is_not_taken_for_a_finished_split(small_release, tmp_path, monkeypatch):
    out = tmp_path / "split"
    built, source = _build(small_release, targets=["04"], train="related")
    write_split(built, out, {}, source)
    old_train = (out / "train.jsonl").read_bytes()
    rebuilt, _ = _build(small_release, targets=["04"], train="unrelated")
    real_to_json = type(rebuilt.test[0]).to_json
    calls = {"n": 0}

    def fail_in_test_manifest(sample):
        calls["n"] += 1
        if calls["n"] > len(rebuilt.train):  # train.jsonl is through, test.jsonl is under way
            raise RuntimeError("killed")
        return real_to_json(sample)

    monkeypatch.setattr(type(rebuilt.test[0]), "to_json", fail_in_test_manifest)
    with pytest.raises(RuntimeError, match="killed"):
        write_split(rebuilt, out, {}, source)
    # the stages take split_meta.json as the mark of a finished split: it must be gone
    assert not (out / "split_meta.json").exists()
    assert (out / "train.jsonl").read_bytes() != old_train  # the new one, whole
    assert read_jsonl(out / "test.jsonl")  # the old one, whole
    assert leftovers(out) == []


def test_evaluation_files_are_written_whole(tmp_path, monkeypatch):
    out = tmp_path / "eval"
    rows = [{"id": "a", "correct": True}]
    _write(out, rows, {"overall": {"accuracy": 1.0}})
    assert read_jsonl(out / "predictions.jsonl") == rows
    assert json.loads((out / "results.json").read_text()) == {"overall": {"accuracy": 1.0}}

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cgmed.atomic.os, "fsync", no_space)
    with pytest.raises(DataError, match=r"predictions\.jsonl.*disk full"):
        _write(out, [{"id": "b", "correct": False}], {"overall": {"accuracy": 0.0}})
    # results.json marks a finished evaluation: a failed rewrite must not leave the old one
    # beside predictions of another run
    assert not (out / "results.json").exists()
    assert read_jsonl(out / "predictions.jsonl") == rows and leftovers(out) == []
