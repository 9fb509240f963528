"""A grouper's decision split across tasks, the same rows as :func:`~datacopilot.engine.grouping.arranged` over
all of them: the executor-independent rules of a partitioned barrier (:attr:`Grouper.partitioning`).

* ``"range"`` (``sort``, ``shuffle``): each row's key (:meth:`Grouper.order_by`) with its global position is a
  strict total order; :func:`range_bounds` picks ``parts - 1`` of the rows sampled from each block
  (:func:`sample_at`) as boundaries, :func:`range_of` sends each row to the range it falls in, and each range,
  sorted by key then position (:func:`sort_range`), is the next run of the output.
* ``"hash"`` (``merge_same_image``): the keyed rows' ``(position, key, size)`` go to the partition of their key
  (:func:`hash_of`); a partition sees every row of its keys in input order, so :func:`leaders` gives each the
  position of its group's first row exactly as over all rows; the rows then go to the output range holding their
  leader (:func:`output_cuts`) and each range lays out its groups by leader, then position (groups in order of
  their first row, rows in order within a group).

Whatever the number of partitions, the output is the one order of all rows.

>>> import numpy as np
>>> output_cuts(np.array([4, 4, 4, 4]), 2).tolist()
[0, 8, 16]
>>> leaders(np.array([3, 7, 9, 12]), np.array([5, 5, 5, 5], np.uint64), np.array([1, 2, 1, 1], np.uint64), 3).tolist()
[3, 3, 9, 9]
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from datacopilot.kernels.grouping import capacity_groups
from datacopilot.kernels.hashing import mix64

from .grouping import order_indices

POS = "__dc_pos"  # a row's global position, the last sort key: ties in input order
SAMPLE = 32  # rows sampled per block to choose range boundaries
BLOCKS_PER_PART = 16  # a partition gathers about this many blocks' rows at most, once there are enough workers


def partition_count(blocks: int, workers: int) -> int:
    """How many partitions for ``blocks`` input blocks on ``workers`` CPUs: two per worker, more once that would
    gather over :data:`BLOCKS_PER_PART` blocks into one, never more than the blocks (the driver holds
    ``blocks * partitions`` references, nothing per row).

    >>> partition_count(1, 8), partition_count(6, 2), partition_count(1000, 4)
    (1, 4, 63)
    """
    return max(1, min(blocks, max(2 * workers, math.ceil(blocks / BLOCKS_PER_PART))))


def sample_at(n: int, k: int = SAMPLE) -> np.ndarray:
    """Up to ``k`` evenly spread row indices of ``n`` rows (the first and the last among them).

    >>> sample_at(10, 4).tolist(), sample_at(3).tolist()
    ([0, 3, 6, 9], [0, 1, 2])
    """
    return np.unique(np.linspace(0, n - 1, min(n, k)).astype(np.int64)) if n else np.zeros(0, np.int64)


def take_signatures(sigs, idx: np.ndarray):
    """Rows ``idx`` of one batch's signatures (an Arrow table or array, or a numpy array)."""
    if isinstance(sigs, (pa.Table, pa.RecordBatch, pa.Array, pa.ChunkedArray)):
        return sigs.take(pa.array(idx, pa.int64()))
    return np.asarray(sigs)[idx]


def with_positions(keys: pa.Table, positions: np.ndarray) -> pa.Table:
    return keys.append_column(POS, pa.array(np.asarray(positions, np.int64)))


def _order(op, keys: pa.Table) -> np.ndarray:
    return order_indices(op, keys, [*op.sort_keys, (POS, "ascending")])


def range_bounds(op, samples: pa.Table, parts: int) -> pa.Table:
    """``parts - 1`` boundaries (key columns and :data:`POS`) at even quantiles of the sampled rows: range ``q``
    holds the rows after boundary ``q - 1`` up to boundary ``q`` (fewer when there are fewer samples)."""
    if samples.num_rows == 0 or parts <= 1:
        return samples.slice(0, 0)
    idx = _order(op, samples)
    at = np.unique((np.arange(1, parts) * samples.num_rows) // parts)
    return samples.take(pa.array(idx[at[at < samples.num_rows]]))


def range_of(op, keys: pa.Table, bounds: pa.Table) -> np.ndarray:
    """Per row of ``keys`` (key columns and :data:`POS`), its range among ``bounds``: the number of boundaries
    before it in the order (a row equal to a boundary, the boundary's own row, falls in that boundary's range)."""
    n = keys.num_rows
    if not bounds.num_rows or not n:
        return np.zeros(n, np.int64)
    both = pa.concat_tables([keys, bounds.select(keys.column_names)], promote_options="permissive")
    idx = _order(op, both)  # stable: a row before its equal boundary
    before = np.cumsum(idx >= n) - (idx >= n)
    out = np.empty(n, np.int64)
    rows = idx < n
    out[idx[rows]] = before[rows]
    return out


def sort_range(op, keys: pa.Table) -> np.ndarray:
    """The order of a range's rows (key columns and :data:`POS`): by key, then position."""
    return _order(op, keys)


def hash_of(keys: np.ndarray, parts: int) -> np.ndarray:
    """The partition of each (non-zero) group key."""
    return (mix64(np.asarray(keys, np.uint64)) % np.uint64(parts)).astype(np.int64)


def leaders(positions: np.ndarray, keys: np.ndarray, sizes: np.ndarray, capacity: int | None) -> np.ndarray:
    """The position of each row's group's first row, given every row of some keys in input order (``positions``
    ascending): the rows of a key fill a group while their sizes add up to at most ``capacity``."""
    positions = np.asarray(positions, np.int64)
    cap = capacity if capacity is not None else 2**62
    return positions[capacity_groups(np.asarray(keys, np.uint64), np.asarray(sizes, np.uint64), cap)]


INLINE_BYTES = 100 * 1024  # Ray keeps a task result smaller than this in its owner's memory (the driver's)


def block_groups(counts: np.ndarray, rows: int) -> list[tuple[int, int]]:
    """Consecutive blocks ``[lo, hi)`` of at least ``rows`` rows each (the last may hold fewer), by their row
    ``counts``: the unit of a task whose result pieces must not be small.

    >>> block_groups(np.array([5, 5, 5, 5, 5]), 9)
    [(0, 2), (2, 4), (4, 5)]
    """
    out, lo, held = [], 0, 0
    for i, c in enumerate(np.asarray(counts, np.int64)):
        held += int(c)
        if held >= rows:
            out.append((lo, i + 1))
            lo, held = i + 1, 0
    if lo < len(counts):
        out.append((lo, len(counts)))
    return out


def output_cuts(counts: np.ndarray, parts: int) -> np.ndarray:
    """Output ranges over the leaders' positions, at block boundaries (``counts``: rows per block, in order), of
    about equal rows: range ``q`` holds the groups whose first row is in ``[cuts[q], cuts[q + 1])``."""
    bounds = np.concatenate([[0], np.cumsum(np.asarray(counts, np.int64))])
    n = int(bounds[-1])
    want = (np.arange(1, max(parts, 1)) * n) // max(parts, 1)
    inner = bounds[np.searchsorted(bounds, want, side="left")]
    return np.unique(np.concatenate([[0], inner[(inner > 0) & (inner < n)], [n]])).astype(np.int64)


def range_index(cuts: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The output range of each leader position."""
    return np.searchsorted(cuts, positions, side="right") - 1
