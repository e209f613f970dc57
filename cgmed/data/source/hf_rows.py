"""Reading the rows of one source split of a Hugging Face dataset: its columns in Arrow batches (for
indexing) and the undecoded images of chosen rows (for building), whatever holds the split.

- :class:`ParquetSplit`: local Parquet files, read with pyarrow in streaming record batches. Nothing
  is converted or held open, so peak memory does not grow with the row count (``datasets``' own
  Arrow copy keeps a few KB of metadata per record batch, and it writes one every 100 rows of an
  image dataset).
- :class:`DatasetsSplit`: a ``datasets.Dataset`` (memory-mapped Arrow, read by row number) or
  ``IterableDataset`` (read forward to the chosen rows).

Images come back as ``datasets.Image(decode=False)`` values: ``{"bytes", "path"}`` dicts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from cgmed.errors import DataError

_LOAD_CHUNK = 256  # rows per read of image bytes


class SplitRows(Protocol):
    """The rows of one source split, as the reader of ``data=hf`` reads them."""

    features: Any  # datasets.Features, the image column as Image(decode=False)

    def column_batches(self, columns: list[str], batch_size: int) -> Iterator[Any]:
        """The rows in order, ``columns`` only, as Arrow batches (``.column(name)``, ``.num_rows``)."""
        ...

    def images_at(self, column: str, rows: list[int], where: str) -> Iterator[Any]:
        """The undecoded images of ``rows`` (ascending); DataError naming ``where`` if rows are gone."""
        ...


class ParquetSplit:
    """A split held as Parquet files, rows numbered across the files in order."""

    def __init__(self, files: list[str], features: Any, image_column: str):
        self.files = files
        self.features = features
        self.image_column = image_column

    def column_batches(self, columns: list[str], batch_size: int) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for file in self.files:
            with pq.ParquetFile(file) as parquet:
                for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
                    table = pa.Table.from_batches([batch])
                    if self.image_column in columns:
                        at = table.schema.get_field_index(self.image_column)
                        images = self._storage(table.column(at).combine_chunks())
                        table = table.set_column(at, self.image_column, images)
                    yield table

    def images_at(self, column: str, rows: list[int], where: str) -> Iterator[Any]:
        """Only the row groups that hold a chosen row are read (the unit a Parquet file is written in;
        writers keep them small for image data, ``datasets`` at 100 rows)."""
        import pyarrow.parquet as pq

        wanted = iter(rows)
        next_row = next(wanted, None)
        start = 0  # the number of the first row of the current row group
        for file in self.files:
            with pq.ParquetFile(file) as parquet:
                for group in range(parquet.num_row_groups):
                    if next_row is None:
                        return
                    end, local = start + parquet.metadata.row_group(group).num_rows, []
                    while next_row is not None and next_row < end:
                        local.append(next_row - start)
                        next_row = next(wanted, None)
                    if local:
                        images = parquet.read_row_group(group, columns=[column]).column(0).take(local)
                        yield from self._storage(images.combine_chunks()).to_pylist()
                    start = end
        if next_row is not None:
            raise _rows_gone(where, next_row)

    def _storage(self, images: Any) -> Any:
        """Image values as ``{"bytes", "path"}`` structs (a column of paths cast as ``datasets`` casts it)."""
        return self.features[self.image_column].cast_storage(images)


class DatasetsSplit:
    """A split opened by ``datasets``: a memory-mapped ``Dataset`` or an ``IterableDataset``."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.features = dataset.features

    def column_batches(self, columns: list[str], batch_size: int) -> Iterator[Any]:
        selected = self.dataset.select_columns(columns).with_format("arrow")
        yield from selected.iter(batch_size=batch_size)

    def images_at(self, column: str, rows: list[int], where: str) -> Iterator[Any]:
        import datasets

        images = self.dataset.select_columns([column])
        if not isinstance(images, datasets.IterableDataset):
            for start in range(0, len(rows), _LOAD_CHUNK):
                yield from images[rows[start : start + _LOAD_CHUNK]][column]
            return
        wanted = iter(rows)
        next_row = next(wanted, None)
        for row, record in enumerate(images):
            while next_row == row:
                yield record[column]
                next_row = next(wanted, None)
            if next_row is None:
                return
        raise _rows_gone(where, next_row)


def _rows_gone(where: str, row: int | None) -> DataError:
    return DataError(
        where,
        f"ends before row {row}, which it held when it was indexed",
        "do not change a dataset while a build reads it; run again",
    )
