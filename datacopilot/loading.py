"""From Python rows or raw Arrow tables to validated, schema-conformed tables, with every invalid row
either raised (all problems listed) or kept apart in a quarantine with its error."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from datacopilot.schemas import Image, Json, List, OneOf, Schema, convert_row, detect_schema, row_roles
from datacopilot.schemas.image import IMAGE_ARROW_TYPE
from datacopilot.schemas.arrow_build import to_array

from .lossless import floats_may_hide_ints
from .errors import ConversionError, DataCopilotError, SchemaError, ValidationError

INVALID_POLICIES = ("raise", "quarantine")


@dataclass
class Loaded:
    """A loaded table plus the rows that did not validate: ``bad`` holds (where, message, raw row)."""

    table: pa.Table
    schema: Schema
    bad: list = field(default_factory=list)


def check_invalid_policy(invalid: str) -> None:
    if invalid not in INVALID_POLICIES:
        raise DataCopilotError(f"`invalid` must be one of {INVALID_POLICIES}, got {invalid!r}")


def guess_schema(rows: Sequence[dict]) -> Schema | None:
    """The built-in schema the rows look like: their keys, the shapes of the first rows and the roles of all."""
    sample = [r for r in rows[:50] if isinstance(r, dict)]
    if not sample:
        return None
    keys = {k: None for r in sample for k in r}
    try:
        arrow_schema = pa.Table.from_pylist(sample).schema
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        arrow_schema = pa.schema([(k, _shape(sample, k)) for k in keys])
    return detect_schema(arrow_schema, row_roles(rows))


def _shape(rows: list[dict], key: str) -> pa.DataType:
    """A stand-in type for a column whose rows disagree (mixed ids): enough to tell schemas apart."""
    for r in rows:
        v = r.get(key)
        if isinstance(v, list) and v and isinstance(v[0], list):
            return pa.list_(pa.list_(pa.null()))
        if isinstance(v, list) and v and isinstance(v[0], dict):
            return pa.list_(pa.struct([(k, pa.null()) for k in v[0]]))
    return pa.null()


def _column(values: list, dtype, name: str) -> pa.Array:
    return to_array(dtype, values, f"column {name!r}")


def build_table(rows: list[dict], schema: Schema) -> pa.Table:
    """Rows (already normalized) -> a table with the schema's columns first, then any extra keys, every key of
    every row kept (struct children the schema does not name included)."""
    names = schema.names
    extra: dict[str, None] = {}
    for r in rows:
        for k in r:
            if k not in extra and k not in names:
                extra[k] = None
    arrays, out_names = [], []
    for f in schema.fields:
        arrays.append(_column([r.get(f.name) for r in rows], f.dtype, f.name))
        out_names.append(f.name)
    for k in extra:
        arrays.append(_column([r.get(k) for r in rows], None, k))
        out_names.append(k)
    return pa.Table.from_arrays(arrays, names=out_names)


def rows_to_table(rows: list, schema: Schema | None, source: str, validate: bool = True,
                  where: Callable[[int], str] | None = None, invalid: str = "raise") -> tuple[pa.Table, Schema]:
    """Validate and build; raise ValidationError listing every invalid row (``invalid="raise"``)."""
    loaded = load_rows(rows, schema, source, validate, where, invalid)
    return loaded.table, loaded.schema


def load_rows(rows: list, schema: Schema | None, source: str, validate: bool = True,
              where: Callable[[int], str] | None = None, invalid: str = "raise") -> Loaded:
    check_invalid_policy(invalid)
    where = where or (lambda i: f"{source}:{i}")
    if schema is None:
        schema = guess_schema(rows)
    if schema is None:
        bad_rows = [i for i, r in enumerate(rows) if not isinstance(r, dict)]
        if bad_rows:
            raise ValidationError([f"{where(i)}: expected an object, got {type(rows[i]).__name__}" for i in bad_rows])
        table = pa.Table.from_pylist(rows) if rows else pa.table({})
        return Loaded(table, Schema.infer(table.schema))
    if validate and rows:
        fast = _columnar(rows, schema, where, invalid)
        if fast is not None:
            return fast
    good, bad = [], []
    for i, r in enumerate(rows):
        problems = schema.validate_row(r, where(i)) if validate else []
        if problems:
            bad.append((where(i), "; ".join(problems), r))
            continue
        good.append(schema.normalize_row(r))
    if bad and invalid == "raise":
        raise ValidationError([m for _, m, _ in bad])
    return Loaded(build_table(good, schema), schema, bad)


def _columnar(rows: list, schema: Schema, where: Callable[[int], str], invalid: str) -> Loaded | None:
    """The fast row path: each column built by Arrow's own inference (a column it cannot type, such as ids that
    mix strings and integers, by the schema), then conformed and screened as a fast reader's table is. None
    when a column does not fit as it is (the caller's per-row path then names every problem)."""
    if not all(isinstance(r, dict) for r in rows):
        return None
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    arrays = []
    for k in keys:
        values = [r.get(k) for r in rows]
        dtype = schema.field(k).dtype if k in schema.names else None
        if isinstance(dtype, Json):  # as its text: Arrow's inference would give a dict every key of the others
            try:
                arrays.append(pa.array([dtype.normalize(v) for v in values], pa.string()))
            except (TypeError, ValueError):
                return None
            continue
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            if dtype is not None and not isinstance(dtype, OneOf):
                return None
            try:
                arr = to_array(dtype, [v if v is None or dtype is None else dtype.normalize(v) for v in values])
            except SchemaError:
                return None
        else:
            if dtype is not None and floats_may_hide_ints(pa.table({k: arr}), schema):
                return None  # a turn's 0 beside a 0.5 would come back as 0.0: the per-row path keeps it
            if dtype is None and (pa.types.is_floating(arr.type) or pa.types.is_struct(arr.type)
                                  or pa.types.is_list(arr.type)):
                arr = to_array(None, values)  # ints beside floats, ragged dicts: kept exactly (JSON values)
        arrays.append(arr)
    table = pa.Table.from_arrays(arrays, names=list(keys))
    try:
        table = schema.conform(coerce_images(table, schema))
    except SchemaError:
        return None
    return split_invalid(table, schema, where, invalid)


def _images_from_strings(arr: pa.Array) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), IMAGE_ARROW_TYPE)
    arr = arr.cast(pa.string())
    return pa.StructArray.from_arrays([arr, pa.nulls(len(arr), pa.binary())], fields=list(IMAGE_ARROW_TYPE),
                                      mask=pc.is_null(arr))


