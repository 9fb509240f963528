"""MinHash signatures, LSH banding and near-duplicate detection (numba loops).

Text is cut into shingles (``ngram`` consecutive words, or characters), each shingle hashed to 64 bits and
reduced modulo the Mersenne prime ``p = 2**31 - 1``; ``num_perm`` hash functions ``(a * x + b) mod p`` stand for
random permutations, and a signature keeps each one's minimum over the shingles. Two texts agree in one position
of their signatures with probability equal to the Jaccard similarity of their shingle sets. Banding splits a
signature into ``bands`` groups of ``rows`` values, each hashed to one 64-bit key; texts sharing any band's key
are candidates. Two ways to decide:

* streaming (:func:`lsh_keys` + :class:`datacopilot.kernels.hashing.KeySet`, :func:`lsh_duplicates`): a row is a
  duplicate when one of its band keys belongs to an earlier row. Only the band keys are kept (8 bytes per band,
  72 bytes a row for 9 bands, against 512 for a 128-value signature); candidates are not verified, as in
  datasketch's ``MinHashLSH``, so pairs under the threshold become duplicates with the S-curve's probability
  ``1 - (1 - s**rows)**bands`` (0.40 at s = 0.8, 0.08 at 0.7, 0.001 at 0.5 for 9 x 13);
* in memory (:func:`duplicates`): candidates verified by the fraction of equal positions (the estimated
  Jaccard) and joined with union-find (needs every full signature at once).

Example:
    >>> from datacopilot.kernels.minhash import duplicates, lsh_duplicates, lsh_keys, signatures
    >>> texts = ["the cat sat on the mat today", "the cat sat on the mat today!", "a completely different text"]
    >>> sigs = signatures(texts, ngram=2)
    >>> duplicates(sigs, threshold=0.5).tolist()
    [False, True, False]
    >>> lsh_duplicates(lsh_keys(sigs, *lsh_params(0.5, 128))).tolist()
    [False, True, False]
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from .hashing import KeySet, combine, combine_columns, mix64, normalize_text
from .unionfind import find_root

MERSENNE = np.uint64((1 << 31) - 1)
EMPTY = np.uint32(0xFFFFFFFF)  # signature of a text without shingles; never a real value (all are < p)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
UNITS = ("word", "char")


@njit(cache=True)
def _mix(z):
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def _fnv(data, lo, hi):
    h = _FNV_OFFSET
    for i in range(lo, hi):
        h = (h ^ np.uint64(data[i])) * _FNV_PRIME
    return _mix(h)


@njit(cache=True)
def _update(out, d, x, a, b):
    """Fold one shingle hash ``x`` into row ``d`` of the signatures: min over (a*x + b) mod p."""
    x = x % MERSENNE
    for k in range(a.shape[0]):
        v = a[k] * x + b[k]  # < 2**62 + 2**31: no overflow
        v = (v & MERSENNE) + (v >> np.uint64(31))
        v = (v & MERSENNE) + (v >> np.uint64(31))
        v = v - MERSENNE if v >= MERSENNE else v
        out[d, k] = min(out[d, k], np.uint32(v))


@njit(cache=True)
def _signatures(offsets, data, a, b, ngram, by_char, out):
    n = offsets.shape[0] - 1
    starts = np.empty(0, np.int64)
    tokens = np.empty(0, np.uint64)
    for d in range(n):
        lo, hi = offsets[d], offsets[d + 1]
        if starts.shape[0] < hi - lo + 1:
            starts = np.empty(hi - lo + 1, np.int64)
            tokens = np.empty(hi - lo + 1, np.uint64)
        m = 0
        if by_char:  # character starts: bytes that are not UTF-8 continuation bytes
            for i in range(lo, hi):
                if (data[i] & 0xC0) != 0x80:
                    starts[m] = i
                    m += 1
            starts[m] = hi
            if m == 0:
                continue
            if m <= ngram:
                _update(out, d, _fnv(data, lo, hi), a, b)
                continue
            for i in range(m - ngram + 1):
                _update(out, d, _fnv(data, starts[i], starts[i + ngram]), a, b)
        else:  # words: maximal runs of bytes above ASCII space
            i = lo
            while i < hi:
                while i < hi and data[i] <= 32:
                    i += 1
                j = i
                while j < hi and data[j] > 32:
                    j += 1
                if j > i:
                    tokens[m] = _fnv(data, i, j)
                    m += 1
                i = j
            if m == 0:
                continue
            width = min(ngram, m)
            for i in range(m - width + 1):
                h = np.uint64(width)
                for j in range(i, i + width):
                    h = _mix(h * np.uint64(31) + tokens[j])
                _update(out, d, h, a, b)


def text_buffers(values) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of a string column and its ``n + 1`` offsets (int64), nulls as empty strings."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        values = pa.array(list(values), pa.large_string())
    arr = pc.fill_null(values, "").cast(pa.large_string())
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], np.int64)[arr.offset: arr.offset + len(arr) + 1]
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return offsets, data


def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ``(a, b)`` coefficients of ``num_perm`` hash functions ``(a*x + b) mod p``, ``1 <= a < p``."""
    rng = np.random.default_rng(seed)
    p = int(MERSENNE)
    return (rng.integers(1, p, num_perm, dtype=np.uint64), rng.integers(0, p, num_perm, dtype=np.uint64))


