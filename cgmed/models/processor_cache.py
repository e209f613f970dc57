"""A content-addressed cache of what the image processor makes of each image, on disk and memory-mapped.

A study trains and evaluates many models on the same images: without a cache every training
decodes, resizes and normalizes each image in every epoch, and every evaluation does it again.
With ``image.processor_cache=DIR`` the image part of the processor's output (``pixel_values`` and
the per-image tensors of the family: ``image_grid_thw`` for Qwen2-VL / Qwen2.5-VL,
``aspect_ratio_ids`` / ``aspect_ratio_mask`` / ``num_tiles`` for Llama-3.2-Vision) is kept per
image under ``DIR``, keyed by:

* the image file's bytes (a BLAKE2b digest; a memo keyed by path, size, mtime and inode spares
  rereading an unchanged file) and its suffix (which picks the reader);
* the image group's conversion settings (:class:`cgmed.data.imaging.ImageConfig`) and the window
  that the record's modality picks;
* the image processor's class and settings (``to_dict()``: sizes, ``min_pixels`` /
  ``max_pixels``, means ...), the keyword arguments the processor passes it, the family, and the
  versions of the libraries that compute the pixels.

Change any of them and the key changes: stale entries are never read, only left behind.

The processor itself still runs on every batch: while :meth:`ProcessorCache.attached` holds,
``processor.image_processor`` is a proxy that answers with the cached entries and runs the real
image processor on the misses only, so the processor's own text expansion (one image token per
visual token) and every other output are made as without the cache, and batches are identical
bit for bit. A hit is never decoded: :meth:`ProcessorCache.image` hands out a 1x1 placeholder
carrying the memory-mapped entry.

An entry is ``<key>.npy`` (``pixel_values``, read with ``np.load(mmap_mode="r")``) and
``<key>.json`` (the small per-image tensors and the pixels' shape), both written atomically
(:mod:`cgmed.atomic`), the JSON last: an entry exists once its JSON does, a killed writer leaves no
half entry, and processes that fill the same key at once write the same bytes. Nothing is kept in memory between
batches, so resident memory does not grow with the number of images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cgmed.atomic import atomic_file
from cgmed.data.imaging import ImageConfig
from cgmed.errors import ConfigError, DataError
from cgmed.models.images import load_image

log = logging.getLogger(__name__)

CACHE_FORMAT = "cgmed-processor-cache/1"
#: ``image.processor_cache`` value that means "the run directory's processor_cache folder" in
#: ``cgmed-cg`` and "off" in ``cgmed-train`` / ``cgmed-eval`` (which have no study to share it with)
AUTO = "auto"
RUN_CACHE_FOLDER = "processor_cache"
PIXELS = "pixel_values"
# digests remembered per process: ~200 bytes each, enough for the largest training set of a study
DIGEST_MEMO_SIZE = 1 << 16


def cache_dir(image: ImageConfig) -> Path | None:
    """The cache folder ``image.processor_cache`` names; None when it is off (null or ``auto``)."""
    value = image.processor_cache
    if value is None or value == AUTO:
        return None
    return Path(value).expanduser()


def with_run_cache(image: ImageConfig, run_dir: Path) -> ImageConfig:
    """``image`` with ``processor_cache: auto`` made ``<run_dir>/processor_cache`` (``cgmed-cg``)."""
    if image.processor_cache != AUTO:
        return image
    return dataclasses.replace(image, processor_cache=str(Path(run_dir) / RUN_CACHE_FOLDER))


class FileDigests:
    """BLAKE2b digests of files' bytes, remembered per (path, size, mtime, inode) in a bounded memo.

    A file rewritten in place or replaced changes its mtime, ctime or inode, so its digest is taken
    again; the memo keeps the last ``capacity`` files.
    """

    def __init__(self, capacity: int = DIGEST_MEMO_SIZE):
        self.capacity = capacity
        self._memo: OrderedDict[str, tuple[tuple[int, ...], str]] = OrderedDict()

    def digest(self, path: str) -> str:
        """The digest of the file's bytes; OSError when it cannot be read."""
        st = os.stat(path)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
        known = self._memo.get(path)
        if known is not None and known[0] == stamp:
            self._memo.move_to_end(path)
            return known[1]
        digest = hashlib.blake2b(digest_size=20)
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        hexdigest = digest.hexdigest()
        self._memo[path] = (stamp, hexdigest)
        if len(self._memo) > self.capacity:
            self._memo.popitem(last=False)
        return hexdigest

    def __len__(self) -> int:
        return len(self._memo)


@dataclass(frozen=True)
class _Hit:
    """What a placeholder image carries: the cached arrays, and where they came from."""

    arrays: dict[str, np.ndarray]
    path: str
    modality: str | None
    where: str


