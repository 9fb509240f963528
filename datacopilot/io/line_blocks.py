"""Blocks of whole lines from a binary file, cut at fixed byte positions so that any byte range of the file is read
in the same blocks as the whole file.

Block ``j`` holds the lines that start in ``[j * step, (j + 1) * step)``, and a range ``[start, end)`` (both
multiples of ``step``, or ``end`` the file's size) the lines that start in it: the first line starting at or after
``start``, through the line that straddles ``end``. So a file read range by range gives the blocks of the file read
whole. A line longer than ``screen.MAX_LINE_BYTES`` is never held whole: it comes as a :class:`Long` (its size and
first bytes).
A block of a file that can seek is one read of its exact size (its end found by a look past its bound), so its text
is not copied over in memory; a stream that cannot seek carries the bytes past a block's last line to the next.

>>> import io
>>> [(b.offset, b.data) for b in LineBlocks(io.BytesIO(b"ab\\ncd\\nef"), 0, None, 4).blocks()]
[(0, b'ab\\ncd\\n'), (6, b'ef')]
>>> r = LineBlocks(io.BytesIO(b"ab\\ncd\\nef"), 4, None, 4)
>>> r.skipped, [(b.offset, b.data) for b in r.blocks()]
(1, [(6, b'ef')])
"""

from __future__ import annotations

from dataclasses import dataclass

from . import screen

TAIL = 1 << 16  # bytes read at first (at most a block's) to finish a line straddling a block's end (doubling after)


@dataclass(frozen=True)
class Block:
    """Whole lines (the last one may lack its newline at the end of the file) starting at byte ``offset``."""

    offset: int
    data: bytes


@dataclass(frozen=True)
class Long:
    """A line longer than ``screen.MAX_LINE_BYTES`` starting at byte ``offset``: its size (without the newline)
    and its first ``screen.QUARANTINE_TEXT_BYTES`` bytes."""

    offset: int
    size: int
    head: bytes


def _seekable(f) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


class LineBlocks:
    """The lines of ``f`` that start in ``[start, end)`` (``end`` None: to the end of the file), as :meth:`blocks`;
    ``skipped``: the newlines between ``start`` and the first of them (0, or 1 when ``start`` fell inside a line)."""

    def __init__(self, f, start: int, end: int | None, step: int):
        self.f, self.end, self.step, self.skipped = f, end, step, 0
        self.buf, self.pos = b"", start
        if start > 0:
            self._skip_to_line_start(start)

    def _skip_to_line_start(self, start: int) -> None:
        self.f.seek(start - 1)
        if self.f.read(1) == b"\n":
            return
        pos, size = start, min(TAIL, self.step)
        while True:
            chunk = self.f.read(size)
            if not chunk:  # the file ends inside that line: no line starts in the range
                self.pos, self.end = pos, pos
                return
            nl = chunk.find(b"\n")
            if nl >= 0:
                self.pos, self.buf, self.skipped = pos + nl + 1, chunk[nl + 1:], 1
                return
            pos, size = pos + len(chunk), min(size * 2, max(self.step, TAIL))

    def blocks(self):
        """:class:`Block` and :class:`Long` items, in file order."""
        step, f = self.step, self.f
        seekable = _seekable(f)
        past = min(TAIL, step) if seekable else 0  # read past the bound: the newline ending a block is in that read
        while self.end is None or self.pos < self.end:
            bound = (self.pos // step + 1) * step
            need = (bound if self.end is None else min(bound, self.end)) - self.pos
            if seekable and not self.buf:
                data, whole = self._exact(need, past)
                if whole:
                    yield Block(self.pos, data)
                    self.pos += len(data)
                    continue
                self.buf = data  # the end of the file near, or a line longer than ``past``: read on as below
            while len(self.buf) < need:  # a read may give less than asked before the end of the file
                chunk = f.read(need + past - len(self.buf))
                if not chunk:
                    break
                self.buf += chunk  # the first read of a block: buf is empty, so this is the chunk (no copy)
            if len(self.buf) < need:  # the end of the file
                if self.buf:
                    yield Block(self.pos, self.buf)
                return
            nl = self.buf.find(b"\n", need - 1)
            if nl < 0:
                got = yield from self._finish_line(need)
                if got is None:
                    return
                if got < 0:  # an over-long line, given
                    continue
                nl = got
            data, at = self.buf[:nl + 1], self.pos
            self.pos += nl + 1
            if seekable and len(self.buf) > nl + 1:  # the rest read again with the next block, not copied onto it
                f.seek(self.pos)
                self.buf = b""
            else:
                self.buf = self.buf[nl + 1:]
            yield Block(at, data)

    def _exact(self, need: int, past: int) -> tuple[bytes, bool]:
        """The block at ``pos`` in one read of its exact size, its end found by a look at the ``past`` bytes from
        its bound, and True; or the first ``need`` bytes (what there are of them) and False where no newline is in
        that look (the file is then left after the bytes given)."""
        f = self.f
        f.seek(self.pos + need - 1)
        nl = f.read(past).find(b"\n")
        f.seek(self.pos)
        size = need + nl if nl >= 0 else need
        data = f.read(size)
        while data and len(data) < size:  # a short read
            chunk = f.read(size - len(data))
            if not chunk:
                break
            data += chunk
        return data, nl >= 0 and len(data) == size

    def _finish_line(self, need: int):
        """Read on to the end of the line straddling ``pos + need``: the index of its newline in ``buf``; or None
        when the file ended (its blocks given), or an over-long line was given as :class:`Long` (``buf`` and
        ``pos`` then past it: the index returned is -1, an empty block is not given)."""
        head = self.buf.rfind(b"\n", 0, need - 1) + 1  # where the straddling line starts in buf
        pieces, length, size = [self.buf], len(self.buf) - head, min(TAIL, self.step)
        while True:
            chunk = self.f.read(size)
            size = min(size * 2, max(self.step, TAIL))
            if not chunk:  # the last line of the file, without a newline
                self.buf = b"".join(pieces)
                yield Block(self.pos, self.buf)
                return None
            pieces.append(chunk)
            nl = chunk.find(b"\n")
            if nl >= 0:
                self.buf = b"".join(pieces)
                return len(self.buf) - len(chunk) + nl
            length += len(chunk)
            if length > screen.MAX_LINE_BYTES:
                break
        data = b"".join(pieces)
        if head:
            yield Block(self.pos, data[:head])
        kept = data[head:head + min(screen.QUARANTINE_TEXT_BYTES, screen.MAX_LINE_BYTES + 1)]  # however it was read
        del pieces, data
        while True:  # past the rest of the over-long line, holding nothing of it
            chunk = self.f.read(size)
            nl = chunk.find(b"\n")
            if not chunk or nl >= 0:
                break
            length += len(chunk)
        start = self.pos + head
        yield Long(start, length + max(nl, 0), kept)
        if not chunk:
            return None
        self.buf, self.pos = chunk[nl + 1:], start + length + nl + 1
        return -1
