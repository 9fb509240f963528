"""Parts of a file: the pieces a big input file is read in, each its own task, giving together exactly the rows,
messages and invalid rows of a read of the whole file.

A format splits a file (``Format.split``) by what it cheaply knows without reading the rows: jsonl by its size
(byte ranges; a range ``[start, end)`` owns the lines that *start* in it), parquet by its row groups (row ranges),
Arrow IPC by its record batches. A part knows how many lines (jsonl) or rows come before it in the file, so its
messages name the same line or row as a whole-file read; when the split could not tell (jsonl: the newlines before a
byte offset), ``before`` is None and the executor counts each part (``Format.count``, a task per part) and fills it
in with :func:`counted` (a prefix sum over the parts' counts). Compressed files, Arrow IPC streams and files no
larger than the target size are not split.

>>> parts = [Part(0, 0, 100, 0, 50), Part(1, 100, 200, None, 50), Part(2, 200, 230, None, 50)]
>>> [p.before for p in counted(parts, [7, 9])]
[0, 7, 16]
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from datacopilot.errors import DataCopilotError

SPLIT_BYTES = 64 << 20  # about this many bytes of a file per part (the Ray executor's default)


@dataclass(frozen=True)
class Part:
    """One part of a file: ``index`` among its parts; ``start``/``end`` in the format's terms (jsonl: byte offsets,
    the part owning the lines that start in ``[start, end)``; parquet: rows; Arrow IPC: record batches);
    ``before``: the lines (jsonl: newlines) or rows of the file before the part, None until counted; ``step``: the
    bytes per block of lines (jsonl) or rows per batch (parquet) the whole-file read uses, so a part's blocks or
    batches are the whole read's."""

    index: int
    start: int
    end: int
    before: int | None
    step: int = 0


def check_split_bytes(split_bytes) -> None:
    if split_bytes is not None and (isinstance(split_bytes, bool) or not isinstance(split_bytes, int)
                                    or split_bytes < 1):
        raise DataCopilotError(f"`split_bytes` must be a positive integer or None, got {split_bytes!r}")


def counted(parts: list[Part], counts: list[int]) -> list[Part]:
    """``parts`` with ``before`` filled in from ``counts``, the count of each part but the last, in order (the
    first part has nothing before it)."""
    if len(counts) != len(parts) - 1:
        raise DataCopilotError(f"{len(counts)} counts for {len(parts)} parts")
    out, before = [], 0
    for p, n in zip(parts, [*counts, 0]):
        out.append(replace(p, before=before))
        before += n
    return out


def ranges(size: int, target: int, step: int) -> list[tuple[int, int]]:
    """``[0, size)`` cut into ranges of about ``target`` (rounded to a multiple of ``step``), each starting at a
    multiple of ``step``; one range when ``size`` is no larger than that.

    >>> ranges(10, 4, 2), ranges(10, 3, 2), ranges(3, 4, 2)
    ([(0, 4), (4, 8), (8, 10)], [(0, 4), (4, 8), (8, 10)], [(0, 3)])
    """
    width = max(step, (target + step - 1) // step * step)
    return [(a, min(a + width, size)) for a in range(0, size, width)] or [(0, size)]
