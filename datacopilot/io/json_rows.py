"""Stored rows as the JSON values files hold, a whole record batch at a time.

:func:`jsonable` states the rule for one row (images as paths or ``{path, bytes_base64}``, Json fields as the
objects they encode, bytes as ``{bytes_base64}``, null optional or unnamed keys left out). :func:`compile_rows`
applies the same rule column by column: it looks at the schema and the batch's Arrow types once and builds a tree
of converters, one per column and nested type, so a column that needs no change (ids, strings, a conversation whose
keys the schema requires) is one ``to_pylist`` of flat arrays, an image struct with no bytes is its ``path`` child,
and rows are put together by a dict display generated for the keys. Types it does not know (maps, unions,
dictionaries, other extension types) take the per-value rule, so the result is always :func:`jsonable`'s.

>>> import pyarrow as pa
>>> from datacopilot.schemas import MM
>>> t = pa.table({"id": ["1"], "image": pa.array([{"path": "a.png", "bytes": None}], IMAGE_ARROW_TYPE),
...               "conversations": [[{"from": "human", "value": "hi"}]], "meta": pa.array([None], pa.string())})
>>> compile_rows(MM, t.schema)(t.to_batches()[0])
[{'id': '1', 'image': 'a.png', 'conversations': [{'from': 'human', 'value': 'hi'}]}]
"""

from __future__ import annotations

import base64
import json
import re
from typing import Callable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from datacopilot.schemas import Field, Image, Json, List, OneOf, Schema, Struct
from datacopilot.schemas.image import IMAGE_ARROW_TYPE  # noqa: F401 (the doctest's)
from datacopilot.schemas.types import Bool, Float, Int, String
from datacopilot.schemas.variant import JsonValueType, VariantType

Converter = Callable[[pa.Array], list]


# -- the rule, one value at a time (the reference; types the compiled path does not know use it) -------------
def jsonable(row: dict, schema: Schema) -> dict:
    """A stored row as JSON files hold it: images as paths (or ``{path, bytes_base64}`` when they carry bytes,
    plus any extra keys), Json fields as the objects they encode, bytes anywhere as ``{bytes_base64}``. Optional
    fields and keys the schema does not name are left out when null (files in the wild leave them out).

    >>> from datacopilot.schemas import MM
    >>> jsonable({"id": 3, "image": {"path": "a.png", "bytes": None}, "conversations": [], "meta": None}, MM)
    {'id': 3, 'image': 'a.png', 'conversations': []}
    """
    out = {}
    named = {f.name: f for f in schema.fields}
    for k, v in row.items():
        f = named.get(k)
        if v is None and (f is None or not (f.required or f.null_key)):
            continue
        out[k] = json_value(f.dtype if f is not None else None, v)
    return out


