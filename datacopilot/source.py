"""Pipeline input: a :class:`Source` reads its input unit by unit (one unit per file) in record batches, so
memory stays bounded.

Streaming readers: jsonl in line blocks (Arrow's parser per block, the row path for a block it refuses),
parquet and Arrow IPC batch by batch; other formats (json, h5, webdataset) are read one whole file at a time.

>>> src = Source.from_paths("data/*.jsonl", schema="MM")  # doctest: +SKIP
>>> [t.num_rows for t in src.batches(src.units()[0])]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pyarrow as pa

from datacopilot.errors import DataCopilotError, InputError
from datacopilot.io import EXTENSIONS, FORMATS, format_of
from datacopilot.io._common import finish
from datacopilot.io._fs import expand, get_fs, local_path
from datacopilot.media import file_roots, warn_roots
from datacopilot.schemas import Schema
from datacopilot.schemas.builtin import get_schema
from datacopilot.transforms import image_columns

BLOCK_BYTES = 16 << 20
MEMORY = "<memory>"


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

    def batches(self, unit: str, batch_size: int, invalid: str = "raise") -> Iterator[pa.Table]:
        """Tables of at most ``batch_size`` rows from one unit, validated (invalid rows raise or go to
        ``self.bad`` with ``invalid="quarantine"``)."""
        if self.dataset is not None:
            table = self.dataset.to_arrow()
            for start in range(0, table.num_rows, batch_size):
                yield table.slice(start, batch_size)
            return
        fmt = format_of(unit, self.format)
        if fmt.name == "jsonl":
            blocks = self._jsonl(unit, invalid)
        elif fmt.name in ("parquet", "arrow"):
            blocks = self._batched(unit, fmt.name, batch_size, invalid)
        else:
            loaded = fmt.read(unit, self.schema, invalid=invalid)
            blocks = iter([self._take(loaded)])
        for table in blocks:
            table = self._rooted(table, unit)
            for start in range(0, table.num_rows, batch_size):
                yield table.slice(start, batch_size)

    def _take(self, loaded) -> pa.Table:
        self.schema = self.schema or loaded.schema
        self.bad += loaded.bad
        return loaded.table

    def _rooted(self, table: pa.Table, unit: str) -> pa.Table:
        if self.root is None and self.schema is not None:  # files in several directories: absolute-ize
            from datacopilot.transforms import prefix_image_paths

            return prefix_image_paths(table, self.schema, file_roots([unit])[0])
        return table

    def _jsonl(self, path: str, invalid: str) -> Iterator[pa.Table]:
        """Line blocks of about BLOCK_BYTES, each screened (screen.py) and parsed; a line longer than
        screen.MAX_LINE_BYTES is never held whole: it raises, or is quarantined by its first bytes."""
        from datacopilot.io import screen

        fs, p = get_fs(path)
        line0, offset, rest = 1, 0, b""
        try:
            f = fs.open(p, "rb")
        except FileNotFoundError as e:
            raise InputError(f"{path}: no such file") from e
        with f:
            while True:
                chunk = f.read(BLOCK_BYTES)
                data = rest + chunk
                if chunk:
                    cut = data.rfind(b"\n") + 1
                    data, rest = data[:cut], data[cut:]
                if data.strip():
                    yield self._jsonl_block(data, path, line0, invalid, offset)
                line0, offset = line0 + data.count(b"\n"), offset + len(data)
                if not chunk:
                    return
                if len(rest) > screen.MAX_LINE_BYTES:
                    size, rest = self._skip_long_line(f, rest, path, line0, invalid)
                    line0, offset = line0 + 1, offset + size + 1

    def _skip_long_line(self, f, head: bytes, path: str, line: int, invalid: str) -> tuple[int, bytes]:
        """Read past an over-long line, keeping its first bytes for the quarantine: (its size, what follows)."""
        from datacopilot.io import screen

        size, tail = len(head), b""
        while True:
            chunk = f.read(BLOCK_BYTES)
            nl = chunk.find(b"\n")
            if not chunk or nl >= 0:
                size, tail = (size + nl, chunk[nl + 1:]) if nl >= 0 else (size, b"")
                break
            size += len(chunk)
        kept = min(size, screen.QUARANTINE_TEXT_BYTES)
        bad = [(f"{path}:{line}", f"{path}:{line}: line of {size} bytes; at most {screen.MAX_LINE_BYTES} are read "
                f"(datacopilot.io.screen.MAX_LINE_BYTES)",
                head[:kept].decode("utf-8", "backslashreplace") + f" ... ({size - kept} more bytes not kept)")]
        if invalid == "raise":
            screen.raise_flaws(bad)
        self.bad += bad
        return size, tail

    def _jsonl_block(self, data: bytes, path: str, line0: int, invalid: str, offset: int = 0) -> pa.Table:
        from datacopilot.io import screen
        from datacopilot.io.jsonl import read_lines

        data, flawed = screen.screened(data, path, invalid, line0, offset)
        self.bad += flawed
        return self._take(read_lines(data, path, self.schema, invalid, line0))

    def _batched(self, path: str, kind: str, batch_size: int, invalid: str) -> Iterator[pa.Table]:
        local = local_path(path)
        fs, p = get_fs(path)
        if kind == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(local or fs.open(p, "rb"))
            batches = pf.iter_batches(batch_size=batch_size)
        else:
            src = pa.memory_map(local, "r") if local else fs.open(p, "rb")
            try:
                reader = pa.ipc.open_file(src)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            except pa.ArrowInvalid:
                src.seek(0)
                batches = iter(pa.ipc.open_stream(src))
        for i, b in enumerate(batches):
            yield self._take(finish(pa.Table.from_batches([b]), self.schema, path, invalid,
                                    lambda r, i=i: f"{path}: batch {i} row {r}"))

    def to_spec(self) -> dict:
        if self.spec is None:
            raise DataCopilotError("a pipeline over an in-memory dataset has no spec; build it from paths")
        return dict(self.spec)
