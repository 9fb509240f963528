"""Pipeline input: a :class:`Source` reads its input unit by unit (one unit per file) in record batches, so
memory stays bounded.

Each file is read by its format's batch reader (``Format.batches``, in ``datacopilot.io.<module>``): jsonl in
line blocks, parquet and Arrow IPC batch by batch, h5 in row ranges, webdataset a batch of samples at a time;
a JSON array file is read whole, then handed out in batches. A big file can also be read in parts
(:meth:`Source.parts`, :mod:`datacopilot.io.parts`), each its own task on Ray; read in order, they give the rows
and invalid rows of the whole file.

>>> src = Source.from_paths("data/*.jsonl", schema="MM")  # doctest: +SKIP
>>> [t.num_rows for t in src.batches(src.units()[0], 1024)]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pyarrow as pa

from datacopilot.errors import DataCopilotError
from datacopilot.io import EXTENSIONS, FORMATS, format_of
from datacopilot.io.fs import expand
from datacopilot.io.parts import Part
from datacopilot.media import file_roots, warn_roots
from datacopilot.schemas import Schema
from datacopilot.schemas.builtin import get_schema
from datacopilot.transforms import image_columns

MEMORY = "<memory>"
DETECT_ROWS = 50  # rows a reader reads at least at a time while it detects the schema (guess_schema looks at 50)


class Source:
    """Where a pipeline's rows come from: an MMDataset (one unit) or files (one unit per file)."""

    def __init__(self, dataset=None, paths: list[str] | None = None, schema: Schema | None = None,
                 format: str | None = None, root: str | None = None, spec=None):
        self.dataset, self.paths, self.format, self.spec = dataset, paths, format, spec
        self.schema = dataset.schema if dataset is not None else schema
        if root is None and dataset is not None:
            root = dataset.root
        if root is None and paths:
            dirs = set(file_roots(paths))  # a manifest's recorded root, else the files' directory
            root = dirs.pop() if len(dirs) == 1 else None
            if root is None and (schema is None or image_columns(schema)):  # as dc.load warns, before reading
                warn_roots(sorted(dirs), "files", "relative image paths are made absolute, each against its "
                           "file's root", stacklevel=5)
        self.root = root
        self.bad: list = []  # invalid input rows: (where, message, raw)

    @classmethod
    def from_dataset(cls, ds) -> Source:
        return cls(dataset=ds)

    @classmethod
    def from_paths(cls, paths, schema=None, format: str | None = None, root: str | None = None) -> Source:
        """Files, globs, directories (local or fsspec), expanded now so missing inputs fail early."""
        if format is not None and format not in FORMATS:
            raise DataCopilotError(f"`format` must be one of {sorted(FORMATS)}, got {format!r}")
        files = expand(paths, EXTENSIONS if format is None else FORMATS[format].extensions)
        s = get_schema(schema) if schema is not None else None
        spec = {"paths": [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]}
        if format:
            spec["format"] = format
        if s is not None:
            spec["schema"] = s.name
        if root is not None:
            spec["root"] = os.fspath(root)
        return cls(paths=files, schema=s, format=format, root=root, spec=spec)

    def units(self) -> list[str]:
        """The input units, in order: file paths, or ``["<memory>"]``."""
        return [MEMORY] if self.dataset is not None else list(self.paths)

    def columns(self) -> list[str] | None:
        """The input's columns when known before reading (a dataset, or a given schema)."""
        if self.dataset is not None:
            return self.dataset.columns
        return [f.name for f in self.schema.fields] if self.schema is not None else None

    def parts(self, unit: str, target: int, batch_size: int) -> list[Part]:
        """The parts of a file for reads of about ``target`` bytes each (:mod:`datacopilot.io.parts`), for
        :meth:`batches` of ``batch_size`` rows; none when it is read whole (a dataset, a small or compressed file,
        a format that does not split). Parts whose ``before`` is None need :meth:`count` first."""
        if self.dataset is not None:
            return []
        return format_of(unit, self.format).parts(unit, target, self._rows(batch_size))

    def count(self, unit: str, part: Part) -> int:
        """The lines or rows ``part`` of a file holds, for the ``before`` of the parts after it."""
        return format_of(unit, self.format).count_part(unit, part)

    def _rows(self, batch_size: int) -> int:
        return batch_size if self.schema is not None else max(batch_size, DETECT_ROWS)

    def batches(self, unit: str, batch_size: int, invalid: str = "raise", part: Part | None = None
                ) -> Iterator[pa.Table]:
        """Tables of at most ``batch_size`` rows from one unit (or one ``part`` of a file, from :meth:`parts`),
        validated (invalid rows raise or go to ``self.bad`` with ``invalid="quarantine"``). A file is read by its
        format's batch reader (:meth:`datacopilot.io.Format.iter_batches`); the schema it detects on the first
        batch is kept. The parts of a file, read in order (the first with this source's schema, the others with
        the schema that left the source after the first), give the rows and invalid rows of the whole file."""
        if self.dataset is not None:
            table = self.dataset.to_arrow()
            for start in range(0, table.num_rows, batch_size):
                yield table.slice(start, batch_size)
            return
        fmt = format_of(unit, self.format)
        for loaded in fmt.iter_batches(unit, self.schema, self._rows(batch_size), invalid, part):
            self.schema = self.schema or loaded.schema
            self.bad += loaded.bad
            if not loaded.table.num_rows:
                continue
            table = self._rooted(loaded.table, unit)
            for start in range(0, table.num_rows, batch_size):
                yield table.slice(start, batch_size)

    def _rooted(self, table: pa.Table, unit: str) -> pa.Table:
        if self.root is None and self.schema is not None:  # files in several directories: absolute-ize
            from datacopilot.transforms import prefix_image_paths

            return prefix_image_paths(table, self.schema, file_roots([unit])[0])
        return table

    def to_spec(self) -> dict:
        if self.spec is None:
            raise DataCopilotError("a pipeline over an in-memory dataset has no spec; build it from paths")
        return dict(self.spec)
