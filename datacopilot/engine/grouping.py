"""How a :class:`~datacopilot.engine.kinds.Grouper` runs, the same way on every executor.

1. Its ``signatures`` hook runs over the batches like any other hook (a batch that raises is retried row by row,
   so only the rows that fail are failed); the rows are kept aside (in memory for ``ds.apply``, spilled to a
   temporary Arrow file by the local executor (``datacopilot.executors.spill``), in Ray's object store on Ray)
   and only the signatures (16 bytes a row for ``merge_same_image``) stay in memory.
2. ``op.arrange`` decides the output order from all signatures: by default :func:`group_ids` gives each row the
   index of its group's first row and :func:`layout` orders the rows group by group, groups in order of their
   first row (``shuffle`` and ``sort`` order single rows by the key of :meth:`~.kinds.Grouper.order_by`:
   :func:`ordered`). :mod:`.partitions` splits both decisions across tasks.
3. The rows come back in that order (the local executor through bucket files; ``ds.apply`` and Ray take them
   by index, :class:`Rows`), and :func:`merge_windows` hands the groups to ``merge`` a window at a time (about
   ``batch_size`` rows). A group of one row is passed on as it is; a group whose merge raises fails all its rows,
   with the error.

>>> import numpy as np
>>> from datacopilot.engine.kinds import Grouper
>>> sigs = np.array([[7, 1], [0, 1], [7, 1], [9, 1], [7, 1]], np.uint64)  # key, size
>>> group_ids(Grouper(), sigs).tolist()
[0, 1, 0, 3, 0]
>>> order, offsets = layout(group_ids(Grouper(), sigs))
>>> order.tolist(), offsets.tolist()
([0, 2, 4, 1, 3], [0, 3, 4, 5])
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datacopilot.kernels.grouping import capacity_groups
from datacopilot.kernels.hashing import mix64

from datacopilot.errors import OperatorError

from .step import to_table, unwrap

if TYPE_CHECKING:  # pragma: no cover
    from .kinds import Grouper

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def group_ids(op: Grouper, sigs: np.ndarray) -> np.ndarray:
    """Per row, the index of the first row of its group (its own index when it stays alone)."""
    sigs = np.asarray(sigs, dtype=np.uint64).reshape(-1, 2)
    cap = op.capacity if op.capacity is not None else 2**62
    return capacity_groups(sigs[:, 0], sigs[:, 1], cap)


def layout(gid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order, offsets)``: the rows group by group (groups in order of their first row, rows in order within a
    group); group ``g`` is ``order[offsets[g]:offsets[g + 1]]``."""
    order = np.argsort(gid, kind="stable")
    cuts = np.flatnonzero(np.diff(gid[order])) + 1
    return order, np.concatenate([[0], cuts, [len(gid)]]).astype(np.int64) if len(gid) else np.zeros(1, np.int64)


