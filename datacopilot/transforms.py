"""Vectorized table transforms behind MMDataset's methods (polars expressions and pyarrow compute)."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datacopilot.schemas import Schema
from datacopilot.schemas.image import IMAGE_ARROW_TYPE

from .errors import DataCopilotError


def plain_type(t: pa.DataType) -> pa.DataType:
    """Arrow type with large / view variants replaced by the plain ones (what polars hands back)."""
    if pa.types.is_large_string(t) or t == pa.string_view():
        return pa.string()
    if pa.types.is_large_binary(t) or t == pa.binary_view():
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return pa.list_(plain_type(t.value_type))
    if pa.types.is_list(t):
        return pa.list_(plain_type(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, plain_type(f.type), f.nullable) for f in t])
    return t


def from_polars_arrow(table: pa.Table) -> pa.Table:
    target = pa.schema([pa.field(f.name, plain_type(f.type)) for f in table.schema])
    return table if target == table.schema else table.cast(target)


def is_polars_expr(obj) -> bool:
    return type(obj).__module__.startswith("polars") and type(obj).__name__ == "Expr"


def _polars_frame(table: pa.Table, exprs):
    """A polars frame over only the columns the expressions read."""
    import polars as pl

    names: list[str] = []
    for e in exprs:
        try:
            roots = e.meta.root_names()
        except Exception:  # some expressions (pl.all()) have no fixed roots
            roots = table.column_names
        names += [n for n in dict.fromkeys(roots) if n not in names]  # an expression may name a column twice
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise DataCopilotError(f"expression reads unknown column(s) {missing}; columns: {table.column_names}")
    return pl.from_arrow(table.select(names or table.column_names[:1]), rechunk=False)


def expr_mask(table: pa.Table, expr) -> np.ndarray:
    df = _polars_frame(table, [expr])
    out = df.select(expr.alias("__keep__")).to_series()
    if len(out) != table.num_rows:
        raise DataCopilotError(f"filter expression gave {len(out)} values for {table.num_rows} rows: {expr}")
    return out.fill_null(False).to_numpy().astype(bool)


def with_columns(table: pa.Table, exprs: list, named: dict) -> pa.Table:
    import polars as pl

    all_exprs = list(exprs) + [pl.lit(v).alias(k) if not is_polars_expr(v) else v.alias(k) for k, v in named.items()]
    df = _polars_frame(table, all_exprs)
    names = df.lazy().select(all_exprs).collect_schema().names()
    # with_columns broadcasts literals to the frame's height (select would give one row for pl.lit)
    out = from_polars_arrow(df.with_columns(all_exprs).select(names).to_arrow())
    for name in out.column_names:
        col = out.column(name)
        if name in table.column_names:
            i = table.column_names.index(name)
            want = table.schema.field(name).type
            try:
                col = col.cast(want)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
            table = table.set_column(i, name, col)
        else:
            table = table.append_column(name, col)
    return table


def first_distinct(table: pa.Table, names: list[str]) -> np.ndarray:
    import polars as pl

    df = pl.from_arrow(table.select(names), rechunk=False)
    key = pl.struct(names) if len(names) > 1 else pl.col(names[0])
    return df.select(key.is_first_distinct()).to_series().to_numpy().astype(bool)


def _nonempty(arr: pa.Array) -> np.ndarray:
    """True where a value is not null and not an empty string, list, or list with an empty element."""
    ok = np.asarray(arr.is_valid(), dtype=bool)
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        ok &= np.asarray(pc.utf8_length(arr).fill_null(0)) > 0
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        ok &= np.asarray(pc.list_value_length(arr).fill_null(0)) > 0
        values = arr.flatten()
        if len(values):
            bad_vals = ~_nonempty(values)
            if bad_vals.any():
                parents = np.asarray(pc.list_parent_indices(arr))
                ok[np.unique(parents[bad_vals])] = False
    elif pa.types.is_struct(t) and t != IMAGE_ARROW_TYPE:
        for i in range(t.num_fields):
            ok &= _nonempty(arr.field(i)) | ~np.asarray(arr.is_valid(), dtype=bool)
    return ok


def nonempty_mask(table: pa.Table, schema: Schema) -> np.ndarray:
    keep = np.ones(table.num_rows, dtype=bool)
    for f in schema.fields:
        if f.required and f.name in table.column_names:
            keep &= _nonempty(table.column(f.name).combine_chunks())
    return keep


def image_columns(schema: Schema) -> list[str]:
    from datacopilot.schemas.image import is_image_dtype

    return [f.name for f in schema.fields if is_image_dtype(f.dtype)]


def prefix_image_paths(table: pa.Table, schema: Schema, prefix: str) -> pa.Table:
    """Put ``prefix + "/"`` in front of every relative image path (vectorized, over the image columns only).

    Paths that are absolute or URLs stay; so do images that carry their bytes (their path is only a name).
    ``prefix`` is a root to make paths absolute, or a relative route such as ``"../.."`` to rebase them.
    """
    prefix = prefix.rstrip("/") or "/"
    for name in image_columns(schema):
        if name not in table.column_names:
            continue
        col = table.column(name)
        chunks = [_prefix_chunk(c, prefix) for c in col.chunks]
        table = table.set_column(table.column_names.index(name), name, pa.chunked_array(chunks, col.type))
    return table


def _prefix_chunk(arr: pa.Array, prefix: str) -> pa.Array:
    from datacopilot.schemas.variant import is_variant

    if is_variant(arr.type):
        st = arr.storage
        kids = [_prefix_chunk(st.field(i), prefix) for i in range(st.type.num_fields)]
        new = pa.StructArray.from_arrays(kids, names=[f.name for f in st.type], mask=st.is_null())
        return pa.ExtensionArray.from_storage(type(arr.type)(new.type), new)
    if pa.types.is_list(arr.type):
        values = _prefix_chunk(arr.values, prefix)
        return pa.ListArray.from_arrays(arr.offsets, values, type=arr.type, mask=arr.is_null())
    paths, data = arr.field("path"), arr.field("bytes")
    relative = pc.and_(pc.invert(pc.or_(pc.starts_with(paths, "/"), pc.match_substring(paths, "://"))),
                       pc.is_null(data))
    joined = pc.binary_join_element_wise(pa.scalar(prefix), paths, "/")
    new_paths = pc.if_else(relative.fill_null(False), joined, paths)
    kids = [new_paths if f.name == "path" else arr.field(i) for i, f in enumerate(arr.type)]
    return pa.StructArray.from_arrays(kids, fields=list(arr.type), mask=arr.is_null())


_INDEX = re.compile(r"\[\d+\]")


def problem_field(message: str) -> str:
    """The field path of a validation message, with list indices generalized: ``conversations[].from``."""
    body = message.split(": ", 1)[1] if ": " in message else message
    return _INDEX.sub("[]", body.split(": ", 1)[0])


_FILTER_POOL = None


def filter_table(table: pa.Table, keep: np.ndarray) -> pa.Table:
    """``table.filter(keep)``: the table itself when every row is kept, else a ``take`` of the kept rows (on
    nested text columns Arrow's take copies about twice as fast as its filter), record batch by record batch on
    a small thread pool for large tables (Arrow's copy releases the GIL; there the copy, not the mask, is the
    cost of a filter)."""
    global _FILTER_POOL
    keep = np.asarray(keep, dtype=bool)
    if keep.all():
        return table
    batches = table.to_batches()
    if len(batches) < 4 or table.nbytes < (64 << 20):
        return table.take(pa.array(np.flatnonzero(keep)))
    if _FILTER_POOL is None:
        import os
        from concurrent.futures import ThreadPoolExecutor

        _FILTER_POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="dc-filter")
    bounds = np.cumsum([0] + [b.num_rows for b in batches])
    parts = _FILTER_POOL.map(lambda i: batches[i].take(pa.array(np.flatnonzero(keep[bounds[i]:bounds[i + 1]]))),
                             range(len(batches)))
    return pa.Table.from_batches(list(parts), schema=table.schema)
