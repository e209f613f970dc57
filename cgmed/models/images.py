"""The image a model sees for a manifest record: :func:`load_image`, with errors that name the record."""

from __future__ import annotations

import os

from cgmed.data.imaging import ImageConfig, open_image
from cgmed.errors import BadImageError


def load_image(
    path: str, where: str = "record", image: ImageConfig | None = None, modality: str | None = None
):
    """The RGB image a model sees, through :func:`cgmed.data.imaging.open_image`.

    8-bit images convert exactly as PIL's ``convert("RGB")``; DICOM, NIfTI and 16/32-bit images
    are windowed or scaled per ``image`` (the ``image`` config group; defaults when None), using
    ``modality`` (the record's) to pick a window. Raises BadImageError naming ``where`` and the
    path when the file is missing, unreadable, not an image, truncated, or too large.
    """
    if not os.path.isfile(path):
        raise BadImageError(where, f"image {path!r} does not exist", "check the manifest's image paths")
    try:
        return open_image(path, image or ImageConfig(), modality=modality)
    except BadImageError as err:
        reason = str(err).split("\n", 1)[0]
        raise BadImageError(
            where, f"image {path!r} cannot be read ({reason})", "re-export or drop this image"
        ) from None
