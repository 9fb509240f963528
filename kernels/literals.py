"""Which strings hold one of a few literals, ASCII case-insensitively, and the literals a regular expression's every
match holds: the prefilter that lets a regex run only on the strings that may match it.

:func:`required_literals` reads a pattern (Python's parser) and returns lower-case ASCII strings such that every
case-insensitive match of the pattern contains one of them, or None where it cannot tell (classes, lookarounds,
backslash-letter escapes, which RE2, Rust's regex and Python read differently). :class:`LiteralSet` finds the
strings of an Arrow string array holding one of them: Wu-Manber over 3-byte blocks (a compiled loop that skips
up to the shortest literal's length minus two per step), ASCII letters folded to lower case.

Case-insensitive matching in RE2 and Rust's regex folds ``k`` with the Kelvin sign (U+212A) and ``s`` with the long
s (U+017F); a string holding either is reported as holding a literal when one has a ``k`` or an ``s``, so the
prefilter never hides a match.

>>> required_literals(r"i('| a)m (sorry|afraid)")
['i am afraid', 'i am sorry', "i'm afraid", "i'm sorry"]
>>> required_literals(r"[a-z]+ing"), required_literals(r"[a-z]+in"), required_literals(r"\\bcat")
(['ing'], None, None)
>>> import pyarrow as pa
>>> from datacopilot.kernels.text import string_buffers
>>> LiteralSet(["as an ai", "sorry"]).holding(*string_buffers(pa.array(["As An AI model", "hello", "SORRY!"]))).tolist()
[True, False, True]
"""

from __future__ import annotations

import re

import numpy as np
from numba import njit

try:  # Python 3.11+
    from re import _constants as _C
    from re import _parser as _P
except ImportError:  # pragma: no cover (3.10)
    import sre_constants as _C  # type: ignore[no-redef]
    import sre_parse as _P  # type: ignore[no-redef]

_LIMIT = 64  # most strings an exact set may hold
_UNSAFE_SOURCE = re.compile(r"\\[A-Za-z0-9]|\{,|\[:")  # read differently by RE2 / Rust's regex / Python


class _Unsafe(Exception):
    pass


def required_literals(pattern: str, min_length: int = 3) -> list[str] | None:
    """Lower-case ASCII strings, one of which every case-insensitive match of ``pattern`` contains (sorted), or
    None when the pattern gives no such set whose strings all have at least ``min_length`` characters."""
    if _UNSAFE_SOURCE.search(pattern):
        return None
    try:
        parsed = _P.parse(pattern)
        if parsed.state.flags & (re.VERBOSE | re.ASCII):
            return None
        exact, factor = _seq(list(parsed))
    except (_Unsafe, re.error, RecursionError):
        return None
    best = _better(_factor(exact), factor)
    if best is None or min(len(s) for s in best) < min_length:
        return None
    return sorted(best)


def pattern_strings(pattern: str) -> list[str] | None:
    """Every string ``pattern`` matches, lower-case ASCII (sorted), when it matches a few fixed strings only
    (literals, groups, alternatives, bounded repeats; no classes, anchors or case-sensitive groups): then a text
    matches the pattern case-insensitively exactly where it holds one of them (ASCII case folded; a text holding
    a Kelvin sign or a long s aside, see the module doc). None otherwise.

    >>> pattern_strings("as an ai( language)? model"), pattern_strings("^cat"), pattern_strings("cats?")
    (['as an ai language model', 'as an ai model'], None, ['cat', 'cats'])
    """
    if _UNSAFE_SOURCE.search(pattern):
        return None
    try:
        parsed = _P.parse(pattern)
        if parsed.state.flags & (re.VERBOSE | re.ASCII) or not _plain(list(parsed)):
            return None
        exact, _ = _seq(list(parsed))
    except (_Unsafe, re.error, RecursionError):
        return None
    return sorted(exact) if exact and "" not in exact else None


