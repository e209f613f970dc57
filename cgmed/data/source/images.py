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

from cgmed.data.imaging import ImageConfig, verify_image
from cgmed.data.source.bad import BadSample
from cgmed.errors import BadImageError


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


def check_image(path: Path, image: ImageConfig | None = None, modality: str | None = None) -> None:
    """The image exists and converts completely, as training will convert it; else BadSample.

    The conversion is :func:`cgmed.data.imaging.verify_image` with the ``image`` group's settings
    (DICOM, NIfTI, 16-bit and ordinary images alike): it decodes every pixel, which catches a JPEG
    cut short, and runs the format's own integrity check (a PNG's checksums). Any error, PIL's
    DecompressionBombError for oversized images included, counts as an unreadable image.
    """
    if not path.is_file():
        raise BadSample("missing image", f"image file not found: {path}")
    try:
        verify_image(path, image, modality)
    except BadImageError as err:
        reason = str(err).split("\n", 1)[0]
        raise BadSample("unreadable image", f"cannot decode image {reason}") from None
