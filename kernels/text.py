"""Compiled loops over the turns of a batch: Arrow string buffers and list offsets in, numpy arrays out.

The per-batch conversation operators call these instead of a regex or a per-turn Python loop where the rule is a
byte test (a role name, a character count, a run of whitespace). Each loop takes the raw buffers of a string array
(:func:`string_buffers`: int64 offsets and uint8 bytes) or the int64 offsets of a list column, so each compiles
once per machine (numba, ``cache=True``).

>>> import pyarrow as pa
>>> off, data = string_buffers(pa.array(["human", "gpt", "system", "bot"]))
>>> role_codes(off, data).tolist()  # USER, ASSISTANT, SYSTEM, OTHER
[0, 1, 2, 3]
>>> utf8_lengths(*string_buffers(pa.array(["café", ""]))).tolist(), word_counts(*string_buffers(pa.array([" a b\\n"]))).tolist()
([4, 0], [2])
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

USER, ASSISTANT, SYSTEM, OTHER, NULL = 0, 1, 2, 3, 4  # role codes


def string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, bytes) of a string / large_string (or binary) array: ``offsets`` int64 of ``len(arr) + 1``, value
    ``i`` being ``bytes[offsets[i]:offsets[i + 1]]`` (a null's bytes are whatever the buffer holds: mask them)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    bufs = arr.buffers()
    n = len(arr)
    if bufs[1] is None:
        offsets = np.zeros(n + 1, np.int64)
    else:
        offsets = np.frombuffer(bufs[1], np.int64 if large else np.int32, n + 1, arr.offset * (8 if large else 4))
        offsets = offsets.astype(np.int64)
    data = np.frombuffer(bufs[2], np.uint8) if len(bufs) > 2 and bufs[2] is not None else np.zeros(0, np.uint8)
    return offsets, data


def list_offsets(arr: pa.Array) -> np.ndarray:
    """The int64 offsets of a list / large_list array, starting at 0 (``arr.values`` sliced from the first)."""
    off = arr.offsets.to_numpy().astype(np.int64)
    return off - off[0] if len(off) else np.zeros(1, np.int64)


_HUMAN, _GPT = np.frombuffer(b"human", np.uint8), np.frombuffer(b"gpt", np.uint8)
_USER, _ASSISTANT = np.frombuffer(b"user", np.uint8), np.frombuffer(b"assistant", np.uint8)
_SYSTEM = np.frombuffer(b"system", np.uint8)


@njit(cache=True)
def _is(data, start, word):
    for k in range(word.shape[0]):
        if data[start + k] != word[k]:
            return False
    return True


@njit(cache=True)
def _role_codes(offsets, data, human, gpt, user, assistant, system):
    n = offsets.shape[0] - 1
    out = np.full(n, 3, np.uint8)
    for i in range(n):
        s = offsets[i]
        m = offsets[i + 1] - s
        # the length, then the first byte, pick the one word to compare with
        if m == 3:
            if data[s] == 103 and _is(data, s, gpt):
                out[i] = 1
        elif m == 5:
            if data[s] == 104 and _is(data, s, human):
                out[i] = 0
        elif m == 4:
            if data[s] == 117 and _is(data, s, user):
                out[i] = 0
        elif m == 9:
            if data[s] == 97 and _is(data, s, assistant):
                out[i] = 1
        elif m == 6:
            if data[s] == 115 and _is(data, s, system):
                out[i] = 2
    return out


def role_codes(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """The canonical role of each string as a code (``human``/``user`` USER, ``gpt``/``assistant`` ASSISTANT,
    ``system`` SYSTEM, anything else OTHER); the caller sets NULL where the role is null."""
    return _role_codes(offsets, data, _HUMAN, _GPT, _USER, _ASSISTANT, _SYSTEM)


@njit(cache=True)
def utf8_lengths(offsets, data):
    """Characters of each string (bytes that do not continue a UTF-8 sequence)."""
    n = offsets.shape[0] - 1
    out = np.empty(n, np.int64)
    for i in range(n):
        c = 0
        for k in range(offsets[i], offsets[i + 1]):
            c += (data[k] & 0xC0) != 0x80
        out[i] = c
    return out


@njit(cache=True)
def length_proxies(offsets, data, sel, lo, hi):
    """For each selected string a length ``v`` that is on the same side of ``lo`` and of ``hi`` as its character
    count (``v < lo`` iff chars < lo, ``v > hi`` iff chars > hi): the byte length where the bounds decide it (a
    character takes 1 to 4 bytes), the counted characters otherwise. Unselected strings get 0."""
    n = offsets.shape[0] - 1
    out = np.zeros(n, np.int64)
    for i in range(n):
        if not sel[i]:
            continue
        s, e = offsets[i], offsets[i + 1]
        m = e - s
        if m < lo or ((m + 3) // 4 >= lo and m <= hi):
            out[i] = m
            continue
        c = 0
        for k in range(s, e):
            c += (data[k] & 0xC0) != 0x80
        out[i] = c
    return out


@njit(cache=True)
def row_length_flags(offsets, text_offsets, data, sel, lo, hi, words):
    """Per row (turns ``offsets[r]:offsets[r + 1]``): 1 where a selected turn is shorter than ``lo``, else 2 where
    one is longer than ``hi``, else 0; a length counts characters, or with ``words`` runs of non-space bytes
    (:func:`word_counts`). Characters are counted only where the byte length cannot decide (as
    :func:`length_proxies`)."""
    n = offsets.shape[0] - 1
    out = np.zeros(n, np.uint8)
    for r in range(n):
        long = False
        for i in range(offsets[r], offsets[r + 1]):
            if not sel[i]:
                continue
            s, e = text_offsets[i], text_offsets[i + 1]
            m = e - s
            if words:
                c = 0
                prev_space = True
                for k in range(s, e):
                    b = data[k]
                    space = b == 32 or b == 9 or b == 10 or b == 12 or b == 13
                    if prev_space and not space:
                        c += 1
                    prev_space = space
            elif m < lo or ((m + 3) // 4 >= lo and m <= hi):
                c = m
            else:
                c = 0
                for k in range(s, e):
                    c += (data[k] & 0xC0) != 0x80
            if c < lo:
                out[r] = 1
                break
            long = long or c > hi
        if out[r] == 0 and long:
            out[r] = 2
    return out


@njit(cache=True)
def word_counts_where(offsets, data, sel):
    """:func:`word_counts` of the selected strings (0 for the others)."""
    n = offsets.shape[0] - 1
    out = np.zeros(n, np.int64)
    for i in range(n):
        if not sel[i]:
            continue
        c = 0
        prev_space = True
        for k in range(offsets[i], offsets[i + 1]):
            b = data[k]
            space = b == 32 or b == 9 or b == 10 or b == 12 or b == 13
            if prev_space and not space:
                c += 1
            prev_space = space
        out[i] = c
    return out


@njit(cache=True)
def word_counts(offsets, data):
    """Runs of bytes other than ``\\t \\n \\f \\r`` and space in each string: RE2's ``\\S+`` matches."""
    n = offsets.shape[0] - 1
    out = np.empty(n, np.int64)
    for i in range(n):
        c = 0
        prev_space = True
        for k in range(offsets[i], offsets[i + 1]):
            b = data[k]
            space = b == 32 or b == 9 or b == 10 or b == 12 or b == 13
            if prev_space and not space:
                c += 1
            prev_space = space
        out[i] = c
    return out