def arranged(op: Grouper, parts: list, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``op.arrange(parts)`` checked: every one of the ``n`` rows exactly once, groups of at least one row."""
    try:
        order, offsets = op.arrange(parts)
    except OperatorError:
        raise
    except Exception as e:  # a user's grouper may raise anything: name it
        raise OperatorError(op.label, None, f"arrange() failed: {type(e).__name__}: {e}") from e
    order, offsets = np.asarray(order, dtype=np.int64), np.asarray(offsets, dtype=np.int64)
    if (len(order) != n or (n and (order.min() < 0 or order.max() >= n or np.bincount(order, minlength=n).max() > 1))
            or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != n or (np.diff(offsets) < 1).any()):
        raise OperatorError(op.label, None, f"arrange() must order each of the {n} rows exactly once in groups "
                                            f"of at least one row")
    return order, offsets


def order_indices(op: Grouper, keys: pa.Table, sort_keys: list) -> np.ndarray:
    """The stable order of ``keys`` by ``sort_keys`` (nulls last), or an OperatorError naming the keys that cannot
    be sorted."""
    try:
        return pc.sort_indices(keys, sort_keys=sort_keys).to_numpy().astype(np.int64)
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        types = ", ".join(f"{c} ({keys.schema.field(c).type})" for c, _ in op.sort_keys)
        raise op.error(f"cannot sort by {types}: {e}") from None


def order_keys(op: Grouper, parts: list, start: int = 0) -> pa.Table:
    """:meth:`Grouper.order_by` over consecutive batches' signatures, the first at position ``start``."""
    keys, at = [], start
    for p in parts:
        keys.append(op.order_by(p, np.arange(at, at + len(p), dtype=np.int64)))
        at += len(p)
    return pa.concat_tables(keys, promote_options="permissive")


def ordered(op: Grouper, parts: list) -> tuple[np.ndarray, np.ndarray]:
    """The arrangement of a grouper of single rows in the order of :meth:`Grouper.order_by`'s key (ties in input
    order)."""
    if not parts:
        return np.zeros(0, np.int64), np.zeros(1, np.int64)
    keys = order_keys(op, parts)
    return order_indices(op, keys, op.sort_keys), np.arange(keys.num_rows + 1)


def shuffle_keys(seed: int, positions: np.ndarray) -> np.ndarray:
    """The shuffle rule (``ds.shuffle(seed)`` and the ``shuffle`` operator, on every executor): rows come in the
    order of these keys, a bijection of their positions (the splitmix64 stream of the seed at the positions), so
    a task can order any subset of the rows knowing only their positions.

    >>> np.argsort(shuffle_keys(5, np.arange(6))).tolist(), np.argsort(shuffle_keys(6, np.arange(6))).tolist()
    ([1, 4, 3, 2, 0, 5], [5, 4, 0, 1, 2, 3])
    >>> bool((shuffle_keys(5, np.arange(2, 4)) == shuffle_keys(5, np.arange(6))[2:4]).all())  # a row's own key
    True
    """
    state = mix64(np.array([int(seed) % 2**64], np.uint64))
    with np.errstate(over="ignore"):
        return mix64(state + np.asarray(positions).astype(np.uint64) * _GOLDEN)


def windows(offsets: np.ndarray, rows: int) -> Iterator[tuple[int, int]]:
    """Consecutive ranges of groups ``[lo, hi)`` of about ``rows`` rows (at least one group each)."""
    n, lo = len(offsets) - 1, 0
    while lo < n:
        hi = int(np.searchsorted(offsets, offsets[lo] + rows, side="right")) - 1
        hi = min(max(hi, lo + 1), n)
        yield lo, hi
        lo = hi


def take_array(arr: pa.Array, idx: np.ndarray) -> pa.Array:
    """``arr.take(idx)`` reading only the values of the rows taken: Arrow's take of a struct array reads all of
    its children (a whole spill batch of conversations for a few rows), so structs and lists are taken field by
    field and through their offsets."""
    t = arr.type
    if pa.types.is_struct(t):
        mask = arr.is_null().take(pa.array(idx)) if arr.null_count else None
        children = [take_array(arr.field(i), idx) for i in range(t.num_fields)]  # (flatten() reads all)
        return pa.StructArray.from_arrays(children, fields=[t.field(i) for i in range(t.num_fields)], mask=mask)
    if pa.types.is_list(t):
        valid = arr.is_valid().to_numpy(zero_copy_only=False)[idx] if arr.null_count else None
        # the raw buffer: ``arr.offsets.to_numpy()`` reads far more than the offsets of a memory-mapped batch
        offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset:arr.offset + len(arr) + 1]
        starts, lengths = offsets[idx], offsets[idx + 1] - offsets[idx]
        if valid is not None:
            lengths = np.where(valid, lengths, 0)
        new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        child = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
        values = take_array(arr.values, child)
        return pa.ListArray.from_arrays(pa.array(new_offsets), values, type=t,
                                        mask=pa.array(~valid) if valid is not None else None)
    return arr.take(pa.array(idx, pa.int64()))


def take_batch(batch: pa.RecordBatch, idx: np.ndarray) -> pa.RecordBatch:
    """Rows ``idx`` of a record batch, column by column (:func:`take_array`)."""
    return pa.RecordBatch.from_arrays([take_array(c, idx) for c in batch.columns], schema=batch.schema)


