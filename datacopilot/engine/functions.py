"""Python functions as operators: :class:`FunctionMap` (``ds.map(fn)``) and :class:`FunctionFilter`
(``ds.filter(fn)``), so a user's function runs through the same runtime as every operator (one path a row takes).

A row function sees each row as a dict; a batched one sees a ``pyarrow.RecordBatch``. A row function that raises
fails its row alone (it is called once per row); a batched function that raises is retried row by row by
:meth:`~datacopilot.engine.operator.Operator.process`, so again only the rows that fail are failed. Both pickle
with cloudpickle (lambdas and closures included) for process workers and Ray.

>>> import pyarrow as pa
>>> out = FunctionMap(lambda r: None if r["x"] == 2 else {"x": r["x"] * 10}).process(pa.table({"x": [1, 2, 3]}))
>>> out.table.column("x").to_pylist(), dict(out.dropped)
([10, 30], {'map returned None': 1})
>>> out = FunctionFilter(lambda r: (r["x"] > 1, "too small")).process(pa.table({"x": [1, 2, 3]}))
>>> out.table.column("x").to_pylist(), dict(out.dropped)
([2, 3], {'too small': 1})
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterator
import numpy as np
import pyarrow as pa

from datacopilot.errors import SchemaError

from .kinds import Augmenter, Filter
from .step import Failure, StepOut, to_table

DROPPED_NONE = "map returned None"


def fn_name(fn: Callable) -> str:
    """How a function is named in a step's label: its ``__name__``, or its type's."""
    return getattr(fn, "__name__", type(fn).__name__)


def rows_of(table: pa.Table) -> Iterator[dict]:
    """The rows of a batch as dicts, with the cyclic garbage collector paused while they are walked.

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


class FunctionMap(Augmenter):
    """``fn`` over every row (a dict -> a dict, or None to drop the row) or, ``batched``, over every record batch
    (-> a table, batch, dict of columns, polars or pandas DataFrame; None drops the batch's rows). Rows may go, so
    it is an Augmenter. ``build(column, values)`` types output columns of a row function
    (:meth:`~datacopilot.schemas.Schema.column_array`); ``name`` labels it (``"map <fn name>"``)."""

    def __init__(self, fn: Callable, batched: bool = False, build: Callable[[str, list], pa.Array] | None = None,
                 name: str | None = None):
        super().__init__(fn=fn, batched=bool(batched), build=build, name=name or f"map {fn_name(fn)}")

    @property
    def label(self) -> str:
        return self.p["name"]

    def process(self, table: pa.Table, policy: str = "raise") -> StepOut:
        if self.p["batched"]:
            return super().process(table, policy)
        return self._rows(table, policy)

    def step(self, batch: pa.RecordBatch) -> StepOut:
        if not self.p["batched"]:
            return self._rows(pa.Table.from_batches([batch]), None)
        out = self.p["fn"](batch)
        if out is None:
            return StepOut(batch.schema.empty_table(), dropped=Counter({DROPPED_NONE: batch.num_rows}))
        return StepOut(to_table(out, fn_name(self.p["fn"])))

    def _rows(self, table: pa.Table, policy: str | None) -> StepOut:
        """The row function over each row, each failure its row's alone (``raise``: stop at the first; None: let
        the first error propagate, as a hook does)."""
        fn, kept, failures, dropped = self.p["fn"], [], [], 0
        for i, row in enumerate(rows_of(table)):
            try:
                r = fn(row)
                if r is not None and not isinstance(r, dict):
                    raise TypeError(f"a map function must return a dict or None, got {type(r).__name__}")
            except Exception as e:  # the user's function may raise anything
                if policy is None:
                    raise
                failures.append(Failure.of(i, e))
                if policy == "raise":
                    break
                continue
            if r is None:
                dropped += 1
            else:
                kept.append(r)
        out = StepOut(rows_to_table(kept, table.schema, self.p["build"]), failures=failures)
        if dropped:
            out.dropped[DROPPED_NONE] = dropped
        return out


class FunctionFilter(Filter):
    """Keep the rows for which ``fn`` holds: a row function returning a bool or ``(bool, reason)``, or, ``batched``,
    a function of a record batch returning a mask. Rows dropped without a reason count under ``name``
    (``"filter <fn name>"``)."""

    def __init__(self, fn: Callable, batched: bool = False, name: str | None = None):
        super().__init__(fn=fn, batched=bool(batched), name=name or f"filter {fn_name(fn)}")

    @property
    def label(self) -> str:
        return self.p["name"]

    def process(self, table: pa.Table, policy: str = "raise") -> StepOut:
        if self.p["batched"]:
            return super().process(table, policy)
        return self._rows(table, policy)

    def keep(self, batch: pa.RecordBatch) -> np.ndarray:
        n = batch.num_rows
        m = self.p["fn"](batch)
        if isinstance(m, (pa.Array, pa.ChunkedArray)):
            m = m.to_numpy(zero_copy_only=False)
        m = np.asarray(m, dtype=bool)
        if m.shape != (n,):
            raise ValueError(f"a batched filter must return {n} booleans, got shape {m.shape}")
        return m

    def step(self, batch: pa.RecordBatch) -> StepOut:
        if not self.p["batched"]:
            return self._rows(pa.Table.from_batches([batch]), None)
        return super().step(batch)

    def _rows(self, table: pa.Table, policy: str | None) -> StepOut:
        """The row predicate over each row, each failure its row's alone (``raise``: stop at the first; None:
        let the first error propagate, as a hook does)."""
        from datacopilot.transforms import filter_table

        fn, label = self.p["fn"], self.label
        mask = np.zeros(table.num_rows, dtype=bool)
        failures, dropped = [], Counter()
        for i, row in enumerate(rows_of(table)):
            try:
                r = fn(row)
                keep, reason = r if isinstance(r, tuple) else (r, None)
            except Exception as e:  # the user's function may raise anything
                if policy is None:
                    raise
                failures.append(Failure.of(i, e))
                if policy == "raise":
                    break
                continue
            if keep:
                mask[i] = True
            else:
                dropped[reason or label] += 1
        return StepOut(filter_table(table, mask), dropped=dropped, failures=failures)