# -- byte scans: numpy passes over the strings' bytes, then the hits mapped to their strings ------------------
def strings_at(offsets: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The string (index) each byte position falls in."""
    return np.searchsorted(offsets, positions, side="right") - 1


def _region(offsets: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, int]:
    lo = int(offsets[0]) if len(offsets) else 0
    return data[lo:int(offsets[-1]) if len(offsets) else 0], lo


_CHUNK = 1 << 20  # bytes per numpy pass: the temporaries stay in cache whatever the batch size


def _positions(region: np.ndarray, hits, overlap: int = 0) -> np.ndarray:
    """Positions in ``region`` where ``hits(view)`` (positions in a view) finds a hit, chunk by chunk; each view
    reaches ``overlap`` bytes into the next chunk, so a hit that starts in a chunk may end past it."""
    parts = []
    for s in range(0, len(region), _CHUNK):
        p = hits(region[s:s + _CHUNK + overlap])
        parts.append(p[p < _CHUNK] + s)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def strings_holding(offsets: np.ndarray, hits: np.ndarray, lo: int = 0) -> np.ndarray:
    """Bool per string: it holds a byte where ``hits`` (over ``data[lo:]``) is true."""
    out = np.zeros(len(offsets) - 1, dtype=bool)
    pos = np.flatnonzero(hits)
    if len(pos):
        out[strings_at(offsets, pos + lo)] = True
    return out


def has_byte(offsets: np.ndarray, data: np.ndarray, value: int) -> np.ndarray:
    """Bool per string: it holds the byte ``value``."""
    region, lo = _region(offsets, data)
    pos = _positions(region, lambda v: np.flatnonzero(v == value))
    out = np.zeros(len(offsets) - 1, dtype=bool)
    if len(pos):
        out[strings_at(offsets, pos + lo)] = True
    return out


def has_unprintable(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Bool per string: it holds a byte other than tab, line feed, carriage return and printable ASCII
    (``0x20``-``0x7E``): RE2's ``[^\\t\\n\\r\\x20-\\x7E]`` on UTF-8 (every byte of a non-ASCII character is >= 0x80)."""
    region, lo = _region(offsets, data)
    pos = _positions(region, lambda v: np.flatnonzero((v - np.uint8(0x20)) > np.uint8(0x5E)))  # < 0x20 wraps
    if len(pos):
        b = region[pos]
        pos = pos[(b != 9) & (b != 10) & (b != 13)]
    out = np.zeros(len(offsets) - 1, dtype=bool)
    if len(pos):
        out[strings_at(offsets, pos + lo)] = True
    return out


def has_digit_pair(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Bool per string: two ASCII digits in a row somewhere in it."""
    region, lo = _region(offsets, data)
    def pairs(v):
        digit = (v - np.uint8(48)) < np.uint8(10)
        return np.flatnonzero(digit[:-1] & digit[1:])

    pos = _positions(region, pairs, overlap=1)
    out = np.zeros(len(offsets) - 1, dtype=bool)
    if len(pos):
        pos = pos + lo
        at = strings_at(offsets, pos)
        out[at[pos + 1 < offsets[at + 1]]] = True  # both digits in the same string
    return out


def count_literal(offsets: np.ndarray, data: np.ndarray, needle: bytes) -> np.ndarray:
    """Non-overlapping occurrences of ``needle`` in each string, for a needle whose first byte occurs in it only
    once (``<image>``): then occurrences cannot overlap, and each is found from its first byte."""
    if not needle or needle[0] in needle[1:]:
        raise ValueError(f"`needle` must be non-empty with its first byte not repeated, got {needle!r}")
    n = len(offsets) - 1
    if n <= 0:
        return np.zeros(max(n, 0), np.int64)
    return _count_literal(offsets, data, np.frombuffer(needle, np.uint8), np.uint64(needle[0] * 0x0101010101010101))


_ONES, _HIGHS = np.uint64(0x0101010101010101), np.uint64(0x8080808080808080)


@njit(cache=True)
def _count_literal(offsets, data, needle, first8):
    """64 bytes at a time, without a branch (vectorized): a block is read byte by byte only when one of its words
    holds the needle's first byte; each hit is counted in the string it starts in if the needle ends there too."""
    n = offsets.shape[0] - 1
    out = np.zeros(n, np.int64)
    lo, hi = offsets[0], offsets[n]
    n_blocks = (hi - lo) // 64
    words = data[lo:lo + 64 * n_blocks].view(np.uint64)
    r = 0
    for blk in range(n_blocks):
        acc = np.uint64(0)
        for w in range(8):
            x = words[8 * blk + w] ^ first8
            acc |= (x - _ONES) & ~x
        if acc & _HIGHS:
            for j in range(lo + 64 * blk, lo + 64 * blk + 64):
                if data[j] == needle[0]:
                    r = _count_at(offsets, data, needle, out, r, j)
    for j in range(lo + 64 * n_blocks, hi):
        if data[j] == needle[0]:
            r = _count_at(offsets, data, needle, out, r, j)
    return out


@njit(cache=True, inline="always")
def _count_at(offsets, data, needle, out, r, j):
    """Count the needle if it starts at ``j`` and ends in the same string; the string of ``j`` (from ``r`` on)."""
    while offsets[r + 1] <= j:
        r += 1
    m = needle.shape[0]
    if j + m <= offsets[r + 1]:
        for q in range(1, m):
            if data[j + q] != needle[q]:
                return r
        out[r] += 1
    return r


# -- per-row reductions over list offsets: turns ``offsets[r]:offsets[r + 1]`` are row r's; ``sel`` picks turns --
@njit(cache=True)
def row_sum(offsets, values, sel):
    n = offsets.shape[0] - 1
    out = np.zeros(n, np.float64)
    for r in range(n):
        acc = 0.0
        for k in range(offsets[r], offsets[r + 1]):
            if sel[k]:
                acc += values[k]
        out[r] = acc
    return out


@njit(cache=True)
def row_count(offsets, sel):
    """Selected turns of each row."""
    n = offsets.shape[0] - 1
    out = np.zeros(n, np.int64)
    for r in range(n):
        c = 0
        for k in range(offsets[r], offsets[r + 1]):
            c += sel[k]
        out[r] = c
    return out


@njit(cache=True)
def row_min_max(offsets, values, sel, empty_min, empty_max):
    """(min, max) of the selected values of each row; ``empty_min`` / ``empty_max`` where a row selects none."""
    n = offsets.shape[0] - 1
    lo = np.full(n, empty_min, np.float64)
    hi = np.full(n, empty_max, np.float64)
    for r in range(n):
        seen = False
        a, b = 0.0, 0.0
        for k in range(offsets[r], offsets[r + 1]):
            if sel[k]:
                v = values[k]
                if not seen:
                    a, b, seen = v, v, True
                else:
                    a, b = min(a, v), max(b, v)
        if seen:
            lo[r], hi[r] = a, b
    return lo, hi


@njit(cache=True)
def row_any(offsets, values, sel):
    n = offsets.shape[0] - 1
    out = np.zeros(n, np.bool_)
    for r in range(n):
        for k in range(offsets[r], offsets[r + 1]):
            if sel[k] and values[k]:
                out[r] = True
                break
    return out


@njit(cache=True)
def row_repeats(offsets, sel, code, text_offsets, text):
    """Bool per row: two of its selected turns have the same ``code`` and the same text bytes."""
    n = offsets.shape[0] - 1
    out = np.zeros(n, np.bool_)
    for r in range(n):
        for a in range(offsets[r], offsets[r + 1]):
            if not sel[a]:
                continue
            la = text_offsets[a + 1] - text_offsets[a]
            for b in range(offsets[r], a):
                if not sel[b] or code[b] != code[a] or text_offsets[b + 1] - text_offsets[b] != la:
                    continue
                same = True
                for j in range(la):
                    if text[text_offsets[a] + j] != text[text_offsets[b] + j]:
                        same = False
                        break
                if same:
                    out[r] = True
                    break
            if out[r]:
                break
    return out


@njit(cache=True)
def row_role_breaks(offsets, code, role_offsets, role, role_valid, turn_valid):
    """Bool per row: its roles do not alternate as ``fix_roles`` leaves them: a turn is null, two turns in a row
    have the same raw role (bytes, or both null), or an ASSISTANT turn comes before the first USER turn."""
    n = offsets.shape[0] - 1
    out = np.zeros(n, np.bool_)
    for r in range(n):
        seen_user = False
        for a in range(offsets[r], offsets[r + 1]):
            if not turn_valid[a] or (code[a] == 1 and not seen_user):
                out[r] = True
                break
            seen_user = seen_user or code[a] == 0
            if a == offsets[r]:
                continue
            b = a - 1
            if not role_valid[a] or not role_valid[b]:
                if role_valid[a] == role_valid[b]:
                    out[r] = True
                    break
                continue
            la = role_offsets[a + 1] - role_offsets[a]
            if role_offsets[b + 1] - role_offsets[b] != la:
                continue
            same = True
            for j in range(la):
                if role[role_offsets[a] + j] != role[role_offsets[b] + j]:
                    same = False
                    break
            if same:
                out[r] = True
                break
    return out


@njit(cache=True)
def ascii_class_counts(offsets, data, table):
    """Per string: how many of its bytes ``table`` (256 bools) marks, or -1 where the string holds a non-ASCII
    byte (the caller counts those another way)."""
    n = offsets.shape[0] - 1
    out = np.zeros(n, np.int64)
    for i in range(n):
        c = 0
        for k in range(offsets[i], offsets[i + 1]):
            b = data[k]
            if b >= 0x80:
                c = -1
                break
            c += table[b]
        out[i] = c
    return out
