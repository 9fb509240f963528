"""What one operator gives back for one batch: :class:`StepOut`, with its :class:`Failure` records.

Every kind's base turns its hook into ``op.process(table, policy) -> StepOut`` (:mod:`.kinds`), and every executor
hands that result to the same accounting (:mod:`.runtime`): there is one shape of "a failure" and one of "a result".

>>> import pyarrow as pa
>>> out = StepOut(pa.table({"x": [1, 2]}))
>>> out.table.num_rows, dict(out.dropped), out.failures
(2, {}, [])
"""

from __future__ import annotations

import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from datacopilot.errors import SchemaError


@dataclass(frozen=True)
class Failure:
    """A row an operator failed on: its index in the batch the operator was given, the error and its traceback."""

    row: int
    message: str
    traceback: str = ""

    @classmethod
    def of(cls, row: int, exc: BaseException) -> "Failure":
        """The failure of ``row`` from the exception being handled."""
        return cls(row, f"{type(exc).__name__}: {exc}", traceback.format_exc())


@dataclass
class StepOut:
    """One operator over one batch.

    ``table``: the rows out, in order (a barrier operator's rows that did not fail, unchanged); ``dropped``: rows
    dropped by reason; ``failures``: rows failed (indices into the batch given); ``counts``: the operator's own
    counters; ``payload``: what a barrier's hook gave for the rows of ``table``, in pieces (keys, signatures, an
    evaluator's statistics), for the barrier to decide on.
    """

    table: pa.Table
    dropped: Counter = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    payload: list[Any] = field(default_factory=list)

    @classmethod
    def combine(cls, parts: list["StepOut"], empty: pa.Table) -> "StepOut":
        """The results of consecutive slices of a batch as one (``empty``: the table when no part has rows)."""
        out = cls(empty)
        tables = [p.table for p in parts if p.table.num_rows]
        if tables:
            out.table = concat(tables)
        for p in parts:
            out.dropped.update(p.dropped)
            out.counts.update(p.counts)
            out.payload.extend(p.payload)
        return out


@dataclass
class Outcome:
    """A hook's result with extras: ``value`` is what the hook returns otherwise (a table, or a Filter's mask or
    ``(mask, reasons)``); ``counts`` are counters summed into the operator's record; ``columns`` (Filter only)
    is a table of columns, one row per row of the batch, added to (or replacing columns of) the rows kept."""

    value: Any
    counts: dict = field(default_factory=dict)
    columns: pa.Table | None = None


def unwrap(out: Any, counts: Counter) -> Any:
    """A hook's value; an Outcome's counters go into ``counts``."""
    if isinstance(out, Outcome):
        counts.update({str(k): int(v) for k, v in out.counts.items() if v})
        return out.value
    return out


def as_batch(table: pa.Table | pa.RecordBatch) -> pa.RecordBatch:
    """``table`` as one record batch (what an operator's hook is given)."""
    if isinstance(table, pa.RecordBatch):
        return table
    batches = table.combine_chunks().to_batches()
    if len(batches) == 1:
        return batches[0]
    return pa.RecordBatch.from_pylist([], schema=table.schema) if not batches else pa.concat_batches(batches)


def to_table(out: Any, where: str) -> pa.Table:
    """What a batch function may return as an Arrow table: a table or batch, a dict of columns, polars, pandas."""
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


def concat(tables: list[pa.Table]) -> pa.Table:
    """Tables of one output stream as one (types unified as the schema layer does), or a SchemaError saying so."""
    from datacopilot.schemas.arrow_build import concat_tables

    if len(tables) == 1:
        return tables[0]
    try:
        return concat_tables(tables)
    except SchemaError as e:
        raise SchemaError(f"batches returned columns of different types: {e}") from e


def quarantine_rows(table: pa.Table, failures: list[Failure], label: str) -> pa.Table:
    """The failed rows of ``table`` with the operator (``_op``) and the error (``_error``): the quarantine's shape,
    built here only."""
    rows = table.take([f.row for f in failures])
    rows = rows.append_column("_op", pa.array([label] * len(failures), pa.string()))
    return rows.append_column("_error", pa.array([f.message for f in failures], pa.string()))
