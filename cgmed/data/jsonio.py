"""Streaming JSON: records of a JSON array or a JSONL file, one at a time, with byte offsets.

The Med-MAT release is 2.36M records in large JSON arrays; reading one whole file into
memory would cost gigabytes. ``iter_records`` walks a file in fixed-size chunks and yields
``(byte_offset, record)``; ``read_records_at`` later fetches chosen records by offset, so a
split can keep a compact index instead of the records.

Bytes are decoded as latin-1 so that character offsets equal byte offsets (every JSON
structural character is ASCII, and UTF-8 continuation bytes are >= 0x80, so parsing is
unaffected); strings are then re-decoded as UTF-8 (``_fix_text``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

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
        buf = fh.read(chunk_size).decode("latin-1")
        base = 0  # byte offset of buf[0]
        pos = 0
        eof = len(buf) < chunk_size

        def more() -> bool:
            nonlocal buf, base, pos, eof
            if eof:
                return False
            chunk = fh.read(chunk_size).decode("latin-1")
            eof = len(chunk) < chunk_size
            buf = buf[pos:] + chunk
            base += pos
            pos = 0
            return bool(chunk)

        def skip_ws() -> bool:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in _WS:
                    pos += 1
                if pos < len(buf):
                    return True
                if not more():
                    return False

        if not skip_ws() or buf[pos] != "[":
            raise DataError(str(path), "not a JSON array (the file must start with '[')")
        pos += 1
        n = 0
        while True:
            if not skip_ws():
                raise DataError(
                    str(path), f"file ends inside the array after record {n}", "re-download the file"
                )
            if buf[pos] == "]":
                return
            if n:
                if buf[pos] != ",":
                    raise DataError(
                        str(path), f"expected ',' or ']' after record {n - 1} at byte {base + pos}"
                    )
                pos += 1
                if not skip_ws():
                    raise DataError(str(path), f"file ends after record {n - 1}")
            while True:
                try:
                    obj, end = _DECODER.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as err:
                    if len(buf) - pos > _MAX_RECORD or not more():
                        raise DataError(
                            str(path), f"malformed JSON in record {n} at byte {base + pos}: {err.msg}"
                        ) from None
            # Text written with ensure_ascii (json.dump's default) needs no re-decoding.
            yield base + pos, (obj if buf.isascii() or buf[pos:end].isascii() else _fix_text(obj))
            pos = end
            n += 1


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
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
