"""The one runtime: :func:`run_chain` runs per-batch operators over a batch, and :class:`Accounting` is where every
row is accounted for (kept, dropped with a reason, failed with its error and quarantined). Every executor calls
these; an executor only decides which batches run where and how many at once.

An :class:`Accounting` made in a worker (a process, a Ray task) travels back with its batch and is merged, in input
order, into the run's: row numbers in errors stay global, counters add up, nothing is counted twice.

>>> import pyarrow as pa
>>> from datacopilot.engine.kinds import Filter
>>> class Even(Filter):
...     name = "even"
...     def keep(self, batch):
...         return (batch.column("x").to_numpy() % 2) == 0
>>> acc = Accounting([Even()], "raise")
>>> run_chain([Even()], pa.table({"x": [1, 2, 3, 4]}), "raise", acc).column("x").to_pylist()
[2, 4]
>>> r = acc.records()[0]; (r.rows_in, r.rows_out, r.dropped)
(4, 2, {'even': 2})
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from datacopilot.errors import OperatorError
from datacopilot.history import OpRecord

from .step import Failure, StepOut, quarantine_rows

POLICIES = ("raise", "skip", "quarantine")


@dataclass
class PendingError:
    """The first failure under ``on_error="raise"``: its row among the operator's input rows, and the error."""

    row: int
    message: str
    traceback: str
    row_id: object = None


@dataclass
class OpAcc:
    """One operator's running accounting."""

    label: str
    rows_in: int = 0
    rows_out: int = 0
    failed: int = 0
    seconds: float = 0.0
    dropped: Counter = field(default_factory=Counter)
    counts: Counter = field(default_factory=Counter)
    error: PendingError | None = None

    def record(self) -> OpRecord:
        return OpRecord(self.label, self.rows_in, self.rows_out, dict(self.dropped), self.failed, self.seconds,
                        dict(self.counts))

    def merge(self, other: "OpAcc") -> None:
        """Add ``other``'s accounting, of rows that come after this one's (its error's row is shifted). One that
        counted no rows in (a barrier's apply step: a grouper's merge of rows held from many batches) names its
        error's row among the operator's whole input: it is not shifted."""
        if other.error is not None and self.error is None:
            e = other.error
            self.error = PendingError((self.rows_in if other.rows_in else 0) + e.row, e.message, e.traceback, e.row_id)
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.failed += other.failed
        self.seconds += other.seconds
        self.dropped.update(other.dropped)
        self.counts.update(other.counts)

    def restore(self, d: dict) -> None:
        """Take the counters of a record (``OpRecord.as_dict``) saved by an earlier, resumed run."""
        self.rows_in, self.rows_out, self.failed = d["rows_in"], d["rows_out"], d["failed"]
        self.dropped, self.seconds = Counter(d["dropped"]), d["seconds"]
        self.counts = Counter(d.get("counts", {}))


