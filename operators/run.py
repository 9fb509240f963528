"""The local executor of operators: ``ds.apply(op_or_ops)`` runs them one after the other, eagerly, over record
batches on threads or processes (:func:`datacopilot.parallel.run_batches`), and records one history entry per
operator: rows in, out, dropped by reason, failed.

How rows are accounted for:

* a batch hook that raises is retried row by row, so only the rows that fail are failed (with their error) and
  the others go on; under ``on_error="raise"`` the first failure raises an OperatorError naming the operator, the
  row and its id;
* a Filter's reasons are counted per dropped row (``"<op name>"`` when it gives none);
* a Deduplicator's dropped rows are counted as ``"duplicate (<op name>)"``;
* an Evaluator changes no rows: run it with :func:`evaluate`.

Operators with ``uses_root`` (image operators) get the dataset's ``root`` as their ``root`` parameter unless
they were built with one.

>>> from datacopilot.operators import create
>>> ds.apply([create("clean_whitespace"), create("filter_turns", min_turns=2)])  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa

from datacopilot.schemas.arrow_build import concat_tables

from datacopilot.errors import DataCopilotError, OperatorError, SchemaError
from datacopilot.history import OpRecord
from datacopilot.parallel import check_workers, run_batches
from datacopilot.rowops import POLICIES, Result, _as_batch
from datacopilot.schemas import Schema
from datacopilot.transforms import filter_table

from .base import Augmenter, Deduplicator, Evaluator, Filter, Grouper, Mapper, Operator, Outcome


@dataclass
class OpResult(Result):
    """A batch's result plus the operator's counters (summed over the rows of a row-by-row retry)."""

    counts: Counter = field(default_factory=Counter)


def _failure(row: int, exc: BaseException) -> tuple[int, str, str]:
    return row, f"{type(exc).__name__}: {exc}", traceback.format_exc()


@dataclass
class _OpTask:
    """Runs one operator's hook over a slice; picklable (the operator travels as its class and parameters)."""

    op: Operator
    policy: str

    def _hook(self, table: pa.Table, counts: Counter):
        self.op.ensure_setup()
        batch = _as_batch(table)
        if isinstance(self.op, Filter):
            return self._keep(batch, counts)
        if isinstance(self.op, Mapper):
            out = _to_table(_unwrap(self.op.map_batch(batch), counts), self.op)
            if out.num_rows != batch.num_rows:
                raise OperatorError(self.op.label, None, f"a mapper must return {batch.num_rows} rows, "
                                                         f"got {out.num_rows}")
            return out
        if isinstance(self.op, Augmenter):
            return _to_table(_unwrap(self.op.augment(batch), counts), self.op)
        if isinstance(self.op, Deduplicator):
            return self.op.signatures(batch) if self.op.near else np.asarray(self.op.keys(batch), dtype=np.uint64)
        if isinstance(self.op, Grouper):
            sigs = self.op.signatures(batch)
            if len(sigs) != batch.num_rows:
                raise OperatorError(self.op.label, None, f"signatures() must return one entry per row "
                                                         f"({batch.num_rows}), got {len(sigs)}")
            return sigs
        raise DataCopilotError(f"{self.op.label}: cannot apply an operator of kind {self.op.kind!r}")

    def _keep(self, batch: pa.RecordBatch, counts: Counter) -> tuple[np.ndarray, np.ndarray, pa.Table | None]:
        out = self.op.keep(batch)
        columns = out.columns if isinstance(out, Outcome) else None
        out = _unwrap(out, counts)
        mask, reasons = out if isinstance(out, tuple) else (out, None)
        if isinstance(mask, (pa.Array, pa.ChunkedArray)):
            mask = mask.to_numpy(zero_copy_only=False)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (batch.num_rows,):
            raise OperatorError(self.op.label, None, f"keep() must return {batch.num_rows} booleans, "
                                                     f"got shape {mask.shape}")
        reasons = np.full(len(mask), None, dtype=object) if reasons is None else np.asarray(reasons, dtype=object)
        if reasons.shape != mask.shape:
            raise OperatorError(self.op.label, None, f"keep() returned {len(mask)} booleans but {len(reasons)} "
                                                     f"reasons")
        if columns is not None and columns.num_rows != batch.num_rows:
            raise OperatorError(self.op.label, None, f"keep() returned columns for {columns.num_rows} rows, "
                                                     f"expected {batch.num_rows}")
        return mask, reasons, columns

    def __call__(self, table: pa.Table, offset: int) -> OpResult:
        res = OpResult()
        try:
            counts: Counter = Counter()
            res.table = self._hook(table, counts)
            res.counts = counts
            return res
        except Exception:  # an operator may raise anything: retry row by row to find the rows that fail
            pass
        parts, failures = [], []
        for i in range(table.num_rows):
            try:
                counts = Counter()
                parts.append((i, self._hook(table.slice(i, 1), counts)))
                res.counts.update(counts)
            except Exception as e:
                failures.append(_failure(offset + i, e))
                if self.policy == "raise":
                    break
        res.table, res.failures = parts, failures
        return res


