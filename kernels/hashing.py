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
    arr = pc.utf8_lower(pc.fill_null(_as_string_array(values), ""))
    # RE2's \s is [\t\n\f\r ]: a run of two or more, or one that is not a space, becomes a space (rewriting
    # every single space, as r"\s+" does, costs a match per word); only the values holding one are rewritten
    hit = pc.match_substring_regex(arr, _COLLAPSE)
    if pc.any(hit).as_py():
        arr = pc.replace_with_mask(arr, hit, pc.replace_substring_regex(arr.filter(hit), _COLLAPSE, " "))
    return pc.utf8_trim_whitespace(arr)


_COLLAPSE = r"[\t\n\f\r ]{2,}|[\t\n\f\r]"


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


def normalized_keys(texts, row_offsets: np.ndarray | None = None) -> np.ndarray:
    """One uint64 key per row: the hash of :func:`normalize_text` of the row's texts joined by a space, equal
    for two rows exactly when their normalized texts are (up to a 64-bit collision). ``texts`` is a string
    array (a null counts as ``""``); ``row_offsets`` (int64, ``n_rows + 1``) groups it into rows, texts
    ``row_offsets[r]:row_offsets[r + 1]`` being row ``r``'s (None: one text a row).

    ASCII rows are hashed as they are read (:mod:`datacopilot.kernels.text_keys`: no lowered or joined string is
    built); the others through ``normalize_text`` and the same byte hash.

    >>> k = normalized_keys(pa.array(["Hello", "World", "hello  world", "hello"]), np.array([0, 2, 3, 4]))
    >>> bool(k[0] == k[1]), bool(k[0] == k[2])
    (True, False)
    """
    from .text import string_buffers
    from .text_keys import row_keys, string_keys

    arr = _as_string_array(texts)
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    if row_offsets is None:
        row_offsets = np.arange(len(arr) + 1, dtype=np.int64)
    row_offsets = np.asarray(row_offsets, np.int64)
    keys, ascii = row_keys(row_offsets, *string_buffers(arr))
    if not ascii.all():
        rows = np.flatnonzero(~ascii)
        starts, ends = row_offsets[rows], row_offsets[rows + 1]
        sub = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(ends - starts, out=sub[1:])
        take = np.repeat(starts - sub[:-1], ends - starts) + np.arange(sub[-1])  # the rows' texts, in order
        joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(sub, pa.int32() if sub[-1] < 2**31 else pa.int64()),
                                                         arr.take(pa.array(take, pa.int64()))), " ")
        keys[rows] = string_keys(*string_buffers(normalize_text(joined)))
    return keys


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
    """A growing set of uint64 keys: one buffer holding a few sorted runs, end to end, that merge (in place) when
    one grows past half of the one before it, so adding n keys in batches costs O(n log n) in all (one sorted
    array re-sorted on every batch would cost O(n log n) per batch).

    Memory is the keys, 8 bytes each, plus the buffer's spare room (at most 1/8) and, while two runs merge, a
    copy of the smaller one (timsort's merge of two sorted runs is linear and needs nothing more).

    >>> s = KeySet()
    >>> s.first_new(np.array([3, 1, 3], np.uint64)).tolist()
    [True, True, False]
    >>> s.add(np.array([3, 1], np.uint64)); s.first_new(np.array([1, 7], np.uint64)).tolist()
    [False, True]
    >>> s.new_rows(np.array([[7, 8], [9, 10], [10, 11]], np.uint64)).tolist()  # rows of several keys each
    [True, True, False]
    """

    def __init__(self, keys: np.ndarray | None = None):
        self._buf = np.zeros(0, np.uint64)
        self._ends: list[int] = []  # where each sorted run ends in the buffer
        if keys is not None and len(keys):
            self._append(np.unique(np.asarray(keys, dtype=np.uint64)))

    @property
    def runs(self) -> list[np.ndarray]:
        """The sorted runs (views of the buffer)."""
        return [self._buf[s:e] for s, e in zip([0, *self._ends[:-1]], self._ends)]

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the keys (the buffer's spare room aside)."""
        return 8 * len(self)

    def _known(self, keys: np.ndarray) -> np.ndarray:
        known = np.zeros(len(keys), dtype=bool)
        for run in self.runs:
            known |= _contains(run, keys)
        return known

    def first_new(self, keys: np.ndarray) -> np.ndarray:
        """True where a key appears for the first time in ``keys`` and is not in the set."""
        keys = np.asarray(keys, dtype=np.uint64)
        return first_occurrence(keys) & ~self._known(keys)

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
        known = self._known(uniq)
        row = np.arange(keys.size) // width
        old = known[inverse] | (first[inverse] // width < row)  # in the set, or met in an earlier row
        self._append(uniq[~known])
        return ~old.reshape(len(keys), width).any(axis=1)

    def add(self, keys: np.ndarray) -> None:
        """Add keys (any order, repeats and keys already in the set allowed)."""
        keys = np.unique(np.asarray(keys, dtype=np.uint64))
        self._append(keys[~self._known(keys)])

    def _append(self, keys: np.ndarray) -> None:
        """Add sorted distinct keys that are not in the set yet, as a new run; merge runs as needed."""
        if not len(keys):
            return
        n = len(self)
        end = n + len(keys)
        if end > len(self._buf):
            self._grow(end + end // 8)
        self._buf[n:end] = keys
        self._ends.append(end)
        while len(self._ends) > 1:
            lo = self._ends[-3] if len(self._ends) > 2 else 0
            mid = self._ends[-2]
            if mid - lo > 2 * (end - mid):
                break
            self._buf[lo:end].sort(kind="stable")  # timsort: one linear merge of the two runs
            del self._ends[-2]

    def _grow(self, size: int) -> None:
        try:  # realloc: large buffers grow by remapping their pages, without a copy
            self._buf.resize(size, refcheck=True)
        except ValueError:  # a view of the buffer is alive (e.g. array()'s result): copy instead
            buf = np.zeros(size, np.uint64)
            buf[:len(self)] = self._buf[:len(self)]
            self._buf = buf

    def array(self) -> np.ndarray:
        """Every key, sorted: the runs are merged into one (in place) and a view of it is returned, valid until
        keys are added."""
        n = len(self)
        if len(self._ends) > 1:
            self._buf[:n].sort(kind="stable")
            self._ends = [n]
        return self._buf[:n]
