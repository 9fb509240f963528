"""Shared steps of the readers: coerce file-level shapes (image paths as strings, free-form ``meta``) into
the schema's storage types, validate, and keep provenance (file and line) for messages."""

from __future__ import annotations

import json
import mmap

import pyarrow as pa
import pyarrow.compute as pc

from datacopilot.loading import Loaded, coerce_images, split_invalid
from datacopilot.schemas import Image, Json, List, OneOf, Schema
from datacopilot.schemas.image import IMAGE_ARROW_TYPE

SCHEMA_KEY = b"datacopilot.schema"


def file_arrow_schema(schema: Schema) -> pa.Schema:
    """The Arrow schema of a schema's rows as JSON files hold them: images as path strings; Json fields left
    out (they are read by the row path)."""
    fields = []
    for f in schema.fields:
        if isinstance(f.dtype, (Json, OneOf)):  # free-form, or a shape only the rows tell (an id str or int)
            continue
        if isinstance(f.dtype, Image):
            fields.append(pa.field(f.name, pa.string()))
        elif isinstance(f.dtype, List) and isinstance(f.dtype.inner, Image):
            fields.append(pa.field(f.name, pa.list_(pa.string())))
        else:
            fields.append(pa.field(f.name, f.dtype.arrow()))
    return pa.schema(fields)


coerce = coerce_images  # the readers' name for it


def finish(table: pa.Table, schema: Schema | None, source: str, invalid: str, where=None) -> Loaded:
    """Detect the schema if needed, coerce, conform and validate a table a fast reader produced."""
    from datacopilot.schemas import resolve_schema

    if schema is None:
        meta = table.schema.metadata or {}
        name = meta.get(SCHEMA_KEY)
        from datacopilot.schemas import BUILTIN

        schema = BUILTIN.get(name.decode()) if name else None
        schema = schema or resolve_schema(table, None)
    table = schema.conform(coerce(table, schema)).replace_schema_metadata(None)
    where = where or (lambda i: f"{source}: row {i}")
    return split_invalid(table, schema, where, invalid)


def no_rows(schema: Schema | None) -> pa.Table:
    """An empty table of the schema's columns (no columns without one): a batch that holds only invalid rows.

    >>> no_rows(None).num_rows
    0
    """
    return schema.arrow_schema().empty_table() if schema is not None else pa.table({})


def with_schema_metadata(table: pa.Table, schema: Schema, root: str | None = None) -> pa.Table:
    meta = {SCHEMA_KEY: schema.name.encode()}
    return table.replace_schema_metadata(meta)


def parse_json_records(records, invalid: str, what: str = "line") -> tuple[list, list, list]:
    """Parse ``(key, where, raw bytes)`` records as JSON.

    Returns the parsed rows, their keys, and the broken records as (where, message, raw text) triples (invalid
    bytes shown as ``\\xNN``); with ``invalid="raise"`` broken records raise one InputError listing them all (the
    first 20 shown). Nesting too deep for the parser is a broken record, not a RecursionError.

    >>> parse_json_records([(1, "a.jsonl:1", b'{"x": 1}'), (2, "a.jsonl:2", b'{"x": ')], "quarantine")[2]
    [('a.jsonl:2', 'a.jsonl:2: invalid JSON: Expecting value (column 7)', '{"x": ')]
    """
    rows, keys, broken = [], [], []
    for key, where, raw in records:
        try:
            rows.append(json.loads(raw))
            keys.append(key)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            msg = f"{where}: invalid JSON: {getattr(e, 'msg', e)} (column {getattr(e, 'colno', '?')})"
            broken.append((where, msg, _raw_text(raw)))
        except RecursionError:
            broken.append((where, f"{where}: invalid JSON: nested too deeply to parse", _raw_text(raw)))
    if invalid == "raise":
        raise_broken(broken, f"JSON {what}")
    return rows, keys, broken


def _raw_text(raw) -> str:
    return raw if isinstance(raw, str) else bytes(raw).decode("utf-8", "backslashreplace")


def raise_broken(broken: list, what: str) -> None:
    """One InputError listing every broken (where, message, raw) record, the first 20 shown; nothing if none.

    >>> raise_broken([], "JSON line")
    """
    from datacopilot.errors import InputError

    if broken:
        more = f"\n... and {len(broken) - 20} more" if len(broken) > 20 else ""
        raise InputError(f"{len(broken)} broken {what}(s):\n" + "\n".join(m for _, m, _ in broken[:20]) + more)


def arrow_json_lines(data, schema) -> "pa.Table | None":
    """Arrow's JSON Lines parser over ``data`` (the schema's Arrow types where it has them, other keys inferred);
    None when it refuses the bytes.

    Data of more than one block is parsed a block at a time (Arrow's streaming reader, the types set by the first
    block): the table is held with one block's scratch, not the whole parse's (the one-shot reader held about
    twice the table at its peak), and the pages of a memory-mapped file are handed back behind the parse (they
    stay in the page cache), so a load's peak is the table, not the table and the file. Where the first block's
    types do not fit a later one, the whole data is parsed at once, as before, which may widen them."""
    import pyarrow.json as pajson

    opts = pajson.ParseOptions(newlines_in_values=False)
    if schema is not None:
        opts = pajson.ParseOptions(explicit_schema=file_arrow_schema(schema), unexpected_field_behavior="infer")
    read = pajson.ReadOptions(block_size=JSON_BLOCK_BYTES)
    buf = pa.py_buffer(data)
    try:
        if buf.size > JSON_BLOCK_BYTES:
            table = _streamed_json(buf, data, opts, read)
            if table is not None:
                return table
        return pajson.read_json(pa.BufferReader(buf), parse_options=opts, read_options=read)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    finally:
        _release_pages(data, len(data))


JSON_BLOCK_BYTES = 16 << 20  # Arrow's JSON parse blocks


def _streamed_json(buf: pa.Buffer, data, opts, read) -> "pa.Table | None":
    """The block-at-a-time parse of :func:`arrow_json_lines`; None where a block does not fit the first block's
    types (or the reader refuses the bytes: the one-shot reader then says so)."""
    import pyarrow.json as pajson

    src = pa.BufferReader(buf)
    try:
        reader = pajson.open_json(src, parse_options=opts, read_options=read)
        batches = []
        for batch in reader:
            batches.append(batch)
            _release_pages(data, src.tell() - 4 * JSON_BLOCK_BYTES)  # behind the blocks in the parser's hands
        schema = reader.schema
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    return pa.Table.from_batches(batches, schema)


def _release_pages(data, upto: int) -> None:
    """Drop the pages of a read-only file mapping before byte ``upto`` from this process (they are read again from
    the page cache if touched): a parsed file does not stay in the reader's resident memory. Anything else: no-op."""
    if isinstance(data, mmap.mmap) and upto >= mmap.PAGESIZE and hasattr(mmap, "MADV_DONTNEED") and not data.closed:
        try:
            data.madvise(mmap.MADV_DONTNEED, 0, min(upto, len(data)) // mmap.PAGESIZE * mmap.PAGESIZE)
        except (OSError, ValueError):
            pass
