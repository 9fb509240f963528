"""The kinds of operator: each has one hook, and its base turns the hook into :meth:`Operator.step` (one batch in,
one :class:`~datacopilot.engine.step.StepOut` out), so the runtime treats every kind alike.

====================  ====================================================================================
kind                  hook
====================  ====================================================================================
``Mapper``            ``map_batch(batch) -> table``: same rows, same order, columns added or replaced
``Filter``            ``keep(batch) -> mask`` or ``(mask, reasons)``: a reason string for each dropped row
``Augmenter``         ``augment(batch) -> table``: any number of rows out
``Synthesizer``       an Augmenter that makes new rows (usually with a model)
``Evaluator``         ``evaluate(batch) -> dict`` and ``merge(parts) -> dict``: statistics, rows unchanged
``Deduplicator``      ``keys(batch) -> uint64`` (exact), or ``signatures`` + ``duplicates`` (near-duplicate)
``Grouper``           ``signatures(batch) -> (n, 2) uint64`` and ``merge(table, offsets) -> table``: rows with
                      equal keys across the dataset become one row
====================  ====================================================================================

Mappers, filters and augmenters run batch by batch (``run_chain``); deduplicators, groupers and evaluators are
*barriers*: their hook's payload over every row is observed before anything is decided (:mod:`.barriers`).

Heavy state (models, lookup tables) is built in ``setup()``, which runs once per worker before the first batch
(:meth:`Operator.ensure_setup` is thread-safe). An operator pickles as its class and its parameters, so a worker
rebuilds it and runs ``setup()`` itself; a model never travels between processes.

A hook may also return an :class:`Outcome`: its usual result plus counters (a model operator's ``generated``
and ``rejected: <reason>``, summed into the operator's record) and, for a Filter, columns written for the
batch's rows (a judge's score kept on the rows that pass).

An entry of ``reads`` may list alternatives separated by ``|`` (``"conversations|messages"``): one of them
must be present.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from datacopilot.errors import HookError

from .operator import Operator
from .step import Outcome, StepOut, to_table, unwrap

BARRIER_KINDS = ("evaluator", "dedup", "group")


def is_barrier(op: Operator) -> bool:
    """Whether ``op`` needs every row before it decides (dedup, group, evaluate)."""
    return op.kind in BARRIER_KINDS


class Mapper(Operator):
    """Rows in = rows out, in order; ``map_batch`` returns the batch with columns added or replaced."""

    kind = "mapper"

    def map_batch(self, batch: pa.RecordBatch) -> pa.Table:
        raise NotImplementedError

    def step(self, batch: pa.RecordBatch) -> StepOut:
        counts: Counter = Counter()
        out = to_table(unwrap(self.map_batch(batch), counts), self.label)
        if out.num_rows != batch.num_rows:
            raise HookError(self.label, None, f"a mapper must return {batch.num_rows} rows, got {out.num_rows}")
        return StepOut(out, counts=counts)


class Filter(Operator):
    """``keep`` returns a boolean mask, or ``(mask, reasons)`` with a reason string for each dropped row
    (entries of kept rows are ignored; a missing reason counts under the operator's name).

    ``row_local = True`` declares that a row's decision and reason depend on that row alone (not on the other
    rows of its batch) and that ``keep`` writes no counters or columns: the runtime may then decide a run of such
    filters over one batch and copy the rows once (:func:`~datacopilot.engine.runtime.run_chain`).
    """

    kind = "filter"
    row_local: ClassVar[bool] = False

    def keep(self, batch: pa.RecordBatch) -> "np.ndarray | tuple[np.ndarray, np.ndarray]":
        raise NotImplementedError

    def decide(self, batch: pa.RecordBatch) -> tuple[np.ndarray, "np.ndarray | None", Counter, Any]:
        """``keep`` over ``batch``, checked: (mask, reasons or None, counters, columns written or None)."""
        counts: Counter = Counter()
        out = self.keep(batch)
        columns = out.columns if isinstance(out, Outcome) else None
        out = unwrap(out, counts)
        mask, reasons = out if isinstance(out, tuple) else (out, None)
        if isinstance(mask, (pa.Array, pa.ChunkedArray)):
            mask = mask.to_numpy(zero_copy_only=False)
        mask = np.asarray(mask, dtype=bool)
        n = batch.num_rows
        if mask.shape != (n,):
            raise HookError(self.label, None, f"keep() must return {n} booleans, got shape {mask.shape}")
        if reasons is not None:
            reasons = np.asarray(reasons, dtype=object)
            if reasons.shape != mask.shape:
                raise HookError(self.label, None, f"keep() returned {n} booleans but {len(reasons)} reasons")
        return mask, reasons, counts, columns

    def drops(self, mask: np.ndarray, reasons: "np.ndarray | None") -> Counter:
        """The dropped rows (``~mask``) counted by reason (the operator's name where a reason is missing)."""
        dropped: Counter = Counter()
        if not mask.all():
            why = reasons[~mask] if reasons is not None else [None] * int((~mask).sum())
            dropped.update(str(w) if w is not None else self.label for w in why)
        return dropped

    def step(self, batch: pa.RecordBatch) -> StepOut:
        from datacopilot.transforms import filter_table

        mask, reasons, counts, columns = self.decide(batch)
        n = batch.num_rows
        table = pa.Table.from_batches([batch])
        if columns is not None:
            if columns.num_rows != n:
                raise HookError(self.label, None, f"keep() returned columns for {columns.num_rows} rows, "
                                                      f"expected {n}")
            for name in columns.column_names:
                i = table.schema.get_field_index(name)
                col = columns.column(name)
                table = table.set_column(i, name, col) if i >= 0 else table.append_column(name, col)
        return StepOut(filter_table(table, mask), dropped=self.drops(mask, reasons), counts=counts)


class Augmenter(Operator):
    """``augment`` returns any number of rows (new ones, split ones, merged ones)."""

    kind = "augmenter"

    def augment(self, batch: pa.RecordBatch) -> pa.Table:
        raise NotImplementedError

    def step(self, batch: pa.RecordBatch) -> StepOut:
        counts: Counter = Counter()
        return StepOut(to_table(unwrap(self.augment(batch), counts), self.label), counts=counts)


class Synthesizer(Augmenter):
    """An Augmenter that makes new rows, usually with a model built in ``setup``."""

    kind = "synthesizer"


class Evaluator(Operator):
    """Statistics over batches; rows are not changed. ``merge`` combines the per-batch dicts."""

    kind = "evaluator"

    def evaluate(self, batch: pa.RecordBatch) -> dict:
        raise NotImplementedError

    def merge(self, parts: list[dict]) -> dict:
        raise NotImplementedError

    def step(self, batch: pa.RecordBatch) -> StepOut:
        return StepOut(pa.Table.from_batches([batch]), payload=[self.evaluate(batch)])


class Deduplicator(Operator):
    """Dataset-wide: the first row of each key (or of each near-duplicate group) is kept.

    Exact operators implement ``keys(batch) -> uint64 array``; near-duplicate ones implement
    ``signatures(batch)`` and ``duplicates(sigs) -> mask of rows to drop`` over all signatures.
    """

    kind = "dedup"
    near: ClassVar[bool] = False
    banded: ClassVar[bool] = False  # near, and its signatures are LSH band keys: decided row by row as keys stream
    # near, its signatures (hash, valid) perceptual hashes whose duplicates are the kernel's pigeonhole buckets
    # within ``p["max_distance"]`` bits: a distributed executor can partition them by bucket
    hashed_buckets: ClassVar[bool] = False

    @property
    def drop_reason(self) -> str:
        """The reason its dropped rows are counted under."""
        return f"duplicate ({self.label})"

    @property
    def online(self) -> bool:
        """Whether rows can be decided as they stream, against the keys seen so far (exact, or banded)."""
        return not self.near or self.banded

    @property
    def partitionable(self) -> bool:
        """Whether its keys can be decided per hash partition (exact, banded, or hashed buckets); another near
        deduplicator (its own ``duplicates`` over every signature) is decided in one place."""
        return self.online or self.hashed_buckets

    def keys(self, batch: pa.RecordBatch) -> np.ndarray:
        raise NotImplementedError

    def signatures(self, batch: pa.RecordBatch) -> Any:
        raise NotImplementedError

    def duplicates(self, sigs: Any) -> np.ndarray:
        raise NotImplementedError

    def step(self, batch: pa.RecordBatch) -> StepOut:
        if self.near:
            sigs = self.signatures(batch)
        else:
            sigs = np.asarray(self.keys(batch), dtype=np.uint64)
        if len(sigs) != batch.num_rows:
            raise HookError(self.label, None, f"{'signatures' if self.near else 'keys'}() must return one entry "
                                                  f"per row ({batch.num_rows}), got {len(sigs)}")
        return StepOut(pa.Table.from_batches([batch]), payload=[sigs])


class Grouper(Operator):
    """Dataset-wide: rows are arranged across the whole dataset (ordered, and grouped), each group of several rows
    merged into one row, which takes the place of the group's first row.

    ``signatures(batch)`` gives each row a signature (anything with one entry per row: a numpy array, an Arrow
    table); :meth:`arrange` turns the signatures of all rows into the output order. By default a signature is
    ``(key, size)``, an ``(n, 2)`` uint64 array: key 0 means the row stays alone; a group gathers the rows of one
    key in row order while their sizes add up to at most :attr:`capacity` (None: no limit), and a row that would
    pass it starts the key's next group; groups come in order of their first row. ``merge(table, offsets)`` gets
    the rows of several groups, group ``g`` being rows ``offsets[g]:offsets[g + 1]``, each of at least two rows,
    and returns one row per group (or an :class:`Outcome` of it). ``shuffle`` and ``sort`` are groupers whose
    groups are single rows, in the order of the key :meth:`order_by` gives. Executors keep only the signatures
    in memory while they collect them (:mod:`datacopilot.engine.grouping`); :attr:`partitioning` says how an
    executor may split the decision across tasks.
    """

    kind = "group"

    #: the sort keys of :meth:`order_by`'s columns, ``[(column, "ascending" | "descending")]``
    sort_keys: ClassVar[list] = []

    @property
    def capacity(self) -> int | None:
        """The most a group's sizes may add up to (None: no limit)."""
        return None

    def order_by(self, sigs: Any, positions: np.ndarray) -> pa.Table | None:
        """For a grouper of single rows in the order of a key (``sort``, ``shuffle``): the key of the rows whose
        signatures are ``sigs`` (one batch's) at ``positions`` (their positions among all the grouper's input
        rows), as a table ordered by :attr:`sort_keys`, nulls last, ties in input order. None (the default):
        groups of ``(key, size)`` signatures."""
        return None

    @property
    def partitioning(self) -> str | None:
        """How an executor may split the decision across tasks: ``"range"`` (single rows in the order of
        :meth:`order_by`'s key: range-partitioned by it), ``"hash"`` (the default groups of ``(key, size)``
        signatures: hash-partitioned by key), None (a grouper with its own :meth:`arrange`: decided over all the
        signatures at once)."""
        if type(self).arrange is not Grouper.arrange:
            return None
        return "range" if type(self).order_by is not Grouper.order_by else "hash"

    def signatures(self, batch: pa.RecordBatch) -> Any:
        raise NotImplementedError

    def arrange(self, parts: list) -> tuple[np.ndarray, np.ndarray]:
        """``(order, offsets)`` from the signatures of all rows, ``parts`` as their batches gave them: the rows
        (indices over all parts) group by group in output order; group ``g`` is ``order[offsets[g]:offsets[g +
        1]]``."""
        from .grouping import group_ids, layout, ordered

        if type(self).order_by is not Grouper.order_by:  # (also under a subclass's own arrange)
            return ordered(self, parts)
        sigs = [np.asarray(p, dtype=np.uint64).reshape(-1, 2) for p in parts]
        return layout(group_ids(self, np.concatenate(sigs) if sigs else np.zeros((0, 2), np.uint64)))

    def merge(self, table: pa.Table, offsets: np.ndarray) -> pa.Table:
        raise NotImplementedError

    def step(self, batch: pa.RecordBatch) -> StepOut:
        sigs = self.signatures(batch)
        if len(sigs) != batch.num_rows:
            raise HookError(self.label, None, f"signatures() must return one entry per row "
                                                  f"({batch.num_rows}), got {len(sigs)}")
        return StepOut(pa.Table.from_batches([batch]), payload=[sigs])
