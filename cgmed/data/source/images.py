"""Image paths and files of records: a path stays inside the data root, a file exists and decodes."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from PIL import Image

from cgmed.data.source.bad import BadSample


def safe_relpath(path: str) -> str:
    """A relative image path that stays inside the data root, or BadSample."""
    if not isinstance(path, str) or not path.strip():
        raise BadSample("malformed record", "'image' is missing or empty")
    if (
        ".." not in path
        and "\\" not in path
        and "//" not in path
        and not path.startswith(("/", "./"))
        and ":" not in path[:3]
    ):
        return path  # the common case needs no normalisation
    norm = posixpath.normpath(path.replace("\\", "/"))
    if posixpath.isabs(norm) or re.match(r"^[A-Za-z]:", norm) or norm == ".." or norm.startswith("../"):
        raise BadSample("image path escapes the data root", f"image path {path!r} leaves the data root")
    return norm


def check_image(path: Path) -> None:
    """The image exists, is a file and its header decodes; else BadSample."""
    if not path.is_file():
        raise BadSample("missing image", f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as err:  # PIL raises many types for broken files
        raise BadSample("unreadable image", f"cannot decode image {path}: {err}") from None
