"""The tasks that run a user's Python function over one slice of a table (map and filter), returning
what they kept, dropped (with reasons) and failed (with errors). Executors call them; they never raise
for a bad row, so a worker's failure comes back with its row id and traceback."""

from __future__ import annotations

import gc
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from .errors import SchemaError

POLICIES = ("raise", "skip", "quarantine")


@dataclass
class Result:
    table: pa.Table | None = None  # map output
    mask: np.ndarray | None = None  # filter keep-mask
    dropped: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)  # (row, message, traceback)


def _rows(table: pa.Table) -> Iterator[dict]:
    """The rows of a slice as dicts, with the cyclic garbage collector paused while they are walked.

    A batch makes thousands of short-lived, acyclic dicts; every few hundred of them the collector would
    traverse the whole heap (about a third of the time of a simple row map). It runs again after the batch.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield from table.to_pylist()
    finally:
        if was:
            gc.enable()


def fn_name(fn: Callable) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _failure(row: int, exc: BaseException) -> tuple[int, str, str]:
    return row, f"{type(exc).__name__}: {exc}", traceback.format_exc()


def _as_batch(table: pa.Table) -> pa.RecordBatch:
    batches = table.combine_chunks().to_batches()
    if len(batches) == 1:
        return batches[0]
    return pa.RecordBatch.from_pylist([], schema=table.schema) if not batches else pa.concat_batches(batches)


def to_table(out: Any, where: str) -> pa.Table:
    """Accept what a batched function may return: an Arrow table or batch, a dict of columns, polars."""
    if isinstance(out, pa.Table):
        return out
    if isinstance(out, pa.RecordBatch):
        return pa.Table.from_batches([out])
    if isinstance(out, dict):
        return pa.table(out)
    if type(out).__module__.startswith("polars"):
        return out.to_arrow()
    if type(out).__module__.startswith("pandas"):
        return pa.Table.from_pandas(out, preserve_index=False)
    raise TypeError(f"{where}: a batched function must return an Arrow table or batch, a dict of columns or a "
                    f"polars DataFrame, got {type(out).__name__}")


def rows_to_table(rows: list[dict], like: pa.Schema, build: Callable[[str, list], pa.Array] | None) -> pa.Table:
    """A map's output rows as a table: every key of every row becomes a column (a key that only some rows have
    is null elsewhere); columns of the input keep their type when the values fit it. ``build(column, values)``
    types the values of a column that does not fit as it is (image paths as strings, ``meta`` objects, an id
    that became an int, a new key in the turns: :meth:`Schema.column_array`), so the common case pays nothing."""
    if not rows:
        return like.empty_table()
    keys: dict[str, None] = {}
    for r in rows:
        for k in r:
            if k not in keys:
                keys[k] = None
    if set(keys) == set(like.names):
        try:
            return pa.Table.from_pylist(rows, schema=like)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, KeyError):
            pass
    arrays = []
    for k in keys:
        values = [r.get(k) for r in rows]
        want = like.field(k).type if k in like.names else None
        try:
            arrays.append(pa.array(values, type=want))
            continue
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            pass
        try:
            arrays.append(build(k, values) if build is not None else pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError, SchemaError) as e:
            kinds = sorted({type(v).__name__ for v in values if v is not None})
            raise SchemaError(f"map output column {k!r} holds values of different types ({', '.join(kinds)}): {e}") \
                from e
    return pa.Table.from_arrays(arrays, names=list(keys))


@dataclass
class MapTask:
    fn: Callable
    batched: bool
    policy: str
    build: Callable[[str, list], pa.Array] | None = None

    def __call__(self, table: pa.Table, offset: int) -> Result:
        res = Result()
        if self.batched:
            try:
                out = self.fn(_as_batch(table))
                if out is None:
                    res.dropped["map returned None"] += table.num_rows
                    res.table = None
                else:
                    res.table = to_table(out, fn_name(self.fn))
            except Exception as e:  # the user's function may raise anything
                row, msg, tb = _failure(offset, e)
                res.failures = [(offset + i, msg, tb) for i in range(table.num_rows)]
            return res
        rows_out = []
        for i, row in enumerate(_rows(table)):
            try:
                r = self.fn(row)
                if r is not None and not isinstance(r, dict):
                    raise TypeError(f"a map function must return a dict or None, got {type(r).__name__}")
            except Exception as e:
                res.failures.append(_failure(offset + i, e))
                if self.policy == "raise":
                    break
                continue
            if r is None:
                res.dropped["map returned None"] += 1
            else:
                rows_out.append(r)
        res.table = rows_to_table(rows_out, table.schema, self.build)
        return res


@dataclass
class FilterTask:
    fn: Callable
    batched: bool
    policy: str

    def __call__(self, table: pa.Table, offset: int) -> Result:
        n = table.num_rows
        res = Result(mask=np.zeros(n, dtype=bool))
        default_reason = f"filter {fn_name(self.fn)}"
        if self.batched:
            try:
                m = self.fn(_as_batch(table))
                if isinstance(m, (pa.Array, pa.ChunkedArray)):
                    m = m.to_numpy(zero_copy_only=False)
                m = np.asarray(m, dtype=bool)
                if m.shape != (n,):
                    raise ValueError(f"a batched filter must return {n} booleans, got shape {m.shape}")
                res.mask = m
                if n - m.sum():
                    res.dropped[default_reason] += int(n - m.sum())
            except Exception as e:
                _, msg, tb = _failure(offset, e)
                res.failures = [(offset + i, msg, tb) for i in range(n)]
            return res
        for i, row in enumerate(_rows(table)):
            try:
                r = self.fn(row)
                keep, reason = (r if isinstance(r, tuple) else (r, None))
            except Exception as e:
                res.failures.append(_failure(offset + i, e))
                if self.policy == "raise":
                    break
                continue
            if keep:
                res.mask[i] = True
            else:
                res.dropped[reason or default_reason] += 1
        return res
