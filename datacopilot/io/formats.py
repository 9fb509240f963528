"""The formats: one module of :mod:`datacopilot.io` per format, chosen by extension (or by name), each owning its
reader, its batch reader (whole files or parts of them, :mod:`.parts`) and its writer."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from datacopilot.errors import DataCopilotError, InputError
from datacopilot.schemas import Schema

from .parts import Part


@dataclass(frozen=True)
class Format:
    """One file format: its extensions and the functions of its module (``datacopilot.io.<module>``) that read a
    file whole (``reader``: ``(path, schema, invalid) -> Loaded``), read it in batches (``batches``: ``(path,
    schema, batch_size, invalid) -> Iterator[Loaded]``, the same rows, validation, messages and invalid rows as
    ``reader``, each Loaded a batch of rows in file order with the invalid rows met in it; given a ``part`` of
    the file, only its rows), split it in parts read as tasks (``split``; ``count`` counts what a part holds when
    the split cannot tell the lines or rows before it) and write it."""

    name: str
    extensions: tuple[str, ...]
    module: str
    reader: str
    writer: str
    batches: str
    split: str | None = None  # (path, target bytes, rows per batch) -> its parts (datacopilot.io.parts)
    count: str | None = None  # (path, part) -> the lines or rows it holds, for parts the split could not place
    embeds_images: bool = False  # the writer stores image bytes, so paths need no rebasing
    parses_text: bool = False  # the reader parses text: its scratch memory is handed back after a load

    def _fn(self, attr: str):
        return getattr(importlib.import_module(f"datacopilot.io.{self.module}"), attr)

    def read(self, *args, **kw):
        return self._fn(self.reader)(*args, **kw)

    def write(self, *args, **kw):
        return self._fn(self.writer)(*args, **kw)

    def iter_batches(self, path: str, schema: Schema | None, batch_size: int, invalid: str = "raise",
                     part: Part | None = None):
        """The file's rows (or one ``part``'s, from :meth:`parts`) as :class:`~datacopilot.loading.Loaded`
        batches (see the class docstring); which formats stream and which read a file whole first is said in
        each module's docstring. The parts of a file, read in order, give its whole read's batches."""
        if part is None:
            return self._fn(self.batches)(path, schema, batch_size, invalid)
        return self._fn(self.batches)(path, schema, batch_size, invalid, part)

    def parts(self, path: str, target: int, rows: int) -> list[Part]:
        """The parts of a file for reads of about ``target`` bytes each, batches of ``rows`` rows; none when the
        format does not split or the file is read whole (:mod:`datacopilot.io.parts`)."""
        return self._fn(self.split)(path, target, rows) if self.split else []

    def count_part(self, path: str, part: Part) -> int:
        """What ``part`` holds of the lines or rows the next parts' ``before`` counts."""
        return self._fn(self.count)(path, part)


FORMATS = {f.name: f for f in (
    Format("jsonl", (".jsonl", ".ndjson"), "jsonl", "read_jsonl", "write_jsonl", "iter_jsonl", "split_jsonl",
           "count_jsonl", parses_text=True),
    Format("json", (".json",), "jsonl", "read_json", "write_json", "iter_json", parses_text=True),
    Format("parquet", (".parquet",), "parquet", "read_parquet", "write_parquet", "iter_parquet", "split_parquet"),
    Format("arrow", (".arrow", ".feather", ".ipc"), "ipc", "read_ipc", "write_ipc", "iter_ipc", "split_ipc",
           "count_ipc"),
    Format("h5", (".h5", ".hdf5"), "h5", "read_h5", "write_h5", "iter_h5", parses_text=True),
    Format("webdataset", (".tar",), "wds", "read_wds", "write_wds", "iter_wds", embeds_images=True,
           parses_text=True),
)}
EXTENSIONS = tuple(e for f in FORMATS.values() for e in f.extensions)


def format_of(path: str, format: str | None = None) -> Format:
    if format is not None:
        if format not in FORMATS:
            raise DataCopilotError(f"`format` must be one of {sorted(FORMATS)}, got {format!r}")
        return FORMATS[format]
    p = str(path).lower()
    for f in FORMATS.values():
        if p.endswith(f.extensions):
            return f
    raise InputError(f"{path}: unknown extension; known: {list(EXTENSIONS)} (or pass format=)")


def writer_for(format: str):
    return FORMATS[format].write
