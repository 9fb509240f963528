"""N-gram repetition over many texts at once (numba): the share of a text's n-grams that repeat an earlier one.

Texts arrive as Arrow UTF-8 data (one buffer plus offsets), several pieces per row joined by a separator, so the
character case never builds Python strings; the word case runs over 64-bit word hashes.
"""

from __future__ import annotations

import numba
import numpy as np

_MULT = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, nogil=True)
def _decode(data, starts, ends, rows, n_rows, sep):
    """Code points of each row's pieces (UTF-8 ``data[starts[i]:ends[i]]``, rows ascending), with ``sep`` between
    two pieces of the same row; returns (tokens, row offsets)."""
    out = np.empty(int((ends - starts).sum()) + len(starts), np.uint64)
    offsets = np.zeros(n_rows + 1, np.int64)
    k = 0
    prev = -1
    for i in range(len(starts)):
        r = rows[i]
        if r == prev:
            out[k] = sep
            k += 1
        else:
            for q in range(prev + 1, r + 1):
                offsets[q] = k
        prev = r
        j = starts[i]
        while j < ends[i]:
            b = data[j]
            if b < 0x80:
                cp, w = b, 1
            elif b < 0xE0:
                cp, w = b & 0x1F, 2
            elif b < 0xF0:
                cp, w = b & 0x0F, 3
            else:
                cp, w = b & 0x07, 4
            for t in range(1, w):
                if j + t < ends[i]:
                    cp = (cp << 6) | (data[j + t] & 0x3F)
            out[k] = cp
            k += 1
            j += w
    for q in range(prev + 1, n_rows + 1):
        offsets[q] = k
    return out[:k], offsets


@numba.njit(cache=True, nogil=True)
def ngram_repetition(tokens, offsets, n):
    """For each row ``tokens[offsets[r]:offsets[r+1]]``: 1 - distinct n-grams / n-grams (0 with fewer than 2)."""
    rows = len(offsets) - 1
    out = np.zeros(rows, np.float64)
    for r in range(rows):
        a, b = offsets[r], offsets[r + 1]
        total = b - a - n + 1
        if total <= 1:
            continue
        # polynomial rolling hash (wrapping uint64): one multiply-add per n-gram, whatever n
        h = np.empty(total, np.uint64)
        top = np.uint64(1)
        for t in range(n - 1):
            top = top * _MULT
        x = np.uint64(0)
        for t in range(n):
            x = x * _MULT + tokens[a + t] + np.uint64(1)
        h[0] = x
        for i in range(1, total):
            x = (x - (tokens[a + i - 1] + np.uint64(1)) * top) * _MULT + tokens[a + i + n - 1] + np.uint64(1)
            h[i] = x
        h.sort()
        distinct = 1
        for i in range(1, total):
            if h[i] != h[i - 1]:
                distinct += 1
        out[r] = 1.0 - distinct / total
    return out


def char_tokens(texts, rows: np.ndarray, n_rows: int, sep: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Code points per row from an Arrow string array ``texts`` whose element ``i`` belongs to row ``rows[i]``
    (ascending), pieces of a row joined by ``sep`` (a line break)."""
    import pyarrow as pa

    texts = texts.cast(pa.string()) if texts.type != pa.string() else texts
    offs = np.frombuffer(texts.buffers()[1], np.int32, len(texts) + 1, texts.offset * 4).astype(np.int64)
    data = np.frombuffer(texts.buffers()[2], np.uint8) if texts.buffers()[2] is not None else np.zeros(0, np.uint8)
    return _decode(data, offs[:-1], offs[1:], np.asarray(rows, np.int64), n_rows, np.uint64(sep))


@numba.njit(cache=True, nogil=True)
def _fnv1a(data, offsets):
    """FNV-1a 64 of each UTF-8 string ``data[offsets[i]:offsets[i+1]]``, mixed (splitmix64) to spread the bits."""
    out = np.empty(len(offsets) - 1, np.uint64)
    for i in range(len(out)):
        h = np.uint64(0xCBF29CE484222325)
        for j in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[j])) * np.uint64(0x100000001B3)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        out[i] = h ^ (h >> np.uint64(31))
    return out


def _string_hashes(strings) -> np.ndarray:
    """64-bit hashes of the strings of an Arrow string array (no nulls), computed from its own buffers: the same
    string always gets the same hash, whatever its array's offset or chunking."""
    import pyarrow as pa

    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    strings = strings.cast(pa.large_string())
    offs = np.frombuffer(strings.buffers()[1], np.int64, len(strings) + 1, strings.offset * 8)
    data = strings.buffers()[2]
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return _fnv1a(data, offs)


def word_tokens(texts, rows: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the whitespace-separated words per row (element ``i`` of ``texts`` in row ``rows[i]``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    words = pc.utf8_split_whitespace(texts)
    # trimmed: pyarrow's utf8_split_whitespace sometimes keeps a trailing space on a word after a multi-byte
    # character (pyarrow 26: 'é ' in about half the runs), which changed the hashes run to run
    flat = pc.utf8_trim_whitespace(pc.list_flatten(words))
    word_row = np.asarray(rows, np.int64)[pc.list_parent_indices(words).to_numpy(zero_copy_only=False)]
    nonempty = pc.greater(pc.utf8_length(flat), 0).to_numpy(zero_copy_only=False)  # "".split() has no words
    flat, word_row = flat.filter(pa.array(nonempty)), word_row[nonempty]
    hashes = _string_hashes(flat) if len(flat) else np.zeros(0, np.uint64)
    counts = np.bincount(word_row, minlength=n_rows).astype(np.int64)
    offsets = np.zeros(n_rows + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return hashes, offsets
