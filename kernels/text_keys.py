"""Compiled exact-dedup keys of text: the 64-bit hash of a row's normalized text, computed from the Arrow string
buffers of its turns without building the joined, lowercased or collapsed string (numba, cached on disk).

The normalized text of a row is :func:`datacopilot.kernels.hashing.normalize_text` of its turn texts joined by a
space: lowercased, each run of RE2's ``\\s`` (``[\\t\\n\\f\\r ]``) made one space, and the ends stripped of what
Arrow's ``utf8_trim_whitespace`` strips. :func:`row_keys` hashes it in one pass for the rows whose bytes are all
ASCII (lower-casing is then ``A-Z`` only, and the ASCII bytes stripped at the ends are ``\\t\\n\\v\\f\\r``,
``\\x1c-\\x1f`` and space) and reports the others; their normalized text is built with Arrow and hashed by
:func:`string_keys`, which hashes any bytes exactly as :func:`row_keys` hashes the bytes it would produce. So
two rows get the same key exactly when their normalized texts are equal (up to a 64-bit collision), whichever
path each took: ``"\\u212a"`` (KELVIN SIGN) lowercases to an ASCII ``k`` and meets the key of ``"K"``.

The hash takes the text 8 bytes at a time (a MurmurHash3-style lane per word, the byte length and a final
avalanche at the end); it is the same on every machine and in every process.

>>> import numpy as np
>>> from datacopilot.kernels.text import string_buffers
>>> import pyarrow as pa
>>> off, data = string_buffers(pa.array(["Hello\\t World", " hello", "world "]))
>>> keys, ascii = row_keys(np.array([0, 1, 3]), off, data)
>>> bool(keys[0] == keys[1]), ascii.tolist()
(True, [True, True])
>>> bool(string_keys(*string_buffers(pa.array(["hello world"])))[0] == keys[0])
True
"""

from __future__ import annotations

import numpy as np
from numba import njit

# byte classes: 1 collapsed into a space (RE2's \s), 2 stripped at the ends (Arrow's utf8_trim_whitespace, ASCII)
_CLASS = np.zeros(256, np.uint8)
for _b in (9, 10, 12, 13, 32):
    _CLASS[_b] |= 1
for _b in (9, 10, 11, 12, 13, 28, 29, 30, 31, 32):
    _CLASS[_b] |= 2
_SPACE, _STRIP = 1, 2

_C1 = np.uint64(0x87C37B91114253D5)
_C2 = np.uint64(0x4CF5AD432745937F)
_F1 = np.uint64(0xFF51AFD7ED558CCD)
_F2 = np.uint64(0xC4CEB9FE1A85EC53)
_N = np.uint64(0x52DCE729)
_FIVE = np.uint64(5)
_SEED = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always")
def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@njit(cache=True, inline="always")
def _lane(h, w):
    k = w * _C1
    k = _rotl(k, 31) * _C2
    h ^= k
    return _rotl(h, 27) * _FIVE + _N


@njit(cache=True, inline="always")
def _put(h, w, shift, b):
    """Append byte ``b`` to the word being filled; a full word goes into the hash."""
    w |= np.uint64(b) << np.uint64(shift)
    shift += 8
    if shift == 64:
        h = _lane(h, w)
        w = np.uint64(0)
        shift = 0
    return h, w, shift


@njit(cache=True, inline="always")
def _finish(h, w, shift, n):
    if shift:
        h = _lane(h, w)
    h ^= np.uint64(n)
    h ^= h >> np.uint64(33)
    h *= _F1
    h ^= h >> np.uint64(33)
    h *= _F2
    return h ^ (h >> np.uint64(33))


@njit(cache=True)
def string_keys(offsets, data):
    """The hash of each string's bytes ``data[offsets[i]:offsets[i + 1]]`` (uint64), as :func:`row_keys` hashes
    the normalized text it produces."""
    n = offsets.shape[0] - 1
    out = np.empty(n, np.uint64)
    for i in range(n):
        h, w, shift = _SEED, np.uint64(0), 0
        for k in range(offsets[i], offsets[i + 1]):
            h, w, shift = _put(h, w, shift, data[k])
        out[i] = _finish(h, w, shift, offsets[i + 1] - offsets[i])
    return out


@njit(cache=True)
def _last_kept(row_offsets, offsets, data, cls, r):
    """(turn, byte position) of the last byte of row ``r`` not stripped at the end, or (-1, -1)."""
    for t in range(row_offsets[r + 1] - 1, row_offsets[r] - 1, -1):
        for k in range(offsets[t + 1] - 1, offsets[t] - 1, -1):
            if not cls[data[k]] & 2:
                return t, k
    return -1, -1