def json_value(dtype, v):
    """One stored value of a field of type ``dtype`` (None: a key the schema does not name) as JSON holds it."""
    if v is None:
        return None
    if isinstance(dtype, OneOf):
        alt = dtype.pick(v)
        return json_value(alt[1] if alt else None, v)
    if isinstance(dtype, Image):
        return _image_json(v)
    if isinstance(dtype, Json):
        return json_text_value(v) if isinstance(v, str) else v
    if isinstance(dtype, List) and isinstance(v, list):
        return [json_value(dtype.inner, x) for x in v]
    if isinstance(dtype, Struct) and isinstance(v, dict):
        named = {f.name: f for f in dtype.fields}
        return {k: json_value(named[k].dtype if k in named else None, x) for k, x in v.items()
                if x is not None or (k in named and (named[k].required or named[k].null_key))}
    if isinstance(v, (bytes, bytearray)):
        return {"bytes_base64": base64.b64encode(v).decode()}
    if isinstance(v, dict):
        return {k: json_value(None, x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [json_value(None, x) for x in v]
    return v


def json_text_value(text: str):
    """A Json field's stored text as the object it encodes; text that is not JSON stays a string (it reads back
    as the same text).

    >>> json_text_value('{"a":[1,2.5]}'), json_text_value("not json")
    ({'a': [1, 2.5]}, 'not json')
    """
    try:
        return loads_exact(text)
    except ValueError:
        return text


# orjson reads integers of 19 digits and more as floats past 64 bits, and its float parsing is not the standard
# library's by definition: text that holds either is read by ``json.loads``, whose result is the rule
_ORJSON_UNSURE = re.compile(r"\d[.eE]|\d{19}")


def loads_exact(text: str):
    """``json.loads(text)``, by orjson where it gives the same value (no fraction, exponent or long integer;
    NaN, infinity and lone surrogates make orjson fail, and the standard library decides)."""
    if _ORJSON_UNSURE.search(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def _image_json(v):
    if not isinstance(v, dict):
        return v
    more = {k: json_value(None, x) for k, x in v.items() if k not in ("path", "bytes") and x is not None}
    if v.get("bytes") is not None:
        return {"path": v.get("path"), "bytes_base64": base64.b64encode(v["bytes"]).decode(), **more}
    if more:
        return {"path": v.get("path"), **more}
    return v.get("path")


# -- the rule compiled per schema and Arrow types ------------------------------------------------------------
def compile_rows(schema: Schema, arrow_schema: pa.Schema) -> Callable[[pa.RecordBatch], list[dict]]:
    """A function from a record batch of ``arrow_schema`` to its rows as :func:`jsonable` gives them.

    >>> from datacopilot.schemas import MM
    >>> b = pa.record_batch({"id": [7, 8], "extra": [None, {"k": None, "j": 1}]})
    >>> compile_rows(MM, b.schema)(b)
    [{'id': 7}, {'id': 8, 'extra': {'j': 1}}]
    """
    named = {f.name: f for f in schema.fields}
    fields = [(f.name, named.get(f.name), f.type) for f in arrow_schema]
    if len({name for name, _, _ in fields}) != len(fields):  # a dict keeps one of each: the rule decides
        return lambda batch: [jsonable(r, schema) for r in batch.to_pylist()]
    build = _keyed_children(fields)
    return lambda batch: build(batch.columns, batch.num_rows)


def _keyed_children(fields: list[tuple[str, Field | None, pa.DataType]]):
    """Rows (dicts) from child arrays: each child converted by its field's type, null keys left out unless the
    field is required or keeps its key. A value that is not null but converts to null (an image record with no
    path and no bytes, Json text ``null``) keeps its key: converters mark it :data:`_HIDDEN` under a key."""
    plan = []
    for name, f, t in fields:
        conv = converter(f.dtype if f is not None else None, t, keyed=True)
        plan.append((name, f is not None and (f.required or f.null_key), conv, getattr(conv, "hides", False)))

    def build(arrays, n: int) -> list[dict]:
        keys, cols, drops, hidden = [], [], [], []
        for (name, keep, conv, hides), arr in zip(plan, arrays):
            if arr.null_count == n:
                if keep:
                    keys.append(name)
                    cols.append([None] * n)
                continue
            vals = conv(arr)
            if not keep and None in vals:
                if vals.count(None) == n:
                    continue
                drops.append((name, vals))
            if hides and _HIDDEN in vals:
                hidden.append((name, vals))
            keys.append(name)
            cols.append(vals)
        rows = _dicts(tuple(keys))(n, *cols)
        for name, vals in drops:
            for i in [i for i, v in enumerate(vals) if v is None]:
                del rows[i][name]
        for name, vals in hidden:
            for i in [i for i, v in enumerate(vals) if v is _HIDDEN]:
                rows[i][name] = None
        return rows

    return build


class _Hidden:
    """A value that converts to null though it is not null (its key stays), while rows are put together."""

    def __repr__(self) -> str:
        return "<hidden null>"


_HIDDEN = _Hidden()


def _hiding(conv: Converter) -> Converter:
    conv.hides = True
    return conv


_DICTS: dict[tuple[str, ...], Callable] = {}


def _dicts(keys: tuple[str, ...]) -> Callable:
    """``f(n, col0, col1, ...) -> [{keys[0]: col0[i], ...} for i in range(n)]``, generated once per key tuple
    (a dict display with the keys as literals builds each row in one step)."""
    f = _DICTS.get(keys)
    if f is None:
        if not keys:
            def f(n):
                return [{} for _ in range(n)]
        else:
            args = [f"c{i}" for i in range(len(keys))]
            vals = [f"v{i}" for i in range(len(keys))]
            body = ", ".join(f"{k!r}: {v}" for k, v in zip(keys, vals))
            src = f"lambda n, {', '.join(args)}: [{{{body}}} for ({', '.join(vals)},) in zip({', '.join(args)})]"
            f = eval(src, {"zip": zip})  # the keys are str literals by repr: nothing else reaches the source
        if len(_DICTS) < 4096:
            _DICTS[keys] = f
    return f


def _resolve(dtype, t: pa.DataType):
    """The type the rule applies to a value of Arrow type ``t`` stored for ``dtype``: a OneOf's alternative
    picked as ``OneOf.pick`` picks it for such a value; None when the rule treats the value as free-form."""
    while isinstance(dtype, OneOf):
        dtype = next((d for _, d in dtype.alternatives if _value_matches(d, t)), None)
    if isinstance(dtype, (Image, Json)):
        return dtype
    if isinstance(dtype, List) and _is_list(t):
        return dtype
    if isinstance(dtype, Struct) and pa.types.is_struct(t):
        return dtype
    return None


def _value_matches(d, t: pa.DataType) -> bool:
    """``schemas.types.matches(d, v)`` for the values an array of type ``t`` gives, in its order of checks."""
    if isinstance(d, String):
        return _is_text(t)
    if isinstance(d, Int):
        return pa.types.is_integer(t)
    if isinstance(d, Float):
        return pa.types.is_integer(t) or t in (pa.float32(), pa.float64())
    if isinstance(d, Bool):
        return pa.types.is_boolean(t)
    if isinstance(d, List):
        return _is_list(t)
    if d.is_image:
        return _is_text(t) or _is_binary(t) or (
            pa.types.is_struct(t) and bool({"path", "bytes", "bytes_base64"} & {f.name for f in t}))
    if isinstance(d, Struct):
        return pa.types.is_struct(t)
    return True


def _is_text(t) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_binary(t) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)


def _is_list(t) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_plain(t) -> bool:
    """Arrow types whose Python values the rule leaves as they are (not bytes, containers or extension
    values)."""
    return (_is_text(t) or pa.types.is_boolean(t) or pa.types.is_integer(t) or t in (pa.float32(), pa.float64())
            or pa.types.is_temporal(t) or pa.types.is_decimal(t))


def converter(dtype, t: pa.DataType, keyed: bool = False) -> Converter:
    """The function from an array of Arrow type ``t`` stored for a field of type ``dtype`` (None: a key the
    schema does not name) to its values as :func:`json_value` gives them, one per row. ``keyed``: the values sit
    directly under a key, where a non-null value that converts to null is marked :data:`_HIDDEN`."""
    if pa.types.is_null(t):
        return _nulls
    if isinstance(t, VariantType):
        return _variant(dtype, t, keyed)
    if isinstance(t, JsonValueType):
        return _json_values(dtype, keyed)
    if isinstance(t, pa.ExtensionType) or not (_is_plain(t) or _is_binary(t) or _is_list(t)
                                               or pa.types.is_struct(t)):
        return _per_value(dtype, keyed)
    if pa.types.is_struct(t) and len({f.name for f in t}) != t.num_fields:
        return _per_value(dtype, keyed)
    d = _resolve(dtype, t)
    if isinstance(d, Image):
        return _image_struct(t, keyed) if pa.types.is_struct(t) else _as_is
    if isinstance(d, Json):
        return (_hiding(_json_texts_keyed) if keyed else _json_texts) if _is_text(t) else _as_is
    if _is_plain(t):
        return _as_is
    if _is_binary(t):
        return _binary
    if _is_list(t):
        return _list(converter(d.inner if d is not None else None, t.value_type))
    named = {f.name: f for f in d.fields} if d is not None else {}
    return _struct(_keyed_children([(f.name, named.get(f.name), f.type) for f in t]))


def _nulls(arr) -> list:
    return [None] * len(arr)


def _as_is(arr) -> list:
    return arr.to_pylist()


def _per_value(dtype, keyed: bool) -> Converter:
    if not keyed:
        return lambda arr: [json_value(dtype, v) for v in arr.to_pylist()]

    def conv(arr) -> list:
        out = []
        for v in arr.to_pylist():
            r = json_value(dtype, v)
            out.append(_HIDDEN if r is None and v is not None else r)
        return out

    return _hiding(conv)


def _with_nulls(arr, vals: list) -> list:
    """``vals`` with None where ``arr`` is null."""
    if arr.null_count:
        for i in np.flatnonzero(~np.asarray(arr.is_valid(), dtype=bool)).tolist():
            vals[i] = None
    return vals


def _binary(arr) -> list:
    b64 = base64.b64encode
    return [None if b is None else {"bytes_base64": b64(b).decode()} for b in arr.to_pylist()]


def _json_texts(arr) -> list:
    return [None if s is None else json_text_value(s) for s in arr.to_pylist()]


def _json_texts_keyed(arr) -> list:
    out = _json_texts(arr)
    if None in out:
        texts = arr.to_pylist()
        out = [_HIDDEN if r is None and s is not None else r for r, s in zip(out, texts)]
    return out


def _json_values(dtype, keyed: bool) -> Converter:
    """A JSON-value extension column: its text parsed (what ``as_py`` gives), then the rule for ``dtype``; for a
    free-form value with no null in its text that is the parsed value itself."""
    free = not isinstance(dtype, (OneOf, Image, Json, List, Struct))

    def conv(arr) -> list:
        out = []
        for s in arr.storage.to_pylist():
            if s is None:
                out.append(None)
            elif free and "null" not in s:
                out.append(loads_exact(s))
            else:
                v = loads_exact(s)
                r = json_value(dtype, v)
                out.append(_HIDDEN if keyed and r is None and v is not None else r)
        return out

    return _hiding(conv) if keyed else conv


def _list(inner: Converter) -> Converter:
    def conv(arr) -> list:
        vals = inner(arr.flatten())
        lens = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False)
        ends = np.cumsum(lens)
        return _with_nulls(arr, [vals[a:b] for a, b in zip((ends - lens).tolist(), ends.tolist())])

    return conv


def _struct(build) -> Converter:
    def conv(arr) -> list:
        return _with_nulls(arr, build([arr.field(i) for i in range(arr.type.num_fields)], len(arr)))

    return conv


def _variant(dtype, t: VariantType, keyed: bool) -> Converter:
    """Each row the value of its first set alternative (what ``as_py`` gives), converted for ``dtype`` as that
    alternative's Arrow type."""
    convs = [converter(dtype, t.storage_type.field(i).type, keyed) for i in range(t.storage_type.num_fields)]

    def conv(arr) -> list:
        storage = arr.storage
        n = len(arr)
        out = [None] * n
        open_ = np.asarray(storage.is_valid(), dtype=bool)
        for i, c in enumerate(convs):
            child = storage.field(i)
            if child.null_count == n:
                continue
            take = open_ & np.asarray(child.is_valid(), dtype=bool)
            vals = c(child)
            for j in np.flatnonzero(take).tolist():
                out[j] = vals[j]
            open_ &= ~take
        return out

    return _hiding(conv) if any(getattr(c, "hides", False) for c in convs) else conv


def _image_struct(t: pa.StructType, keyed: bool) -> Converter:
    """An image record: its path when it has no bytes and no other key, else ``{path, bytes_base64, ...}``."""
    names = [f.name for f in t]
    ip = names.index("path") if "path" in names else None
    ib = names.index("bytes") if "bytes" in names else None
    extras = [(i, f.name, converter(None, f.type)) for i, f in enumerate(t) if f.name not in ("path", "bytes")]
    b64 = base64.b64encode
    empty = _HIDDEN if keyed else None  # a record with no path, no bytes and nothing else

    def conv(arr) -> list:
        n = len(arr)
        paths = arr.field(ip).to_pylist() if ip is not None else [None] * n
        data = arr.field(ib) if ib is not None else None
        more = []
        for i, name, c in extras:
            child = arr.field(i)
            if child.null_count < n:
                vals = c(child)
                if vals.count(None) < n:
                    more.append((name, vals))
        if (data is None or data.null_count == n) and not more:
            if keyed and None in paths:
                paths = [empty if p is None else p for p in paths]
            return _with_nulls(arr, paths)
        blobs = data.to_pylist() if data is not None else [None] * n
        out = []
        for i in range(n):
            extra = {name: vals[i] for name, vals in more if vals[i] is not None}
            b, p = blobs[i], paths[i]
            if b is not None:
                out.append({"path": p, "bytes_base64": b64(b).decode(), **extra})
            elif extra:
                out.append({"path": p, **extra})
            else:
                out.append(empty if p is None else p)
        return _with_nulls(arr, out)

    return _hiding(conv) if keyed else conv