_HIT_ATTR = "_cgmed_cache_hit"  # on a placeholder image: its _Hit
_KEY_ATTR = "_cgmed_cache_key"  # on a decoded image: the key its processed form is stored under


class ProcessorCache:
    """The cache of one processor's image outputs under ``root`` (see the module docstring).

    ``family``: the backbone family (it fixes how per-image tensors are laid out in a batch);
    ``processor``: the loaded processor; ``image``: the image group. ``hits`` and ``misses``
    count the images :meth:`image` served from the cache and decoded, ``writes`` the entries
    this process stored.
    """

    def __init__(self, root: str | Path, family: str, processor: Any, image: ImageConfig | None = None):
        if family not in LAYOUTS:
            raise ConfigError(
                "image.processor_cache",
                f"the processor cache knows no image layout for family {family!r}",
                f"set image.processor_cache=null, or use one of {sorted(LAYOUTS)}",
            )
        self.root = Path(root)
        self.family = family
        self.layout = LAYOUTS[family]
        self.image_cfg = image or ImageConfig()
        self.image_kwargs = _image_kwargs(processor)
        self.digests = FileDigests()
        self.hits = self.misses = self.writes = 0
        self._fingerprint = _fingerprint(family, processor.image_processor, self.image_kwargs, self.image_cfg)
        self._writable = True

    @classmethod
    def for_config(cls, image: ImageConfig, family: str, processor: Any) -> ProcessorCache | None:
        """The cache ``image.processor_cache`` asks for, or None when it is off."""
        root = cache_dir(image)
        return None if root is None else cls(root, family, processor, image)

    # ------------------------------------------------------------------ keys and entries

    def key(self, path: str, modality: str | None = None) -> str:
        """The entry key of the image file ``path`` shown for a record of ``modality``."""
        window = self.image_cfg.window_for(modality)
        parts = [
            self._fingerprint,
            self.digests.digest(path),
            "".join(Path(path).suffixes).lower(),
            None if window is None else [window.center, window.width],
        ]
        return hashlib.blake2b(json.dumps(parts).encode(), digest_size=20).hexdigest()

    def entry_path(self, key: str) -> Path:
        """``<root>/<first two hex digits>/<key>``, without suffix (``.npy`` and ``.json`` beside)."""
        return self.root / key[:2] / key

    def read(self, key: str) -> dict[str, np.ndarray] | None:
        """The entry's arrays (``pixel_values`` memory-mapped), or None when there is no whole entry."""
        base = self.entry_path(key)
        try:
            meta = json.loads(base.with_suffix(".json").read_text(encoding="utf-8"))
            pixels = np.load(base.with_suffix(".npy"), mmap_mode="r", allow_pickle=False)
            if [str(pixels.dtype), list(pixels.shape)] != [meta[PIXELS]["dtype"], meta[PIXELS]["shape"]]:
                raise ValueError(f"pixel_values are {pixels.dtype} {pixels.shape}, recorded {meta[PIXELS]}")
            arrays = {PIXELS: pixels}
            for name, spec in meta["small"].items():
                arrays[name] = np.array(spec["values"], dtype=spec["dtype"]).reshape(spec["shape"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:  # damaged by hand: made again
            log.warning("processor cache entry %s is unreadable (%s); processing the image again", base, err)
            return None
        return arrays

    def write(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Store one image's arrays under ``key``: the ``.npy`` first, the ``.json`` (the commit) last.

        A full disk stops the writing with one warning; training and evaluation go on uncached.
        """
        if not self._writable:
            return
        base = self.entry_path(key)
        small = {
            name: {"dtype": str(a.dtype), "shape": list(a.shape), "values": a.ravel().tolist()}
            for name, a in arrays.items()
            if name != PIXELS
        }
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.ascontiguousarray(arrays[PIXELS])
            # no fsync: a reader sees whole files either way, and after a power loss an entry whose
            # .npy did not reach the disk has the wrong size and is made again (see read)
            with atomic_file(base.with_suffix(".npy"), "wb", durable=False) as fh:
                np.save(fh, pixels, allow_pickle=False)
            meta = {
                "format": CACHE_FORMAT,
                PIXELS: {"dtype": str(pixels.dtype), "shape": list(pixels.shape)},
                "small": small,
            }
            with atomic_file(base.with_suffix(".json"), "w", durable=False) as fh:
                fh.write(json.dumps(meta, separators=(",", ":")))
        except (DataError, OSError) as err:
            self._writable = False
            log.warning("processor cache %s stops storing entries: %s", self.root, str(err).split("\n")[0])
            return
        self.writes += 1

    # ------------------------------------------------------------------ images

    def image(self, path: str, modality: str | None = None, where: str = "record") -> Any:
        """The image to hand the processor for ``path``: a placeholder carrying the cached entry on a
        hit (nothing decoded), else the decoded image (as :func:`cgmed.models.images.load_image`),
        marked so that its processed form is stored. A missing or unreadable file raises
        BadImageError exactly as without the cache."""
        from PIL import Image

        try:
            key = self.key(path, modality)
        except OSError:  # missing or unreadable: load_image names the problem
            return load_image(path, where, self.image_cfg, modality)
        arrays = self.read(key)
        if arrays is not None:
            self.hits += 1
            placeholder = Image.new("RGB", (1, 1))
            setattr(placeholder, _HIT_ATTR, _Hit(arrays, path, modality, where))
            return placeholder
        self.misses += 1
        image = load_image(path, where, self.image_cfg, modality)
        setattr(image, _KEY_ATTR, key)
        return image

    @contextmanager
    def attached(self, processor: Any) -> Iterator[None]:
        """Within the block, ``processor`` answers images from this cache (its image processor is
        the proxy); outside it, the processor is untouched (what ``save_pretrained`` writes)."""
        real = processor.image_processor
        processor.image_processor = _CachingImageProcessor(real, self)
        try:
            yield
        finally:
            processor.image_processor = real

    def process(self, real: Any, images: Any, kwargs: dict[str, Any]) -> Any:
        """What ``real(images, **kwargs)`` returns, from cached entries and the misses processed."""
        from transformers.image_utils import make_flat_list_of_images, make_nested_list_of_images

        if self.layout.nested:
            samples = make_nested_list_of_images(images)
        else:
            samples = [[im] for im in make_flat_list_of_images(images)]
        if kwargs != self.image_kwargs:  # another call than the key was made for: no cache
            return real([[_materialize(im, self) for im in s] for s in samples], **kwargs)
        flat = [im for sample in samples for im in sample]
        entries: list[dict[str, np.ndarray] | None] = [
            hit.arrays if (hit := getattr(im, _HIT_ATTR, None)) is not None else None for im in flat
        ]
        for i, im in enumerate(flat):  # an earlier call of this batch may have stored it
            key = getattr(im, _KEY_ATTR, None)
            if entries[i] is None and key is not None:
                entries[i] = self.read(key)
        todo = [i for i, entry in enumerate(entries) if entry is None]
        if todo:
            batch = [[flat[i]] for i in todo] if self.layout.nested else [flat[i] for i in todo]
            for i, arrays in zip(todo, self.layout.split(real(batch, **kwargs)), strict=True):
                entries[i] = arrays
                key = getattr(flat[i], _KEY_ATTR, None)
                if key is not None:
                    self.write(key, arrays)
        it = iter(entries)
        return self.layout.join([[next(it) for _ in sample] for sample in samples])


class _CachingImageProcessor:
    """Stands in for ``processor.image_processor`` while :meth:`ProcessorCache.attached` holds."""

    def __init__(self, real: Any, cache: ProcessorCache):
        self._real = real
        self._cache = cache

    def __call__(self, images: Any, **kwargs: Any) -> Any:
        return self._cache.process(self._real, images, kwargs)

    def __getattr__(self, name: str) -> Any:  # merge_size, patch_size, fetch_images ...
        return getattr(self._real, name)


def _materialize(image: Any, cache: ProcessorCache) -> Any:
    """The decoded image behind a placeholder (the image itself when it is none)."""
    hit = getattr(image, _HIT_ATTR, None)
    if hit is None:
        return image
    return load_image(hit.path, hit.where, cache.image_cfg, hit.modality)


def _image_kwargs(processor: Any) -> dict[str, Any]:
    """The keyword arguments a batch call with ``return_tensors="pt"`` passes the image processor:
    the processor's defaults merged as ``ProcessorMixin.__call__`` merges them."""
    merge = getattr(processor, "_merge_kwargs", None)
    try:
        merged = merge(tokenizer_init_kwargs=processor.tokenizer.init_kwargs, return_tensors="pt")
        return dict(merged["images_kwargs"])
    except Exception:  # a processor without transformers' kwargs merging: the call's own argument
        return {"return_tensors": "pt"}


def _fingerprint(family: str, image_processor: Any, image_kwargs: dict[str, Any], image: ImageConfig) -> str:
    """Everything but the file and the window that the processed pixels depend on, as one digest."""
    conversion = {k: v for k, v in image.describe().items() if k != "windows"}
    settings = {
        "format": CACHE_FORMAT,
        "family": family,
        "image_processor": type(image_processor).__name__,
        "settings": image_processor.to_dict(),
        "call": image_kwargs,
        "conversion": conversion,
        "versions": {
            name: _version(name) for name in ("transformers", "torch", "torchvision", "pillow", "numpy")
        },
    }
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- layouts


def _numpy(value: Any) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _tensors(data: dict[str, np.ndarray], extra: dict[str, Any] | None = None) -> Any:
    import torch
    from transformers import BatchFeature

    out = BatchFeature({name: torch.from_numpy(array) for name, array in data.items()})
    for name, value in (extra or {}).items():
        out[name] = value
    return out


class _Stacked:
    """LLaVA: ``pixel_values`` (images, 3, H, W)."""

    nested = False

    def split(self, out: Any) -> list[dict[str, np.ndarray]]:
        pixels = _numpy(out[PIXELS])
        return [{PIXELS: pixels[i]} for i in range(len(pixels))]

    def join(self, samples: Sequence[Sequence[dict[str, np.ndarray]]]) -> Any:
        return _tensors({PIXELS: np.stack([e[PIXELS] for sample in samples for e in sample])})


class _Rows:
    """Qwen2-VL / Qwen2.5-VL: ``pixel_values`` (patches of every image, one after another, D) and
    ``image_grid_thw`` (images, 3); an image owns ``t * h * w`` rows."""

    nested = False

    def split(self, out: Any) -> list[dict[str, np.ndarray]]:
        pixels, grids = _numpy(out[PIXELS]), _numpy(out["image_grid_thw"])
        ends = np.cumsum(grids.prod(axis=1))
        starts = ends - grids.prod(axis=1)
        return [
            {PIXELS: pixels[s:e], "image_grid_thw": grid}
            for s, e, grid in zip(starts, ends, grids, strict=True)
        ]

    def join(self, samples: Sequence[Sequence[dict[str, np.ndarray]]]) -> Any:
        flat = [e for sample in samples for e in sample]
        return _tensors(
            {
                PIXELS: np.concatenate([e[PIXELS] for e in flat]),
                "image_grid_thw": np.stack([e["image_grid_thw"] for e in flat]),
            }
        )


class _Tiles:
    """Llama-3.2-Vision: per sample and image slot, ``pixel_values`` (tiles, 3, H, W),
    ``aspect_ratio_ids``, ``aspect_ratio_mask`` (tiles) and ``num_tiles``; samples with fewer
    images are padded as the image processor pads them (zeros, the mask's first tile set)."""

    nested = True

    def split(self, out: Any) -> list[dict[str, np.ndarray]]:
        pixels, ids = _numpy(out[PIXELS]), _numpy(out["aspect_ratio_ids"])
        mask, tiles = _numpy(out["aspect_ratio_mask"]), out["num_tiles"]
        return [
            {
                PIXELS: pixels[b, j],
                "aspect_ratio_ids": ids[b, j],
                "aspect_ratio_mask": mask[b, j],
                "num_tiles": np.array(tiles[b][j], dtype=np.int64),
            }
            for b in range(len(tiles))
            for j in range(len(tiles[b]))
        ]

    def join(self, samples: Sequence[Sequence[dict[str, np.ndarray]]]) -> Any:
        first = samples[0][0]
        slots = max(len(sample) for sample in samples)
        size = (len(samples), slots)
        pixels = np.zeros(size + first[PIXELS].shape, dtype=first[PIXELS].dtype)
        ids = np.zeros(size, dtype=first["aspect_ratio_ids"].dtype)
        mask = np.zeros(size + first["aspect_ratio_mask"].shape, dtype=first["aspect_ratio_mask"].dtype)
        mask[:, :, 0] = 1
        for b, sample in enumerate(samples):
            for j, entry in enumerate(sample):
                pixels[b, j] = entry[PIXELS]
                ids[b, j] = entry["aspect_ratio_ids"]
                mask[b, j] = entry["aspect_ratio_mask"]
        tiles = [[int(entry["num_tiles"]) for entry in sample] for sample in samples]
        return _tensors(
            {PIXELS: pixels, "aspect_ratio_ids": ids, "aspect_ratio_mask": mask}, {"num_tiles": tiles}
        )


LAYOUTS: dict[str, Any] = {
    "qwen2_vl": _Rows(),
    "qwen2_5_vl": _Rows(),
    "llava": _Stacked(),
    "mllama": _Tiles(),
}

__all__ = [
    "AUTO",
    "CACHE_FORMAT",
    "FileDigests",
    "ProcessorCache",
    "cache_dir",
    "recorded_dir",
    "with_run_cache",
]


def recorded_dir(image: ImageConfig) -> str | None:
    """The cache folder as run records write it (None when off)."""
    root = cache_dir(image)
    return None if root is None else str(root)