HI = np.uint64(0x8080808080808080)
LO7 = np.uint64(0x7F7F7F7F7F7F7F7F)
SPACES = np.uint64(0x2020202020202020)
BELOW_SPACE = np.uint64(0x6060606060606060)  # + a byte < 0x80: the top bit is set iff the byte is >= 0x20
_FROM_A = np.uint64(0x3F3F3F3F3F3F3F3F)  # ... iff it is >= "A"
_PAST_Z = np.uint64(0x2525252525252525)  # ... iff it is > "Z"


@njit(cache=True, inline="always")
def word(data, k):
    """Bytes k..k+7 as a little-endian uint64 (the order ``_put`` fills a word in)."""
    v = np.uint64(0)
    for j in range(8):
        v |= np.uint64(data[k + j]) << np.uint64(8 * j)
    return v


@njit(cache=True, inline="always")
def _plain_word(v, after_space):
    """The 8 ASCII bytes ``v`` lowercased, when the normalization changes nothing else in them (no byte below
    0x20, no two spaces in a row, no space right after an emitted one), else 0; and whether ``v`` ends with a
    space."""
    if v & HI:
        return np.uint64(0), False
    if ~((v & LO7) + BELOW_SPACE) & HI:
        return np.uint64(0), False
    x = v ^ SPACES
    sp = ~(((x & LO7) + LO7) | x) & HI  # the top bit of every space
    if sp & (sp << np.uint64(8)) or (after_space and sp & np.uint64(0x80)):
        return np.uint64(0), False
    upper = (v + _FROM_A) & ~(v + _PAST_Z) & HI
    return v | (upper >> np.uint64(2)), (sp >> np.uint64(63)) != 0


@njit(cache=True)
def _row_keys(row_offsets, offsets, data, cls):
    n_rows = row_offsets.shape[0] - 1
    keys = np.empty(n_rows, np.uint64)
    ascii = np.ones(n_rows, np.bool_)
    for r in range(n_rows):
        h, w, shift, size = _SEED, np.uint64(0), 0, 0
        last_turn, last = _last_kept(row_offsets, offsets, data, cls, r)
        started, after_space, ok = False, False, True
        for t in range(row_offsets[r], last_turn + 1):
            first, end = offsets[t], offsets[t + 1] if t < last_turn else last + 1
            k = first - 1 if t > row_offsets[r] else first  # first - 1: the joining space
            while k < end:
                if started and k >= first and k + 8 <= end:  # 8 plain bytes at once
                    lower, ends_space = _plain_word(word(data, k), after_space)
                    if lower:
                        if shift:
                            h = _lane(h, w | (lower << np.uint64(shift)))
                            w = lower >> np.uint64(64 - shift)
                        else:
                            h = _lane(h, lower)
                        size += 8
                        k += 8
                        after_space = ends_space
                        continue
                b = data[k] if k >= first else np.uint8(32)
                k += 1
                if b >= 128:
                    ok = False
                    break
                c = cls[b]
                if not started:
                    if c & 2:
                        continue
                    started = True
                if c & 1:  # a run of whitespace: one space, at its first byte
                    if not after_space:
                        h, w, shift = _put(h, w, shift, 32)
                        size += 1
                        after_space = True
                    continue
                if 65 <= b <= 90:
                    b += 32
                h, w, shift = _put(h, w, shift, b)
                size += 1
                after_space = False
            if not ok:
                break
        ascii[r] = ok
        keys[r] = _finish(h, w, shift, size) if ok else np.uint64(0)
    return keys, ascii


def row_keys(row_offsets: np.ndarray, offsets: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys of the normalized text of each row, whose texts are strings ``row_offsets[r]:row_offsets[r + 1]``
    of (``offsets``, ``data``) (:func:`datacopilot.kernels.text.string_buffers`), joined by a space.

    Returns ``(keys, ascii)``, uint64 and bool: ``keys[r]`` is valid where ``ascii[r]`` (every byte of the row's
    texts is ASCII); elsewhere it is 0, and the row's key is :func:`string_keys` of its normalized text.
    """
    return _row_keys(np.ascontiguousarray(row_offsets, np.int64), np.ascontiguousarray(offsets, np.int64),
                     np.ascontiguousarray(data, np.uint8), _CLASS)