def _unwrap(out, counts: Counter):
    """A hook's value; an Outcome's counters go into ``counts``."""
    if isinstance(out, Outcome):
        counts.update({str(k): int(v) for k, v in out.counts.items() if v})
        return out.value
    return out


def _to_table(out, op: Operator) -> pa.Table:
    from datacopilot.rowops import to_table

    return to_table(out, op.label)


def _check(ops, ds, on_error, num_workers, mode) -> list[Operator]:
    if on_error not in POLICIES:
        raise DataCopilotError(f"`on_error` must be one of {POLICIES}, got {on_error!r}")
    check_workers(num_workers, mode)
    return as_ops(ops, "apply")


def as_ops(ops, what: str) -> list[Operator]:
    """``ops`` (one operator or several) as a list, refusing what is not an operator and evaluators (which
    change no rows: they run with :func:`evaluate`)."""
    ops = [ops] if isinstance(ops, Operator) else list(ops)
    for op in ops:
        if not isinstance(op, Operator):
            raise DataCopilotError(f"{what} takes operators (see datacopilot.operators.create), got {op!r}")
        if isinstance(op, Evaluator):
            raise DataCopilotError(f"{op.label} is an evaluator: it changes no rows; use "
                                   f"datacopilot.operators.run.evaluate(ds, op)")
    return ops


def apply(ds, ops: "Operator | Sequence[Operator]", num_workers: int = 1, mode: str = "thread",
          on_error: str = "raise", batch_size: int | None = None, progress: bool | None = None):
    """Run operators on ``ds`` in order; returns a new MMDataset with one history record per operator.

    The columns each operator reads are checked against the dataset before it runs (so a later operator is
    checked against the columns the earlier ones produced). ``on_error``: ``"raise"``, ``"skip"`` or
    ``"quarantine"`` (failed rows with their errors in ``result.quarantine``).

    >>> from datacopilot.operators import create
    >>> apply(ds, create("filter_turns", min_turns=2), num_workers=2)  # doctest: +SKIP
    """
    for op in _check(ops, ds, on_error, num_workers, mode):
        ds = _apply_one(ds, op, num_workers, mode, on_error, batch_size, progress)
    return ds


def _apply_one(ds, op: Operator, num_workers, mode, on_error, batch_size, progress):
    op.check(ds.columns, ds.schema.name)
    if op.uses_root and op.p.get("root") is None and ds.root:
        op = op.replace(root=ds.root)
    t0 = time.perf_counter()
    table = ds.to_arrow()
    if progress is None and getattr(op, "spec", None) is not None:  # a model operator: slow per row
        progress = sys.stderr.isatty()
    results = run_batches(table, _OpTask(op, on_error), num_workers=num_workers, mode=mode, batch_size=batch_size,
                          desc=op.label, progress=progress,
                          stop=(lambda r: bool(r.failures)) if on_error == "raise" else None)
    failures = [f for r in results for f in r.failures]
    counts = sum((r.counts for r in results), Counter())
    if isinstance(op, Grouper) and not (failures and on_error == "raise"):
        out, more = _group_output(table, results, failures, op, on_error, batch_size, counts)
        failures = sorted(failures + more, key=lambda f: f[0])
    if failures and on_error == "raise":
        row, msg, tb = failures[0]
        row_id = table.column("id")[row].as_py() if "id" in table.column_names else None
        raise OperatorError(op.label, row, msg, tb, row_id=row_id)
    failed_rows = np.zeros(table.num_rows, dtype=bool)
    failed_rows[[f[0] for f in failures]] = True
    if isinstance(op, Filter):
        out, dropped = _filter_output(table, results, failed_rows, op)
    elif isinstance(op, Deduplicator):
        out, dropped = _dedup_output(table, results, failed_rows, op)
    elif isinstance(op, Grouper):
        dropped = {}
    else:
        out, dropped = _map_output(table, results), {}
    rec = OpRecord(op.label, table.num_rows, out.num_rows, dropped, len(failures), time.perf_counter() - t0,
                   dict(counts))
    return _new_dataset(ds, out, rec, _quarantine(ds, table, failures, op.label, on_error))


def _pieces(results: list[Result]):
    """Per batch: the hook's output of the whole batch, or (row in batch, output) pairs after a retry."""
    for r in results:
        if isinstance(r.table, list):
            yield from (piece for _, piece in r.table)
        elif r.table is not None:
            yield r.table


def _filter_output(table, results, failed_rows, op) -> tuple[pa.Table, dict]:
    out, reasons = filter_pieces(table, list(_pieces(results)), failed_rows, op)
    return out, dict(Counter(reasons))


