"""Rows into groups by key, each group's sizes adding up to at most a capacity (numba; used by
``datacopilot.engine.grouping`` for ``merge_same_image``'s ``max_turns``).

>>> import numpy as np
>>> capacity_groups(np.array([5, 5, 0, 5, 7, 5, 7], np.uint64), np.array([2, 2, 1, 1, 3, 2, 1]), 4).tolist()
[0, 0, 2, 3, 4, 3, 4]
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _leaders(rows, keys, sizes, cap):
    """``rows`` ordered by key, then row: the first row of each one's group. The rows of one key fill a group
    in order; a row that would take it past ``cap`` opens the key's next group."""
    out = np.empty(rows.shape[0], np.int64)
    i, n = 0, rows.shape[0]
    while i < n:
        lead, total = rows[i], sizes[i]
        out[i] = lead
        j = i + 1
        while j < n and keys[j] == keys[i]:
            if total + sizes[j] <= cap:
                total += sizes[j]
            else:
                lead, total = rows[j], sizes[j]
            out[j] = lead
            j += 1
        i = j
    return out


def capacity_groups(keys: np.ndarray, sizes: np.ndarray, cap: int) -> np.ndarray:
    """Per row the index of its group's first row: rows of equal non-zero ``keys`` in row order, while their
    ``sizes`` add up to at most ``cap``; key 0 rows stay alone. Memory: a few int64 arrays of the keyed rows."""
    keys = np.asarray(keys, np.uint64)
    gid = np.arange(len(keys), dtype=np.int64)
    order = np.flatnonzero(keys != 0)
    if len(order):
        order = order[np.argsort(keys[order], kind="stable")]  # (temporaries freed as soon as they are used)
        gid[order] = _leaders(order, keys[order], np.asarray(sizes)[order].astype(np.int64), np.int64(cap))
    return gid
