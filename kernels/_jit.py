"""Compiled loops behind :mod:`datacopilot.kernels.packing` (numba, cached on disk).

Every function takes and returns int64 arrays only, so each compiles exactly once per machine (``cache=True``
keeps the machine code in ``__pycache__``). Lengths are positive integers no larger than ``max_length``; the
callers in ``packing.py`` check that before calling in here.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def sort_desc(lengths, max_length):
    """Indices of ``lengths`` ordered longest first, ties in input order (a counting sort: O(n + max_length))."""
    counts = np.zeros(max_length + 2, np.int64)
    for x in lengths:
        counts[x] += 1
    start = np.empty(max_length + 2, np.int64)
    acc = 0
    for v in range(max_length, -1, -1):
        start[v] = acc
        acc += counts[v]
    order = np.empty(lengths.shape[0], np.int64)
    for i in range(lengths.shape[0]):
        v = lengths[i]
        order[start[v]] = i
        start[v] += 1
    return order


@njit(cache=True)
def _tree_add(tree, size, leaf, delta):
    i = leaf + size
    while i >= 1:
        tree[i] += delta
        i >>= 1


@njit(cache=True)
def _tree_first_at_least(tree, size, s):
    """Smallest leaf index >= s whose count is positive, or -1."""
    i = s + size
    if tree[i] > 0:
        return s
    while True:
        while i & 1:
            i >>= 1
        if i == 0:
            return -1
        i += 1
        if tree[i] > 0:
            break
    while i < size:
        i = 2 * i if tree[2 * i] > 0 else 2 * i + 1
    return i - size


@njit(cache=True)
def best_fit(lengths, order, max_length):
    """Place samples in ``order``; each goes into the open bin with the least room that still fits it.

    Bins are kept in per-capacity stacks; a segment tree over capacities 0..max_length finds the smallest
    capacity >= the sample's length in O(log max_length). Returns the bin of every sample (indexed like
    ``lengths``) and the number of bins.
    """
    n = order.shape[0]
    size = 1
    while size < max_length + 1:
        size *= 2
    tree = np.zeros(2 * size, np.int64)
    head = np.full(max_length + 1, -1, np.int64)   # top bin of the stack of bins with this much room left
    below = np.empty(n, np.int64)                  # next bin down in the same stack
    bin_of = np.empty(lengths.shape[0], np.int64)
    n_bins = 0
    for k in range(n):
        i = order[k]
        s = lengths[i]
        r = _tree_first_at_least(tree, size, s)
        if r < 0:
            b = n_bins
            n_bins += 1
            left = max_length - s
        else:
            b = head[r]
            head[r] = below[b]
            _tree_add(tree, size, r, -1)
            left = r - s
        bin_of[i] = b
        if left > 0:
            below[b] = head[left]
            head[left] = b
            _tree_add(tree, size, left, 1)
    return bin_of, n_bins


@njit(cache=True)
def next_fit(lengths, max_length):
    """Input order with one open pack: a sample joins it if it fits, else the pack closes and a new one opens."""
    bin_of = np.empty(lengths.shape[0], np.int64)
    b = -1
    used = max_length  # forces a new pack for the first sample
    for i in range(lengths.shape[0]):
        s = lengths[i]
        if used + s > max_length:
            b += 1
            used = 0
        bin_of[i] = b
        used += s
    return bin_of, b + 1


@njit(cache=True)
def group(bin_of, order, n_bins):
    """CSR layout: offsets (n_bins + 1) and sample ids bin by bin, each bin in placement order (``order``)."""
    counts = np.zeros(n_bins + 1, np.int64)
    for k in range(order.shape[0]):
        counts[bin_of[order[k]] + 1] += 1
    for b in range(n_bins):
        counts[b + 1] += counts[b]
    fill = counts[:-1].copy()
    ids = np.empty(order.shape[0], np.int64)
    for k in range(order.shape[0]):
        i = order[k]
        b = bin_of[i]
        ids[fill[b]] = i
        fill[b] += 1
    return counts, ids
