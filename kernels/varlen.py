"""The plan of variable-length attention on CPU: every segment of a packed batch attends only to itself.

A packed batch ``[B, L]`` holds, per row, segments of the given lengths back to back and then padding. Dense
attention over a row costs ``L^2`` whatever the segments; attention per segment costs ``sum(si^2)``. To run it
without a Python loop per segment, segments are grouped into buckets of one length ``m``: a segment of length
``n`` goes to the bucket ``m = bucket_lengths(n)`` (at most 25% longer than ``n`` above 8 tokens), is laid into
``m`` slots (its tokens, then slots that point at a zero row) and every bucket is one batched matmul
``[count, heads, m, m]`` with a plain causal mask. Because a segment's tokens come first in its slots, the causal
mask alone keeps its real queries from the filler: query ``i < n`` sees keys ``0..i``, all real. Each padding
position is a segment of length 1 (it attends only to itself, as in :func:`block_causal_mask`), so the bucket
``m = 1`` needs no matmul at all: its output is its value.

:func:`varlen_plan` returns the arrays the attention needs (all numpy int64):

- ``gather`` ``[n_slots]``: for each slot, bucket after bucket, the flat position ``b * L + t`` it reads, or
  ``B * L`` (the zero row appended after the flattened batch) for a filler slot;
- ``scatter`` ``[B * L]``: for each flat position, the slot that holds its output (the inverse of ``gather`` on
  real slots), so the output of the whole batch is one gather from the buckets' outputs laid end to end;
- ``buckets`` ``[n_buckets, 3]``: ``(m, count, first slot)`` per bucket, ``m`` ascending.

Example:
    >>> plan = varlen_plan([[3, 2]], 6)
    >>> plan.buckets.tolist()   # a padding position (m=1); segments of 3 and 2 in one bucket of 6 (8, capped at L)
    [[1, 1, 0], [6, 2, 1]]
    >>> plan.gather.tolist()
    [5, 0, 1, 2, 6, 6, 6, 3, 4, 6, 6, 6, 6]
    >>> plan.scatter.tolist()
    [1, 2, 3, 7, 8, 0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .masks import check_row, check_total

SMALL = 8  # segments of 2..8 tokens share one bucket of 8 (capped at the row length)


@dataclass(frozen=True)
class VarlenPlan:
    """Slots of the buckets of a packed batch; see the module docs for the meaning of each array."""

    gather: np.ndarray
    scatter: np.ndarray
    buckets: np.ndarray

    @property
    def cost(self) -> int:
        """Attention score entries computed, ``sum(count * m^2)`` over buckets with ``m > 1``."""
        m, c = self.buckets[:, 0], self.buckets[:, 1]
        return int((c * m * m)[m > 1].sum())


def bucket_lengths(lengths, total_length: int) -> np.ndarray:
    """The bucket length of each segment length: 1 stays 1, 2..8 become 8, a longer ``n`` is rounded up to a
    multiple of an eighth of the power of two at or above it (so ``m < 1.25 n``); never above ``total_length``
    (nor below ``n``).

    Example:
        >>> bucket_lengths([1, 3, 9, 17, 100, 1000], 4096).tolist()
        [1, 8, 10, 20, 112, 1024]
    """
    n = np.asarray(lengths, np.int64)
    power = np.left_shift(1, np.ceil(np.log2(np.maximum(n, 1))).astype(np.int64))
    step = np.maximum(power // 8, 1)
    m = -(-n // step) * step
    m = np.where(n <= SMALL, SMALL, m)
    m = np.where(n == 1, 1, m)
    return np.maximum(np.minimum(m, int(total_length)), n)


def varlen_plan(batch_seq_lens: Sequence[Sequence[int]], total_length: int) -> VarlenPlan:
    """Buckets, gather and scatter indices of per-segment attention over a packed batch (module docs)."""
    total_length = check_total(total_length)
    batch = len(batch_seq_lens)
    if batch == 0:
        raise ValueError("a batch needs at least one row")
    starts, lens = [], []
    for b, row in enumerate(batch_seq_lens):
        seg = check_row(row, total_length, f"batch_seq_lens[{b}]")
        used = int(seg.sum())
        base = b * total_length
        starts += [base + np.cumsum(seg) - seg, base + np.arange(used, total_length)]
        lens += [seg, np.ones(total_length - used, np.int64)]
    start, n = np.concatenate(starts), np.concatenate(lens)
    m = bucket_lengths(n, total_length)
    dummy = batch * total_length
    gathers, buckets, slot = [], [], 0
    for size in np.unique(m):
        sel = np.flatnonzero(m == size)
        t = np.arange(size)
        idx = start[sel, None] + t[None, :]
        gathers.append(np.where(t[None, :] < n[sel, None], idx, dummy).ravel())
        buckets.append((int(size), len(sel), slot))
        slot += len(sel) * int(size)
    gather = np.concatenate(gathers)
    real = np.flatnonzero(gather != dummy)
    scatter = np.empty(dummy, np.int64)
    scatter[gather[real]] = real
    return VarlenPlan(gather, scatter, np.asarray(buckets, np.int64).reshape(-1, 3))
