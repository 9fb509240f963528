"""A deduplicator's decision split across partitions of its keys, the same rows as :func:`~.barriers.dedup_drops`
(or :class:`~.barriers.SeenKeys` fed block after block) over all of them: the executor-independent rules of a
partitioned dedup barrier.

Each block's keys go, with the global positions of their rows (the block's offset plus the row; blocks in input
order), to the partition of the key's hash (:func:`scatter`); a partition sees every occurrence of its keys.

* Exact and banded keys (``dedup_exact``, ``dedup_near_text``): a row is dropped when one of its keys (or band
  keys) is held by an earlier row. Per key the smallest position wins; every other position holding it is dropped
  (:func:`first_wins`). A row dropped in one partition is dropped: the union over partitions is the decision.
* Perceptual hashes (``dedup_near_image``, :func:`~datacopilot.kernels.phash.near_duplicates`): rows are joined
  when they share a bucket (one of ``max_distance + 1`` bit ranges of the hash, pigeonhole) and are within
  ``max_distance`` bits, each row compared with at most ``max_scan`` rows before it in the bucket; every row of a
  joined cluster but its first is dropped. The buckets are the keys: a partition finds its buckets' pairs
  (:func:`bucket_pairs`) exactly as the kernel does; the clusters join pairs from every partition
  (:func:`cluster_drops`, over the pairs only: rows in no pair are kept).

The dropped positions go back to the blocks holding them (:func:`by_block`).

>>> import numpy as np
>>> first_wins(np.array([7, 5, 7, 5, 9], np.uint64), np.array([3, 4, 1, 2, 0])).tolist()
[3, 4]
>>> cluster_drops(np.array([2, 5]), np.array([9, 2])).tolist()
[5, 9]
"""

from __future__ import annotations

import numpy as np

from datacopilot.kernels.hashing import mix64

MAX_SCAN = 1000  # rows before it a row is compared with in a bucket (the kernel's default)


def keys_and_rows(op, keys) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A block's payload (:func:`~.barriers.keys_of`) as flat ``(keys, rows, extra)``: one entry per key (a
    banded row gives one per band); for perceptual hashes one per bucket, ``extra`` an ``(m, 3)`` uint64 array of
    (bucket index, hash, valid) and ``keys`` the bucket keys."""
    if op.near and not op.banded:
        from datacopilot.kernels.phash import bucket_keys

        sigs = np.asarray(keys, np.uint64).reshape(-1, 2) if keys is not None else np.zeros((0, 2), np.uint64)
        buckets = bucket_keys(sigs[:, 0], op.p["max_distance"])
        n, parts = buckets.shape
        rows = np.repeat(np.arange(n, dtype=np.int64), parts)
        extra = np.empty((n * parts, 3), np.uint64)
        extra[:, 0] = np.tile(np.arange(parts, dtype=np.uint64), n)
        extra[:, 1] = sigs[rows, 0]
        extra[:, 2] = sigs[rows, 1]
        return buckets.reshape(-1), rows, extra
    keys = np.asarray(keys, np.uint64)
    if keys.ndim == 1:
        return keys, np.arange(len(keys), dtype=np.int64), None
    n, bands = keys.shape
    return keys.reshape(-1), np.repeat(np.arange(n, dtype=np.int64), bands), None


def partition_of(keys: np.ndarray, parts: int, extra: np.ndarray | None = None) -> np.ndarray:
    """The partition of each key: its hash (mixed with the bucket index, when given) modulo ``parts``."""
    h = np.asarray(keys, np.uint64)
    if extra is not None:
        h = h ^ mix64(extra[:, 0] + np.uint64(1))
    return (mix64(h) % np.uint64(parts)).astype(np.int64)


def scatter(op, keys, parts: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """A block's payload split by partition: ``parts`` entries of ``(keys, rows in the block, extra)``, each in
    row order (rows as int64, to which the block's offset is added)."""
    k, rows, extra = keys_and_rows(op, keys)
    p = partition_of(k, parts, extra)
    order = np.argsort(p, kind="stable")
    cuts = np.searchsorted(p[order], np.arange(parts + 1))
    out = []
    for i in range(parts):
        sel = order[cuts[i]:cuts[i + 1]]
        out.append((k[sel], rows[sel], extra[sel] if extra is not None else None))
    return out


def first_wins(keys: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The positions dropped in a partition of exact or banded keys: every position holding a key held at a
    smaller position (a row holding a key twice is not its own duplicate), sorted, unique."""
    if not len(keys):
        return np.zeros(0, np.int64)
    positions = np.asarray(positions, np.int64)
    order = np.lexsort((positions, keys))
    k, pos = keys[order], positions[order]
    starts = np.ones(len(k), bool)
    starts[1:] = k[1:] != k[:-1]
    first = np.maximum.accumulate(np.where(starts, np.arange(len(k)), 0))  # index of each run's first entry
    return np.unique(pos[pos > pos[first]])


def bucket_pairs(keys: np.ndarray, positions: np.ndarray, extra: np.ndarray, max_distance: int,
                 max_scan: int = MAX_SCAN) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ``(earlier, later)`` of positions a partition of perceptual-hash buckets joins: both rows have a
    hash, share a bucket (bucket index and key), the later is at most ``max_scan`` places after the earlier in the
    bucket (rows without a hash count as places: the kernel's rule) and they are within ``max_distance`` bits."""
    if not len(keys):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    positions = np.asarray(positions, np.int64)
    order = np.lexsort((positions, keys, extra[:, 0]))
    band, k, pos = extra[order, 0], keys[order], positions[order]
    h, valid = extra[order, 1], extra[order, 2] == 1
    n = len(k)
    starts = np.ones(n, bool)
    starts[1:] = (k[1:] != k[:-1]) | (band[1:] != band[:-1])
    first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    rank = np.arange(n) - first
    a, b = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    j = np.flatnonzero(rank >= 1)
    for s in range(1, min(int(rank.max()), max_scan) + 1):
        j = j[rank[j] >= s]  # the entries with an entry s places before them in their bucket
        i = j - s
        ok = valid[i] & valid[j] & (np.bitwise_count(h[i] ^ h[j]) <= max_distance)
        a.append(pos[i[ok]])
        b.append(pos[j[ok]])
    return np.concatenate(a), np.concatenate(b)


def cluster_drops(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The positions dropped by joining pairs ``(a[i], b[i])``: every position of a connected cluster but its
    smallest, sorted (positions in no pair are kept)."""
    if not len(a):
        return np.zeros(0, np.int64)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    m = len(a)
    graph = coo_matrix((np.ones(m, np.int8), (inv[:m], inv[m:])), shape=(len(nodes), len(nodes)))
    _, label = connected_components(graph, directed=False)
    smallest = np.full(label.max() + 1, len(nodes))
    np.minimum.at(smallest, label, np.arange(len(nodes)))  # nodes are sorted: the first index is the smallest
    return nodes[smallest[label] != np.arange(len(nodes))]


def by_block(dropped: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Sorted dropped global positions split by block (``offsets``: the blocks' first positions and the total),
    as each block's row indices (int64)."""
    cuts = np.searchsorted(dropped, offsets)
    return [dropped[cuts[i]:cuts[i + 1]] - offsets[i] for i in range(len(offsets) - 1)]


def drop_mask(n: int, parts: list[np.ndarray]) -> np.ndarray:
    """A block's ``n`` rows: True where a partition dropped it."""
    drop = np.zeros(n, bool)
    for p in parts:
        drop[p] = True
    return drop