class Rows:
    """Rows of a table taken by index one record batch at a time: pyarrow's ``take`` on a table of many chunks
    first joins them all (a copy of the whole table for a few rows)."""

    def __init__(self, table: pa.Table):
        self.table, self.batches = table, table.to_batches()
        self.bounds = np.cumsum([0] + [b.num_rows for b in self.batches])

    def take(self, idx: np.ndarray) -> pa.Table:
        if len(self.batches) <= 1:
            return self.table.take(idx)
        chunk = np.searchsorted(self.bounds, idx, side="right") - 1
        by_chunk = np.argsort(chunk, kind="stable")
        pieces = []
        for c in np.unique(chunk):
            pick = by_chunk[chunk[by_chunk] == c]
            pieces.append(take_batch(self.batches[c], idx[pick] - self.bounds[c]))
        got = pa.Table.from_batches(pieces, schema=self.table.schema).combine_chunks()
        back = np.empty(len(idx), np.int64)
        back[by_chunk] = np.arange(len(idx))
        return got.take(back)


def take_rows(table: pa.Table, idx: np.ndarray) -> pa.Table:
    """``table.take(idx)`` one record batch at a time (see :class:`Rows`)."""
    return Rows(table).take(idx)


def merge_groups(op: Grouper, rows: pa.Table, offsets: np.ndarray, policy: str
                 ) -> tuple[pa.Table, list[tuple[np.ndarray, str, str]], Counter]:
    """Groups ``rows[offsets[g]:offsets[g + 1]]`` merged into one row each, in order: ``(rows out, failures as
    (positions in rows, message, traceback), counters)``. A call of ``merge`` that raises is retried group by
    group, so only the groups that fail are failed (all their rows); ``policy="raise"`` stops at the first."""
    op.ensure_setup()
    sizes = np.diff(offsets)
    multi = np.flatnonzero(sizes > 1)
    counts: Counter = Counter()
    if not len(multi):
        return rows, [], counts
    spans = [np.arange(offsets[g], offsets[g + 1]) for g in multi]

    def merge(groups: list[int]) -> pa.Table:
        sub = rows.take(np.concatenate([spans[m] for m in groups]))
        sub_offsets = np.concatenate([[0], np.cumsum([len(spans[m]) for m in groups])])
        c: Counter = Counter()
        out = to_table(unwrap(op.merge(sub, sub_offsets), c), op.label)
        if out.num_rows != len(groups):
            raise OperatorError(op.label, None, f"merge() must return {len(groups)} rows, got {out.num_rows}")
        counts.update(c)
        return out

    failures, made = [], {}
    try:
        merged = merge(list(range(len(multi))))
        made = {m: m for m in range(len(multi))}
    except Exception:  # an operator may raise anything: find the groups that fail
        parts = []
        for m in range(len(multi)):
            try:
                parts.append(merge([m]))
                made[m] = len(parts) - 1
            except Exception as e:
                failures.append((spans[m], f"{type(e).__name__}: {e}", traceback.format_exc()))
                if policy == "raise":
                    break
        merged = pa.concat_tables(parts, promote_options="permissive") if parts else rows.schema.empty_table()
    slot = np.where(sizes == 1, offsets[:-1], -1)
    failed = np.zeros(len(sizes), dtype=bool)
    for m, g in enumerate(multi):
        if m in made:
            slot[g] = rows.num_rows + made[m]
        else:
            failed[g] = True
    pool = pa.concat_tables([rows, merged], promote_options="permissive")
    return pool.take(slot[~failed]), failures, counts


def merge_windows(op: Grouper, table: pa.Table, order: np.ndarray, offsets: np.ndarray, policy: str, window: int
                  ) -> Iterator[tuple[pa.Table, list[tuple[np.ndarray, str, str]], Counter]]:
    """The rows of ``table`` in the order of ``op.arrange`` (``order``, ``offsets``), each group merged, a window
    of about ``window`` rows at a time: ``(rows, failures as (row indices in table, message, traceback),
    counters)``."""
    source = Rows(table)
    for lo, hi in windows(offsets, window):
        rows = source.take(order[offsets[lo]:offsets[hi]])
        out, failures, counts = merge_groups(op, rows, offsets[lo:hi + 1] - offsets[lo], policy)
        yield out, [(order[offsets[lo] + pos], msg, tb) for pos, msg, tb in failures], counts
        if failures and policy == "raise":
            return