def _plain(items) -> bool:
    for op, av in items:
        if op is _C.LITERAL:
            if not chr(av).isascii():
                return False
        elif op is _C.SUBPATTERN:
            if av[1] & ~re.IGNORECASE or av[2] or not _plain(list(av[3])):
                return False
        elif op is _C.BRANCH:
            if not all(_plain(list(b)) for b in av[1]):
                return False
        elif op in (_C.MAX_REPEAT, _C.MIN_REPEAT):
            if av[1] == _C.MAXREPEAT or not _plain(list(av[2])):
                return False
        else:
            return False
    return True


def _factor(s):
    return s if s and "" not in s else None


def _better(a, b):
    """The set whose shortest string is longer (then: the one with fewer strings); None loses."""
    if a is None or b is None:
        return a if b is None else b
    return a if (min(map(len, a)), -len(a)) >= (min(map(len, b)), -len(b)) else b


def _seq(items) -> tuple:
    """(exact, factor) of a concatenation: every string it matches if they are few (else None), and a set one of
    which every match contains (None: unknown)."""
    run, best, broken = {""}, None, False
    for op, av in items:
        exact, factor = _node(op, av)
        best = _better(best, factor)
        if exact is not None and len(run) * len(exact) <= _LIMIT:
            run = {a + b for a in run for b in exact}
            continue
        best, broken = _better(best, _factor(run)), True
        run = exact if exact is not None else {""}
    best = _better(best, _factor(run))
    return (None if broken else run), best


def _node(op, av) -> tuple:
    if op is _C.LITERAL:
        c = chr(av)
        return ({c.lower()},) * 2 if c.isascii() else (None, None)
    if op in (_C.NOT_LITERAL, _C.IN, _C.ANY, _C.CATEGORY):
        return None, None
    if op is _C.AT:
        return {""}, None
    if op is _C.SUBPATTERN:
        _, add, _, p = av
        if add & (re.VERBOSE | re.ASCII):
            raise _Unsafe
        return _seq(list(p))
    if op is _C.BRANCH:
        parts = [_seq(list(b)) for b in av[1]]
        exact = set().union(*(e for e, _ in parts)) if all(e is not None for e, _ in parts) else None
        if exact is not None and len(exact) > _LIMIT:
            exact = None
        bests = [_better(_factor(e), f) for e, f in parts]
        factor = set().union(*bests) if all(b is not None for b in bests) else None
        return exact, _better(_factor(exact), factor)
    if op in (_C.MAX_REPEAT, _C.MIN_REPEAT) or op is getattr(_C, "POSSESSIVE_REPEAT", None):
        lo, hi, p = av
        exact, factor = _seq(list(p))
        if lo == 0:
            return ((exact | {""}) if exact is not None and hi == 1 else None), None
        out = None
        if exact is not None and lo == hi and len(exact) ** lo <= _LIMIT:
            out = {""}
            for _ in range(lo):
                out = {a + b for a in out for b in exact}
        return out, _better(_factor(exact), factor)
    raise _Unsafe  # lookarounds, back references, conditionals, atomic groups


# -- the search -------------------------------------------------------------------------------------------------
_FOLD = np.arange(256, dtype=np.uint8)
_FOLD[65:91] += 32  # ASCII upper case to lower case


