"""Screen raw JSON bytes before a parser sees them, so bad input is an error naming file and line, never a crash.

Three things make the parsers fail badly: nesting deep enough to overflow a recursive parser (Arrow's JSON reader
segfaults on a line 20,000 levels deep, Python's ``json`` raises a bare RecursionError at 5,000), invalid UTF-8
(Arrow's reader lets it through, to fail far downstream) and lines too long to hold. :func:`screen_lines` finds
them in JSON Lines data, :func:`screen_document` in one JSON document; :func:`screened` applies the load policy
(``invalid="raise"``: one InputError listing every flaw; ``"quarantine"``: each flawed line becomes a quarantined
record with its reason, and the data comes back with those lines emptied so line numbers still hold). It also
screens JSON Lines for escaped lone surrogates (``"\\ud800"`` with no low half after it: Python's ``json`` makes
a str that cannot be encoded, Arrow's reader refuses the file), see :func:`lone_surrogates`.

The screen is vectorized and costs a few percent of a load: UTF-8 is checked by Arrow's validator over the whole
buffer (the bad lines are located in Python only when it fails); nesting gets an upper bound per line from the
opening brackets counted per 1 KiB chunk (brackets inside strings only raise the bound), and only the lines whose
bound exceeds MAX_DEPTH are measured exactly, with strings skipped.

>>> [f.message for f in screen_lines(b'{"a": 1}\\n{"b": "\\xff"}\\n', "x.jsonl")]
['x.jsonl:2: invalid utf-8 at byte offset 16 (column 8)']
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from datacopilot.errors import InputError

MAX_DEPTH = 512  # deepest nesting of arrays and objects a line (or a JSON document) may have
MAX_LINE_BYTES = 256 << 20  # longest line a JSON Lines file may have
QUARANTINE_TEXT_BYTES = 1 << 20  # at most this much of a flawed line is kept as its quarantined text

_BLOCK = 1 << 18  # bytes screened at a time (stays in cache)
_CHUNK = 1024  # bytes per chunk of the nesting bound; at most 2040
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_ESCAPED = re.compile("[\udc80-\udcff]+")


@dataclass(frozen=True)
class Flaw:
    """A line no parser may see: its number in the file, its byte span in the data screened, and why."""

    line: int
    start: int
    end: int
    message: str


def nesting_depth(raw: bytes) -> int:
    """How deeply arrays and objects nest in ``raw`` (brackets inside strings do not count).

    >>> nesting_depth(b'{"a": [[1], "]]]"], "b": {}}')
    3
    """
    return int(_depths(raw)[0])


def _depths(raw: bytes) -> tuple[int, int]:
    """(maximum depth, position in ``raw`` where it first exceeds MAX_DEPTH or -1)."""
    rest = _STRING.sub(b"", raw)
    a = np.frombuffer(rest, np.uint8) | 0x20  # '[' -> '{', ']' -> '}'
    depth = np.cumsum((a == 0x7B).astype(np.int32) - (a == 0x7D), dtype=np.int32)
    deepest = int(depth.max(initial=0))
    if deepest <= MAX_DEPTH:
        return deepest, -1
    k, removed = int(np.argmax(depth > MAX_DEPTH)), 0
    for m in _STRING.finditer(raw):  # back from the string-free text to a position in raw
        if m.start() - removed > k:
            break
        removed += m.end() - m.start()
    return deepest, k + removed


def screen_lines(data, path: str, line0: int = 1, offset: int = 0) -> list[Flaw]:
    """Every over-long, too deeply nested or invalid UTF-8 line of JSON Lines ``data`` (bytes or a memory map),
    in line order. ``line0`` is the number of the data's first line and ``offset`` its byte offset in the file.

    >>> screen_lines(b'[' * 600 + b']' * 600 + b'\\n', "deep.jsonl")[0].message
    'deep.jsonl:1: nested 600 levels deep at column 513; at most 512 are read (datacopilot.io.screen.MAX_DEPTH)'
    """
    a = np.frombuffer(data, np.uint8)
    flaws = {f.start: f for f in _long_lines(data, path, line0)}
    for f in _deep_lines(data, a, path, line0, skip=flaws):
        flaws[f.start] = f
    for f in _bad_utf8(data, path, line0, offset):
        if f.start in flaws:
            f = Flaw(f.line, f.start, f.end, flaws[f.start].message + "; " + f.message.split(": ", 1)[1])
        flaws[f.start] = f
    return [flaws[k] for k in sorted(flaws)]


def screen_document(data, path: str) -> list[Flaw]:
    """Flaws of one JSON document (a ``.json`` file): nesting deeper than MAX_DEPTH and invalid UTF-8, each
    with the line it is on.

    >>> screen_document(b'[\\n{"a": "\\xff"}\\n]', "x.json")[0].message
    'x.json:2: invalid utf-8 at byte offset 9 (column 8)'
    """
    flaws = list(_bad_utf8(data, path, 1, 0))
    opens = sum(_count(data, c) for c in (b"[", b"{"))
    if opens > MAX_DEPTH:
        deepest, at = _depths(bytes(data))
        if at >= 0:
            start, end = _line_span(data, at)
            line = 1 + _newlines(data, 0, at)
            flaws.append(Flaw(line, start, end, f"{path}:{line}: nested {deepest} levels deep at column "
                                                f"{at - start + 1}; at most {MAX_DEPTH} are read "
                                                f"(datacopilot.io.screen.MAX_DEPTH)"))
    return sorted(flaws, key=lambda f: f.start)


def screened(data, path: str, invalid: str, line0: int = 1, offset: int = 0):
    """Apply the load policy to JSON Lines ``data``: ``(data, bad)`` where ``bad`` holds a (where, message, raw
    text) record per flawed line and ``data`` has those lines emptied (numbering intact); with
    ``invalid="raise"`` any flaw raises one InputError listing them all.

    >>> screened(b'{"a": 1}\\n{"a": "\\xff"}\\n', "x.jsonl", "quarantine")[0]
    b'{"a": 1}\\n\\n'
    """
    flaws = _merge(screen_lines(data, path, line0, offset), lone_surrogates(data, path, line0))
    if not flaws:
        return data, []
    bad = [(f"{path}:{f.line}", f.message, flaw_text(data, f)) for f in flaws]
    if invalid == "raise":
        raise_flaws(bad)
    pieces, at = [], 0
    for f in flaws:
        pieces.append(data[at:f.start])
        at = f.end
    pieces.append(data[at:])
    return b"".join(pieces), bad


def _merge(flaws: list[Flaw], more: list[Flaw]) -> list[Flaw]:
    """Both lists of flaws in line order, the messages of a line flawed twice joined."""
    if not more:
        return flaws
    out = {f.start: f for f in flaws}
    for f in more:
        if f.start in out:
            f = Flaw(f.line, f.start, f.end, out[f.start].message + "; " + f.message.split(": ", 1)[1])
        out[f.start] = f
    return [out[k] for k in sorted(out)]


def raise_flaws(bad: list) -> None:
    """One InputError listing every (where, message, raw) flaw, the first 20 shown."""
    more = f"\n... and {len(bad) - 20} more" if len(bad) > 20 else ""
    raise InputError(f"{len(bad)} unreadable JSON line(s):\n" + "\n".join(m for _, m, _ in bad[:20]) + more)


def flaw_text(data, f: Flaw) -> str:
    """The flawed line as text for the quarantine: invalid bytes as ``\\xNN``, at most QUARANTINE_TEXT_BYTES."""
    end = min(f.end, f.start + QUARANTINE_TEXT_BYTES)
    text = bytes(data[f.start:end]).decode("utf-8", "backslashreplace")
    return text if end == f.end else text + f" ... ({f.end - end} more bytes not kept)"


def surrogates_to_text(s: str) -> str:
    """Text decoded with ``surrogateescape`` back to valid text, the bad bytes shown as ``\\xNN``."""
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") if _ESCAPED.search(s) else s


# -- the three checks -----------------------------------------------------------------------------------------
def _long_lines(data, path: str, line0: int):
    n, limit, pos, number = len(data), MAX_LINE_BYTES, 0, _Numbers(data, line0)
    while n - pos > limit:
        nl = data.rfind(b"\n", pos, pos + limit + 1)
        if nl >= 0:
            pos = nl + 1
            continue
        start, end = _line_span(data, pos)
        line = number(start)
        yield Flaw(line, start, end, f"{path}:{line}: line of {end - start} bytes; at most {limit} are read "
                                     f"(datacopilot.io.screen.MAX_LINE_BYTES)")
        pos = end + 1


def _deep_lines(data, a: np.ndarray, path: str, line0: int, skip: dict):
    seen, number = set(skip), _Numbers(data, line0)
    for lo, hi in _suspect_spans(data, a):
        pos = lo
        while pos < hi:
            start, end = _line_span(data, pos)
            pos = end + 1
            if start in seen:
                continue
            seen.add(start)
            deepest, at = _depths(bytes(data[start:end]))
            if at >= 0:
                line = number(start)
                yield Flaw(line, start, end, f"{path}:{line}: nested {deepest} levels deep at column {at + 1}; "
                                             f"at most {MAX_DEPTH} are read (datacopilot.io.screen.MAX_DEPTH)")


def _suspect_spans(data, a: np.ndarray) -> list[tuple[int, int]]:
    """Byte spans holding every line that may nest deeper than MAX_DEPTH.

    Such a line holds more than MAX_DEPTH opening brackets. Mark the chunk of every S-th opener, S = (MAX_DEPTH
    + 1) // 2: the line then spans two consecutive marks, so the chunks strictly between them have no newline.
    Only mark pairs with no newline between them are suspects; for plain data every pair has one.
    """
    stride = (MAX_DEPTH + 1) // 2
    cum = np.cumsum(_chunk_opens(a))
    if not len(cum) or cum[-1] <= MAX_DEPTH:
        return []
    marks = np.searchsorted(cum, np.arange(1, cum[-1] + 1, stride), side="left").tolist()
    spans = []
    for m, m2 in zip(marks[:-1], marks[1:]):
        lo, hi = (m + 1) * _CHUNK, m2 * _CHUNK
        if lo >= hi or data.find(b"\n", lo, hi) < 0:
            spans.append((m * _CHUNK, min(len(a), (m2 + 1) * _CHUNK)))
    return spans


def _chunk_opens(a: np.ndarray) -> np.ndarray:
    """Opening brackets (``[`` or ``{``) per _CHUNK bytes, block by block in cache: each chunk's flags summed as
    uint64 words, 8 byte lanes that cannot carry (_CHUNK // 8 < 256)."""
    n = -(-len(a) // _CHUNK)
    opens = np.zeros(n, np.int64)
    tmp, hit = np.empty(_BLOCK, np.uint8), np.empty(_BLOCK, np.uint8)
    flags, words = hit.view(bool), hit.view(np.uint64)
    starts = np.arange(0, _BLOCK // 8, _CHUNK // 8)
    for s in range(0, len(a), _BLOCK):
        blk = a[s:s + _BLOCK]
        if len(blk) < _BLOCK:  # the tail, padded with zero bytes (not brackets)
            blk = np.concatenate([blk, np.zeros(_BLOCK - len(blk), np.uint8)])
        k = s // _CHUNK
        m = min(n - k, _BLOCK // _CHUNK)
        np.bitwise_or(blk, 0x20, out=tmp)  # '[' -> '{'
        np.equal(tmp, 0x7B, out=flags)
        opens[k:k + m] = _lane_sums(np.add.reduceat(words, starts))[:m]
    return opens


def _lane_sums(words: np.ndarray) -> np.ndarray:
    return words.view(np.uint8).reshape(-1, 8).sum(axis=1, dtype=np.int64)


def _bad_utf8(data, path: str, line0: int, offset: int):
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, pa.array([0, len(data)], pa.int64()).buffers()[1],
                                                     pa.py_buffer(data)]).validate(full=True)
        return
    except pa.ArrowInvalid:
        pass
    view, pos, number = memoryview(data), 0, _Numbers(data, line0)
    while pos < len(data):
        try:
            codecs.utf_8_decode(view[pos:], "strict", True)
            return
        except UnicodeDecodeError as e:
            bad = pos + e.start
        start, end = _line_span(data, bad)
        line = number(start)
        text = bytes(data[start:end]).decode("utf-8", "surrogateescape")
        runs = len(_ESCAPED.findall(text))
        more = f" and {runs - 1} more invalid sequence(s) on this line" if runs > 1 else ""
        yield Flaw(line, start, end, f"{path}:{line}: invalid utf-8 at byte offset {offset + bad} (column "
                                     f"{bad - start + 1}){more}")
        pos = end + 1


# -- escaped lone surrogates ----------------------------------------------------------------------------------
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")  # the start of an escaped surrogate (or of text that looks so)
# escapes in order: an escaped backslash (so what follows is text), a high and low surrogate pair, a lone half
_ESCAPES = re.compile(rb"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|(\\u[dD][89a-fA-F][0-9a-fA-F]{2})")
_SURROGATE_TEXT = re.compile("[\ud800-\udfff]")


def lone_surrogates(data, path: str, line0: int = 1) -> list[Flaw]:
    """Every JSON Lines line holding an escaped lone surrogate (``"\\ud800"`` not followed by a low half):
    parsers make it a str no UTF-8 file or Arrow column can hold. Only lines holding ``\\ud8``-``\\udf`` (any
    case) are looked at closely; an escaped pair (``\\ud83d\\ude00``) is text, and so is ``\\\\ud800`` (an
    escaped backslash, then ``ud800``). Each message names the line, the field and the column.

    >>> lone_surrogates(b'{"a": "\\ud83d\\ude00"}\\n{"a": ["x", "\\ud800"]}\\n', "x.jsonl")[0].message
    'x.jsonl:2: a[1]: escaped lone surrogate \\\\ud800 at column 14: not unicode text'
    """
    out, pos, number = [], 0, _Numbers(data, line0)
    if not _may_hold_surrogates(data):
        return out
    while True:
        m = _SURROGATE.search(data, pos)
        if m is None:
            return out
        start, end = _line_span(data, m.start())
        pos = end + 1
        raw = bytes(data[start:end])
        lone = [e for e in _ESCAPES.finditer(raw) if e.group(1)]
        if not lone:
            continue
        line = number(start)
        first = lone[0]
        more = f" and {len(lone) - 1} more on this line" if len(lone) > 1 else ""
        out.append(Flaw(line, start, end, f"{path}:{line}: {_surrogate_field(raw)}escaped lone surrogate "
                                          f"{first.group(1).decode()} at column {first.start() + 1}{more}: "
                                          f"not unicode text"))


def _may_hold_surrogates(data) -> bool:
    """Whether ``data`` holds ``\\ud8``-``\\udf`` anywhere: one pass of Arrow's RE2 over the buffer (no copy),
    some ten times faster than Python's ``re``."""
    import pyarrow.compute as pc

    if not len(data):
        return False
    whole = pa.Array.from_buffers(pa.large_string(), 1, [None, pa.array([0, len(data)], pa.int64()).buffers()[1],
                                                         pa.py_buffer(data)])
    try:
        return bool(pc.match_substring_regex(whole, r"\\u[dD][89a-fA-F]")[0].as_py())
    except pa.ArrowException:
        return True  # let Python's scan decide


def _surrogate_field(raw: bytes) -> str:
    """``"field: "`` for the first value (or key) of a JSON line holding a surrogate, ``""`` when the line is
    not JSON."""
    import json

    try:
        value = json.loads(raw.decode("utf-8", "replace"))  # invalid UTF-8 beside it: flagged on its own
    except (ValueError, RecursionError):
        return ""
    found = _text_path(value, "")
    return f"{found}: " if found else ""


def _text_path(value, path: str) -> str | None:
    if isinstance(value, str):
        return path or "value" if _SURROGATE_TEXT.search(value) else None
    if isinstance(value, dict):
        for k, v in value.items():
            name = f"{path}.{k}" if path else k
            if _SURROGATE_TEXT.search(k):
                return f"key {name.encode('utf-8', 'backslashreplace').decode()}"
            found = _text_path(v, name)
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _text_path(v, f"{path}[{i}]")
            if found:
                return found
    return None


# -- helpers --------------------------------------------------------------------------------------------------
def _line_span(data, pos: int) -> tuple[int, int]:
    start = data.rfind(b"\n", 0, pos) + 1
    end = data.find(b"\n", pos)
    return start, len(data) if end < 0 else end


class _Numbers:
    """Line numbers of positions asked for in increasing order, counting each newline once."""

    def __init__(self, data, line0: int):
        self.data, self.line, self.at = data, line0, 0

    def __call__(self, pos: int) -> int:
        self.line += _newlines(self.data, self.at, pos)
        self.at = pos
        return self.line


def _newlines(data, start: int, end: int) -> int:
    return int(np.count_nonzero(np.frombuffer(data, np.uint8)[start:end] == 10))


def _count(data, char: bytes) -> int:
    return int(np.count_nonzero(np.frombuffer(data, np.uint8) == char[0]))


# -- loaded tables ----------------------------------------------------------------------------------------------
def invalid_utf8_rows(table: pa.Table) -> list[tuple[int, str]]:
    """(row, message) for every row of ``table`` holding text that is not valid UTF-8 (Arrow and Parquet files
    can carry it), at any depth; one Arrow validation when all text is valid.

    >>> bad = pa.Array.from_buffers(pa.string(), 2, [None, pa.py_buffer(b"\\0\\0\\0\\0\\1\\0\\0\\0\\2\\0\\0\\0"),
    ...                                              pa.py_buffer(b"a\\xff")])
    >>> invalid_utf8_rows(pa.table({"id": bad}))
    [(1, 'id: text that is not valid utf-8')]
    """
    try:
        table.validate(full=True)
        return []
    except pa.ArrowInvalid:
        pass
    out = set()
    for name, col in zip(table.column_names, table.columns):
        start = 0
        for chunk in col.chunks:
            for field, text, rows in _texts(chunk, name, np.arange(len(chunk))):
                out.update((int(start + rows[i]), field) for i in _invalid_texts(text))
            start += len(chunk)
    return [(i, f"{field}: text that is not valid utf-8") for i, field in sorted(out)]


def _texts(arr: pa.Array, field: str, rows: np.ndarray):
    """(field path, string array, row of each element) for every string leaf of ``arr``."""
    import pyarrow.compute as pc

    t = arr.type
    if isinstance(t, pa.ExtensionType):
        yield from _texts(arr.storage, field, rows)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        yield field, arr, rows
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        yield from _texts(arr.flatten(), field + "[]", rows[pc.list_parent_indices(arr).to_numpy()])
    elif pa.types.is_struct(t):
        for i, child in enumerate(arr.flatten()):
            yield from _texts(child, f"{field}.{t.field(i).name}", rows)


def _invalid_texts(arr: pa.Array) -> list[int]:
    """Indices of the invalid UTF-8 strings of a flat string array, by halving."""
    try:
        arr.validate(full=True)
        return []
    except pa.ArrowInvalid:
        if len(arr) <= 1:
            return [0] if len(arr) else []
    mid = len(arr) // 2
    return _invalid_texts(arr.slice(0, mid)) + [mid + i for i in _invalid_texts(arr.slice(mid))]
