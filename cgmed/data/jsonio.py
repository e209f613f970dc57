"""Streaming JSON: records of a JSON array or a JSONL file, one at a time, with byte offsets.

The Med-MAT release is 2.36M records in large JSON arrays; reading one whole file into
memory would cost gigabytes. ``iter_records`` walks a file in fixed-size chunks and yields
``(byte_offset, record)``; ``read_records_at`` fetches chosen records again by offset, so a
split can keep a compact index instead of the records.

Bytes are decoded as latin-1 so that character offsets equal byte offsets (every JSON
structural character is ASCII, and UTF-8 continuation bytes are >= 0x80, so parsing is
unaffected); strings are then re-decoded as UTF-8 (``_fix_text``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from cgmed.errors import DataError

_DECODER = json.JSONDecoder()
_WS = " \t\r\n"
CHUNK = 1 << 22
_MAX_RECORD = 64 << 20  # a single record larger than this is certainly a broken file


def _fix_text(value: Any) -> Any:
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            return value.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return value  # already proper text (written with \\u escapes)
    if isinstance(value, dict):
        return {_fix_text(k): _fix_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fix_text(v) for v in value]
    return value


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() == ".jsonl"


def iter_records(path: str | Path, chunk_size: int = CHUNK) -> Iterator[tuple[int, Any]]:
    """Yield ``(byte_offset, record)`` for each element of a JSON array or line of a JSONL file.

    Raises DataError naming the file, record number and byte offset on malformed JSON.
    """
    path = Path(path)
    if _is_jsonl(path):
        yield from _iter_jsonl(path)
        return
    with open(path, "rb") as fh:
        scanner = _ArrayScanner(fh, str(path), chunk_size)
        if not scanner.skip_whitespace() or scanner.char() != "[":
            raise DataError(str(path), "not a JSON array (the file must start with '[')")
        scanner.pos += 1
        n = 0
        while True:
            if not scanner.skip_whitespace():
                raise DataError(
                    str(path), f"file ends inside the array after record {n}", "re-download the file"
                )
            if scanner.char() == "]":
                return
            if n:
                scanner.skip_comma(after_record=n - 1)
            yield scanner.decode(record_no=n)
            n += 1


class _ArrayScanner:
    """A window on a JSON array file, read chunk by chunk: the text, its byte offset and a read position.

    The window drops what was read each time it grows, so a record is the most it ever holds
    besides one chunk.
    """

    def __init__(self, fh: BinaryIO, name: str, chunk_size: int):
        self.fh, self.name, self.chunk_size = fh, name, chunk_size
        self.text = fh.read(chunk_size).decode("latin-1")
        self.base = 0  # byte offset of text[0]
        self.pos = 0
        self.eof = len(self.text) < chunk_size

    def char(self) -> str:
        return self.text[self.pos]

    def _read_more(self) -> bool:
        """Append the next chunk (dropping what was read); False at the end of the file."""
        if self.eof:
            return False
        chunk = self.fh.read(self.chunk_size).decode("latin-1")
        self.eof = len(chunk) < self.chunk_size
        self.text = self.text[self.pos :] + chunk
        self.base += self.pos
        self.pos = 0
        return bool(chunk)

    def skip_whitespace(self) -> bool:
        """Move to the next non-whitespace character; False when the file ends first."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.text):
                return True
            if not self._read_more():
                return False

    def skip_comma(self, after_record: int) -> None:
        """Step over the ',' between two records (and the whitespace after it)."""
        if self.char() != ",":
            raise DataError(
                self.name, f"expected ',' or ']' after record {after_record} at byte {self.base + self.pos}"
            )
        self.pos += 1
        if not self.skip_whitespace():
            raise DataError(self.name, f"file ends after record {after_record}")

    def decode(self, record_no: int) -> tuple[int, Any]:
        """``(byte_offset, record)`` of the record at the read position, reading on until it is whole."""
        while True:
            try:
                record, end = _DECODER.raw_decode(self.text, self.pos)
                break
            except json.JSONDecodeError as err:
                if len(self.text) - self.pos > _MAX_RECORD or not self._read_more():
                    raise DataError(
                        self.name,
                        f"malformed JSON in record {record_no} at byte {self.base + self.pos}: {err.msg}",
                    ) from None
        start, self.pos = self.pos, end
        # Text written with ensure_ascii (json.dump's default) needs no re-decoding.
        if not (self.text.isascii() or self.text[start:end].isascii()):
            record = _fix_text(record)
        return self.base + start, record


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """``(byte_offset, record)`` per line of a data file; any JSON value is a record (its reader
    judges it), unlike :func:`cgmed.data.manifest.iter_jsonl`, which reads cgmed's own files."""
    with open(path, "rb") as fh:
        offset = 0
        for lineno, line in enumerate(fh, 1):
            start = offset
            offset += len(line)
            if not line.strip():
                continue
            try:
                yield start, json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}", f"malformed JSON line: {err.msg}") from None


def read_records_at(path: str | Path, offsets: Iterable[int]) -> Iterator[tuple[int, Any]]:
    """Fetch records at byte offsets recorded by ``iter_records`` (any order; one open file)."""
    path = Path(path)
    with open(path, "rb") as fh:
        for offset in offsets:
            fh.seek(offset)
            if _is_jsonl(path):
                yield offset, json.loads(fh.readline())
                continue
            text = ""
            size = 1 << 14
            while True:
                text += fh.read(size).decode("latin-1")
                try:
                    obj, _ = _DECODER.raw_decode(text)
                    break
                except json.JSONDecodeError:
                    if len(text) > _MAX_RECORD or size == 0:
                        raise DataError(str(path), f"no JSON record at byte {offset}") from None
                    size = min(size * 2, 1 << 24)
            yield offset, _fix_text(obj)
