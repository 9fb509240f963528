"""The JSON array reader: a ``.json`` file holding one array of objects (LLaVA's ``llava_v1_5_mix665k.json``).

The elements are found without parsing them, then go, one a line, through Arrow's multithreaded JSON parser with
the schema's Arrow schema and the vectorized validation, as JSON Lines do:

- :func:`split_lines` guesses them from the lines as writers lay arrays out (datacopilot's one element a line,
  ``json.dump(rows, f, indent=4)``): a line ending with a comma, then ``{`` at the first element's indentation.
  The guess costs a scan for newlines; the parser confirms it (each piece must be exactly one object);
- :func:`split_array`, when the lines do not show the elements (one line, odd layouts) or the guess fails: a
  vectorized scan of the quotes and brackets (blockwise, in cache) that skips strings (escaped quotes included),
  follows the nesting depth and checks that only whitespace and one comma lie between two elements.

The one-a-line copy is byte for byte the file (newlines become tabs, which a string cannot hold either; the
separating commas newlines), so ``screen.screen_lines`` checks each element's depth, length and UTF-8 before any
parser sees it, and every message names the element's row (index in the array) and the file's line and column.
A bad element is quarantined with ``invalid="quarantine"``, the other rows load.

Ids that mix strings and integers (mix665k's) are read at the byte level when they are each element's first key
and put back as one variant column. Rows Arrow's parser cannot take otherwise (values of another type, free-form
``meta``) are parsed element by element (orjson; the standard library for NaN and long integers) and loaded as
Python rows. A file whose structure neither split vouches for (one object, an array of other values, not JSON)
is parsed whole after the depth and UTF-8 screen: invalid JSON is one InputError naming the line and column.

:func:`iter_json` does not stream: the elements are found by scans of the whole file (and a file neither split
vouches for is parsed whole), so it reads the file as :func:`read_json` does and yields the rows in batches.
A JSON array file is held whole (memory-mapped when local) while it is read; jsonl streams.

>>> split_array(b'[{"a": "[{"}, \\n {"b": [1]}]').starts.tolist()
[1, 16]
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa

from datacopilot.errors import InputError, SchemaError
from datacopilot.loading import Loaded, check_invalid_policy, load_rows
from datacopilot.lossless import json_parse_may_lose
from datacopilot.schemas import Json, OneOf, Schema
from datacopilot.schemas.types import Int, String
from datacopilot.schemas.variant import variant_array

from ._common import arrow_json_lines, finish
from ._fs import mapped_bytes
from .screen import QUARANTINE_TEXT_BYTES, raise_flaws, screen_document, screen_lines

_BLOCK = 1 << 18  # bytes scanned at a time (stays in cache)
_WS = b" \t\r\n"
_COLUMN = re.compile(r"column (\d+)")
_NESTED = re.compile(r"nested (\d+) levels")


@dataclass
class Elements:
    """The elements of a JSON array of objects: element ``i`` starts at its ``{``, ``data[starts[i]]``, and ends
    before ``ends[i]`` (the comma after it, or the array's ``]``); ``commas`` are the separators, ``newlines``
    every newline of the data (all outside strings, or the file is not JSON) and ``brackets`` the positions of the
    array's ``[`` and ``]``. ``checked``: found by the full scan (else by lines, the parser confirms the split)."""

    starts: np.ndarray
    ends: np.ndarray
    commas: np.ndarray
    newlines: np.ndarray
    brackets: tuple[int, int]
    checked: bool


def split_array(data) -> Elements | None:
    """The elements of ``data`` when it is one JSON array whose elements all are objects (their insides are not
    checked: the parser does that), else None. Brackets and commas inside strings do not count.

    >>> e = split_array(b'[\\n  {"id": "a,}"},\\n  {"id": 2}\\n]')
    >>> [bytes(b'[\\n  {"id": "a,}"},\\n  {"id": 2}\\n]'[s:t]) for s, t in zip(e.starts, e.ends)]
    [b'{"id": "a,}"}', b'{"id": 2}\\n']
    >>> split_array(b'[{"a": 1} {"a": 2}]') is None  # no comma between the elements
    True
    """
    a = np.frombuffer(data, np.uint8)
    pos = _structural(a, True)
    c = a[pos]
    quote = c == 0x22
    real = quote.copy()
    escaped = _escaped_quotes(a, pos[quote])
    if len(escaped):
        real[np.flatnonzero(quote)[escaped]] = False
    inside = (np.cumsum(real, dtype=np.int64) & 1).astype(bool)
    newline = c == 0x0A
    if (newline & inside).any():
        return None  # a raw newline in a string: not JSON
    bracket = ~(quote | newline | inside | (c == 0x5C) | (c == 0x7C))
    bpos, bc = pos[bracket], c[bracket]
    if len(bpos) < 2 or bc[0] != 0x5B or bc[-1] != 0x5D:
        return None
    opens = (bc | 0x20) == 0x7B
    depth = np.cumsum(np.where(opens, 1, -1), dtype=np.int32)
    if depth[-1] != 0 or depth[:-1].min() < 1:
        return None
    first = np.flatnonzero(opens & (depth == 2))
    last = np.flatnonzero(~opens & (depth == 1))
    if len(first) != len(last) or (bc[first] != 0x7B).any() or (bc[last] != 0x7D).any():
        return None
    starts, closes = bpos[first], bpos[last] + 1
    lo, hi = int(bpos[0]), int(bpos[-1])
    edges = [bytes(data[:lo]), bytes(data[hi + 1:])]
    edges += [bytes(data[lo + 1:starts[0]]), bytes(data[closes[-1]:hi])] if len(starts) else [bytes(data[lo + 1:hi])]
    if any(e.strip(_WS) for e in edges):
        return None
    commas = _separators(a, closes[:-1], starts[1:])
    if commas is None:
        return None
    ends = np.append(commas, hi) if len(starts) else commas
    return Elements(starts, ends, commas, pos[newline], (lo, hi), True)


def split_lines(data) -> Elements | None:
    """The elements of ``data`` by its lines, when it is laid out as JSON writers lay out an array of objects:
    each element after the first starting on a line of its own (``{`` after the first element's indentation, or
    none), the line before ending with the comma (datacopilot's writer, ``json.dump(rows, f, indent=4)``).
    None when the lines do not show that. The split is a guess the parser confirms (each element one object).

    >>> split_lines(b'[\\n  {"id": "a",\\n   "t": [\\n    {"v": 1},\\n    {"v": 2}]},\\n  {"id": 3}\\n]').starts
    array([ 4, 58])
    """
    a = np.frombuffer(data, np.uint8)
    n = len(a)
    lo, hi = _first_nonspace(data, 0, 1), _first_nonspace(data, n - 1, -1)
    if lo < 0 or hi <= lo or a[lo] != 0x5B or a[hi] != 0x5D:
        return None
    brace0 = _first_nonspace(data, lo + 1, 1)
    if brace0 < 0 or a[brace0] != 0x7B:
        return None
    levels = tuple(dict.fromkeys((brace0 - data.rfind(b"\n", 0, brace0) - 1, 0)))  # the first element's, or 0
    newlines, found = [], {level: ([], []) for level in levels}
    flags = np.empty(_BLOCK, bool)
    for s in range(0, n, _BLOCK):  # block by block, in cache
        blk = a[s:s + _BLOCK]
        f = flags[:len(blk)]
        np.equal(blk, 0x0A, out=f)
        nl = np.flatnonzero(f) + s
        newlines.append(nl)
        end = nl - 1  # the byte before each newline, then before a \r
        end = end[end >= 0]
        end = end - (a[end] == 0x0D)
        end = end[end >= 0]
        comma = end[a[end] == 0x2C]  # the lines ending with a comma
        for level, (starts, commas) in found.items():
            at = comma + 1 + (a[comma + 1] == 0x0D)  # the newline after the comma
            at = at + 1 + level
            ok = at < n
            pick, at = comma[ok], at[ok]
            ok = a[at] == 0x7B
            for k in range(1, level + 1):
                ok &= a[at - k] == 0x20
            starts.append(at[ok])
            commas.append(pick[ok])
    for level in levels:
        starts, commas = (np.concatenate(x) for x in found[level])
        if len(starts):
            break
    else:
        return None
    if commas[0] < brace0:
        return None
    return Elements(np.concatenate([[brace0], starts]).astype(np.int64), np.append(commas, hi), commas,
                    np.concatenate(newlines), (lo, hi), False)


def _first_nonspace(data, at: int, step: int) -> int:
    """The position of the first byte that is not JSON whitespace from ``at`` on (``step`` 1) or back (-1);
    -1 if none."""
    n = len(data)
    while 0 <= at < n:
        window = bytes(data[at:at + 4096]) if step > 0 else bytes(data[max(0, at - 4095):at + 1])
        kept = window.lstrip(_WS) if step > 0 else window.rstrip(_WS)
        if kept:
            return at + len(window) - len(kept) if step > 0 else at - (len(window) - len(kept))
        at += step * len(window)
    return -1


def _structural(a: np.ndarray, syntax: bool) -> np.ndarray:
    """Positions of every newline of ``a`` and with ``syntax`` every quote, bracket, backslash and ``|``, block
    by block in cache."""
    out = []
    tmp, flags, more = np.empty(_BLOCK, np.uint8), np.empty(_BLOCK, bool), np.empty(_BLOCK, bool)
    for s in range(0, len(a), _BLOCK):
        blk = a[s:s + _BLOCK]
        k = len(blk)
        t, f, m = tmp[:k], flags[:k], more[:k]
        np.equal(blk, 0x0A, out=f)
        if syntax:
            np.bitwise_or(blk, 0x20, out=t)  # [ \ ] -> { | }
            np.subtract(t, 0x7B, out=t)  # { | } -> 0 1 2, everything else above
            np.less_equal(t, 2, out=m)
            f |= m
            np.equal(blk, 0x22, out=m)
            f |= m
        out.append(np.flatnonzero(f) + s)
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _escaped_quotes(a: np.ndarray, quotes: np.ndarray) -> np.ndarray:
    """Indices into ``quotes`` of the quotes escaped by an odd run of backslashes."""
    run = np.zeros(len(quotes), np.int64)
    open_ = quotes > 0
    k = 1
    while open_.any():
        idx = np.flatnonzero(open_)
        back = quotes[idx] - k
        hit = a[back] == 0x5C
        run[idx[hit]] += 1
        open_[idx[~hit]] = False
        open_[idx[hit]] = back[hit] > 0
        k += 1
    return np.flatnonzero(run & 1)


def _separators(a: np.ndarray, after: np.ndarray, before: np.ndarray) -> np.ndarray | None:
    """The comma between each element's end and the next one's start; None unless each gap is whitespace
    around exactly one comma."""
    if not len(after):
        return np.zeros(0, np.int64)
    lengths = before - after
    if lengths.min() < 1:
        return None
    offsets = np.cumsum(lengths) - lengths
    idx = np.arange(int(lengths.sum())) + np.repeat(after - offsets, lengths)
    g = a[idx]
    comma = g == 0x2C
    if not (comma | (g == 0x20) | (g == 0x0A) | (g == 0x0D) | (g == 0x09)).all():
        return None
    if (np.add.reduceat(comma, offsets) != 1).any():
        return None
    return idx[comma]


# -- the reader ---------------------------------------------------------------------------------------------
class _Where:
    """``where(i)`` for element ``i`` of the array: ``path: row i (line n)``, lines counted only when asked."""

    def __init__(self, path: str, elements: Elements):
        self.path, self.elements, self.newlines = path, elements, elements.newlines

    def line(self, pos: int) -> int:
        return 1 + int(np.searchsorted(self.newlines, pos))

    def column(self, pos: int) -> int:
        k = int(np.searchsorted(self.newlines, pos))
        return pos - (int(self.newlines[k - 1]) + 1 if k else 0) + 1

    def __call__(self, i: int) -> str:
        return f"{self.path}: row {i} (line {self.line(int(self.elements.starts[i]))})"


def _text(data, start: int, end: int) -> str:
    stop = min(end, start + QUARANTINE_TEXT_BYTES)
    text = bytes(data[start:stop]).decode("utf-8", "backslashreplace")
    return text if stop == end else text + f" ... ({end - stop} more bytes not kept)"


def _one_a_line(data, elements: Elements) -> bytearray:
    """A copy of the data as JSON Lines, byte for byte, element ``i`` on line ``i + 1``: newlines become tabs
    (whitespace between values; in a string, where a newline has no place either, the parser refuses a tab),
    the array's brackets spaces, and the separating commas newlines."""
    out = bytearray(data)
    view = np.frombuffer(out, np.uint8)
    view[elements.newlines] = 0x09
    view[list(elements.brackets)] = 0x20
    view[elements.commas] = 0x0A
    return out


def _flaws(lines: bytearray, path: str, where: _Where) -> dict[int, str]:
    """{element: message} for every element too deep, too long or holding invalid UTF-8 (``screen``'s checks on
    the one-a-line copy), each message naming the file's line and column, and the row. The depth counted is the
    document's (the array's level included)."""
    out = {}
    for f in screen_lines(lines, path):
        row, rest = f.line - 1, f.message[len(f"{path}:{f.line}: "):]
        col = _COLUMN.search(rest)
        at = f.start + int(col[1]) - 1 if col else int(where.elements.starts[row])
        rest = _COLUMN.sub(f"column {where.column(at)}", rest, 1)
        rest = _NESTED.sub(lambda m: f"nested {int(m[1]) + 1} levels", rest, 1)
        out[row] = f"{path}:{where.line(at)}: {rest} (row {row})"
    return out


def _arrow(lines: bytearray, kept: np.ndarray, path: str, schema: Schema | None, invalid: str,
           where: _Where, apart: dict | None = None) -> Loaded | None:
    """The rows by Arrow's parser and the vectorized validation, with the ``apart`` columns (name: array) put
    first; None when they need the row path."""
    table = arrow_json_lines(lines, schema)
    if table is None:
        return None
    if table.num_rows != len(kept):
        return None
    json_fields = {f.name for f in schema.fields if isinstance(f.dtype, Json)} if schema is not None else {"meta"}
    if json_fields & set(table.column_names) or json_parse_may_lose(table, schema):
        return None  # free-form JSON keeps its exact shape, a 0 beside a 0.5 its type, only through the row path
    for k, (name, arr) in enumerate((apart or {}).items()):
        if name in table.column_names:
            return None  # the key twice in an element
        table = table.add_column(k, name, arr)
    try:
        return finish(table, schema, path, invalid, lambda i: where(int(kept[i])))
    except SchemaError:
        return None


# the first key of an element, up to its value
_FIRST_KEY = re.compile(rb'\{\s*"([A-Za-z_][A-Za-z0-9_]*)"\s*:\s*')
_ID_BYTES = 64  # longest first value (quotes and the comma after it included) _ids_apart takes
_ID_ROWS = 1 << 16  # elements looked at a time


def _ids_apart(lines: bytearray, elements: Elements, kept: np.ndarray, schema: Schema | None):
    """``{name: array}`` for a field whose rows mix strings and integers (ids, as LLaVA's mix665k mixes them;
    with no schema, ``id``) when it is the first key of every kept element, at the same offset (the layout of writers), its value a
    string with no escape or a plain integer and a comma after it; each such key and value blanked out of
    ``lines`` (Arrow's parser takes a column of one type only). None when the elements do not show that."""
    if not len(kept):
        return None
    if schema is None:  # the built-in schemas' ids
        tags = {"id": {String: "str", Int: "int"}}
    else:
        tags = {f.name: {type(d): tag for tag, d in f.dtype.alternatives} for f in schema.fields
                if isinstance(f.dtype, OneOf) and {type(d) for _, d in f.dtype.alternatives} == {String, Int}}
    starts = elements.starts[kept]
    m = _FIRST_KEY.match(lines, int(starts[0]))
    if not tags or m is None or m[1].decode() not in tags:
        return None
    name, prefix = m[1].decode(), np.frombuffer(bytes(lines[m.start():m.end()]), np.uint8)
    a = np.frombuffer(lines, np.uint8)
    if int(starts[-1]) + len(prefix) + _ID_BYTES > len(a):
        return None
    windows = np.lib.stride_tricks.sliding_window_view(a, len(prefix) + _ID_BYTES)
    parts = []
    for lo in range(0, len(starts), _ID_ROWS):
        at = starts[lo:lo + _ID_ROWS]
        win = windows[at]
        if not (win[:, :len(prefix)] == prefix).all():
            return None
        part = _values(win[:, len(prefix):])
        if part is None:
            return None
        parts.append((at + len(prefix), *part))
    blank_lo = np.concatenate([at - len(prefix) + 1 for at, *_ in parts])
    blank_hi = np.concatenate([at + ends + 1 for at, _, _, ends in parts])  # through the comma
    lengths = blank_hi - blank_lo
    a[np.repeat(blank_lo - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))] = 0x20
    strs = pa.concat_arrays([p[1] for p in parts])
    ints = pa.concat_arrays([p[2] for p in parts])
    if strs.null_count == 0 or ints.null_count == 0:
        return {name: strs if ints.null_count else ints}
    return {name: variant_array({tags[name][String]: strs, tags[name][Int]: ints})}


def _values(v: np.ndarray):
    """(strings, integers, end) from the first bytes of each row's value: a string with no escape or control
    character, or an integer of at most 18 digits (no sign, no leading zero), then a comma at ``end``; None if
    any row holds something else."""
    n, width = v.shape
    cols = np.arange(width)
    text = v[:, 0] == 0x22
    close = np.argmax(v[:, 1:] == 0x22, axis=1) + 1  # the closing quote (1 where there is none)
    digit = (v >= 0x30) & (v <= 0x39)
    ndig = np.argmin(digit, axis=1)  # digits before the first other byte
    end = np.where(text, close + 1, ndig)
    inside = (cols >= 1) & (cols < close[:, None]) & text[:, None]
    if ((close == 1) & text & (v[:, 1] != 0x22)).any():
        return None  # no closing quote
    if (((v < 0x20) | (v == 0x5C)) & inside).any():
        return None
    number = ~text
    if ((ndig < 1) | (ndig > 18) | ((v[:, 0] == 0x30) & (ndig > 1)))[number].any():
        return None
    if (end >= width).any() or (v[np.arange(n), np.minimum(end, width - 1)] != 0x2C).any():
        return None
    lengths = np.where(text, close - 1, 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    valid = pa.array(text).buffers()[1]
    strs = pa.Array.from_buffers(pa.string(), n, [valid, pa.py_buffer(offsets), pa.py_buffer(v[inside].tobytes())])
    value = np.zeros(n, np.int64)
    rows = np.flatnonzero(number)
    for k in range(18):  # Horner's rule over the digits, the rows that still have one
        rows = rows[ndig[rows] > k]
        if not len(rows):
            break
        value[rows] = value[rows] * 10 + (v[rows, k].astype(np.int64) - 0x30)
    ints = pa.array(value, pa.int64(), mask=text)
    return strs, ints, end


def _loads(raw):
    """One JSON value: orjson, or the standard library where orjson refuses (NaN, infinity, long integers);
    _LoneSurrogate when the value holds an escaped lone surrogate (text no UTF-8 file or Arrow column holds)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        first = e
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise first from None  # orjson's message says more ("number with leading zero is not allowed")
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        m = _LONE.search(bytes(raw))
        raise _LoneSurrogate(m.start() if m else 0, m[0].decode() if m else "\\u") from None
    return value


# an escaped surrogate that is not half of a pair
_LONE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
                   rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


class _LoneSurrogate(Exception):
    def __init__(self, at: int, escape: str):
        super().__init__(escape)
        self.at, self.escape = at, escape


class _Broken(Exception):
    """An element that does not parse (``at``: its position in the file)."""

    def __init__(self, row: int, at: int, msg: str):
        super().__init__(msg)
        self.row, self.at, self.msg = row, at, msg


def _rows(data, elements: Elements, kept: np.ndarray) -> tuple[list, list[int], dict[int, tuple[int, str]]]:
    """Each kept element parsed on its own: the rows, their elements, and {element: (position, escape)} for
    those holding an escaped lone surrogate; _Broken for the first that does not parse."""
    rows, good, lone = [], [], {}
    for i in kept.tolist():
        s, e = int(elements.starts[i]), int(elements.ends[i])
        try:
            rows.append(_loads(data[s:e]))
            good.append(i)
        except _LoneSurrogate as err:
            lone[i] = (s + err.at, err.escape)
        except json.JSONDecodeError as err:
            before = err.doc[:err.pos]
            at = s + (len(before.encode("utf-8", "surrogatepass")) if isinstance(before, str) else err.pos)
            raise _Broken(i, at, err.msg) from err
    return rows, good, lone


def _raise_unreadable(bad: list) -> None:
    more = f"\n... and {len(bad) - 20} more" if len(bad) > 20 else ""
    raise InputError(f"{len(bad)} unreadable JSON array element(s):\n" + "\n".join(m for _, m, _ in bad[:20]) + more)


def _load(data, elements: Elements, path: str, schema: Schema | None, invalid: str) -> Loaded | None:
    """The rows of the elements; None when a split by lines is not confirmed (the full scan decides)."""
    where = _Where(path, elements)
    lines = _one_a_line(data, elements)
    flawed = _flaws(lines, path, where)
    if flawed and not elements.checked:
        return None
    bad = [(where(i), m, _text(data, int(elements.starts[i]), int(elements.ends[i]))) for i, m in flawed.items()]
    if bad and invalid == "raise":
        _raise_unreadable(bad)
    view = np.frombuffer(lines, np.uint8)
    for i in flawed:
        view[elements.starts[i]:elements.ends[i]] = 0x20
    kept = np.arange(len(elements.starts))
    if flawed:
        kept = np.setdiff1d(kept, np.fromiter(flawed, np.int64, len(flawed)))
    loaded = _arrow(lines, kept, path, schema, invalid, where) if len(kept) else None
    if loaded is None:
        apart = _ids_apart(lines, elements, kept, schema)
        loaded = _arrow(lines, kept, path, schema, invalid, where, apart) if apart else None
    if loaded is None:
        try:
            rows, good, lone = _rows(data, elements, kept)
        except _Broken as e:
            if not elements.checked:
                return None
            raise InputError(f"{path}:{where.line(e.at)}: invalid JSON at column {where.column(e.at)} (row "
                             f"{e.row}): {e.msg}") from e
        for i, (at, esc) in lone.items():
            msg = f"{path}:{where.line(at)}: escaped lone surrogate {esc} at column {where.column(at)}"
            bad.append((where(i), f"{msg}: not unicode text (row {i})",
                        _text(data, int(elements.starts[i]), int(elements.ends[i]))))
        if lone and invalid == "raise":
            _raise_unreadable(bad)
        kept = np.array(good, np.int64)
        loaded = load_rows(rows, schema, path, where=lambda i: where(int(kept[i])), invalid=invalid)
    loaded.bad = bad + loaded.bad
    return loaded


def read_json(path: str, schema: Schema | None, invalid: str = "raise") -> Loaded:
    """Rows of a JSON file holding one array of objects (or one object).

    An element nested deeper than ``screen.MAX_DEPTH``, holding invalid UTF-8 or failing validation is named
    by its row (index in the array), line and field: an InputError (or ValidationError) with
    ``invalid="raise"``, a quarantined row with ``invalid="quarantine"``. A file that is not valid JSON is one
    InputError naming its line and column.

    >>> read_json("llava_v1_5_mix665k.json", None).table.num_rows  # doctest: +SKIP
    665298
    """
    check_invalid_policy(invalid)
    data = mapped_bytes(path, "json")
    for split in (split_lines, split_array):
        elements = split(data) if len(data) else None
        loaded = _load(data, elements, path, schema, invalid) if elements is not None else None
        if loaded is not None:
            return loaded
    return _document(bytes(data), path, schema, invalid)


def iter_json(path: str, schema: Schema | None, batch_size: int, invalid: str = "raise") -> Iterator[Loaded]:
    """The rows of :func:`read_json` in batches of at most ``batch_size`` rows, the file's invalid rows with
    the first. Not streamed: the whole file is read first (see the module's docstring).

    >>> [ld.table.num_rows for ld in iter_json("llava_v1_5_mix665k.json", None, 300_000)]  # doctest: +SKIP
    [300000, 300000, 65298]
    """
    loaded = read_json(path, schema, invalid)
    table, bad = loaded.table, loaded.bad
    for start in range(0, max(table.num_rows, 1 if bad else 0), batch_size):
        yield Loaded(table.slice(start, batch_size), loaded.schema, bad if start == 0 else [])


def _document(data: bytes, path: str, schema: Schema | None, invalid: str) -> Loaded:
    """The whole document parsed at once (one object, an array of other values, or not JSON at all): nesting
    too deep and invalid UTF-8 are an InputError naming the line, as invalid JSON is."""
    flaws = screen_document(data, path)
    if flaws:
        raise_flaws([(None, f.message, None) for f in flaws])
    try:
        rows = _loads(data)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: invalid JSON at column {e.colno}: {e.msg}") from e
    except (UnicodeDecodeError, RecursionError) as e:
        raise InputError(f"{path}: invalid JSON: {e}") from e
    except _LoneSurrogate as e:
        line, column = data.count(b"\n", 0, e.at) + 1, e.at - data.rfind(b"\n", 0, e.at)
        raise InputError(f"{path}:{line}: escaped lone surrogate {e.escape} at column {column}: not unicode "
                         f"text") from None
    if isinstance(rows, dict):
        rows = [rows]
    if not isinstance(rows, list):
        raise InputError(f"{path}: expected a JSON array of objects, got {type(rows).__name__}")
    return load_rows(rows, schema, path, where=lambda i: f"{path}: row {i}", invalid=invalid)
