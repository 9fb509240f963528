"""Parquet reader and writer. :func:`iter_parquet` streams a file in batches of rows (Arrow's
``ParquetFile.iter_batches``: at most a row group decoded at a time), each validated as :func:`read_parquet`
validates a file."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datacopilot.errors import InputError
from datacopilot.loading import Loaded
from datacopilot.schemas import Schema

from ._common import finish, with_schema_metadata
from ._fs import atomic_open, get_fs, local_path
from .hf_features import decode_json_features
from .parts import Part
from datacopilot.lossless import fill_empty_structs

DICT_SAMPLE = 1_000  # rows of each column looked at to decide on dictionary encoding
DICT_MAX_DISTINCT = 0.25  # dictionary-encode a column when fewer than this share of its sampled values differ
ROW_GROUP_BYTES = 8 << 20  # about this much Arrow data per row group
MIN_ROW_GROUP_ROWS, MAX_ROW_GROUP_ROWS = 100, 1 << 20  # but never fewer or more rows than these
HEAD_ROWS = 4096  # the first rows of a file that decide its layout (rows per row group, dictionary columns)


def read_parquet(path: str, schema: Schema | None, invalid: str = "raise") -> Loaded:
    """Read one parquet file (a local path through Arrow's own file reader, a URL through fsspec), then
    conform and validate it to ``schema`` (detected when None).

    >>> read_parquet("train.parquet", None).table.num_rows  # doctest: +SKIP
    """
    local = local_path(path)
    try:
        if local is not None:
            table = pq.read_table(local, memory_map=True)  # no copy of the file's pages (a few ms a read)
        else:
            fs, p = get_fs(path)
            table = pq.read_table(p, filesystem=fs)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable parquet file: {e}") from e
    return finish(decode_json_features(table, path), schema, path, invalid)


def iter_parquet(path: str, schema: Schema | None, batch_size: int, invalid: str = "raise",
                 part: Part | None = None) -> Iterator[Loaded]:
    """The rows of one parquet file (or of one ``part`` of it, :func:`split_parquet`) in batches of at most
    ``batch_size`` rows, each conformed and validated as :func:`read_parquet` does the whole file (messages name
    the row in the file); the schema detected on the first batch (when ``schema`` is None) reads the others.

    >>> [ld.table.num_rows for ld in iter_parquet("train.parquet", None, 1000)]  # doctest: +SKIP
    [1000, 1000, 412]
    """
    with _open(path) as pf:
        arrow_schema = pf.schema_arrow
        batches, row0 = _batches(pf, batch_size, part), 0 if part is None else part.start
        while True:
            try:
                b = next(batches, None)
            except (OSError, ValueError) as e:
                raise InputError(f"{path}: not a readable parquet file: {e}") from e
            if b is None:
                return
            table = b.replace_schema_metadata(arrow_schema.metadata)
            table = decode_json_features(table, path, row0)
            loaded = finish(table, schema, path, invalid, lambda i, row0=row0: f"{path}: row {row0 + i}")
            schema, row0 = schema or loaded.schema, row0 + b.num_rows
            yield loaded


@contextmanager
def _open(path: str):
    local, handle = local_path(path), None
    try:
        if local is not None:
            pf = pq.ParquetFile(local, memory_map=True)
        else:
            fs, p = get_fs(path)
            handle = fs.open(p, "rb")
            pf = pq.ParquetFile(handle)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable parquet file: {e}") from e
    with pf, handle if handle is not None else nullcontext():
        yield pf


def _batches(pf, batch_size: int, part: Part | None) -> Iterator[pa.Table]:
    """Tables of the file's rows ``[k * size, (k + 1) * size)`` (``size``: the part's step, else ``batch_size``),
    as ``iter_batches`` cuts the whole file; of a part, only its rows."""
    md = pf.metadata
    starts = np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)])
    part = part or Part(0, 0, int(starts[-1]), 0, batch_size)
    size = part.step or batch_size
    if part.end <= part.start:
        return
    lo = int(np.searchsorted(starts, part.start, side="right")) - 1
    hi = int(np.searchsorted(starts, part.end, side="left"))
    skip, left, held = part.start - int(starts[lo]), part.end - part.start, []
    for b in pf.iter_batches(batch_size=size, row_groups=list(range(lo, hi))):
        if skip >= b.num_rows:
            skip -= b.num_rows
            continue
        b, skip = b.slice(skip), 0
        held.append(b.slice(0, left))
        left -= held[-1].num_rows
        while held and (left == 0 or sum(h.num_rows for h in held) >= size):
            table = pa.Table.from_batches(held).combine_chunks()
            yield table.slice(0, size)
            held = [r for r in table.slice(size).to_batches() if r.num_rows]
        if left == 0:
            return


def split_parquet(path: str, target: int, rows: int) -> list[Part]:
    """The parts of a parquet file for reads of about ``target`` bytes of data each (row groups' sizes added up):
    row ranges starting at a multiple of ``rows`` (the rows per batch of the read), so that each part's batches
    are the whole file's; none (read it whole) when the file has one part."""
    with _open(path) as pf:
        md = pf.metadata
        cuts, held, at = [0], 0, 0
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            if held >= target and at > cuts[-1]:
                cuts.append(at)
                held = 0
            held, at = held + rg.total_byte_size, at + rg.num_rows
    cuts = sorted({min(-(-c // rows) * rows, at) for c in cuts} | {at})
    if len(cuts) < 3:
        return []
    return [Part(k, a, b, a, rows) for k, (a, b) in enumerate(zip(cuts, cuts[1:]))]


COMPRESSION = "lz4"  # LZ4_RAW: files as small as snappy's that Arrow and polars read about twice as fast


def write_parquet(ds, path: str, compression: str = COMPRESSION, use_dictionary: bool | list[str] | None = None,
                  **options) -> None:
    """Write ``ds`` to one parquet file, atomically. Compressed with LZ4 (``LZ4_RAW``) by default: about the
    size snappy gives and about half the time to read back (100k LLaVA rows: 35 MB either way, a read of
    0.06 s instead of 0.11 s). Readers older than parquet-format 2.9 (Spark before 3.3) do not know LZ4_RAW:
    give ``compression="snappy"`` for them, ``"zstd"`` for smaller files. By default only the columns whose
    values repeat get a dictionary (see :func:`dictionary_columns`); ``use_dictionary=True`` asks for it
    everywhere. Other ``options`` go to :func:`pyarrow.parquet.write_table`.

    >>> write_parquet(ds, "out.parquet")  # doctest: +SKIP
    """
    table = parquet_table(ds)
    if use_dictionary is None:
        use_dictionary = dictionary_columns(table)
    options.setdefault("row_group_size", row_group_rows(table, ROW_GROUP_BYTES))
    with atomic_open(path, "wb") as f:
        pq.write_table(table, f, compression=compression, use_dictionary=use_dictionary, **options)


def parquet_table(ds) -> pa.Table:
    """The table a parquet file of ``ds`` holds: the schema's name in its metadata, no ``struct<>`` (parquet
    holds none). Row by row: the table of some of the rows is those rows of the whole one's."""
    return with_schema_metadata(fill_empty_structs(ds.to_arrow()), ds.schema)


class ParquetStream:
    """One parquet file written a row group at a time, with :func:`write_parquet`'s defaults: its layout (rows
    per row group, dictionary columns) is decided by ``head``, the file's first :data:`HEAD_ROWS` rows (all of
    them when it has fewer; from :func:`parquet_table`), so a file written row group by row group, each one
    table of its rows combined, has the bytes :func:`write_parquet` gives the whole file."""

    def __init__(self, f, head: pa.Table):
        self.rows = row_group_rows(head, ROW_GROUP_BYTES)
        self.writer = pq.ParquetWriter(f, head.schema, compression=COMPRESSION,
                                       use_dictionary=dictionary_columns(head))

    def write(self, table: pa.Table) -> None:
        """Write ``table`` (at most :attr:`rows` rows) as the next row group."""
        self.writer.write_table(table.combine_chunks(), row_group_size=self.rows)

    def close(self) -> None:
        self.writer.close()


def row_group_rows(table: pa.Table, target: int = ROW_GROUP_BYTES) -> int:
    """Rows per row group so that each holds about ``target`` bytes of Arrow data (the bytes per row of the
    first :data:`HEAD_ROWS` rows): readers decode row groups in parallel, and one row group holding a whole file
    leaves one thread decoding its text column.

    >>> row_group_rows(pa.table({"x": pa.array(range(10_000), pa.int64())}), target=16_000)
    2000
    """
    if table.num_rows == 0:
        return MIN_ROW_GROUP_ROWS
    k = min(table.num_rows, HEAD_ROWS)  # the first rows, combined: chunks and slice offsets change no byte
    per_row = max(table.slice(0, k).combine_chunks().nbytes / k, 1.0)
    return max(MIN_ROW_GROUP_ROWS, min(MAX_ROW_GROUP_ROWS, int(target / per_row)))


def dictionary_columns(table: pa.Table, sample: int = DICT_SAMPLE) -> list[str]:
    """The parquet column paths (``conversations.list.element.from``) whose first ``sample`` values repeat: fewer
    than :data:`DICT_MAX_DISTINCT` of them distinct. Dictionary-encoding unique values (ids, texts, image bytes)
    costs time for nothing; Arrow's default tries it on every column.

    >>> dictionary_columns(pa.table({"id": list("abcdefghij"), "role": ["user", "bot"] * 5}))
    ['role']
    """
    head = table.slice(0, sample)
    out = []
    for name, col in zip(head.column_names, head.columns):
        for path, values in _leaves(name, col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)):
            n = len(values) - values.null_count
            try:
                if n == 0 or pc.count_distinct(values).as_py() < DICT_MAX_DISTINCT * n:
                    out.append(path)
            except pa.ArrowNotImplementedError:  # a type count_distinct does not take: no dictionary
                pass
    return out


def _leaves(path: str, arr: pa.Array) -> Iterator[tuple[str, pa.Array]]:
    """(parquet column path, values) of every leaf of a possibly nested column (lists as ``list.element``)."""
    t = arr.type
    if pa.types.is_struct(t):
        for field, child in zip(t, arr.flatten()):
            yield from _leaves(f"{path}.{field.name}", child)
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        yield from _leaves(f"{path}.list.element", arr.flatten())
    elif not pa.types.is_map(t):  # map columns are written without a dictionary
        yield path, arr
