"""Union-find over an int array ``parent`` (``parent[root] == root``), for numba kernels: MinHash clustering
(:mod:`datacopilot.kernels.minhash`) and exact-fit packing (:mod:`datacopilot.kernels._exact`).

>>> import numpy as np
>>> parent = np.array([0, 0, 1, 3])
>>> int(find_root(parent, 2)), parent.tolist()
(0, [0, 0, 0, 3])
"""

from __future__ import annotations

from numba import njit


@njit(cache=True)
def find_root(parent, i):
    """The root of ``i`` in a union-find forest (``parent[root] == root``), compressing the path to it."""
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root
