"""HDF5 in PaddleMIX DataCopilot's own layout, read and written.

Layout of one file (as DataCopilot's ``export_h5`` writes it and ``from_h5`` reads it):

- ``dataset``: a 1-D ``uint8`` array, the compact JSON text (``separators=(",", ":")``) of every row, one after
  another, with nothing in between;
- ``offset``: a 1-D ``uint32`` array with one entry per row, the *start* of that row in ``dataset``. Row ``i``
  ends where row ``i + 1`` starts; the last row ends at the end of ``dataset``. So the first offset is 0 and a
  file can hold at most 4 GiB of JSON.

DataCopilot writes no other datasets or attributes; we add one attribute, ``datacopilot.schema`` (the schema's
name), which DataCopilot ignores. DataCopilot names multi-file exports ``{part}-part-{i:05d}_{j:04d}.h5``: ``i``
is the chunk of rows, ``j`` counts the files one chunk spilled into when it passed the size cap
(100 MB by default); :func:`write_h5_parts` writes the same names. Rows are the JSON rows of the schema (MM:
``image`` as a path string); an image that carries bytes is written as ``{"path", "bytes_base64"}``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from datacopilot.errors import DataCopilotError, InputError, SchemaError
from datacopilot.loading import Loaded, load_rows
from datacopilot.schemas import BUILTIN, Json, Schema

from ._fs import atomic_open, get_fs, join, local_path, read_bytes
from datacopilot.lossless import json_parse_may_lose
from ._common import file_arrow_schema, finish, parse_json_records
from .json_write import encode_rows, iter_json_rows

SCHEMA_ATTR = "datacopilot.schema"
MAX_BYTES = 100 * 1000 * 1000  # DataCopilot's default size cap per file
MAX_OPENERS = 512  # a file with a row holding more opening brackets than this is parsed row by row in Python
_UINT32_MAX = 2**32 - 1


# -- reading --------------------------------------------------------------------------------------------
def _datasets(f, path: str):
    """(dataset, offset, schema name attribute) of an open file; InputError if it is not a DataCopilot file."""
    missing = [k for k in ("dataset", "offset") if k not in f]
    if missing:
        raise InputError(f"{path}: not a DataCopilot h5 file: no {' or '.join(repr(m) for m in missing)} "
                         f"dataset (found {sorted(f.keys())})")
    data, offset = f["dataset"], f["offset"]
    for name, d in (("dataset", data), ("offset", offset)):
        if d.ndim != 1 or d.dtype.kind not in "ui":
            raise InputError(f"{path}: {name!r} must be a 1-D integer array, got shape {d.shape} "
                             f"dtype {d.dtype}")
    name = f.attrs.get(SCHEMA_ATTR)
    return data, offset, (name.decode() if isinstance(name, bytes) else name)


def _unreadable(path: str, e: Exception) -> InputError:
    if isinstance(e, FileNotFoundError):
        return InputError(f"{path}: no such file")
    return InputError(f"{path}: not a readable h5 file (truncated or corrupt?): {e}")


_H5_ERRORS = (OSError, KeyError, ValueError, RuntimeError)  # how h5py reports corrupt or truncated files


def _read_arrays(path: str) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(data bytes as uint8, offsets, schema name attribute) of one file; InputError if it is not one."""
    local = local_path(path)
    source = local if local is not None else io.BytesIO(read_bytes(path))
    try:
        with h5py.File(source, "r") as f:
            data, offset, name = _datasets(f, path)
            return np.asarray(data[()]), np.asarray(offset[()], dtype=np.int64), name
    except InputError:
        raise
    except _H5_ERRORS as e:
        raise _unreadable(path, e) from e


def _check_offsets(path: str, offsets: np.ndarray, size: int) -> None:
    _check_offset_parts(path, len(offsets), size, lambda: [(0, offsets)])


