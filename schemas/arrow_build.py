"""Arrow types and arrays for a schema's fields, as wide as the data: structs keep the keys the schema does not
name (after its own, in the order first seen), a :class:`OneOf` whose rows mix alternatives becomes a variant,
and an extra key whose rows disagree on their JSON shape becomes a JSON value. Nothing a row holds is dropped.

- :func:`to_array` builds a column from normalized Python values.
- :func:`conform_array` casts an Arrow column (from Parquet, IPC, a data frame) to the schema's types, keeping
  every child it has.

>>> from datacopilot.schemas.types import Field, String, Struct
>>> turn = Struct((Field("from", String()), Field("value", String())))
>>> to_array(turn, [{"from": "human", "value": "hi", "weight": 0.5}]).to_pylist()
[{'from': 'human', 'value': 'hi', 'weight': 0.5}]
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from datacopilot.errors import SchemaError

from .image import IMAGE_ARROW_TYPE, Image
from .types import ArrowType, DType, Json, List, OneOf, Struct
from .variant import JsonValueType, VariantType, dump_json, is_variant, storage_of, wrap


# -- from Python values ---------------------------------------------------------------------------------------
def infer_type(dtype: DType | None, values: list, where: str = "") -> pa.DataType:
    """The Arrow type that holds ``values`` (normalized, None allowed) as ``dtype`` describes them."""
    if dtype is None:
        return _infer_free(values, where)
    if isinstance(dtype, ArrowType):
        return dtype.type
    if isinstance(dtype, OneOf):
        groups: dict[str, list] = {}
        for v in values:
            if v is None:
                continue
            alt = dtype.pick(v)
            if alt is None:
                raise SchemaError(f"{where}: expected {dtype.describe()}, got {type(v).__name__} {v!r}"[:300])
            groups.setdefault(alt[0], []).append(v)
        alts = dict(dtype.alternatives)
        if len(groups) <= 1:
            tag = next(iter(groups), dtype.alternatives[0][0])
            return infer_type(alts[tag], groups.get(tag, []), where)
        fields = [pa.field(tag, infer_type(alts[tag], groups[tag], where)) for tag, _ in dtype.alternatives
                  if tag in groups]
        return VariantType(pa.struct(fields))
    if isinstance(dtype, Image):
        dicts = [v for v in values if isinstance(v, dict)]
        extra = {k: None for d in dicts for k in d if k not in ("path", "bytes")}
        fields = list(IMAGE_ARROW_TYPE)
        fields += [pa.field(k, _infer_free([d.get(k) for d in dicts], f"{where}.{k}")) for k in extra]
        return pa.struct(fields)
    if isinstance(dtype, List):
        inner = [x for v in values if isinstance(v, (list, tuple)) for x in v]
        return pa.list_(infer_type(dtype.inner, inner, f"{where}[]"))
    if isinstance(dtype, Struct):
        dicts = [v for v in values if isinstance(v, dict)]
        fields = [pa.field(f.name, infer_type(f.dtype, [d.get(f.name) for d in dicts], f"{where}.{f.name}"))
                  for f in dtype.fields]
        named = {f.name for f in dtype.fields}
        extra: dict[str, None] = {}
        for d in dicts:
            for k in d:
                if k not in named and k not in extra:
                    extra[k] = None
        fields += [pa.field(k, _infer_free([d.get(k) for d in dicts], f"{where}.{k}")) for k in extra]
        return pa.struct(fields)
    return dtype.arrow()


def _infer_free(values: list, where: str) -> pa.DataType:
    """The type of a key no schema names: as Arrow infers it, or a JSON value when rows disagree."""
    present = [v for v in values if v is not None]
    if not present:
        return pa.null()
    try:
        t = pa.array(present).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        t = None
    if t is None or _lossy(t, present):
        try:
            [dump_json(v) for v in present]
        except (TypeError, ValueError) as e:
            raise SchemaError(f"{where}: values of mixed shapes that are not JSON: {e}") from e
        return JsonValueType()
    return t


def _lossy(t: pa.DataType, values: list) -> bool:
    """Arrow widens ints to floats and drops dict keys that some rows lack only as nulls; both read back
    changed (``1`` as ``1.0``; a missing key as ``None``). Mixed shapes like these go to JSON instead."""
    if pa.types.is_floating(t):
        return any(isinstance(v, int) and not isinstance(v, bool) for v in values) and \
            any(isinstance(v, float) for v in values)
    if pa.types.is_struct(t) or pa.types.is_list(t):
        return _ragged(values)
    return False


def _ragged(values: list) -> bool:
    """Whether dicts at the same place have different key sets (a missing key would come back as null)."""
    keys = None
    for v in values:
        if isinstance(v, dict):
            k = tuple(v)
            if keys is None:
                keys = set(k)
            elif set(k) != keys:
                return True
            if _ragged(list(v.values())):
                return True
        elif isinstance(v, (list, tuple)):
            if _ragged(list(v)):
                return True
    return False


def encode(t: pa.DataType, value: Any) -> Any:
    """``value`` in the storage shape of ``t`` (variants as ``{tag: value}``, JSON values as text)."""
    if value is None or not _needs_encoding(t):
        return value
    if isinstance(t, JsonValueType):
        return dump_json(value)
    if isinstance(t, VariantType):
        for i in range(t.storage_type.num_fields):
            f = t.storage_type.field(i)
            if _fits(f.type, value):
                return {f.name: encode(f.type, value)}
        raise SchemaError(f"value {value!r} fits none of {t.tags}"[:300])
    if pa.types.is_struct(t):
        return {t.field(i).name: encode(t.field(i).type, value.get(t.field(i).name)) for i in range(t.num_fields)}
    if pa.types.is_list(t):
        return [encode(t.value_type, v) for v in value]
    return value


def _needs_encoding(t: pa.DataType) -> bool:
    return storage_of(t) != t


def _fits(t: pa.DataType, value: Any) -> bool:
    if isinstance(t, (VariantType, JsonValueType)):
        return True
    if pa.types.is_string(t):
        return isinstance(value, str)
    if pa.types.is_integer(t):
        return isinstance(value, int) and not isinstance(value, bool)
    if pa.types.is_floating(t):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if pa.types.is_boolean(t):
        return isinstance(value, bool)
    if pa.types.is_list(t):
        return isinstance(value, (list, tuple))
    if pa.types.is_struct(t):
        return isinstance(value, dict)
    if pa.types.is_binary(t):
        return isinstance(value, (bytes, bytearray))
    return True


def to_array(dtype: DType | None, values: list, where: str = "") -> pa.Array:
    """A column of ``values`` (normalized) typed by :func:`infer_type`."""
    t = infer_type(dtype, values, where)
    return array_of(t, values, where)


def array_of(t: pa.DataType, values: list, where: str = "") -> pa.Array:
    try:
        if _needs_encoding(t):
            return wrap(pa.array([encode(t, v) for v in values], type=storage_of(t)), t)
        return pa.array(values, type=t)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e:
        raise SchemaError(f"{where}: {e}") from e


# -- from Arrow columns ---------------------------------------------------------------------------------------
def conform_type(dtype: DType, t: pa.DataType) -> pa.DataType:
    """The type ``dtype`` wants for a column now of type ``t``: the schema's types where it names them, every
    other struct child as it is, a variant kept a variant."""
    if isinstance(dtype, ArrowType):
        return dtype.type
    if isinstance(dtype, OneOf):
        if is_variant(t):
            alts = dict(dtype.alternatives)
            fields = [pa.field(f.name, conform_type(alts[f.name], f.type) if f.name in alts else f.type)
                      for f in t.storage_type]
            return VariantType(pa.struct(fields))
        alt = dtype.pick_arrow(t)
        return dtype.arrow() if alt is None or pa.types.is_null(t) else conform_type(alt[1], t)
    if isinstance(dtype, Image):
        if not pa.types.is_struct(t):
            return IMAGE_ARROW_TYPE
        extra = [t.field(i) for i in range(t.num_fields) if t.field(i).name not in ("path", "bytes", "bytes_base64")]
        return pa.struct(list(IMAGE_ARROW_TYPE) + extra)
    if isinstance(dtype, List):
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return pa.list_(conform_type(dtype.inner, t.value_type))
        return dtype.arrow()
    if isinstance(dtype, Struct):
        if not pa.types.is_struct(t):
            return dtype.arrow()
        have = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
        fields = [pa.field(f.name, conform_type(f.dtype, have[f.name]) if f.name in have else f.dtype.arrow())
                  for f in dtype.fields]
        named = {f.name for f in dtype.fields}
        fields += [pa.field(n, ty) for n, ty in have.items() if n not in named]
        return pa.struct(fields)
    if isinstance(dtype, Json) and isinstance(t, JsonValueType):
        return t
    return dtype.arrow()


def _drops(src: pa.DataType, want: pa.DataType) -> bool:
    """Whether casting ``src`` to ``want`` would drop a struct child (Arrow's cast drops them quietly)."""
    if pa.types.is_struct(src) and pa.types.is_struct(want):
        names = {want.field(i).name: want.field(i).type for i in range(want.num_fields)}
        return any(f.name not in names or _drops(f.type, names[f.name]) for f in src)
    if (pa.types.is_list(src) or pa.types.is_large_list(src)) and (pa.types.is_list(want) or pa.types.is_large_list(want)):
        return _drops(src.value_type, want.value_type)
    return False


def _compatible(src: pa.DataType, want: pa.DataType) -> bool:
    """Whether values of ``src`` can be what ``want`` holds without changing kind: text stays text, numbers
    numbers. Structs, lists and variants are compared child by child; strings are also accepted where an image
    struct is wanted (a path) and anything where JSON text is."""
    if pa.types.is_null(src) or isinstance(want, JsonValueType) or isinstance(src, JsonValueType):
        return True
    if isinstance(src, pa.ExtensionType):
        src = src.storage_type
    if isinstance(want, pa.ExtensionType):
        want = want.storage_type
    if pa.types.is_struct(want):
        if pa.types.is_string(src) or pa.types.is_large_string(src):
            return True  # an image given as its path; a variant from one of its alternatives is checked below
        if not pa.types.is_struct(src):
            return False
        kids = {want.field(i).name: want.field(i).type for i in range(want.num_fields)}
        return all(f.name not in kids or _compatible(f.type, kids[f.name]) for f in src)
    if pa.types.is_list(want) or pa.types.is_large_list(want):
        return (pa.types.is_list(src) or pa.types.is_large_list(src)) and _compatible(src.value_type, want.value_type)
    for family in (pa.types.is_integer, pa.types.is_boolean, pa.types.is_binary):
        if family(want):
            return family(src) or (family is pa.types.is_binary and pa.types.is_large_binary(src))
    if pa.types.is_floating(want):
        return pa.types.is_floating(src) or pa.types.is_integer(src)
    if pa.types.is_string(want) or pa.types.is_large_string(want):
        return pa.types.is_string(src) or pa.types.is_large_string(src)
    return True


def conform_array(col: pa.ChunkedArray, dtype: DType, where: str = "") -> pa.ChunkedArray:
    """``col`` cast to :func:`conform_type`; values in shapes Arrow cannot cast (an image as a path string,
    ``meta`` as an object) go through ``dtype.normalize``."""
    want = conform_type(dtype, col.type)
    if col.type == want:
        return col
    if not isinstance(dtype, Json) and not _compatible(col.type, want):  # numbers where text is wanted: no quiet cast
        raise SchemaError(f"{where}: type {col.type} does not hold {want}")
    if not _needs_encoding(want) and not _needs_encoding(col.type) and not _drops(col.type, want):
        try:
            return col.cast(want)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
    values = [None if v is None else dtype.normalize(v) for v in col.to_pylist()]
    arr = to_array(dtype, values, where)
    return pa.chunked_array([arr], type=arr.type)


def concat_tables(tables: list, schema=None) -> pa.Table:
    """``pa.concat_tables`` for tables whose columns may disagree on type (one batch's ids all strings, the
    next's all integers; a key that is an int in one file and text in another): such a column is re-typed over
    all its values, as :func:`to_array` types it, so every value is kept as it was.

    ``schema`` (a :class:`~datacopilot.schemas.Schema`) types the columns it names.
    """
    tables = list(tables)
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    names: dict[str, None] = {}
    for t in tables:
        names.update(dict.fromkeys(t.column_names))
    arrays = []
    for name in names:
        types = []  # a list: extension types (a variant) are not hashable
        for t in tables:
            if name in t.column_names and t.schema.field(name).type not in types:
                types.append(t.schema.field(name).type)
        parts = [t.column(name) if name in t.column_names else None for t in tables]
        if len(types) == 1:
            ty = types[0]
            chunks = [ch for c, t in zip(parts, tables)
                      for ch in (c.chunks if c is not None else [pa.nulls(t.num_rows, ty)])]
            arrays.append(pa.chunked_array(chunks, type=ty))
            continue
        values = []
        for c, t in zip(parts, tables):
            values += c.to_pylist() if c is not None else [None] * t.num_rows
        dtype = schema.field(name).dtype if schema is not None and name in schema.names else None
        arrays.append(pa.chunked_array([to_array(dtype, values, f"column {name!r}")]))
    return pa.Table.from_arrays(arrays, names=list(names))
