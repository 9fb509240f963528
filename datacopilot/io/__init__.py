"""Readers and writers, one module per format, chosen by extension. Every path may be an fsspec URL."""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass

import pyarrow as pa
from tqdm.auto import tqdm

from datacopilot.errors import DataCopilotError, InputError
from datacopilot.history import OpRecord
from datacopilot.loading import check_invalid_policy, split_invalid
from datacopilot.schemas import Schema, get_schema

from ._fs import expand, parent
from .formats import EXTENSIONS, FORMATS, Format, format_of, writer_for  # noqa: F401 (re-exported)
from .detect_files import read_files
from .shards import verify_shards, write_shards


@dataclass
class Read:
    """What :func:`read` gives the dataset facade: the valid rows, their schema and root, the invalid rows
    (``(where, message, raw)``) and the record of the read."""

    table: pa.Table
    schema: Schema
    root: str | None
    bad: list
    record: OpRecord


def read(paths, schema: "Schema | str | None" = None, format: str | None = None, invalid: str = "raise",
         root: str | None = None, progress: bool | None = None, partial: bool = False, verify: bool = False
         ) -> Read:
    """Read files (or an in-memory table or frame) as rows, a schema and the invalid rows; the parameters are
    :func:`datacopilot.load`'s, which wraps the result in an MMDataset."""
    check_invalid_policy(invalid)
    s = get_schema(schema) if schema is not None else None
    t0 = time.perf_counter()
    obj = _from_object(paths, s)
    if obj is not None:  # in-memory data is validated like files are
        label = f"<{type(paths).__name__}>"
        loaded = split_invalid(obj[0], obj[1], lambda i: f"{label} row {i}", invalid)
        return _assemble([loaded.table], loaded.schema, root, loaded.bad, f"load {label}", t0)
    from .hf_disk import is_hf_disk, read_hf_disk

    if format is None and is_hf_disk(paths):  # HF save_to_disk: its Arrow files memory-mapped
        loaded = read_hf_disk(str(paths), s, invalid)
        return _assemble([loaded.table], loaded.schema, root, loaded.bad, "load 1 save_to_disk directory", t0)
    exts = EXTENSIONS if format is None else FORMATS[format].extensions
    files = expand(paths, exts, partial=partial, verify=verify)
    shown = tqdm(files, desc="load", unit="file", disable=not (progress or (progress is None and len(files) > 20)),
                 leave=False)
    loads, s = read_files(shown, s, lambda p, sch, invalid: format_of(p, format).read(p, sch, invalid=invalid),
                          invalid)  # the schema detected on every non-empty file; files that disagree raise
    tables, bad = [ld.table for ld in loads], [b for ld in loads for b in ld.bad]
    from datacopilot.media import settle_roots

    tables, root = settle_roots(tables, s, files, root)  # a manifest's recorded root; warns if paths change
    parsed = any(format_of(p, format).parses_text for p in files)
    return _assemble(tables, s, root, bad, f"load {len(files)} file(s)", t0, release=parsed)


def _assemble(tables: list, schema: Schema, root, bad: list, label: str, t0: float, release: bool = False) -> Read:
    from datacopilot.schemas.arrow_build import concat_tables

    table = concat_tables(tables, schema)
    if release:  # hand the text parsers' scratch memory back to the OS (costs about 10 ms: not after a binary read)
        pa.default_memory_pool().release_unused()
    rec = OpRecord(label, table.num_rows + len(bad), table.num_rows,
                   {"invalid row (quarantined)": len(bad)} if bad else {}, 0, time.perf_counter() - t0)
    return Read(table, schema, root, bad, rec)


def _from_object(obj, schema) -> tuple[pa.Table, Schema] | None:
    """An in-memory table or frame as (table, schema); None for paths."""
    from datacopilot import interop
    from datacopilot.schemas import resolve_schema

    from .hf_features import decode_json_features

    mod = type(obj).__module__.split(".")[0]
    if isinstance(obj, pa.Table):
        table = obj
    elif mod == "polars":
        table = interop.from_polars_table(obj.to_arrow())
    elif mod == "pandas":
        table = interop.from_pandas_table(obj)
    elif mod == "datasets":
        table = decode_json_features(interop.from_hf(obj))
    elif isinstance(obj, (str, os.PathLike, list, tuple)):
        return None
    else:
        raise DataCopilotError(f"cannot load {type(obj).__name__}: give paths, a polars/pandas DataFrame, "
                               "an HF dataset or an Arrow table")
    s = resolve_schema(table, schema)
    return s.conform(table), s


def write(ds, path: str, format: str | None = None, image_paths: str = "keep", **options) -> str:
    """Write ``ds`` to ``path`` atomically; the format comes from the extension unless given. Returns the path.

    Image paths are written exactly as they are in the rows (``image_paths="keep"``); when they are relative
    and their root is not the file's directory, a log line names the root to load the file with. Ask for
    ``"relative"`` (to the file's directory) or ``"absolute"`` to rewrite them; the rewrite is logged.

    >>> dc.write(ds, "out/llava.jsonl")  # doctest: +SKIP
    'out/llava.jsonl'
    >>> dc.load("out/llava.jsonl", root="/data/images")  # doctest: +SKIP
    """
    from datacopilot.media import image_paths_for, say_image_paths

    fmt = format_of(path, format)
    ds, paths = image_paths_for(ds, parent(path), image_paths, embeds=fmt.embeds_images)
    fmt.write(ds, path, **options)
    say_image_paths(path, paths, recorded=False)
    return path


__all__ = ["FORMATS", "Read", "read", "write", "write_shards", "verify_shards", "format_of"]