def _check_offset_parts(path: str, n: int, size: int, parts) -> None:
    """The checks of the ``n`` row offsets of a file whose dataset holds ``size`` bytes, in file order: the
    first is 0, none is out of range, they never go back. ``parts()`` gives (first row, offsets from it) pieces
    that cover every row, each ending with the next one's first offset (so no step between them is missed)."""
    if n == 0:
        if size:
            raise InputError(f"{path}: 'offset' is empty but 'dataset' holds {size} bytes")
        return
    for _, o in parts():
        if o[0] != 0:
            raise InputError(f"{path}: row 0: offset must be 0, got {int(o[0])} (bytes before it would be lost)")
        break
    for s, o in parts():
        out = np.nonzero((o < 0) | (o > size))[0]
        if len(out):
            i = int(out[0])
            raise InputError(f"{path}: row {s + i}: offset {int(o[i])} is out of range (dataset holds {size} "
                             f"bytes)")
    for s, o in parts():
        back = np.nonzero(np.diff(o) < 0)[0]
        if len(back):
            i = int(back[0]) + 1
            raise InputError(f"{path}: row {s + i}: offsets are not increasing: {int(o[i - 1])} then {int(o[i])}")


def _parse_rows(path: str, data: np.ndarray, offsets: np.ndarray, invalid: str, row0: int = 0):
    """(rows, their row numbers, broken (where, message, raw text)) of rows ``row0``... held in ``data``."""
    raw = data.astype(np.uint8, copy=False).tobytes()
    ends = np.append(offsets[1:], len(raw))
    records = ((row0 + i, f"{path}: row {row0 + i}", raw[s:e])
               for i, (s, e) in enumerate(zip(offsets.tolist(), ends.tolist())))
    return parse_json_records(records, invalid, "row")


def read_h5_rows(path: str, invalid: str = "raise", arrays=None) -> tuple[list, list[int], list, str | None]:
    """Parse one DataCopilot h5 file: (rows, their row indices, broken (where, message, raw text), schema name).
    ``arrays``: the file's (data, offsets, schema name) when already read.

    Broken JSON raises InputError naming the file and row when ``invalid="raise"``.
    """
    data, offsets, name = arrays if arrays is not None else _read_arrays(path)
    _check_offsets(path, offsets, len(data))
    rows, index, broken = _parse_rows(path, data, offsets, invalid)
    return rows, index, broken, name


def json_lines(data: np.ndarray, offsets: np.ndarray) -> pa.Buffer | None:
    """The rows of one file as JSON Lines, one row a line, for Arrow's parser; None when a row must go through
    the Python path instead: it is empty, holds a raw newline (a pretty-printed row), is not valid UTF-8, or
    holds more than :data:`MAX_OPENERS` opening brackets (it might nest deeper than a recursive parser can go).
    The offsets must have passed :func:`_check_offsets`.

    >>> bytes(json_lines(np.frombuffer(b'{"a":1}{"a":2}', np.uint8), np.array([0, 7])))
    b'{"a":1}\\n{"a":2}\\n'
    """
    n = len(offsets)
    bounds = np.append(offsets, len(data))
    if n == 0 or (np.diff(bounds) <= 0).any() or (data == 0x0A).any():
        return None
    at = np.flatnonzero((data | 0x20) == 0x7B)  # where '{' and '[' are ('[' | 0x20 == '{')
    if len(at) > MAX_OPENERS and np.diff(np.searchsorted(at, bounds)).max() > MAX_OPENERS:
        return None
    try:  # every row valid UTF-8 on its own (Arrow's JSON parser would let invalid bytes through)
        pa.LargeStringArray.from_buffers(n, pa.py_buffer(bounds), pa.py_buffer(data)).validate(full=True)
    except pa.ArrowInvalid:
        return None
    return pa.py_buffer(np.insert(data, bounds[1:], 0x0A))


