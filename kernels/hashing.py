"""64-bit hashes for exact deduplication: normalized text, raw bytes, and the first occurrence of each key.

Strings are hashed by polars over the whole column at once (stable across processes of one polars version, so
workers of one run agree); bytes (encoded images) by BLAKE2b with an 8-byte digest. With 64-bit keys, two
different rows of a million-row dataset share a key with probability about 3e-8.

Example:
    >>> from datacopilot.kernels.hashing import first_occurrence, hash_strings, normalize_text
    >>> keys = hash_strings(normalize_text(["Hello  World", "hello world", "other"]))
    >>> first_occurrence(keys).tolist()
    [True, False, True]
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _as_string_array(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        values = pa.array(list(values), pa.large_string())
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    return values


def normalize_text(values) -> pa.Array:
    """Lowercase, collapse every run of whitespace to one space and strip the ends; nulls become ``""``.

    ``values`` is a pyarrow string array (or chunked array) or a sequence of ``str | None``.

    >>> normalize_text([" A\\tB\\n\\n c ", None]).to_pylist()
    ['a b c', '']
    """
    arr = _as_string_array(values)
    arr = pc.fill_null(arr, "")
    arr = pc.utf8_lower(arr)
    arr = pc.replace_substring_regex(arr, r"\s+", " ")
    return pc.utf8_trim_whitespace(arr)


def hash_strings(values, seed: int = 0) -> np.ndarray:
    """One uint64 hash per string (polars' vectorized hash); a null hashes to a fixed value unlike ``""``.

    >>> h = hash_strings(["a", "b", "a"]); bool(h[0] == h[2]), bool(h[0] == h[1])
    (True, False)
    """
    import polars as pl

    arr = _as_string_array(values)
    if len(arr) == 0:
        return np.zeros(0, np.uint64)
    return pl.Series(arr).hash(seed=seed).to_numpy().astype(np.uint64, copy=False)


def hash_bytes(values: Iterable[bytes | None]) -> np.ndarray:
    """One uint64 per byte string (BLAKE2b, 8-byte digest, little endian); ``None`` hashes to 0.

    >>> h = hash_bytes([b"x", b"x", b"y", None]); bool(h[0] == h[1]), bool(h[0] == h[2]), int(h[3])
    (True, False, 0)
    """
    out = []
    for v in values:
        out.append(0 if v is None else int.from_bytes(hashlib.blake2b(v, digest_size=8).digest(), "little"))
    return np.array(out, dtype=np.uint64)


def mix64(x) -> np.ndarray:
    """The splitmix64 finalizer: a bijection of uint64 that spreads every input bit over the output.

    >>> m = mix64(np.arange(4, dtype=np.uint64)); len(set(m.tolist()))
    4
    """
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def combine(a, b) -> np.ndarray:
    """An order-dependent combination of two uint64 hash arrays (``combine(a, b) != combine(b, a)``)."""
    a = np.asarray(a, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return mix64(a * np.uint64(31) + _GOLDEN) ^ np.asarray(b, dtype=np.uint64)


def combine_columns(cols: np.ndarray) -> np.ndarray:
    """One uint64 per row of a 2-D integer array: its columns combined in order (row keys for banding).

    >>> k = combine_columns(np.array([[1, 2], [1, 2], [2, 1]], np.uint64)); bool(k[0] == k[1]), bool(k[0] == k[2])
    (True, False)
    """
    cols = np.asarray(cols).astype(np.uint64, copy=False)
    if cols.ndim != 2:
        raise ValueError(f"`cols` must be 2-d, got shape {cols.shape}")
    h = np.full(cols.shape[0], np.uint64(cols.shape[1]), np.uint64)
    for j in range(cols.shape[1]):
        h = combine(h, mix64(cols[:, j]))
    return mix64(h)


def first_occurrence(keys, seen: np.ndarray | None = None) -> np.ndarray:
    """A boolean mask: True where a key appears for the first time (earlier rows win).

    ``seen`` (a sorted uint64 array of keys met in earlier batches) makes those keys count as already seen, so
    a stream of batches is deduplicated with only the sorted keys kept between batches.

    >>> first_occurrence(np.array([3, 1, 3, 2, 1], np.uint64)).tolist()
    [True, True, False, True, False]
    >>> first_occurrence(np.array([5, 6], np.uint64), seen=np.array([5], np.uint64)).tolist()
    [False, True]
    """
    keys = np.asarray(keys, dtype=np.uint64)
    mask = np.zeros(keys.shape[0], dtype=bool)
    if keys.shape[0] == 0:
        return mask
    _, first = np.unique(keys, return_index=True)
    mask[first] = True
    if seen is not None:
        mask &= ~_contains(seen, keys)
    return mask


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """True where a key of ``keys`` is in the sorted array ``sorted_keys``."""
    if not len(sorted_keys):
        return np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


class KeySet:
    """A growing set of uint64 keys, kept as a few sorted runs that merge when one grows past half of the one
    before it, so adding n keys in batches costs O(n log n) in all (one sorted array re-sorted on every batch
    would cost O(n log n) per batch). A merge holds the two runs and their union at once, and nothing more:
    memory stays near 8 bytes a key (twice that only while the largest runs merge).

    >>> s = KeySet()
    >>> s.first_new(np.array([3, 1, 3], np.uint64)).tolist()
    [True, True, False]
    >>> s.add(np.array([3, 1], np.uint64)); s.first_new(np.array([1, 7], np.uint64)).tolist()
    [False, True]
    >>> s.new_rows(np.array([[7, 8], [9, 10], [10, 11]], np.uint64)).tolist()  # rows of several keys each
    [True, True, False]
    """

    def __init__(self, keys: np.ndarray | None = None):
        self.runs: list[np.ndarray] = []
        if keys is not None and len(keys):
            self.runs.append(np.unique(np.asarray(keys, dtype=np.uint64)))

    def __len__(self) -> int:
        return int(sum(len(r) for r in self.runs))

    @property
    def nbytes(self) -> int:
        """Bytes held by the keys."""
        return int(sum(r.nbytes for r in self.runs))

    def first_new(self, keys: np.ndarray) -> np.ndarray:
        """True where a key appears for the first time in ``keys`` and is not in the set."""
        keys = np.asarray(keys, dtype=np.uint64)
        mask = first_occurrence(keys)
        for run in self.runs:
            mask &= ~_contains(run, keys)
        return mask

    def new_rows(self, keys: np.ndarray) -> np.ndarray:
        """For keys of shape ``(n,)`` or ``(n, k)`` (``k`` keys a row, e.g. one per LSH band): True for the rows
        none of whose keys is in the set or in an earlier row of ``keys``. Then every key of ``keys`` is added,
        those of the rows found old as well (so a later row meeting any of them is old too).

        >>> KeySet().new_rows(np.array([[1, 2], [3, 2], [4, 5], [3, 6]], np.uint64)).tolist()
        [True, False, True, False]
        """
        keys = np.asarray(keys, dtype=np.uint64)
        width = keys.shape[1] if keys.ndim == 2 else 1
        uniq, first, inverse = np.unique(keys.reshape(-1), return_index=True, return_inverse=True)
        known = np.zeros(len(uniq), dtype=bool)
        for run in self.runs:
            known |= _contains(run, uniq)
        row = np.arange(keys.size) // width
        old = known[inverse] | (first[inverse] // width < row)  # in the set, or met in an earlier row
        self._append(uniq[~known])
        return ~old.reshape(len(keys), width).any(axis=1)

    def add(self, keys: np.ndarray) -> None:
        """Add keys (any order, repeats and keys already in the set allowed)."""
        keys = np.unique(np.asarray(keys, dtype=np.uint64))
        for run in self.runs:
            keys = keys[~_contains(run, keys)]
        self._append(keys)

    def _append(self, keys: np.ndarray) -> None:
        """Add sorted distinct keys that are not in the set yet."""
        if not len(keys):
            return
        self.runs.append(keys)
        while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
            b, a = self.runs.pop(), self.runs.pop()
            self.runs.append(_union(a, b))
            del a, b

    def array(self) -> np.ndarray:
        """Every key, sorted: the runs are merged into one, which is returned (the set's own storage: read it,
        do not modify it)."""
        if not self.runs:
            return np.zeros(0, np.uint64)
        while len(self.runs) > 1:
            b, a = self.runs.pop(), self.runs.pop()
            self.runs.append(_union(a, b))
            del a, b
        return self.runs[0]


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The sorted union of two sorted arrays of distinct keys, with no temporary array larger than the result:
    a stable sort (timsort) of the two runs put end to end is one linear merge."""
    out = np.concatenate((a, b))
    out.sort(kind="stable")
    if len(out) > 1:
        same = np.flatnonzero(out[1:] == out[:-1])
        if len(same):  # a key added twice
            out = np.delete(out, same + 1)
    return out
