"""Image paths and files of records: a path stays inside the data root, a file exists and decodes.

A record's path is checked as written (:func:`safe_relpath`: no ``..``, no absolute path) when it
is indexed, and as the file system resolves it (:func:`check_inside_root`: symlinks followed)
when it is loaded, so a link inside the root that points out of it is caught too.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Sequence
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


def check_inside_root(image: Path, real_roots: Sequence[Path]) -> None:
    """The image, with every symlink resolved, lies inside one of ``real_roots`` (the data root
    and ``data.linked_dirs``, each resolved); else BadSample."""
    resolved = Path(os.path.realpath(image))
    if not any(resolved.is_relative_to(r) for r in real_roots):
        raise BadSample(
            "image path escapes the data root",
            f"image {image} resolves to {resolved}, outside the data root {real_roots[0]} (a symlink?); "
            "if the link is yours, list its target directory in data.linked_dirs",
        )


def check_image(path: Path) -> None:
    """The image exists, is a file and decodes completely (a truncated file fails here); else BadSample.

    ``verify()`` checks what a format can check without decoding (a PNG's checksums); ``load()``
    then decodes every pixel, which is what catches a JPEG cut short. Any error PIL raises,
    its DecompressionBombError for oversized images included, counts as an unreadable image.
    """
    if not path.is_file():
        raise BadSample("missing image", f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
    except Exception as err:  # PIL raises many types for broken files
        raise BadSample("unreadable image", f"cannot decode image {path}: {err}") from None
