"""JSON Lines whose ids mix strings and integers (LLaVA-1.5's mix665k: one id in 7 an integer) through Arrow's
parser, which takes a column of one type only.

Before the parse, :func:`quote_int_ids` finds at the byte level every top-level ``"id": <integer>`` and writes
it as a string carrying a marker, ``"id": "\\u0000<digits>"``; after it, :func:`restore_int_ids` takes the
marked values of the (now string) column back to integers, so the column becomes the same variant (``str`` and
``int`` children) the row path builds, every id keeping its type. No newline is added or removed, so the
line numbers of messages still hold.

It stays exact by refusing (None: the caller takes the row path) whatever it cannot vouch for:

- only ``"id"`` keys at depth 1 of a line are touched (a prefix holding other keys is measured with strings
  skipped), never a nested ``id`` (MIX's ``images[].id``) nor text inside a string (its quotes are escaped);
- only plain JSON integers of at most 18 digits followed by ``,`` or ``}``: ``1.5``, ``1e3``, ``007``, ``true``
  or an object stay as they are, so Arrow's parser fails on the mixed column and the row path names the file,
  line and field;
- the marked values counted after the parse must be exactly the ones written: a string id that itself starts
  with U+0000 makes the count differ. A key given twice in a line fails Arrow's parse.

>>> q = quote_int_ids(b'{"id": 7, "x": 1}\\n{"id": "7"}\\n')
>>> bytes(q.data), q.count
(b'{"id": "\\\\u00007", "x": 1}\\n{"id": "7"}\\n', 1)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from datacopilot.schemas import OneOf, Schema
from datacopilot.schemas.types import Int, String
from datacopilot.schemas.variant import variant_array

# "id", a colon, then an integer whose value ends at the object's next key or its end. The pattern starts with a
# literal, which the regex engine scans for quickly (a lookbehind for the backslash would cost 30x).
_INT_ID = re.compile(rb'"id"[ \t\r]*:[ \t\r]*(-?(?:0|[1-9][0-9]{0,17}))(?=[ \t\r]*[,}])')
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_MARK = "\x00"
_MARK_JSON = b'"\\u0000'


@dataclass(frozen=True)
class QuotedIds:
    """The data with every top-level integer id written as a marked string, and how many were."""

    data: bytes
    count: int


def id_tags(schema: Schema | None) -> dict | None:
    """``{String: tag, Int: tag}`` for the ``id`` field when it is a string or an integer (the built-in schemas'
    ids; with no schema, the schema found later decides), else None.

    >>> from datacopilot.schemas import MM
    >>> id_tags(MM)[Int]
    'int'
    """
    if schema is None:
        return {String: "str", Int: "int"}
    if "id" not in schema.names:
        return None
    dtype = schema.field("id").dtype
    if not isinstance(dtype, OneOf) or {type(d) for _, d in dtype.alternatives} != {String, Int}:
        return None
    return {type(d): tag for tag, d in dtype.alternatives}


def _top_level(data, start: int) -> bool:
    """Whether the key whose opening quote is at ``start`` is at depth 1 of its line (outside any string)."""
    if start and data[start - 1] == 0x5C:  # an escaped quote: text inside a string
        return False
    line = data.rfind(b"\n", 0, start) + 1
    prefix = bytes(data[line:start])
    if prefix.strip() == b"{":
        return True  # the first key, as every writer puts the id
    rest = _STRING.sub(b"", prefix)
    if rest.lstrip()[:1] != b"{":
        return False
    depth = rest.count(b"{") + rest.count(b"[") - rest.count(b"}") - rest.count(b"]")
    return depth == 1


def quote_int_ids(data) -> QuotedIds | None:
    """``data`` (bytes or a memory map of JSON Lines) with every top-level integer ``id`` written as the string
    ``"\\u0000<digits>"``; None when there is none."""
    pieces, at, count, view = [], 0, 0, memoryview(data)
    for m in _INT_ID.finditer(data):
        if not _top_level(data, m.start()):
            continue
        lo, hi = m.span(1)
        pieces += [view[at:lo], _MARK_JSON, view[lo:hi], b'"']
        at, count = hi, count + 1
    if not count:
        return None
    pieces.append(view[at:])
    return QuotedIds(b"".join(pieces), count)


def restore_int_ids(table: pa.Table, quoted: QuotedIds, tags: dict) -> pa.Table | None:
    """``table`` (Arrow's parse of ``quoted.data``) with its ``id`` column's marked strings back as integers:
    a plain int64 column when every id was one, else a variant of the ``tags`` children (strings and
    integers, in the schema's order). None when the marked values are not exactly the ones written."""
    if "id" not in table.column_names:
        return None
    col = table.column("id")
    if not pa.types.is_string(col.type):
        return None  # ids of another type beside them (a float, an object): the row path names them
    marked = [pc.fill_null(pc.starts_with(c, _MARK), False) for c in col.chunks]
    if sum(pc.sum(m).as_py() or 0 for m in marked) != quoted.count:
        return None  # a string id that starts with U+0000 itself
    none = pa.scalar(None, pa.string())
    ints = [pc.cast(pc.utf8_slice_codeunits(pc.if_else(m, c, none), 1), pa.int64()) for m, c in zip(marked, col.chunks)]
    strs = [pc.if_else(m, none, c) for m, c in zip(marked, col.chunks)]
    if all(s.null_count == len(s) for s in strs):
        new = pa.chunked_array(ints, pa.int64())
    else:  # the children in the schema's order of its alternatives
        new = pa.chunked_array([variant_array({tags[t]: {String: s, Int: i}[t] for t in tags})
                                for s, i in zip(strs, ints)])
    return table.set_column(table.column_names.index("id"), "id", new)


def parse_mixed_ids(data, schema: Schema | None, parse) -> tuple[pa.Table, Schema] | None:
    """``(table, schema)`` of JSON Lines ``data`` Arrow's parser refused, read again with the integer ids
    quoted and put back (``parse(data)`` is the reader's Arrow parse, None when it fails). With no schema,
    the built-in schema the table matches, which must type ``id`` as a string or an integer (the row path
    would otherwise keep the ids as it does other keys); None whenever the row path must decide.

    >>> import pyarrow.json as pj
    >>> def parse(d):
    ...     return pj.read_json(pa.BufferReader(d))
    >>> table, schema = parse_mixed_ids(b'{"id": 0, "caption": "a"}\\n{"id": "x", "caption": "b"}\\n', None, parse)
    >>> schema.name, table.column("id").to_pylist()
    ('CAPTION', [0, 'x'])
    """
    from datacopilot.schemas import detect_schema, turn_roles

    tags = id_tags(schema)
    quoted = quote_int_ids(data) if tags is not None else None
    if quoted is None:
        return None
    table = parse(quoted.data)
    if table is None:
        return None
    table = restore_int_ids(table, quoted, tags)
    if table is not None and schema is None:
        schema = detect_schema(table.schema, turn_roles(table))
        if schema is None or id_tags(schema) != tags:
            return None
    return None if table is None else (table, schema)
