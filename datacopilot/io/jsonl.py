"""JSON Lines and JSON (an array of objects) readers (the writers are in ``json_write``).

Reading jsonl takes Arrow's multithreaded C++ parser first; if a file does not fit that path (a broken
line, a value of another type, free-form ``meta``), it is read again line by line in Python, which names
the file and line of every problem. :func:`iter_jsonl` streams a file (or a byte range of it,
:func:`split_jsonl`) in blocks of lines (the lines starting in each :data:`BLOCK_BYTES` of the file), every
block read as :func:`read_jsonl` reads a file.
"""

from __future__ import annotations

from collections.abc import Iterator

from fsspec.utils import infer_compression

from datacopilot.errors import InputError, SchemaError
from datacopilot.loading import Loaded, check_invalid_policy, load_rows
from datacopilot.schemas import Json, Schema

from ._common import arrow_json_lines, finish, no_rows, parse_json_records
from ._fs import get_fs, mapped_bytes
from .line_blocks import LineBlocks, Long
from .parts import Part, ranges
from datacopilot.lossless import json_parse_may_lose
from .jsonl_ids import parse_mixed_ids
from . import screen
from .screen import screened

# io's format table finds the writers of both formats here, and the JSON array reader
from .json_array import read_json  # noqa: F401
from .json_write import write_json, write_jsonl  # noqa: F401
from .json_array import iter_json  # noqa: F401

BLOCK_BYTES = 16 << 20  # iter_jsonl's blocks: the lines starting in each this many bytes of the file


class _Lines:
    """``where(i)`` for row ``i`` of jsonl data: ``path:line``. Line numbers are worked out only when a message
    needs one (blank lines, and lines the screen emptied, shift them), so a clean load never scans the text in
    Python."""

    def __init__(self, path: str, data, line0: int = 1):
        self.path, self.data, self.line0, self.numbers = path, data, line0, None

    def __call__(self, i: int) -> str:
        if self.numbers is None:
            lines = bytes(self.data).split(b"\n")
            self.numbers = [n for n, ln in enumerate(lines, self.line0) if ln.strip()]
        return f"{self.path}:{self.numbers[i]}"


def _fast(data, path: str, schema: Schema | None, invalid: str, line0: int = 1) -> Loaded | None:
    """The table of Arrow's parser (ids that mix strings and integers read apart, :mod:`.jsonl_ids`),
    validated; None when the file needs the row path."""
    table = arrow_json_lines(data, schema)
    if table is None:
        mixed = parse_mixed_ids(data, schema, lambda d: arrow_json_lines(d, schema))
        if mixed is None:
            return None
        table, schema = mixed
    json_fields = {f.name for f in schema.fields if isinstance(f.dtype, Json)} if schema is not None else {"meta"}
    if json_fields & set(table.column_names):
        return None  # free-form JSON fields keep their exact shape only through the row path
    if json_parse_may_lose(table, schema):
        return None  # a 0 beside a 0.5 would come back as 0.0; a list of nulls would be invalid
    try:
        return finish(table, schema, path, invalid, _Lines(path, data, line0))
    except SchemaError:
        return None


def _parse_lines(data: bytes, path: str, invalid: str, line0: int = 1) -> tuple[list, list[int], list]:
    records = ((n, f"{path}:{n}", line) for n, line in enumerate(data.split(b"\n"), line0) if line.strip())
    return parse_json_records(records, invalid, "line")


def read_jsonl(path: str, schema: Schema | None, invalid: str = "raise") -> Loaded:
    """Rows of a JSON Lines file. Lines too deep, too long or not UTF-8 are screened out first
    (:mod:`datacopilot.io.screen`): an InputError naming each, or quarantined rows with ``invalid="quarantine"``.

    >>> read_jsonl("train.jsonl", None, invalid="quarantine").bad  # doctest: +SKIP
    [('train.jsonl:7', 'train.jsonl:7: invalid utf-8 at byte offset 913 (column 40)', '{"id": "a\\xff", ...}')]
    """
    check_invalid_policy(invalid)
    data, flawed = screened(mapped_bytes(path, "jsonl"), path, invalid)
    loaded = read_lines(data, path, schema, invalid)
    loaded.bad = flawed + loaded.bad
    return loaded


def read_lines(data, path: str, schema: Schema | None, invalid: str, line0: int = 1) -> Loaded:
    """Rows of screened JSON Lines ``data`` (a file, or a block of one whose first line is ``line0``): Arrow's
    parser and the vectorized validation, or the row path where that cannot keep every value as it is."""
    fast = _fast(data, path, schema, invalid, line0)
    if fast is not None:
        return fast
    rows, lines, broken = _parse_lines(bytes(data), path, invalid, line0)
    loaded = load_rows(rows, schema, path, where=lambda i: f"{path}:{lines[i]}", invalid=invalid)
    loaded.bad = broken + loaded.bad
    return loaded