def _fast(path: str, lines: pa.Buffer, rows: int, schema: Schema | None, invalid: str,
          row0: int = 0) -> Loaded | None:
    """Arrow's multithreaded parser over the rows as JSON Lines; None when the file needs the row path (a value
    of another type than the schema's, free-form ``meta``, bytes to decode)."""
    opts = pajson.ParseOptions(newlines_in_values=False)
    if schema is not None:
        opts = pajson.ParseOptions(explicit_schema=file_arrow_schema(schema), unexpected_field_behavior="infer")
    try:
        table = pajson.read_json(pa.BufferReader(lines), parse_options=opts,
                                 read_options=pajson.ReadOptions(block_size=16 << 20))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    json_fields = {f.name for f in schema.fields if isinstance(f.dtype, Json)} if schema is not None else {"meta"}
    if table.num_rows != rows or json_fields & set(table.column_names):
        return None
    if json_parse_may_lose(table, schema):
        return None  # a 0 beside a 0.5 would come back as 0.0; a list of nulls would be invalid
    try:
        return finish(table, schema, path, invalid, lambda i: f"{path}: row {row0 + i}")
    except SchemaError:
        return None


def _load(path: str, data: np.ndarray, offsets: np.ndarray, schema: Schema | None, invalid: str,
          row0: int = 0) -> Loaded:
    """Rows ``row0``... of a file, held in ``data`` from where ``offsets`` (checked, relative to ``data``) say."""
    data = data.astype(np.uint8, copy=False)
    lines = json_lines(data, offsets)
    fast = _fast(path, lines, len(offsets), schema, invalid, row0) if lines is not None else None
    if fast is not None:
        return fast
    rows, index, broken = _parse_rows(path, data, offsets, invalid, row0)
    loaded = load_rows(rows, schema, path, where=lambda i: f"{path}: row {index[i]}", invalid=invalid)
    loaded.bad = broken + loaded.bad
    return loaded


def read_h5(path: str, schema: Schema | None, invalid: str = "raise") -> Loaded:
    """Read one DataCopilot h5 file (local or fsspec URL). Rows go through Arrow's JSON parser when they fit it
    (see :func:`json_lines`), one ``json.loads`` each otherwise; both name the file and row of every problem.

    Example
    -------
    >>> loaded = read_h5("train-part-00000_0000.h5", None)  # doctest: +SKIP
    >>> loaded.table.num_rows  # doctest: +SKIP
    """
    data, offsets, name = _read_arrays(path)
    _check_offsets(path, offsets, len(data))
    if schema is None and name in BUILTIN:
        schema = BUILTIN[name]
    return _load(path, data, offsets, schema, invalid)


def iter_h5(path: str, schema: Schema | None, batch_size: int, invalid: str = "raise") -> Iterator[Loaded]:
    """The rows of one DataCopilot h5 file in batches of at most ``batch_size`` rows, each read as :func:`read_h5`
    reads a file (the same messages, naming the row in the file). Only the rows of one batch are read from
    ``dataset`` (h5py slices it) and ``offset`` is read ``batch_size`` entries at a time, so the file is never
    held whole (a URL is read through fsspec, in the ranges h5py asks for). The offsets are checked first, in
    slices, as :func:`read_h5` checks them; the schema detected on the first batch reads the others.

    >>> [ld.table.num_rows for ld in iter_h5("train-part-00000_0000.h5", None, 1000)]  # doctest: +SKIP
    [1000, 1000, 87]
    """
    local = local_path(path)
    try:
        if local is not None:
            f = h5py.File(local, "r")
        else:
            fs, p = get_fs(path)
            f = h5py.File(fs.open(p, "rb"), "r")  # h5py reads the ranges it needs through the file object
    except _H5_ERRORS as e:
        raise _unreadable(path, e) from e
    with f:
        data, offset, name = _datasets(f, path)
        size, n = _read(path, lambda: (len(data), len(offset)))

        def part(s: int, e: int) -> np.ndarray:
            return _read(path, lambda: np.asarray(offset[s:e], dtype=np.int64))

        _check_offset_parts(path, n, size, lambda: ((s, part(s, min(s + batch_size + 1, n)))
                                                       for s in range(0, n, batch_size)))
        if schema is None and name in BUILTIN:
            schema = BUILTIN[name]
        for s in range(0, n, batch_size):
            e = min(s + batch_size, n)
            offs = part(s, e + 1 if e < n else e)
            start, end = int(offs[0]), (int(offs[-1]) if e < n else size)
            rows = _read(path, lambda: np.asarray(data[start:end]))
            loaded = _load(path, rows, offs[:e - s] - start, schema, invalid, s)
            schema = schema or loaded.schema
            yield loaded