def coerce_images(table: pa.Table, schema: Schema) -> pa.Table:
    """Image columns given as path strings become Image structs; Json columns given as objects become text."""
    for f in schema.fields:
        if f.name not in table.column_names:
            continue
        i = table.column_names.index(f.name)
        col = table.column(f.name)
        dtype = f.dtype
        if isinstance(dtype, OneOf):
            alt = dtype.pick_arrow(col.type)
            dtype = alt[1] if alt is not None else dtype
        if isinstance(dtype, Image) and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
                                           or pa.types.is_null(col.type)):
            table = table.set_column(i, f.name, _images_from_strings(col))
        elif isinstance(dtype, List) and isinstance(dtype.inner, Image) and pa.types.is_list(col.type) \
                and (pa.types.is_string(col.type.value_type) or pa.types.is_null(col.type.value_type)):
            arr = col.combine_chunks()
            values = _images_from_strings(arr.values)
            new = pa.ListArray.from_arrays(arr.offsets, values, mask=pc.is_null(arr))
            table = table.set_column(i, f.name, new)
        elif isinstance(f.dtype, Json) and not pa.types.is_string(col.type):
            text = [None if v is None else json.dumps(v, ensure_ascii=False, separators=(",", ":"))
                    for v in col.to_pylist()]
            table = table.set_column(i, f.name, pa.array(text, pa.string()))
    return table


def table_problems(table: pa.Table, schema: Schema, source: str = "row",
                   where: Callable[[int], str] | None = None) -> list[tuple[int, str]]:
    """All (row, message) problems of a conformed table: a vectorized screen, then messages for the
    suspect rows only."""
    where = where or (lambda i: f"{source} {i}")
    try:
        table = schema.conform(table)
    except SchemaError as e:
        return [(i, f"{where(i)}: {e}") for i in range(table.num_rows)]
    suspect = (screen(table, schema) | empty_image_rows(table)).nonzero()[0]
    out = []
    for i in suspect:
        row = table.slice(int(i), 1).to_pylist()[0]
        out += [(int(i), m) for m in schema.validate_row(row, where(int(i)))]
    return out


def screen(table: pa.Table, schema: Schema) -> "np.ndarray":
    """:meth:`Schema.bad_rows`, one call per column over its chunks whole (a table of many small chunks, as
    HF's Arrow files are, costs a few Arrow calls per column, not per chunk; nothing is copied).

    >>> from datacopilot.schemas import MM
    >>> t = pa.table({"id": ["a", "b"], "conversations": [[{"from": "human", "value": "hi"}],
    ...                                                    [{"from": "bot", "value": "x"}]]})
    >>> screen(MM.conform(t), MM).tolist()
    [False, True]
    """
    import numpy as np

    from datacopilot.schemas.types import bool_mask

    mask = np.zeros(table.num_rows, dtype=bool)
    for f in schema.fields:
        if f.name not in table.column_names:
            if f.required:
                mask[:] = True
            continue
        col = table.column(f.name)
        if f.required and col.null_count:
            mask |= bool_mask(col.is_null())
        sub = f.dtype.bad_mask(col)
        if sub is not None:
            mask |= sub
    return mask


