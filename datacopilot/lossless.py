"""Checks and rewrites that keep a format from changing values on the way through.

- :func:`fill_empty_structs`: Parquet cannot store a struct with no children (an extra key whose value is ``{}``
  in every row); such a struct becomes a JSON value (``"{}"``), which reads back as the same ``{}``.
- :func:`json_parse_may_lose`: whether a table Arrow's JSON parser made may differ from the file, so the reader
  takes the row path instead: a key that is ``0`` in one row and ``0.5`` in another is read as doubles (the ``0``
  would come back as ``0.0``, see :func:`floats_may_hide_ints`), and a list that starts with nulls
  (``[null, false]``, ``[null, null]``) comes out with too few values (an invalid array that crashes whatever
  reads it).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datacopilot.schemas import Float, List, OneOf, Schema, Struct
from datacopilot.schemas.variant import JsonValueType, VariantType


def _has_empty_struct(t: pa.DataType) -> bool:
    if isinstance(t, pa.ExtensionType):
        return _has_empty_struct(t.storage_type)
    if pa.types.is_struct(t):
        return t.num_fields == 0 or any(_has_empty_struct(f.type) for f in t)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _has_empty_struct(t.value_type)
    return False


def _mask(arr: pa.Array):
    return arr.is_null() if arr.null_count else None


def _fill(arr: pa.Array) -> pa.Array:
    t = arr.type
    if not _has_empty_struct(t):
        return arr
    if isinstance(t, VariantType):
        storage = _fill(arr.storage)
        return pa.ExtensionArray.from_storage(VariantType(storage.type), storage)
    if pa.types.is_struct(t) and t.num_fields == 0:
        text = pa.array(["{}" if ok else None for ok in arr.is_valid().to_pylist()], pa.string())
        return pa.ExtensionArray.from_storage(JsonValueType(), text)
    if pa.types.is_struct(t):
        kids = [_fill(arr.field(i)) for i in range(t.num_fields)]
        return pa.StructArray.from_arrays(kids, names=[f.name for f in t], mask=_mask(arr))
    cls = pa.ListArray if pa.types.is_list(t) else pa.LargeListArray
    return cls.from_arrays(arr.offsets, _fill(arr.values), mask=_mask(arr))


def fill_empty_structs(table: pa.Table) -> pa.Table:
    """``table`` with every struct that has no children, at any depth, as a JSON value column.

    >>> fill_empty_structs(pa.table({"x": [{}, None]})).column("x").to_pylist()
    [{}, None]
    """
    if not any(_has_empty_struct(f.type) for f in table.schema):
        return table
    cols = [pa.chunked_array([_fill(c) for c in col.chunks]) if _has_empty_struct(col.type) else col
            for col in table.columns]
    return pa.Table.from_arrays(cols, names=table.column_names).replace_schema_metadata(table.schema.metadata)


def _float_leaves(arr: pa.Array, dtype):
    """The double arrays inside ``arr`` at places ``dtype`` (a schema's type, None where it names nothing)
    does not type as a float."""
    t = arr.type
    if isinstance(dtype, OneOf):
        dtype = None  # the JSON readers take OneOf fields through the row path anyway
    if pa.types.is_floating(t):
        if not isinstance(dtype, Float):
            yield arr
    elif pa.types.is_struct(t):
        named = {f.name: f.dtype for f in dtype.fields} if isinstance(dtype, Struct) else {}
        for i, f in enumerate(t):
            yield from _float_leaves(arr.field(i), named.get(f.name))
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        yield from _float_leaves(arr.flatten(), dtype.inner if isinstance(dtype, List) else None)


def floats_may_hide_ints(table: pa.Table, schema: Schema | None) -> bool:
    """Whether a double column of a table Arrow's JSON parser produced may hold numbers that were integers in
    the file: one the schema does not type as a float, with an integral value (``0.0``, ``3.0``).

    >>> floats_may_hide_ints(pa.table({"w": [0.5, 2.0]}), None), floats_may_hide_ints(pa.table({"w": [0.5]}), None)
    (True, False)
    """
    fields = {f.name: f.dtype for f in schema.fields} if schema is not None else {}
    for name, col in zip(table.column_names, table.columns):
        for chunk in col.chunks:
            for leaf in _float_leaves(chunk, fields.get(name)):
                valid = leaf.drop_null()
                if len(valid) and np.any(np.asarray(pc.equal(valid, pc.floor(valid)), dtype=bool)):
                    return True
    return False


def _has_null_list(t: pa.DataType) -> bool:
    if isinstance(t, pa.ExtensionType):
        return _has_null_list(t.storage_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.types.is_null(t.value_type) or _has_null_list(t.value_type)
    if pa.types.is_struct(t):
        return any(_has_null_list(f.type) for f in t)
    return False


def json_parse_may_lose(table: pa.Table, schema: Schema | None) -> bool:
    """Whether a table Arrow's JSON parser produced may not hold the file's values exactly: doubles that may
    have been integers (:func:`floats_may_hide_ints`) or a list that starts with nulls (Arrow builds it with
    too few values).

    >>> import pyarrow.json as pj
    >>> [json_parse_may_lose(pj.read_json(pa.BufferReader(b)), None) for b in (b'{"x": [null, 1]}', b'{"x": [1]}')]
    [True, False]
    """
    if any(_has_null_list(f.type) for f in table.schema):
        return True
    try:
        table.validate()  # cheap (no data scan): a list that starts with nulls comes out with too few values
    except pa.ArrowInvalid:
        return True
    return floats_may_hide_ints(table, schema)