def signatures(texts, num_perm: int = 128, ngram: int = 5, unit: str = "word", seed: int = 1,
               normalize: bool = True) -> np.ndarray:
    """MinHash signatures, shape ``(len(texts), num_perm)``, dtype uint32.

    ``texts``: a pyarrow string array or a sequence of ``str | None``. ``unit="word"`` shingles ``ngram``
    consecutive words, ``"char"`` ``ngram`` consecutive characters; a text shorter than one shingle is one
    shingle. With ``normalize`` the text is lowercased and its whitespace collapsed first. A text with no
    shingle (empty) gets a row of :data:`EMPTY` and is never anyone's duplicate.

    >>> s = signatures(["a b c", "a b c", ""], num_perm=8, ngram=2)
    >>> s.shape, bool((s[0] == s[1]).all()), bool((s[2] == EMPTY).all())
    ((3, 8), True, True)
    """
    if unit not in UNITS:
        raise ValueError(f"`unit` must be one of {UNITS}, got {unit!r}")
    if not isinstance(num_perm, int) or num_perm < 1:
        raise ValueError(f"`num_perm` must be a positive integer, got {num_perm!r}")
    if not isinstance(ngram, int) or ngram < 1:
        raise ValueError(f"`ngram` must be a positive integer, got {ngram!r}")
    arr = normalize_text(texts) if normalize else texts
    offsets, data = text_buffers(arr)
    a, b = permutations(num_perm, seed)
    out = np.full((len(offsets) - 1, num_perm), EMPTY, np.uint32)
    _signatures(offsets, data, a, b, ngram, unit == "char", out)
    return out


def _false_rates(threshold: float, bands: int, rows: int) -> tuple[float, float]:
    s = np.linspace(0.0, 1.0, 1001)
    p = 1.0 - (1.0 - s ** rows) ** bands  # probability that two texts of similarity s become candidates
    below, above = s <= threshold, s >= threshold
    return float(np.trapezoid(p[below], s[below])), float(np.trapezoid(1.0 - p[above], s[above]))


def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands * rows <= num_perm`` minimizing the weighted areas of false positives
    (similarity under ``threshold`` yet candidates) and false negatives (over it, yet not).

    >>> lsh_params(0.8, 128)
    (9, 13)
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"`threshold` must be between 0 and 1, got {threshold!r}")
    best, best_cost = (1, num_perm), np.inf
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp, fn = _false_rates(threshold, bands, rows)
            cost = fp_weight * fp + (1.0 - fp_weight) * fn
            if cost < best_cost:
                best, best_cost = (bands, rows), cost
    return best


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 key per row and band, shape ``(n, bands)``: each band's ``rows`` signature values hashed."""
    if bands * rows > sigs.shape[1]:
        raise ValueError(f"bands * rows = {bands * rows} exceeds the signature length {sigs.shape[1]}")
    keys = np.empty((sigs.shape[0], bands), np.uint64)
    for i in range(bands):
        keys[:, i] = combine_columns(sigs[:, i * rows:(i + 1) * rows])
    return keys


