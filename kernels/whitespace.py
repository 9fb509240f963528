"""Compiled whitespace normalization behind ``clean_whitespace`` (numba, cached on disk): which strings it
changes, and the rewrite of those, over Arrow string buffers.

The rule, as the operator's regular expressions put it (in this order): ``\\r\\n?`` becomes ``\\n``; every run of
blanks ``[ \\t\\f\\v\\xa0\\u3000]`` one space; a space next to a line break goes; runs of more than ``n`` line
breaks become ``n`` of them (a space when ``n`` is 0); then the ends are stripped (Arrow's
``utf8_trim_whitespace``). Over a maximal *group* of those characters (blanks, ``\\r``, ``\\n``) between two
others, the first four steps leave one space when the group holds no line break, else ``min(k, n)`` line breaks
(``k`` counting ``\\r\\n`` once), or one space when ``n`` is 0. So a string needs a change exactly when one of its
groups is not already that (a lone space, or 1 to ``n`` line breaks) or when it starts or ends with a character
Arrow strips: :func:`needs_change` tests that 8 plain ASCII bytes at a time; :func:`rewrite` rewrites the
strings that need it and copies the others.

>>> from datacopilot.kernels.text import string_buffers
>>> import pyarrow as pa
>>> off, data = string_buffers(pa.array(["a b\\n\\nc", "a  b", " a", "a\\r\\nb", "x\\u3000y"]))
>>> needs_change(off, data, 2).tolist()
[False, True, True, True, True]
>>> o, d = rewrite(off, data, needs_change(off, data, 2), 2)
>>> [bytes(d[o[i]:o[i + 1]]).decode() for i in range(5)]
['a b\\n\\nc', 'a b', 'a', 'a\\nb', 'x y']
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .text_keys import BELOW_SPACE, HI, LO7, SPACES, word


# code points other than ASCII that Arrow's utf8_trim_whitespace strips
_TRIM = np.array([0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000], np.int64)


@njit(cache=True, inline="always")
def _stripped(data, start, end, trim):
    """Whether the character at ``start`` (a UTF-8 lead byte, the character within ``end``) is one Arrow's
    utf8_trim_whitespace strips."""
    b = np.int64(data[start])
    if b < 0x80:
        return (9 <= b <= 13) or (28 <= b <= 32)
    if b < 0xE0:
        size, cp = 2, b & 0x1F
    elif b < 0xF0:
        size, cp = 3, b & 0x0F
    else:
        size, cp = 4, b & 0x07
    if start + size > end:
        return False
    for j in range(1, size):
        cp = (cp << 6) | (np.int64(data[start + j]) & 0x3F)
    for t in trim:
        if cp == t:
            return True
    return False


@njit(cache=True)
def _needs_change(offsets, data, n, trim):
    count = offsets.shape[0] - 1
    out = np.zeros(count, np.bool_)
    for i in range(count):
        s, e = offsets[i], offsets[i + 1]
        if s == e:
            continue
        last = e - 1
        while last > s and (data[last] & 0xC0) == 0x80:
            last -= 1
        if _stripped(data, s, e, trim) or _stripped(data, last, e, trim):
            out[i] = True
            continue
        prev = 0  # what the previous byte was: 0 other, 1 a space, 2 a line break
        run = 0  # line breaks in a row
        k = s
        need = False
        while k < e:
            if k + 8 <= e:
                v = word(data, k)
                if not (v & HI) and not (~((v & LO7) + BELOW_SPACE) & HI):
                    x = v ^ SPACES
                    sp = ~(((x & LO7) + LO7) | x) & HI  # the top bit of every space
                    if not (sp & (sp << np.uint64(8))) and not (prev and sp & np.uint64(0x80)):
                        prev = 1 if sp >> np.uint64(63) else 0
                        k += 8
                        continue
            b = data[k]
            if b == 32:
                if prev:
                    need = True
                    break
                prev = 1
            elif b == 10:
                run = run + 1 if prev == 2 else 1
                if prev == 1 or run > n:
                    need = True
                    break
                prev = 2
            elif b == 9 or b == 11 or b == 12 or b == 13:
                need = True
                break
            elif b == 0xC2 and k + 1 < e and data[k + 1] == 0xA0:
                need = True
                break
            elif b == 0xE3 and k + 2 < e and data[k + 1] == 0x80 and data[k + 2] == 0x80:
                need = True
                break
            else:
                prev = 0
            k += 1
        out[i] = need
    return out


def needs_change(offsets: np.ndarray, data: np.ndarray, n: int) -> np.ndarray:
    """For each string of (``offsets``, ``data``) (:func:`datacopilot.kernels.text.string_buffers`): whether
    clean_whitespace with ``max_newlines=n`` changes it (exactly: see the module doc)."""
    return _needs_change(np.ascontiguousarray(offsets, np.int64), np.ascontiguousarray(data, np.uint8), n, _TRIM)


@njit(cache=True, inline="always")
def _group_byte(data, k, e):
    """Bytes of the blank or line break at ``k`` (0 if it is neither); a line break as \\n, \\r or \\r\\n."""
    b = data[k]
    if b == 32 or b == 9 or b == 11 or b == 12 or b == 10:
        return 1
    if b == 13:
        return 2 if k + 1 < e and data[k + 1] == 10 else 1
    if b == 0xC2 and k + 1 < e and data[k + 1] == 0xA0:
        return 2
    if b == 0xE3 and k + 2 < e and data[k + 1] == 0x80 and data[k + 2] == 0x80:
        return 3
    return 0


@njit(cache=True, inline="always")
def _char_size(b):
    return 1 if b < 0x80 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4


@njit(cache=True)
def _collapse_into(data, k, e, out, o, n):
    """Write the string ``data[k:e]`` with its groups rewritten at ``out[o:]``; the end of what was written."""
    while k < e:
        b = data[k]
        if b > 32 and b != 0xC2 and b != 0xE3:  # neither a blank nor a line break: most bytes
            out[o] = b
            o += 1
            k += 1
            continue
        if b == 32 and k + 1 < e and data[k + 1] > 32 and data[k + 1] != 0xC2 and data[k + 1] != 0xE3:
            out[o] = 32  # a group of one space, between words
            o += 1
            k += 1
            continue
        size = _group_byte(data, k, e)
        if size == 0:
            out[o] = b
            o += 1
            k += 1
            continue
        breaks = 0
        while size:
            c = data[k]
            if c == 10 or c == 13:
                breaks += 1
            k += size
            size = _group_byte(data, k, e) if k < e else 0
        if breaks == 0 or n == 0:
            out[o] = 32
            o += 1
        else:
            for _ in range(min(breaks, n)):
                out[o] = 10
                o += 1
    return o


@njit(cache=True)
def _strip(out, start, end, trim):
    """Strip what Arrow's utf8_trim_whitespace strips from both ends of ``out[start:end]`` (moved to start at
    ``start``); the new end."""
    a = start
    while a < end and _stripped(out, a, end, trim):
        a += _char_size(out[a])
    b = end
    while b > a:
        j = b - 1
        while j > a and (out[j] & 0xC0) == 0x80:
            j -= 1
        if not _stripped(out, j, b, trim):
            break
        b = j
    if a > start:
        for j in range(b - a):
            out[start + j] = out[a + j]
    return start + (b - a)


@njit(cache=True)
def _rewrite(offsets, data, need, n, trim):
    count = offsets.shape[0] - 1
    out_off = np.empty(count + 1, np.int64)
    out = np.empty(offsets[count] - offsets[0], np.uint8)
    o = 0
    out_off[0] = 0
    for i in range(count):
        k, e = offsets[i], offsets[i + 1]
        if need[i]:
            o = _strip(out, o, _collapse_into(data, k, e, out, o, n), trim) if k < e else o
        else:
            out[o:o + e - k] = data[k:e]
            o += e - k
        out_off[i + 1] = o
    return out_off, out[:o]


def rewrite(offsets: np.ndarray, data: np.ndarray, need: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The strings of (``offsets``, ``data``) rewritten as clean_whitespace with ``max_newlines=n`` rewrites them
    where ``need`` (bool, one per string) holds, the others copied as they are: new (offsets from 0, bytes). No
    string grows, so the bytes fit in the input's."""
    return _rewrite(np.ascontiguousarray(offsets, np.int64), np.ascontiguousarray(data, np.uint8),
                    np.ascontiguousarray(need, np.bool_), n, _TRIM)