class LiteralSet:
    """A few lower-case ASCII literals of at least 3 characters, ready to search for (:meth:`holding`)."""

    def __init__(self, literals: list[str]):
        if not literals or any(len(s) < 3 or not s.isascii() or s != s.lower() for s in literals):
            raise ValueError(f"`literals` must be lower-case ASCII strings of 3 or more characters, got {literals!r}")
        needles = [s.encode() for s in sorted(set(literals))]
        self.literals = [n.decode() for n in needles]
        self.m = m = min(len(n) for n in needles)
        # Wu-Manber over 3-byte blocks hashed to 15 bits (5 low bits a byte: the two cases of a letter hash alike,
        # so the scan needs no folding; a 32 KB table stays in cache): shift[h] is how far the window may move
        # when its last block hashes to h, 0 where a needle's first m bytes may end; those are verified
        shift = np.full(1 << 15, min(m - 2, 255), np.uint8)
        buckets: dict[int, list[int]] = {}
        for i, n in enumerate(needles):
            for q in range(3, m + 1):  # the block ending at the q-th byte of the needle
                h = _hash3(n[q - 3], n[q - 2], n[q - 1])
                shift[h] = min(shift[h], m - q)
            buckets.setdefault(_hash3(n[m - 3], n[m - 2], n[m - 1]), []).append(i)
        self.shift = shift
        self.bucket_start = np.zeros((1 << 15) + 1, np.int64)
        for h, ids in buckets.items():
            self.bucket_start[h + 1] = len(ids)
        np.cumsum(self.bucket_start, out=self.bucket_start)
        self.bucket_ids = np.zeros(int(self.bucket_start[-1]), np.int64)
        for h, ids in buckets.items():
            self.bucket_ids[self.bucket_start[h]:self.bucket_start[h] + len(ids)] = ids
        self.needle_off = np.zeros(len(needles) + 1, np.int64)
        np.cumsum([len(n) for n in needles], out=self.needle_off[1:])
        self.needle_bytes = np.frombuffer(b"".join(needles), np.uint8).copy()
        self.fold_check = any(c in s for s in self.literals for c in "ks")

    def holding(self, offsets: np.ndarray, data: np.ndarray, sel: np.ndarray | None = None) -> np.ndarray:
        """Bool per string (of ``offsets``/``data``, :func:`datacopilot.kernels.text.string_buffers`): it holds
        one of the literals, ASCII case-insensitively (or a Kelvin sign / long s, see the module doc); strings not
        in ``sel`` (a bool mask) are False."""
        n = len(offsets) - 1
        sel = np.ones(n, dtype=bool) if sel is None else np.ascontiguousarray(sel, dtype=np.bool_)
        out = _holding(offsets, data, sel, _FOLD, self.shift, self.bucket_start, self.bucket_ids,
                       self.needle_off, self.needle_bytes, self.m)
        if self.fold_check and n:
            at = _fold_sequences(data, int(offsets[0]), int(offsets[-1]))
            if len(at):
                which = np.searchsorted(offsets, at, side="right") - 1
                out[which] |= sel[which]
        return out


def _hash3(a: int, b: int, c: int) -> int:
    return (a & 31) << 10 | (b & 31) << 5 | (c & 31)


_ONES, _HIGHS = np.uint64(0x0101010101010101), np.uint64(0x8080808080808080)
_C5, _E2 = np.uint64(0xC5C5C5C5C5C5C5C5), np.uint64(0xE2E2E2E2E2E2E2E2)


@njit(cache=True)
def _fold_sequences(data, lo, hi):
    """Positions in ``data[lo:hi]`` (absolute) where a long s (C5 BF) or a Kelvin sign (E2 84 AA) starts. 512
    bytes at a time (a loop without branches, vectorized): a block is looked at byte by byte only when one of its
    words holds a C5 or an E2 byte."""
    out = []
    n_blocks = (hi - lo) // 512
    words = data[lo:lo + 512 * n_blocks].view(np.uint64)
    for blk in range(n_blocks):
        acc = np.uint64(0)
        base = blk * 64
        for w in range(64):
            x = words[base + w]
            a, b = x ^ _C5, x ^ _E2
            acc |= ((a - _ONES) & ~a) | ((b - _ONES) & ~b)
        if acc & _HIGHS:
            for j in range(lo + 512 * blk, lo + 512 * blk + 512):
                if _starts_fold(data, j, hi):
                    out.append(j)
    for j in range(lo + 512 * n_blocks, hi):
        if _starts_fold(data, j, hi):
            out.append(j)
    return np.array(out, dtype=np.int64) if len(out) else np.zeros(0, np.int64)