class Accounting:
    """Per operator of a plan: rows in, out, dropped by reason, failed, seconds, counters; the quarantined rows; the
    first failure when the policy is ``raise`` (raised by :meth:`check`, naming the operator, the row and its id)."""

    def __init__(self, ops: list, policy: str):
        if policy not in POLICIES:
            raise ValueError(f"`on_error` must be one of {POLICIES}, got {policy!r}")
        self.policy = policy
        self.ops = [OpAcc(op.label) for op in ops]
        self.quarantine: list[pa.Table] = []

    def fresh(self) -> "Accounting":
        """An empty accounting of the same operators (for a worker)."""
        acc = Accounting([], self.policy)
        acc.ops = [OpAcc(a.label) for a in self.ops]
        return acc

    def add(self, k: int, given: pa.Table, out: StepOut, seconds: float, rows_out: bool = True) -> None:
        """Operator ``k`` was given ``given`` and gave ``out`` (``rows_out=False``: a barrier's observe step, whose
        rows are counted out when it applies its decision)."""
        a = self.ops[k]
        if out.failures:
            self.fail(k, given, out.failures)
        a.rows_in += given.num_rows
        if rows_out:
            a.rows_out += out.table.num_rows
        a.dropped.update(out.dropped)
        a.counts.update(out.counts)
        a.seconds += seconds

    def fail(self, k: int, given: pa.Table, failures: list[Failure], base: int | None = None) -> None:
        """Rows of ``given`` failed in operator ``k`` (``base``: the position of ``given``'s first row among the
        operator's input, by default the rows counted in so far)."""
        a = self.ops[k]
        a.failed += len(failures)
        if self.policy == "raise" and a.error is None:
            f = failures[0]
            row_id = given.column("id")[f.row].as_py() if "id" in given.column_names else None
            a.error = PendingError((a.rows_in if base is None else base) + f.row, f.message, f.traceback, row_id)
        if self.policy == "quarantine":
            self.quarantine.append(quarantine_rows(given, failures, a.label))

    def drop(self, k: int, reason: str, n: int) -> None:
        if n:
            self.ops[k].dropped[reason] += n

    def merge(self, other: "Accounting", first: int = 0) -> None:
        """Add a worker's accounting of operators ``first, first + 1, ...`` (of the rows that follow the ones
        counted so far)."""
        for a, b in zip(self.ops[first:], other.ops):
            a.merge(b)
        self.quarantine.extend(other.quarantine)

    @property
    def failed(self) -> bool:
        """Whether a failure is waiting to be raised (``on_error="raise"``)."""
        return any(a.error is not None for a in self.ops)

    def check(self) -> None:
        """Raise the first failure under ``on_error="raise"`` as an OperatorError (operator, row, id, traceback)."""
        for a in self.ops:
            if a.error is not None:
                e = a.error
                raise OperatorError(a.label, e.row, e.message, e.traceback, row_id=e.row_id)

    def records(self) -> list[OpRecord]:
        return [a.record() for a in self.ops]

    def take_quarantine(self) -> pa.Table | None:
        """The rows quarantined since the last call, as one table (None when there are none)."""
        from datacopilot.schemas.arrow_build import concat_tables

        q, self.quarantine = self.quarantine, []
        if not q:
            return None
        try:
            return pa.concat_tables(q, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return concat_tables(q)  # a column of different types in two batches: re-typed over all its values


def run_chain(ops: list, table: pa.Table, policy: str, acc: Accounting, first: int = 0) -> pa.Table:
    """Per-batch operators ``ops`` (operators ``first, first + 1, ...`` of ``acc``) one after the other over
    ``table``: the rows out. The only loop that runs operators; under ``on_error="raise"`` it stops at the first
    failure (which :meth:`Accounting.check` raises). Consecutive row-local filters (``Filter.row_local``) decide
    over the same rows and the kept ones are copied once (:func:`_filters_at_once`); the rows, drops and records
    are those of running them one by one."""
    i = 0
    while i < len(ops):
        if not table.num_rows:
            break
        j = i
        while j < len(ops) and getattr(ops[j], "row_local", False) and ops[j].kind == "filter":
            j += 1
        if j - i > 1:
            out = _filters_at_once(ops[i:j], table, acc, first + i)
            if out is not None:
                table, i = out, j
                continue
        k, op = first + i, ops[i]
        t0 = time.perf_counter()
        out = op.process(table, policy)
        acc.add(k, table, out, time.perf_counter() - t0)
        if out.failures and policy == "raise":
            return table.schema.empty_table()
        table = out.table
        i += 1
    return table


def _filters_at_once(filters: list, table: pa.Table, acc: Accounting, first: int) -> pa.Table | None:
    """Row-local filters (operators ``first, ...`` of ``acc``) over ``table``: each decides on every row (a row's
    decision does not depend on the others, so on the rows an earlier one keeps it is what it would be alone),
    each is accounted for on the rows the ones before it kept, and the rows all keep are copied once. None, with
    nothing accounted, when a hook raises or writes counters or columns: the caller runs them one by one, which
    fails exactly the rows that fail."""
    import numpy as np

    from datacopilot.errors import HookError
    from datacopilot.transforms import filter_table

    from .step import as_batch

    batch = as_batch(table)
    decided = []
    for op in filters:
        t0 = time.perf_counter()
        try:
            op.ensure_setup()
            mask, reasons, counts, columns = op.decide(batch)
        except HookError:
            raise
        except Exception:  # an operator may raise anything: the one-by-one path finds the rows
            return None
        if counts or columns is not None:
            return None
        decided.append((mask, reasons, time.perf_counter() - t0))
    alive = np.ones(batch.num_rows, dtype=bool)
    for k, (op, (mask, reasons, seconds)) in enumerate(zip(filters, decided), first):
        a = acc.ops[k]
        a.rows_in += int(alive.sum())
        a.dropped.update(op.drops(mask[alive], None if reasons is None else reasons[alive]))
        alive &= mask
        a.rows_out += int(alive.sum())
        a.seconds += seconds
    return filter_table(pa.Table.from_batches([batch]), alive)