def _read(path: str, get):
    """``get()``, with h5py's errors for a corrupt or truncated file as an InputError naming ``path``."""
    try:
        return get()
    except _H5_ERRORS as e:
        raise _unreadable(path, e) from e


# -- writing --------------------------------------------------------------------------------------------
def _encode_rows(ds) -> list[bytes]:
    return encode_rows(list(iter_json_rows(ds)))


def _h5_bytes(encoded: list[bytes], schema_name: str | None) -> bytes:
    """One file in DataCopilot's layout, in memory."""
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(encoded) else np.zeros(0, np.int64)
    total = int(lengths.sum())
    if total > _UINT32_MAX:
        raise DataCopilotError(f"{total} bytes of JSON do not fit one DataCopilot h5 file (uint32 offsets, at most "
                               f"{_UINT32_MAX}); use write_h5_parts")
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("dataset", data=np.frombuffer(b"".join(encoded), dtype=np.uint8), dtype="uint8")
        f.create_dataset("offset", data=starts.astype(np.uint32), dtype="uint32")
        if schema_name:
            f.attrs[SCHEMA_ATTR] = schema_name
    return buf.getvalue()


def _write_file(path: str, encoded: list[bytes], schema_name: str | None) -> None:
    data = _h5_bytes(encoded, schema_name)
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_h5(ds, path: str) -> None:
    """Write ``ds`` to one h5 file in DataCopilot's layout, atomically (local or fsspec URL).

    Example
    -------
    >>> write_h5(ds, "out/train.h5")  # doctest: +SKIP
    """
    _write_file(path, _encode_rows(ds), ds.schema.name)


def write_h5_parts(ds, directory: str, part: str = "train", rows_per_file: int | None = None,
                   max_bytes: int = MAX_BYTES) -> list[str]:
    """Write ``ds`` as DataCopilot's multi-file export: ``{part}-part-{i:05d}_{j:04d}.h5`` in ``directory``.

    Rows are cut into chunks of ``rows_per_file`` (all rows in chunk 0 when None), kept in order; a chunk whose
    JSON passes ``max_bytes`` spills into the next ``j``. Each file is written atomically. Returns the paths in
    order, so ``datacopilot.load(directory)`` reads the rows back in the same order.

    Example
    -------
    >>> paths = write_h5_parts(ds, "out", part="train", rows_per_file=10_000)  # doctest: +SKIP
    >>> paths[0]  # doctest: +SKIP
    'out/train-part-00000_0000.h5'
    """
    if rows_per_file is not None and rows_per_file <= 0:
        raise DataCopilotError(f"`rows_per_file` must be positive, got {rows_per_file!r}")
    if max_bytes <= 0 or max_bytes > _UINT32_MAX:
        raise DataCopilotError(f"`max_bytes` must be in 1..{_UINT32_MAX}, got {max_bytes!r}")
    encoded = _encode_rows(ds)
    step = rows_per_file or max(len(encoded), 1)
    paths: list[str] = []
    fs, p = get_fs(directory)
    fs.makedirs(p, exist_ok=True)
    for i, start in enumerate(range(0, max(len(encoded), 1), step)):
        chunk = encoded[start:start + step]
        for j, rows in enumerate(_split_by_size(chunk, max_bytes)):
            path = join(directory, f"{part}-part-{i:05d}_{j:04d}.h5")
            _write_file(path, rows, ds.schema.name)
            paths.append(path)
    return paths


def _split_by_size(rows: list[bytes], max_bytes: int) -> list[list[bytes]]:
    """Consecutive groups of rows, each under ``max_bytes`` (a single larger row gets a file of its own)."""
    out: list[list[bytes]] = [[]]
    size = 0
    for r in rows:
        if out[-1] and size + len(r) > max_bytes:
            out.append([])
            size = 0
        out[-1].append(r)
        size += len(r)
    return out
