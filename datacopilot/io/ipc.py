"""Arrow IPC (Feather v2) reader and writer. Local files are memory-mapped: the dataset's buffers point
into the page cache, so holding shards larger than RAM costs little resident memory. :func:`iter_ipc` streams
a file (the file or the stream format) record batch by record batch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import pyarrow as pa
import pyarrow.ipc as ipc

from datacopilot.errors import InputError
from datacopilot.loading import Loaded
from datacopilot.schemas import Schema

from ._common import finish, with_schema_metadata
from ._fs import atomic_open, get_fs, local_path, read_bytes
from .hf_features import decode_json_features
from .parts import Part


def read_ipc(path: str, schema: Schema | None, invalid: str = "raise") -> Loaded:
    local = local_path(path)
    try:
        source = pa.memory_map(local, "r") if local else pa.BufferReader(read_bytes(path))
        try:
            table = ipc.open_file(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            table = ipc.open_stream(source).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a readable Arrow IPC file (truncated or another format?): {e}") from e
    return finish(decode_json_features(table, path), schema, path, invalid)  # HF arrow files too


def iter_ipc(path: str, schema: Schema | None, batch_size: int, invalid: str = "raise",
             part: Part | None = None) -> Iterator[Loaded]:
    """The rows of one Arrow IPC file (file or stream format; a URL read through fsspec, not whole), or of one
    ``part`` of it (:func:`split_ipc`), in batches of at most ``batch_size`` rows, record batch by record batch,
    each validated as :func:`read_ipc` validates a file (messages name the row in the file); the schema detected
    on the first batch reads the others.

    >>> [ld.table.num_rows for ld in iter_ipc("shard.arrow", None, 4096)]  # doctest: +SKIP
    [4096, 4096, 1808]
    """
    unreadable = f"{path}: not a readable Arrow IPC file (truncated or another format?)"
    with _open(path) as (reader, _):
        if part is not None:
            batches = (reader.get_batch(i) for i in range(part.start, part.end))
        elif isinstance(reader, ipc.RecordBatchFileReader):
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(reader)
        arrow_schema, row0 = reader.schema, 0 if part is None else part.before
        batch_size = part.step if part is not None and part.step else batch_size
        while True:
            try:
                b = next(batches, None)
            except (pa.ArrowInvalid, OSError) as e:
                raise InputError(f"{unreadable}: {e}") from e
            if b is None:
                return
            for start in range(0, b.num_rows, batch_size):  # a writer's record batches may be large: cut them
                piece = pa.Table.from_batches([b.slice(start, batch_size)])
                piece = decode_json_features(piece.replace_schema_metadata(arrow_schema.metadata), path, row0)
                loaded = finish(piece, schema, path, invalid, lambda i, row0=row0: f"{path}: row {row0 + i}")
                schema, row0 = schema or loaded.schema, row0 + piece.num_rows
                yield loaded


@contextmanager
def _open(path: str):
    """(a file or stream reader, its source) of an Arrow IPC file; a URL's file is closed after, a memory map
    stays (the batches read point into it)."""
    local = local_path(path)
    unreadable = f"{path}: not a readable Arrow IPC file (truncated or another format?)"
    try:
        if local:
            source = pa.memory_map(local, "r")
        else:
            fs, p = get_fs(path)
            source = fs.open(p, "rb")
        try:
            reader = ipc.open_file(source)
        except pa.ArrowInvalid:
            source.seek(0)
            reader = ipc.open_stream(source)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{unreadable}: {e}") from e
    with nullcontext() if local else source:
        yield reader, source


def split_ipc(path: str, target: int, rows: int) -> list[Part]:
    """The parts of an Arrow IPC file for reads of about ``target`` bytes each: runs of whole record batches (a
    local file's sizes and rows are read from its memory map; a URL's batches are cut evenly by count, their rows
    counted by :func:`count_ipc`), each cut in batches of ``rows`` rows as the whole read cuts them; none (read
    it whole) for the stream format, which has no index of its batches, or a file of one part."""
    with _open(path) as (reader, _):
        if not isinstance(reader, ipc.RecordBatchFileReader) or reader.num_record_batches < 2:
            return []
        n = reader.num_record_batches
        if local_path(path) is None:
            fs, p = get_fs(path)
            per = max(1, int(target * n // max(fs.size(p), 1)))
            cuts = list(range(0, n, per)) + [n]
            return [] if len(cuts) < 3 else [Part(k, a, b, 0 if k == 0 else None, rows)
                                             for k, (a, b) in enumerate(zip(cuts, cuts[1:]))]
        parts, first, held, before, rows_held = [], 0, 0, 0, 0
        for i in range(n):
            b = reader.get_batch(i)
            if held >= target and i > first:
                parts.append(Part(len(parts), first, i, before, rows))
                first, held, before = i, 0, before + rows_held
                rows_held = 0
            held, rows_held = held + b.nbytes, rows_held + b.num_rows
        parts.append(Part(len(parts), first, n, before, rows))
    return parts if len(parts) > 1 else []


def count_ipc(path: str, part: Part) -> int:
    """The rows of the record batches ``[part.start, part.end)`` of an Arrow IPC file."""
    with _open(path) as (reader, _):
        return sum(reader.get_batch(i).num_rows for i in range(part.start, part.end))


def write_ipc(ds, path: str, compression: str | None = None) -> None:
    """Uncompressed by default, so readers can memory-map it; ``compression="zstd"`` for smaller files."""
    table = with_schema_metadata(ds.to_arrow(), ds.schema)
    opts = ipc.IpcWriteOptions(compression=compression)
    with atomic_open(path, "wb") as f:
        with ipc.new_file(f, table.schema, options=opts) as w:
            w.write_table(table, max_chunksize=64 * 1024)