def lsh_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 key per row and band, shape ``(n, bands)``, the band's index mixed in, so that one set can
    hold the keys of every band. A row without shingles (signature of :data:`EMPTY`) gets fresh random keys:
    it is never anyone's duplicate.

    >>> k = lsh_keys(signatures(["a b c", "a b c", ""], num_perm=8, ngram=2), 2, 4)
    >>> k.shape, bool((k[0] == k[1]).all()), bool(k[0, 0] != k[0, 1]), bool((k[2] != k[0]).all())
    ((3, 2), True, True, True)
    """
    keys = band_keys(sigs, bands, rows)
    for i in range(bands):
        keys[:, i] = mix64(combine(np.full(len(keys), i + 1, np.uint64), keys[:, i]))
    empty = sigs[:, 0] == EMPTY
    if empty.any():
        keys[empty] = np.random.default_rng().integers(0, 2**64 - 1, (int(empty.sum()), bands), np.uint64,
                                                       endpoint=True)
    return keys


def lsh_duplicates(keys: np.ndarray) -> np.ndarray:
    """A boolean mask of the rows to drop: those sharing a key (:func:`lsh_keys`) with an earlier row. Equal to
    a :class:`~datacopilot.kernels.hashing.KeySet`'s ``new_rows`` negated, fed the same rows in any batches.

    >>> lsh_duplicates(np.array([[1, 2], [3, 2], [3, 4], [5, 6]], np.uint64)).tolist()
    [False, True, True, False]
    """
    keys = np.asarray(keys, np.uint64)
    return ~KeySet().new_rows(keys.reshape(len(keys), -1) if keys.size else keys.reshape(len(keys), 1))


@njit(cache=True)
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@njit(cache=True)
def _similar(sigs, i, j, hamming, threshold):
    if hamming:
        return _popcount(np.uint64(sigs[i, 0]) ^ np.uint64(sigs[j, 0])) <= threshold
    same = 0
    for k in range(sigs.shape[1]):
        if sigs[i, k] == sigs[j, k]:
            same += 1
    return same >= threshold * sigs.shape[1]


@njit(cache=True)
def _cluster(keys, valid, sigs, hamming, threshold, max_scan):
    n = keys.shape[0]
    parent = np.arange(n)
    for band in range(keys.shape[1]):
        col = keys[:, band].copy()
        order = np.argsort(col, kind="mergesort")  # stable: rows of one bucket stay in row order
        near = sigs[order, 0] if hamming else sigs[:1, 0]
        start = 0
        while start < n:
            end = start + 1
            while end < n and col[order[end]] == col[order[start]]:
                end += 1
            for jj in range(start + 1, end):
                j = order[jj]
                if not valid[j]:
                    continue
                for ii in range(max(start, jj - max_scan), jj):
                    i = order[ii]
                    if not valid[i]:
                        continue
                    if hamming and _popcount(np.uint64(near[ii]) ^ np.uint64(near[jj])) > threshold:
                        continue  # a popcount over the bucket-ordered copy is cheaper than two finds
                    ri, rj = find_root(parent, i), find_root(parent, j)
                    if ri != rj and (hamming or _similar(sigs, i, j, hamming, threshold)):
                        if ri < rj:
                            parent[rj] = ri
                        else:
                            parent[ri] = rj
            start = end
    roots = np.empty(n, np.int64)
    for i in range(n):
        roots[i] = find_root(parent, i)
    return roots


def cluster(keys: np.ndarray, sigs: np.ndarray, threshold: float, hamming: bool = False,
            valid: np.ndarray | None = None, max_scan: int = 1000) -> np.ndarray:
    """Union-find over candidates: rows sharing a key in any column of ``keys`` and similar enough are joined.

    Similar means: at least ``threshold`` of the signature positions equal (MinHash), or with ``hamming`` a
    Hamming distance of at most ``threshold`` between the uint64 values in ``sigs[:, 0]``. Returns each row's
    cluster root, the smallest row index of its cluster. Within a bucket each row is compared with at most
    ``max_scan`` earlier rows, which bounds the work on huge buckets.
    """
    n = keys.shape[0]
    valid = np.ones(n, np.bool_) if valid is None else np.ascontiguousarray(valid, np.bool_)
    if n == 0:
        return np.zeros(0, np.int64)
    return _cluster(np.ascontiguousarray(keys, np.uint64), valid, np.ascontiguousarray(sigs), bool(hamming),
                    float(threshold), int(max_scan))


def duplicates(sigs: np.ndarray, threshold: float = 0.8, bands: int | None = None,
               rows: int | None = None) -> np.ndarray:
    """A boolean mask of the rows to drop: every row of a near-duplicate cluster except its first.

    ``sigs`` are :func:`signatures` of all rows (any number of batches concatenated in row order).
    ``bands``/``rows`` default to :func:`lsh_params` for ``threshold``.

    >>> s = signatures(["x y z w", "x y z w", "p q r s"], num_perm=16, ngram=2)
    >>> duplicates(s, threshold=0.9).tolist()
    [False, True, False]
    """
    if (bands is None) != (rows is None):
        raise ValueError("give both `bands` and `rows`, or neither")
    if bands is None:
        bands, rows = lsh_params(threshold, sigs.shape[1])
    roots = cluster(band_keys(sigs, bands, rows), sigs, threshold, valid=sigs[:, 0] != EMPTY)
    return roots != np.arange(len(roots))


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The estimated Jaccard similarity of two signatures: the fraction of equal positions."""
    return float(np.mean(np.asarray(sig_a) == np.asarray(sig_b)))