def empty_image_rows(table: pa.Table) -> "np.ndarray":
    """A mask of the rows holding an image (a struct with ``path`` and ``bytes``, at any depth: a list of
    images, a variant) that has neither; vectorized, for :func:`table_problems`' screen.

    >>> empty_image_rows(pa.table({"image": [{"path": "a.png", "bytes": None}, {"path": None, "bytes": None}]}))
    array([False,  True])
    """
    import numpy as np

    mask = np.zeros(table.num_rows, dtype=bool)
    for col in table.columns:  # each column whole: a few Arrow calls per column, not per chunk
        if _may_hold_images(col.type):
            mask[_empty_images(col)] = True
    return mask


def _may_hold_images(t: pa.DataType) -> bool:
    """Whether a type has a struct with ``path`` and ``bytes`` anywhere inside (decided from the type alone, so
    a column of text or turns costs nothing)."""
    if isinstance(t, pa.ExtensionType):
        return _may_hold_images(t.storage_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _may_hold_images(t.value_type)
    if not pa.types.is_struct(t):
        return False
    names = {t.field(i).name for i in range(t.num_fields)}
    return {"path", "bytes"} <= names or any(_may_hold_images(t.field(i).type) for i in range(t.num_fields))


def _empty_images(arr) -> "np.ndarray":
    """Rows of an array or chunked array holding an image with neither path nor bytes."""
    import numpy as np

    from datacopilot.schemas.types import bool_mask, list_parents

    t = arr.type
    if isinstance(t, pa.ExtensionType):
        chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
        found, start = [], 0
        for c in chunks:
            found.append(_empty_images(c.storage) + start)
            start += len(c)
        return np.concatenate(found) if found else np.zeros(0, np.int64)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _empty_images(pc.list_flatten(arr))
        return np.unique(list_parents(arr)[inner]) if len(inner) else inner
    if not pa.types.is_struct(t):
        return np.zeros(0, np.int64)
    names = [t.field(i).name for i in range(t.num_fields)]
    if "path" in names and "bytes" in names:
        path = pc.struct_field(arr, [names.index("path")])
        data = pc.struct_field(arr, [names.index("bytes")])
        if not path.null_count or not data.null_count:  # every image has one of them: nothing to look at
            return np.zeros(0, np.int64)
        empty = pc.and_(arr.is_valid(), pc.and_(path.is_null(), data.is_null()))
        return np.flatnonzero(bool_mask(empty))
    found = [_empty_images(pc.struct_field(arr, [i])) for i in range(len(names))]
    return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)


def split_invalid(table: pa.Table, schema: Schema, where: Callable[[int], str], invalid: str) -> Loaded:
    """Validate a table loaded by a fast reader; keep invalid rows apart or raise with every problem."""
    check_invalid_policy(invalid)
    probs = table_problems(table, schema, where=where)
    if not probs:
        return Loaded(table, schema)
    if invalid == "raise":
        raise ValidationError([m for _, m in probs])
    by_row: dict[int, list[str]] = {}
    for i, m in probs:
        by_row.setdefault(i, []).append(m)
    import numpy as np

    keep = np.ones(table.num_rows, dtype=bool)
    keep[list(by_row)] = False
    bad_rows = table.filter(pa.array(~keep)).to_pylist()
    bad = [(where(i), "; ".join(ms), r) for (i, ms), r in zip(sorted(by_row.items()), bad_rows)]
    return Loaded(table.filter(pa.array(keep)), schema, bad)


def quarantine_table(bad: list) -> pa.Table:
    """(where, message, raw row) triples -> a table with the raw row kept as JSON text."""
    def encode(o):  # bytes (embedded images) as the JSON writers carry them, so they read back
        if isinstance(o, (bytes, bytearray)):
            return {"bytes_base64": base64.b64encode(o).decode()}
        return repr(o)

    def dump(r):
        if isinstance(r, str):
            return r
        try:
            return json.dumps(r, ensure_ascii=False, default=encode)
        except (TypeError, ValueError):
            return repr(r)

    return pa.table({
        "_source": pa.array([w for w, _, _ in bad], pa.string()),
        "_error": pa.array([m for _, m, _ in bad], pa.string()),
        "_row": pa.array([dump(r) for _, _, r in bad], pa.string()),
    })


def convert_table(table: pa.Table, src: Schema, dst: Schema) -> pa.Table:
    rows, errors = [], []
    for i, r in enumerate(table.to_pylist()):
        try:
            out = convert_row(r, src, dst)
            for k, v in r.items():  # columns outside the schema travel along unchanged
                if k not in src.names and k not in out:
                    out[k] = v
            rows.append(out)
        except ConversionError as e:
            errors.append(f"row {i}: {e}")
    if errors:
        raise ConversionError(f"{len(errors)} row(s) cannot be converted from {src.name} to {dst.name}:\n"
                              + "\n".join(errors[:20]))
    return build_table(rows, dst)
