"""JSON Lines and JSON (an array of objects) readers and writers.

Reading jsonl takes Arrow's multithreaded C++ parser first; if a file does not fit that path (a broken
line, a value of another type, free-form ``meta``), it is read again line by line in Python, which names
the file and line of every problem.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from datacopilot.errors import InputError, SchemaError
from datacopilot.loading import Loaded, load_rows
from datacopilot.schemas import Json, Schema

from ._common import file_arrow_schema, finish, parse_json_records
from ._fs import atomic_open, read_bytes


def _line_numbers(data: bytes) -> np.ndarray:
    """1-based line number of each non-blank line."""
    lines = data.split(b"\n")
    return np.array([i + 1 for i, ln in enumerate(lines) if ln.strip()], dtype=np.int64)


def _fast(data: bytes, path: str, schema: Schema | None, invalid: str) -> Loaded | None:
    if schema is not None and any(isinstance(f.dtype, Json) and f'"{f.name}"'.encode() in data for f in schema.fields):
        return None  # free-form JSON fields keep their exact shape only through the row path
    opts = pajson.ParseOptions(newlines_in_values=False)
    if schema is not None:
        opts = pajson.ParseOptions(explicit_schema=file_arrow_schema(schema), unexpected_field_behavior="infer")
    try:
        table = pajson.read_json(io.BytesIO(data), parse_options=opts,
                                 read_options=pajson.ReadOptions(block_size=16 << 20))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if schema is None and any(pa.types.is_struct(f.type) and f.name == "meta" for f in table.schema):
        return None
    simple = not data.startswith(b"\n") and b"\n\n" not in data and b"\r" not in data
    lines = None if simple else _line_numbers(data)
    where = (lambda i: f"{path}:{i + 1}") if simple else (lambda i: f"{path}:{lines[i]}")
    try:
        return finish(table, schema, path, invalid, where)
    except SchemaError:
        return None


def _parse_lines(data: bytes, path: str, invalid: str) -> tuple[list, list[int], list]:
    records = ((n, f"{path}:{n}", line) for n, line in enumerate(data.split(b"\n"), 1) if line.strip())
    return parse_json_records(records, invalid, "line")


def read_jsonl(path: str, schema: Schema | None, invalid: str = "raise") -> Loaded:
    data = read_bytes(path)
    fast = _fast(data, path, schema, invalid)
    if fast is not None:
        return fast
    rows, lines, broken = _parse_lines(data, path, invalid)
    loaded = load_rows(rows, schema, path, where=lambda i: f"{path}:{lines[i]}", invalid=invalid)
    loaded.bad = broken + loaded.bad
    return loaded


def read_json(path: str, schema: Schema | None, invalid: str = "raise") -> Loaded:
    data = read_bytes(path)
    try:
        rows = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}:{getattr(e, 'lineno', '?')}: invalid JSON: {getattr(e, 'msg', e)}") from e
    if isinstance(rows, dict):
        rows = [rows]
    if not isinstance(rows, list):
        raise InputError(f"{path}: expected a JSON array of objects, got {type(rows).__name__}")
    return load_rows(rows, schema, path, where=lambda i: f"{path}: row {i}", invalid=invalid)


def _jsonable(row: dict, schema: Schema) -> dict:
    """A stored row as JSON files hold it: images as paths (or with base64 bytes), ``meta`` as an object."""
    from datacopilot.schemas import Image, List

    out = dict(row)
    for f in schema.fields:
        v = out.get(f.name)
        if v is None:
            if not f.required:  # files in the wild leave optional fields out rather than null
                out.pop(f.name, None)
            continue
        if isinstance(f.dtype, Image):
            out[f.name] = _image_json(v)
        elif isinstance(f.dtype, List) and isinstance(f.dtype.inner, Image):
            out[f.name] = [_image_json(x) for x in v]
        elif isinstance(f.dtype, Json):
            out[f.name] = _json_value(v)
    for k, v in out.items():
        if isinstance(v, bytes):
            out[k] = {"bytes_base64": base64.b64encode(v).decode()}
    return out


def _json_value(text: str):
    """A Json field's stored text as the object it encodes; text that is not JSON stays a string (it reads back
    as the same text)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _image_json(v):
    if isinstance(v, dict) and v.get("bytes") is not None:
        return {"path": v.get("path"), "bytes_base64": base64.b64encode(v["bytes"]).decode()}
    return v.get("path") if isinstance(v, dict) else v


def iter_json_rows(ds):
    schema = ds.schema
    for batch in ds.to_arrow().to_batches(max_chunksize=4096):
        for row in batch.to_pylist():
            yield _jsonable(row, schema)


def write_jsonl(ds, path: str) -> None:
    with atomic_open(path, "wb") as f:
        buf = []
        for row in iter_json_rows(ds):
            buf.append(json.dumps(row, ensure_ascii=False))
            if len(buf) >= 4096:
                f.write(("\n".join(buf) + "\n").encode())
                buf = []
        if buf:
            f.write(("\n".join(buf) + "\n").encode())


def write_json(ds, path: str) -> None:
    with atomic_open(path, "wb") as f:
        f.write(json.dumps(list(iter_json_rows(ds)), ensure_ascii=False, indent=1).encode())
