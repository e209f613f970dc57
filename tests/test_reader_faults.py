"""Readers under faults and bad input: stale offsets and changed files, escaping symlinks,
duplicate ids, truncated and oversized images, empty files, a UTF-8 byte-order mark.

Every case ends in a message naming the file (or a counted bad sample), never a hang or a
raw traceback; reads that could hang run under an alarm.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest
from PIL import Image

from cgmed.data.catalog import build_catalog
from cgmed.data.jsonio import iter_records, read_records_at
from cgmed.data.source import BadSamples, ConversationSource, DataConfig, MedMatSource
from cgmed.errors import DataError
from tests.conftest import make_release, medmat_record, write_png


@contextlib.contextmanager
def no_hang(seconds: int = 10):
    """Fail (instead of hanging the suite) when the block runs longer than ``seconds``."""

    def alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: the reader loops")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _records(n: int) -> list[dict]:
    return [{"id": i, "caption": f"label {i}", "pad": "x" * (i % 7)} for i in range(n)]


@pytest.mark.parametrize("name", ["a.json", "a.jsonl"])
def test_a_file_truncated_after_indexing_is_named_with_the_offset(tmp_path, name):
    path = tmp_path / name
    records = _records(40)
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, indent=1))
    offsets = [offset for offset, _ in iter_records(path)]
    with open(path, "r+b") as fh:
        fh.truncate(offsets[30] + 5)
    with no_hang(), pytest.raises(DataError, match=rf"{name}: .*byte {offsets[35]}"):
        list(read_records_at(path, [offsets[1], offsets[35]]))
    with no_hang(), pytest.raises(DataError, match=rf"{name}: .*byte {offsets[30]}"):
        list(read_records_at(path, [offsets[30]]))


@pytest.mark.parametrize("name", ["a.json", "a.jsonl"])
def test_a_stale_offset_is_named(tmp_path, name):
    path = tmp_path / name
    records = _records(10)
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, indent=1))
    offsets = [offset for offset, _ in iter_records(path)]
    inside_a_record = path.read_text().index('"caption"', offsets[4])  # a JSON string after a ','
    for stale in (offsets[4] + 3, offsets[4] - 1, inside_a_record):
        with no_hang(), pytest.raises(DataError, match=rf"{name}: no record starts at byte {stale}"):
            list(read_records_at(path, [stale]))


def test_a_malformed_jsonl_line_read_by_offset_is_a_data_error(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": 0}\n{"id": 1}\n')
    offsets = [offset for offset, _ in iter_records(path)]
    path.write_text('{"id": 0}\n{"id": 1,,\n')  # same length, broken second line
    with pytest.raises(DataError, match=rf"a.jsonl: malformed JSON line at byte {offsets[1]}"):
        list(read_records_at(path, offsets))


def test_a_release_file_changed_after_indexing_is_refused(small_release):
    src = MedMatSource(DataConfig(), small_release)
    idx = src.index("03", BadSamples())
    path = small_release / "Aggregated_Subsets" / "Subset--03-train.json"
    path.write_text(json.dumps(json.loads(path.read_text())[:5]))  # shorter than indexed
    with no_hang(), pytest.raises(DataError, match=r"Subset--03-train.json: changed since it was indexed"):
        list(src.load(idx, list(range(len(idx)))))
    assert len(src.index("03", BadSamples())) == 5 + 6  # indexing again reads the new file


def _conv(i: int, image: str, modality: str = "CT") -> dict:
    human = "<image>\nIs there a tumor?\nA: Normal\nB: Tumor\nAnswer with the option's letter."
    return {
        "id": f"r{i}",
        "image": image,
        "modality": modality,
        "area": "Lung",
        "task": "Cancer",
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": "AB"[i % 2]}],
    }


def _conversation_root(tmp_path: Path, n: int = 6) -> Path:
    root = tmp_path / "mine"
    for i in range(n):
        write_png(root / "img" / f"{i}.png", i)
    (root / "data.jsonl").write_text("".join(json.dumps(_conv(i, f"img/{i}.png")) + "\n" for i in range(n)))
    return root


def test_conversation_indexes_follow_a_changed_file(tmp_path):
    root = _conversation_root(tmp_path)
    src = ConversationSource(DataConfig(format="conversation"), root)
    old = src.index("CT_Lung_Cancer", BadSamples())
    assert len(old) == 6
    lines = (root / "data.jsonl").read_text().splitlines(keepends=True)
    (root / "data.jsonl").write_text("".join(lines[3:]))  # another target's run rewrote the file
    with no_hang(), pytest.raises(DataError, match=r"data.jsonl: changed since it was indexed"):
        list(src.load(old, [5]))
    new = src.index("CT_Lung_Cancer", BadSamples())  # the cached index is rebuilt
    assert len(new) == 3
    assert [s.id for _, s in src.load(new, [0])] == ["CT_Lung_Cancer-r3"]


def test_a_record_that_no_longer_validates_is_a_data_error(tmp_path):
    root = _conversation_root(tmp_path)
    src = ConversationSource(DataConfig(format="conversation"), root)
    idx = src.index("CT_Lung_Cancer", BadSamples())
    path = root / "data.jsonl"
    stat = path.stat()
    # same size, same modification time: only the content check at load can tell
    path.write_text(path.read_text().replace('"modality": "CT"', '"modality": "ZZ"'))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(DataError, match=r"data.jsonl: the record at byte 0 no longer reads as indexed"):
        list(src.load(idx, [0]))


def test_a_symlink_out_of_the_root_is_a_bad_sample(small_release, tmp_path):
    src = MedMatSource(DataConfig(), small_release)
    idx = src.index("05", BadSamples())
    (_, sample), *_ = src.load(idx, [0])
    outside = tmp_path / "elsewhere.png"
    write_png(outside, 999)
    Path(sample.image).unlink()
    Path(sample.image).symlink_to(outside)
    bad = BadSamples()
    kept = [pos for pos, _ in src.load_checked(idx, [0, 1], bad)]
    assert kept == [1]
    assert bad.counts == {"image path escapes the data root": 1}
    assert f"resolves to {os.path.realpath(outside)}, outside the data root" in bad.examples[0]
    assert "data.linked_dirs" in bad.examples[0]
    inside = small_release / "inside.png"
    write_png(inside, 998)
    Path(sample.image).unlink()
    Path(sample.image).symlink_to(inside)  # a link that stays inside the root is fine
    assert [pos for pos, _ in src.load_checked(idx, [0], BadSamples())] == [0]
    # an image folder linked from another disk is fine once that disk is declared
    Path(sample.image).unlink()
    Path(sample.image).symlink_to(outside)
    declared = MedMatSource(DataConfig(linked_dirs=[str(tmp_path)]), small_release)
    assert [pos for pos, _ in declared.load_checked(idx, [0], BadSamples())] == [0]


def test_duplicate_record_ids_are_bad_samples(small_release, tmp_path):
    path = small_release / "Aggregated_Subsets" / "Subset--05-test.json"
    records = json.loads(path.read_text())
    records[3]["id"] = records[1]["id"]
    path.write_text(json.dumps(records))
    bad = BadSamples()
    idx = MedMatSource(DataConfig(), small_release).index("05", bad)
    assert len(idx) == 16 + 7 and bad.counts == {"duplicate record id": 1}
    assert "Subset--05-test.json record #3 (id 1): id 1 is also record #1" in bad.examples[0]
    root = _conversation_root(tmp_path)
    lines = (root / "data.jsonl").read_text().splitlines(keepends=True)
    (root / "more.jsonl").write_text(lines[2])  # r2 again, in another file of the same subset
    bad = BadSamples()
    conv = ConversationSource(DataConfig(format="conversation"), root)
    assert len(conv.index("CT_Lung_Cancer", bad)) == 6
    assert bad.counts == {"duplicate record id": 1}
    assert (
        "more.jsonl record #0: id 'r2' of subset CT_Lung_Cancer is also data.jsonl record #2"
        in bad.examples[0]
    )


def test_a_truncated_jpeg_is_caught_when_images_are_checked(small_release):
    src = MedMatSource(DataConfig(), small_release)
    idx = src.index("07", BadSamples())
    (_, sample), *_ = src.load(idx, [0])
    image = Image.new("RGB", (128, 128))
    image.putdata([(x * 2 % 256, y * 2 % 256, (x ^ y) % 256) for y in range(128) for x in range(128)])
    jpeg = Path(sample.image)
    image.save(jpeg, format="JPEG")
    jpeg.write_bytes(jpeg.read_bytes()[:-100])  # the header is whole, the scan data is cut
    with Image.open(jpeg) as opened:
        opened.verify()  # what a header check sees: nothing wrong
    bad = BadSamples()
    assert list(src.load_checked(idx, [0], bad)) == []
    assert bad.counts == {"unreadable image": 1} and "truncated" in bad.examples[0]


def test_a_decompression_bomb_is_a_bad_image(small_release, monkeypatch):
    src = MedMatSource(DataConfig(), small_release)
    idx = src.index("07", BadSamples())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 8)  # the 8x8 test images are 64 pixels: a "bomb"
    bad = BadSamples()
    assert list(src.load_checked(idx, [0], bad)) == []
    assert bad.counts == {"unreadable image": 1} and "decompression bomb" in bad.examples[0]


def test_an_empty_subset_file_is_named(small_release):
    (small_release / "Aggregated_Subsets" / "Subset--05-test.json").write_text("[]")
    src = MedMatSource(DataConfig(), small_release)
    bad = BadSamples()
    idx = src.index("05", bad)
    assert len(idx) == 16 and bad.total == 0
    assert bad.notes == {"empty subset file": 1}
    assert "Subset--05-test.json: holds no records" in bad.note_examples[0]
    assert "empty subset file: 1" in build_catalog(src).table()


def test_an_empty_conversation_file_says_so(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "data.jsonl").write_text("")
    src = ConversationSource(DataConfig(format="conversation"), root)
    with pytest.raises(DataError, match=r"no records in the data files: data.jsonl is empty"):
        src.subsets()
    other = _conversation_root(tmp_path / "two")
    (other / "empty.json").write_text("[]")
    bad = BadSamples()
    ConversationSource(DataConfig(format="conversation"), other).index("CT_Lung_Cancer", bad)
    assert bad.notes == {"empty data file": 1} and "empty.json: holds no records" in bad.note_examples[0]


def test_a_file_of_only_bad_records_says_so(tmp_path):
    root = tmp_path / "mine"
    write_png(root / "img" / "0.png", 0)
    (root / "data.jsonl").write_text(json.dumps(_conv(0, "img/0.png", modality="Sonar")) + "\n")
    src = ConversationSource(DataConfig(format="conversation"), root)
    with pytest.raises(DataError, match=r"data.jsonl holds 1 record\(s\), none usable .*unknown MAT element"):
        src.subsets()


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    root = make_release(tmp_path / "r", {"03": {"labels": ["COVID", "Normal"], "train": 3}})
    path = root / "Aggregated_Subsets" / "Subset--03-train.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    src = MedMatSource(DataConfig(), root)
    idx = src.index("03", BadSamples())
    assert len(idx) == 6
    assert [s.label for _, s in src.load(idx, [0, 5])] == ["COVID", "Normal"]
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_bytes(
        b"\xef\xbb\xbf" + json.dumps(medmat_record(0, "a", ["a", "b"], "x.png")).encode() + b"\n"
    )
    ((offset, record),) = list(iter_records(jsonl))
    assert record["id"] == 0 and dict(read_records_at(jsonl, [offset]))[offset] == record


def test_a_utf16_file_is_named(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"id": 0}]), encoding="utf-16")
    with pytest.raises(DataError, match=r"(?s)a.json: .*UTF-16.*save it as UTF-8"):
        list(iter_records(path))