@njit(cache=True)
def _starts_fold(data, j, hi):
    if data[j] == 0xC5:
        return j + 1 < hi and data[j + 1] == 0xBF
    return data[j] == 0xE2 and j + 2 < hi and data[j + 1] == 0x84 and data[j + 2] == 0xAA


@njit(cache=True, inline="always")
def _hash_at(data, pos):
    """The 15-bit hash of the 3 bytes ending at ``pos`` (:func:`_hash3`)."""
    return (np.int64(data[pos - 2]) & 31) << 10 | (np.int64(data[pos - 1]) & 31) << 5 | (data[pos] & 31)


@njit(cache=True, inline="always")
def _verify(data, start, e, h, fold, bucket_start, bucket_ids, needle_off, needle_bytes):
    """A needle whose first m bytes end with a block hashing to ``h`` starts at ``start`` (and ends by ``e``)."""
    for j in range(bucket_start[h], bucket_start[h + 1]):
        k = bucket_ids[j]
        a, length = needle_off[k], needle_off[k + 1] - needle_off[k]
        if start + length > e:
            continue
        same = True
        for q in range(length):
            if fold[data[start + q]] != needle_bytes[a + q]:
                same = False
                break
        if same:
            return True
    return False


@njit(cache=True)
def _scan(data, pos, e, fold, shift, bucket_start, bucket_ids, needle_off, needle_bytes, m):
    """Whether a needle ends by ``e`` in the string whose window ends at ``pos`` (Wu-Manber)."""
    while pos < e:
        h = _hash_at(data, pos)
        sh = shift[h]
        if sh:
            pos += np.int64(sh)
        elif _verify(data, pos - m + 1, e, h, fold, bucket_start, bucket_ids, needle_off, needle_bytes):
            return True
        else:
            pos += 1
    return False


@njit(cache=True)
def _holding(offsets, data, sel, fold, shift, bucket_start, bucket_ids, needle_off, needle_bytes, m):
    n = offsets.shape[0] - 1
    out = np.zeros(n, np.bool_)
    idx = np.empty(n, np.int64)  # the selected strings long enough to hold a needle
    c = 0
    for i in range(n):
        if sel[i] and offsets[i + 1] - offsets[i] >= m:
            idx[c] = i
            c += 1
    # two lanes, idx[:half] and idx[half:], one window step each per round: the step is a chain of dependent loads
    # (bytes, hash, shift), so two independent chains run in about the time of one
    half = c // 2
    ka, kb = 0, half
    pa = offsets[idx[ka]] + m - 1 if ka < half else 0
    pb = offsets[idx[kb]] + m - 1 if kb < c else 0
    while ka < half and kb < c:
        ea, eb = offsets[idx[ka] + 1], offsets[idx[kb] + 1]
        if pa < ea:
            h = _hash_at(data, pa)
            sh = shift[h]
            if sh:
                pa += np.int64(sh)
            elif _verify(data, pa - m + 1, ea, h, fold, bucket_start, bucket_ids, needle_off, needle_bytes):
                out[idx[ka]] = True
                pa = ea
            else:
                pa += 1
        else:
            ka += 1
            if ka < half:
                pa = offsets[idx[ka]] + m - 1
        if pb < eb:
            h = _hash_at(data, pb)
            sh = shift[h]
            if sh:
                pb += np.int64(sh)
            elif _verify(data, pb - m + 1, eb, h, fold, bucket_start, bucket_ids, needle_off, needle_bytes):
                out[idx[kb]] = True
                pb = eb
            else:
                pb += 1
        else:
            kb += 1
            if kb < c:
                pb = offsets[idx[kb]] + m - 1
    # the lane left, its current string from where it stopped
    k, stop, pos = (ka, half, pa) if ka < half else (kb, c, pb)
    while k < stop:
        i = idx[k]
        if _scan(data, pos, offsets[i + 1], fold, shift, bucket_start, bucket_ids, needle_off, needle_bytes, m):
            out[i] = True
        k += 1
        if k < stop:
            pos = offsets[idx[k]] + m - 1
    return out
