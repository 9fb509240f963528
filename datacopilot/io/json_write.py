"""JSON Lines and JSON (an array of objects) writers.

Rows are turned into JSON values batch by batch (``json_rows.compile_rows``: images as paths or ``{path, bytes_base64}``, Json
fields as the objects they encode, ids as they were) and serialized by orjson, a C serializer that writes UTF-8
as is (like ``json.dumps(..., ensure_ascii=False)``) and floats in their shortest round-trip form. A batch orjson
cannot take (NaN or infinity, which it would turn into null; an integer past 64 bits) is serialized by the
standard library instead, so what a file says never changes.
"""

from __future__ import annotations

import json

import orjson

from ._fs import atomic_open
from .json_rows import compile_rows

_BATCH = 4096


def _batches(ds):
    table = ds.to_arrow()
    rows = compile_rows(ds.schema, table.schema)
    for batch in table.to_batches(max_chunksize=_BATCH):
        yield rows(batch)


def iter_json_rows(ds):
    """Each stored row of ``ds`` as the JSON value a file holds for it, in order."""
    for rows in _batches(ds):
        yield from rows


def _has_nonfinite(rows) -> bool:
    # orjson writes NaN and infinity as null; the standard library writes NaN / Infinity (what files held before)
    try:
        json.dumps(rows, allow_nan=False, check_circular=False)
    except ValueError:
        return True
    return False


def encode_rows(rows: list) -> list[bytes]:
    """Each of ``rows`` as compact UTF-8 JSON (no newline), what ``json.dumps(row, ensure_ascii=False,
    separators=(",", ":"))`` would write, by orjson where it writes the same."""
    try:
        parts = [orjson.dumps(r) for r in rows]
    except (TypeError, orjson.JSONEncodeError):  # an integer past 64 bits, a key that is not a str
        parts = None
    if parts is None or _maybe_nonfinite(parts) and _has_nonfinite(rows):
        return [json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() for r in rows]
    return parts


def _maybe_nonfinite(parts: list[bytes]) -> bool:
    # orjson writes a non-finite float as null, so a batch with no null anywhere has none
    return any(b"null" in p for p in parts)


def _lines(rows: list) -> bytes:
    """``rows`` as JSON Lines, one value per line, each line ending in a newline."""
    return b"\n".join(encode_rows(rows)) + b"\n"


def write_jsonl(ds, path: str) -> None:
    """Write ``ds`` as JSON Lines at ``path`` (staged, then published atomically).

    >>> import datacopilot as dc, tempfile, os  # doctest: +SKIP
    >>> write_jsonl(ds, os.path.join(tempfile.mkdtemp(), "a.jsonl"))  # doctest: +SKIP
    """
    with atomic_open(path, "wb") as f:
        for rows in _batches(ds):
            f.write(_lines(rows))


def write_json(ds, path: str) -> None:
    """Write ``ds`` as one JSON array of objects at ``path`` (staged, then published atomically)."""
    with atomic_open(path, "wb") as f:
        f.write(b"[")
        first = True
        for rows in _batches(ds):
            if not rows:
                continue
            body = _lines(rows)[:-1].replace(b"\n", b",\n")  # newlines only occur between rows: JSON escapes them
            f.write(body if first else b",\n" + body)
            first = False
        f.write(b"]")