def iter_jsonl(path: str, schema: Schema | None, batch_size: int, invalid: str = "raise",
               part: Part | None = None) -> Iterator[Loaded]:
    """The rows of a JSON Lines file (or of one ``part`` of it, :func:`split_jsonl`) in blocks of lines, each
    screened (:mod:`datacopilot.io.screen`) and parsed as :func:`read_jsonl` parses a file, with the same line
    numbers in every message; the schema detected on the first block (when ``schema`` is None) reads the others.
    Block ``j`` holds the lines that start in bytes ``[j * BLOCK_BYTES, (j + 1) * BLOCK_BYTES)``
    (:mod:`.line_blocks`), so the parts of a file are read in the blocks of the whole file. A line longer than
    ``screen.MAX_LINE_BYTES`` is never held whole: it raises, or is quarantined by its first bytes.
    ``batch_size`` does not change the blocks (they are cut by bytes). At most a block and one line are held.

    >>> [ld.table.num_rows for ld in iter_jsonl("train.jsonl", None, 1024)]  # doctest: +SKIP
    [81234, 80117, 4410]
    """
    check_invalid_policy(invalid)
    fs, p = get_fs(path)
    try:
        f = fs.open(p, "rb")
    except FileNotFoundError as e:
        raise InputError(f"{path}: no such file") from e
    start, end, step = (0, None, BLOCK_BYTES) if part is None else (part.start, part.end, part.step or BLOCK_BYTES)
    pending: list = []
    with f:
        lines = LineBlocks(f, start, end, step)
        line0 = 1 + (part.before if part is not None else 0) + lines.skipped
        for b in lines.blocks():
            if isinstance(b, Long):
                pending += _long_line(b, path, line0, invalid)
                line0 += 1
                continue
            if b.data and not b.data.isspace():  # (strip() would copy the block)
                clean, flawed = screened(b.data, path, invalid, line0, b.offset)
                loaded = read_lines(clean, path, schema, invalid, line0)
                loaded.bad = pending + flawed + loaded.bad
                pending, schema = [], schema or loaded.schema
                yield loaded
            line0 += b.data.count(b"\n")
    if pending:  # an over-long last line: its quarantine entry, no rows
        yield Loaded(no_rows(schema), schema, pending)


def _long_line(b: Long, path: str, line: int, invalid: str) -> list:
    """The quarantine entry of an over-long line (raised with ``invalid="raise"``)."""
    kept = len(b.head)
    bad = [(f"{path}:{line}", f"{path}:{line}: line of {b.size} bytes; at most {screen.MAX_LINE_BYTES} are read "
            f"(datacopilot.io.screen.MAX_LINE_BYTES)",
            b.head.decode("utf-8", "backslashreplace") + f" ... ({b.size - kept} more bytes not kept)")]
    if invalid == "raise":
        screen.raise_flaws(bad)
    return bad


def split_jsonl(path: str, target: int, rows: int = 0) -> list[Part]:
    """The parts of a JSON Lines file for reads of about ``target`` bytes each (a multiple of
    :data:`BLOCK_BYTES`, or one block of ``target`` bytes when smaller): byte ranges, each owning the lines that
    start in it, the lines before each counted by :func:`count_jsonl`; none (read it whole) for a compressed file
    or one of at most ``target`` bytes. ``rows`` is not used (the parts are cut by bytes)."""
    if infer_compression(path) is not None:
        return []
    fs, p = get_fs(path)
    try:
        size = fs.size(p)
    except FileNotFoundError as e:
        raise InputError(f"{path}: no such file") from e
    step = min(BLOCK_BYTES, target)
    cuts = ranges(size, target, step)
    if len(cuts) < 2:
        return []
    return [Part(k, a, b, 0 if k == 0 else None, step) for k, (a, b) in enumerate(cuts)]


def count_jsonl(path: str, part: Part) -> int:
    """The newlines in the bytes ``[part.start, part.end)`` of a JSON Lines file (the lines before the next part
    are a prefix sum of these, :func:`datacopilot.io.parts.counted`)."""
    fs, p = get_fs(path)
    n, left = 0, part.end - part.start
    with fs.open(p, "rb") as f:
        f.seek(part.start)
        while left > 0:
            chunk = f.read(min(left, BLOCK_BYTES))
            if not chunk:
                break
            n, left = n + chunk.count(b"\n"), left - len(chunk)
    return n
