"""Arrow IPC (Feather v2) reader and writer. Local files are memory-mapped: the dataset's buffers point
into the page cache, so holding shards larger than RAM costs little resident memory. :func:`iter_ipc` streams
a file (the file or the stream format) record batch by record batch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext

import pyarrow as pa
import pyarrow.ipc as ipc

from datacopilot.errors import InputError
from datacopilot.loading import Loaded
from datacopilot.schemas import Schema

from ._common import finish, with_schema_metadata
from ._fs import atomic_open, get_fs, local_path, read_bytes
from .hf_features import decode_json_features


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


def iter_ipc(path: str, schema: Schema | None, batch_size: int, invalid: str = "raise") -> Iterator[Loaded]:
    """The rows of one Arrow IPC file (file or stream format; a URL read through fsspec, not whole) in batches
    of at most ``batch_size`` rows, record batch by record batch, each validated as :func:`read_ipc` validates
    a file (messages name the row in the file); the schema detected on the first batch reads the others.

    >>> [ld.table.num_rows for ld in iter_ipc("shard.arrow", None, 4096)]  # doctest: +SKIP
    [4096, 4096, 1808]
    """
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
            arrow_schema = reader.schema
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            source.seek(0)
            reader = ipc.open_stream(source)
            arrow_schema, batches = reader.schema, iter(reader)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{unreadable}: {e}") from e
    with nullcontext() if local else source:  # a URL's file is closed; a memory map stays for the batches
        row0 = 0
        while True:
            try:
                b = next(batches, None)
            except (pa.ArrowInvalid, OSError) as e:
                raise InputError(f"{unreadable}: {e}") from e
            if b is None:
                return
            for start in range(0, b.num_rows, batch_size):  # a writer's record batches may be large: cut them
                part = pa.Table.from_batches([b.slice(start, batch_size)])
                part = decode_json_features(part.replace_schema_metadata(arrow_schema.metadata), path, row0)
                loaded = finish(part, schema, path, invalid, lambda i, row0=row0: f"{path}: row {row0 + i}")
                schema, row0 = schema or loaded.schema, row0 + part.num_rows
                yield loaded


def write_ipc(ds, path: str, compression: str | None = None) -> None:
    """Uncompressed by default, so readers can memory-map it; ``compression="zstd"`` for smaller files."""
    table = with_schema_metadata(ds.to_arrow(), ds.schema)
    opts = ipc.IpcWriteOptions(compression=compression)
    with atomic_open(path, "wb") as f:
        with ipc.new_file(f, table.schema, options=opts) as w:
            w.write_table(table, max_chunksize=64 * 1024)
