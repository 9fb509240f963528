"""Barriers: the operators that need every row before they decide (dedup, group, evaluate), as one protocol that
every executor follows.

1. **observe** (:func:`observe`): the operator's hook over each batch, through :meth:`Operator.process` like any
   other operator (rows that fail are failed); its payload (keys, signatures, statistics) is kept, its rows are
   held by the executor (in memory, spilled to disk, in Ray's object store).
2. **decide**: from the payloads of all rows in input order: which rows are duplicates (:func:`dedup_drops`), the
   output order and groups (:func:`group_order`), the merged statistics (:func:`evaluated`). An exact or banded
   deduplicator decides online, batch by batch, against the keys seen so far (:class:`SeenKeys`): its rows need not
   be held.
3. **apply**: the held rows without the dropped ones (:func:`apply_drops`), or in the new order with each group
   merged (:func:`merge_rows`), counted out in :class:`~datacopilot.engine.runtime.Accounting`.

"First" always means first in input order, so every executor keeps the same rows.

>>> import numpy as np
>>> s = SeenKeys()
>>> s.keep(np.array([5, 7, 5], np.uint64)).tolist(), s.keep(np.array([7, 9], np.uint64)).tolist()
([True, True, False], [False, True])
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from datacopilot.kernels.hashing import KeySet

from .grouping import arranged, merge_windows, take_rows
from .runtime import Accounting
from .step import Failure, StepOut


def observe(op, k: int, table: pa.Table, policy: str, acc: Accounting) -> StepOut:
    """Barrier ``op`` (operator ``k``) observes a batch: its hook's result, rows counted in (not yet out)."""
    t0 = time.perf_counter()
    out = op.process(table, policy)
    acc.add(k, table, out, time.perf_counter() - t0, rows_out=False)
    return out


def keys_of(op, pieces: list) -> np.ndarray:
    """A deduplicator's payload pieces as one array: ``(n,)`` keys, ``(n, bands)`` band keys, or its signatures."""
    if op.near and not op.banded:
        return np.concatenate(pieces) if pieces else None
    if not pieces:
        return np.zeros((0, 1) if op.banded else 0, np.uint64)
    keys = np.concatenate([np.asarray(p, dtype=np.uint64) for p in pieces])
    return keys.reshape(len(keys), -1) if op.banded else keys


class SeenKeys:
    """An online deduplicator's state: the keys seen so far (8 bytes a key); a row is kept when none of its keys
    was seen before it."""

    def __init__(self, keys: np.ndarray | None = None):
        self.set = KeySet(keys)

    def keep(self, keys: np.ndarray) -> np.ndarray:
        return self.set.new_rows(keys) if len(keys) else np.zeros(0, bool)

    def array(self) -> np.ndarray:
        return self.set.array()


def decide_online(op, k: int, out: StepOut, seen: SeenKeys, acc: Accounting) -> pa.Table:
    """Observe's result of an online deduplicator decided and applied at once: the rows whose keys are new."""
    from datacopilot.transforms import filter_table

    t0 = time.perf_counter()
    keep = seen.keep(keys_of(op, out.payload))
    rows = filter_table(out.table, keep)
    acc.drop(k, op.drop_reason, int((~keep).sum()))
    acc.ops[k].rows_out += rows.num_rows
    acc.ops[k].seconds += time.perf_counter() - t0
    return rows


def dedup_drops(op, pieces: list) -> np.ndarray:
    """Which rows (of all observed, in input order) are duplicates, from their payload pieces."""
    if not pieces:
        return np.zeros(0, bool)
    keys = keys_of(op, pieces)
    if op.near:
        return np.asarray(op.duplicates(keys), dtype=bool)
    drop = np.ones(len(keys), dtype=bool)
    drop[np.unique(keys, return_index=True)[1]] = False
    return drop


def apply_drops(op, k: int, rows: pa.Table, drop: np.ndarray, acc: Accounting, counted: bool = False) -> pa.Table:
    """Held rows without the ones decided to be duplicates (``drop`` aligned with ``rows``); ``counted``: the drops
    were already counted (a decision applied in several pieces counts them once, with ``acc.drop``)."""
    from datacopilot.transforms import filter_table

    out = filter_table(rows, ~drop)
    if not counted:
        acc.drop(k, op.drop_reason, int(drop.sum()))
    acc.ops[k].rows_out += out.num_rows
    return out


def group_order(op, pieces: list, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A grouper's decision: ``(order, offsets)`` of the ``n`` observed rows (checked)."""
    return arranged(op, pieces, n)


def merge_rows(op, k: int, rows: pa.Table, order: np.ndarray, offsets: np.ndarray, acc: Accounting,
               window: int, positions: np.ndarray | None = None) -> Iterator[pa.Table]:
    """The held ``rows`` in the grouper's order, each group merged, a window of about ``window`` rows at a time;
    the rows of a group whose merge fails are failed (quarantined; the first named by its row's position among
    the operator's input: ``positions`` of ``rows``, by default their indices), the rows out counted."""
    a = acc.ops[k]
    t0 = time.perf_counter()
    for out, fails, counts in merge_windows(op, rows, order, offsets, acc.policy, window):
        a.counts.update(counts)
        if fails:
            idx = np.array([r for members, _, _ in fails for r in members], np.int64)
            errors = [(msg, tb) for members, msg, tb in fails for _ in members]
            failures = [Failure(i, msg, tb) for i, (msg, tb) in enumerate(errors)]
            acc.fail(k, take_rows(rows, idx), failures, base=int(idx[0] if positions is None else positions[idx[0]]))
            if acc.policy == "raise":
                return
        a.rows_out += out.num_rows
        a.seconds += time.perf_counter() - t0
        yield out
        t0 = time.perf_counter()


def evaluated(op, pieces: list[Any]) -> dict:
    """An evaluator's decision: its statistics merged from every batch's."""
    return op.merge(list(pieces))
