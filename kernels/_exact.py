"""Compiled loop behind ``pack(..., strategy="exact_fit")`` (numba, cached on disk).

Exact-fit decreasing works on a count histogram of the lengths (they are integers <= ``max_length``), so samples
of equal length are interchangeable until the end, where input ids are handed out per length in input order.
Packs are built one at a time: the longest remaining sample opens a pack, and the room it leaves is completed, in
this order of preference, by

1. one sample of exactly that length,
2. two samples whose lengths add up to exactly that room (the pair with the shortest possible small member: the
   big member is then as long as possible, which keeps mid-sized samples for later packs),
3. three samples adding up to exactly that room (the third one among the few longest that fit),
4. otherwise the longest sample that fits, and the search starts again on the smaller room that is left.

Step 4 alone is first-fit decreasing; steps 1-3 close packs with no room left whenever the remaining lengths
allow it. Closing packs early is not always best (with every length in (L/5, L/2], first-fit decreasing often
needs fewer packs), so first-fit decreasing is run too, on a copy of the histogram, and the plan with fewer
packs is kept: exact fit never uses more packs than first-fit decreasing. The second pass is skipped when the
first one already meets the volume bound ceil(sum / max_length).

"Longest present length <= x" and "shortest present length >= x" are union-finds over lengths (lengths only ever
leave the histogram), and the pair search walks a linked list of the lengths still present, starting at
room - (longest that fits) and trying at most ``max_scan`` of them, so the cost is O(n * (1 + tries) * max_scan)
in the worst case and near O(n) when exact closes are common.

The histogram spans 1..(longest sample), not 1..max_length, so a huge ``max_length`` costs no memory. All
arrays are int64, so each function compiles once per machine.

Example (through the public API):
    >>> from datacopilot.kernels import pack
    >>> [p.tolist() for p in pack([6, 5, 4, 3, 2], 10, strategy="exact_fit").packs()]
    [[0, 2], [1, 3, 4]]
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .unionfind import find_root


@njit(cache=True)
def _largest_at_most(parent, x):
    """Longest length still present that is <= x (0 if none): a union-find root, with path compression."""
    return find_root(parent, x)


@njit(cache=True)
def _smallest_at_least(up, x):
    """Shortest length still present that is >= x (the end sentinel if none): a union-find root."""
    return find_root(up, x)


@njit(cache=True)
def _exact_pair(count, up, nxt, room, top, reserved, max_scan):
    """Smallest b with b <= room - b <= top and both lengths available (one sample of ``reserved`` already
    used), or 0. ``top`` is the longest length present that fits in ``room``, so b starts at room - top."""
    if room > 2 * top:
        return 0
    end = count.shape[0] - 1
    b = _smallest_at_least(up, max(room - top, 1))
    steps = 0
    while b != end and 2 * b <= room and steps < max_scan:
        c = room - b
        if count[c] >= 1 + (c == b) + (c == reserved) and count[b] >= 1 + (b == reserved):
            return b
        b = nxt[b]
        steps += 1
    return 0


@njit(cache=True)
def _place(count, parent, up, nxt, prv, placed, k, v):
    """Take one sample of length v out of the histogram and record it at placed[k]; returns k + 1."""
    count[v] -= 1
    if count[v] == 0:
        parent[v] = v - 1
        up[v] = v + 1
        nxt[prv[v]] = nxt[v]
        prv[nxt[v]] = prv[v]
    placed[k] = v
    return k + 1


@njit(cache=True)
def _fill_packs(count, max_length, max_scan, tries, closing):
    """Pack the samples counted in ``count`` (``count[v]`` samples of length v, v in 1..len(count) - 2; it is
    used up). With ``closing`` False steps 1-3 are skipped (the pair and triple searches), which is first-fit
    decreasing. Returns (CSR offsets, lengths in placement order)."""
    top = count.shape[0] - 2
    end = top + 1
    n = 0
    for v in range(top + 1):
        n += count[v]
    # present lengths: union-finds for "largest <= x" / "smallest >= x", and a doubly linked list (sentinels 0
    # and end) for walking them upward
    parent = np.arange(top + 2)
    up = np.arange(top + 2)
    nxt = np.empty(top + 2, np.int64)
    prv = np.empty(top + 2, np.int64)
    last = 0
    for v in range(1, top + 1):
        if count[v] > 0:
            nxt[last] = v
            prv[v] = last
            last = v
        else:
            parent[v] = v - 1
            up[v] = v + 1
    nxt[last] = end
    prv[end] = last

    placed = np.empty(n, np.int64)
    offsets = np.empty(n + 1, np.int64)
    offsets[0] = 0
    k = 0
    n_packs = 0
    while k < n:
        a = _largest_at_most(parent, top)
        k = _place(count, parent, up, nxt, prv, placed, k, a)
        room = max_length - a
        while room > 0 and k < n:
            s = _largest_at_most(parent, min(room, top))
            if s == 0:
                break
            if s == room:                                   # 1. one sample closes the pack
                k = _place(count, parent, up, nxt, prv, placed, k, s)
                break
            if closing:
                b = _exact_pair(count, up, nxt, room, s, 0, max_scan)
                if b > 0:                                   # 2. two samples close it
                    k = _place(count, parent, up, nxt, prv, placed, k, room - b)
                    k = _place(count, parent, up, nxt, prv, placed, k, b)
                    break
                closed = False
                t = s
                for _ in range(tries):                      # 3. three samples close it, t among the longest
                    c = _exact_pair(count, up, nxt, room - t, s, t, max_scan)
                    if c > 0:
                        k = _place(count, parent, up, nxt, prv, placed, k, t)
                        k = _place(count, parent, up, nxt, prv, placed, k, room - t - c)
                        k = _place(count, parent, up, nxt, prv, placed, k, c)
                        closed = True
                        break
                    t = prv[t]
                    if t == 0:
                        break
                if closed:
                    break
            k = _place(count, parent, up, nxt, prv, placed, k, s)   # 4. the longest that fits
            room -= s
        n_packs += 1
        offsets[n_packs] = k
    return offsets[:n_packs + 1].copy(), placed


@njit(cache=True)
def exact_fit(lengths, max_length, max_scan, tries):
    """Pack ``lengths`` (int64, each in 1..max_length) by exact-fit decreasing, or by first-fit decreasing when
    that gives fewer packs (it costs one more pass over the histogram, and makes exact fit never worse than
    first-fit decreasing).

    ``max_scan`` bounds the lengths tried per pair search, ``tries`` the third samples tried per triple search.
    Returns CSR ``offsets`` (n_packs + 1) and ``ids`` (indices into ``lengths``, pack by pack, the opener first).
    Packs come in the order they were opened: longest opener first.
    """
    n = lengths.shape[0]
    top = 0
    for x in lengths:
        top = max(top, x)
    count = np.zeros(top + 2, np.int64)
    for x in lengths:
        count[x] += 1
    total = 0
    for x in lengths:
        total += x
    offsets, placed = _fill_packs(count.copy(), max_length, max_scan, tries, True)
    if offsets.shape[0] - 1 > (total + max_length - 1) // max_length:   # above the volume bound: try FFD
        ffd_offsets, ffd_placed = _fill_packs(count.copy(), max_length, max_scan, tries, False)
        if ffd_offsets.shape[0] < offsets.shape[0]:
            offsets, placed = ffd_offsets, ffd_placed
    # hand out ids: by length, in input order within a length; first[v] is the next unused id of length v
    first = np.empty(top + 2, np.int64)
    acc = 0
    for v in range(top + 2):
        first[v] = acc
        acc += count[v]
    bucket = np.empty(n, np.int64)
    fill = first.copy()
    for i in range(n):
        bucket[fill[lengths[i]]] = i
        fill[lengths[i]] += 1
    ids = np.empty(n, np.int64)
    for j in range(n):
        v = placed[j]
        ids[j] = bucket[first[v]]
        first[v] += 1
    return offsets, ids