def filter_pieces(table: pa.Table, pieces: list, failed_rows: np.ndarray, op) -> tuple[pa.Table, list[str]]:
    """A Filter's output from its ``(mask, reasons, columns)`` pieces over the rows that did not fail: the kept
    rows (with the columns the filter wrote) and the reason of each dropped row."""
    keep = np.zeros(table.num_rows, dtype=bool)
    why = np.full(table.num_rows, None, dtype=object)
    ok = np.flatnonzero(~failed_rows)
    if pieces:
        keep[ok] = np.concatenate([p[0] for p in pieces])
        why[ok] = np.concatenate([p[1] for p in pieces])
    reasons = [str(w) if w is not None else op.label for w in why[ok][~keep[ok]]]
    written = [p[2] for p in pieces if p[2] is not None]
    if written:
        if len(written) != len(pieces):
            raise OperatorError(op.label, None, "keep() returned columns for some batches and not others")
        cols = pa.concat_tables(written, promote_options="permissive")
        table = filter_table(table, ~failed_rows)
        for name in cols.column_names:
            i = table.schema.get_field_index(name)
            table = (table.set_column(i, name, cols.column(name)) if i >= 0
                     else table.append_column(name, cols.column(name)))
        keep = keep[ok]
    return filter_table(table, keep), reasons


def _dedup_output(table, results, failed_rows, op) -> tuple[pa.Table, dict]:
    ok = np.flatnonzero(~failed_rows)
    pieces = list(_pieces(results))
    drop = np.zeros(len(ok), dtype=bool)
    if pieces and op.near:
        drop = np.asarray(op.duplicates(np.concatenate(pieces)), dtype=bool)
    elif pieces:
        keys = np.concatenate(pieces)
        _, first = np.unique(keys, return_index=True)
        drop[:] = True
        drop[first] = False
    keep = np.zeros(table.num_rows, dtype=bool)
    keep[ok] = ~drop
    n = int(drop.sum())
    return filter_table(table, keep), ({op.drop_reason: n} if n else {})


def _group_output(table, results, failures, op, policy, batch_size, counts) -> tuple[pa.Table, list]:
    """A Grouper's merged rows, and the failures of its merges (rows of ``table``)."""
    from datacopilot.parallel import PIECE_ROWS

    from datacopilot.engine.grouping import arranged, merge_windows

    failed = np.zeros(table.num_rows, dtype=bool)
    failed[[f[0] for f in failures]] = True
    ok = np.flatnonzero(~failed)
    order, offsets = arranged(op, list(_pieces(results)), len(ok))
    outs, more = [], []
    for out, fails, c in merge_windows(op, table.take(ok), order, offsets, policy, batch_size or PIECE_ROWS):
        outs.append(out)
        more += [(int(ok[r]), msg, tb) for rows, msg, tb in fails for r in rows]
        counts.update(c)
    return (pa.concat_tables(outs, promote_options="permissive") if outs else table.schema.empty_table()), more


def _map_output(table, results) -> pa.Table:
    tables = [t for t in _pieces(results) if t.num_rows]
    if not tables:
        return table.schema.empty_table()
    try:
        return concat_tables(tables)
    except SchemaError as e:
        raise SchemaError(f"batches returned columns of different types: {e}") from e


def _new_dataset(ds, out: pa.Table, rec: OpRecord, quarantine):
    from datacopilot.dataset import MMDataset, merge_quarantines

    try:
        ds.schema.conform(out)
        schema = ds.schema
    except SchemaError:
        schema = None
    return MMDataset(out, schema, root=ds.root, history=ds.history() + [rec],
                     quarantine=merge_quarantines([ds.quarantine, quarantine]))


def _quarantine(ds, table: pa.Table, failures: list, label: str, policy: str):
    if policy != "quarantine" or not failures:
        return None
    from datacopilot.dataset import MMDataset

    rows = table.take([f[0] for f in failures])
    rows = rows.append_column("_op", pa.array([label] * len(failures), pa.string()))
    rows = rows.append_column("_error", pa.array([f[1] for f in failures], pa.string()))
    return MMDataset(rows, Schema.infer(rows.schema, "QUARANTINE"), root=ds.root)


def evaluate(ds, op: Evaluator, num_workers: int = 1, mode: str = "thread", batch_size: int | None = None) -> dict:
    """Run an Evaluator over every batch of ``ds`` and merge the parts into one dict of statistics."""
    if not isinstance(op, Evaluator):
        raise DataCopilotError(f"evaluate takes an Evaluator, got {op!r}")
    op.check(ds.columns, ds.schema.name)
    if op.uses_root and op.p.get("root") is None and ds.root:
        op = op.replace(root=ds.root)
    return op.merge(run_batches(ds.to_arrow(), _EvalTask(op), num_workers=num_workers, mode=mode,
                                batch_size=batch_size, desc=op.label))


@dataclass
class _EvalTask:
    op: Evaluator

    def __call__(self, table: pa.Table, offset: int) -> dict:
        self.op.ensure_setup()
        return self.op.evaluate(_as_batch(table))
