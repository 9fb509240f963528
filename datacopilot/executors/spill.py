"""Spill files of the local executor's dataset-wide stages: the rows are written to a temporary Arrow file while
the stage collects its signatures, then read back with bounded memory.

* In input order (near-duplicate images): one record batch at a time.
* In a new order (groupers: ``merge_same_image``, ``sort``, ``shuffle``), in two sequential passes. Reading rows
  out of order straight from a memory-mapped file maps the pages around every row read (read-ahead, fault-around:
  about half a megabyte a row on this machine), so instead one pass sends the rows to bucket files, one for each
  run of about ``bucket_rows`` output rows (whole groups), and then each bucket is read whole and put in order in
  memory. Memory holds one record batch or one bucket, and each row's output position (8 bytes a row).

A spill directory lives in TMPDIR as ``dc-spill-<pid>-<label>-<random>``, locked (``flock``) by the process
that made it. It is removed when the stage ends, or stops half way, and at exit; one left by a process that died
(killed with -9: no exit handler runs) is removed at the start of the next run on this machine (either executor)
and by the next spill (:func:`sweep`): its pid is not alive and its lock is free, so a live process in another PID
namespace that shares TMPDIR keeps its own.

>>> spill = Spill("neardup-")  # doctest: +SKIP
>>> spill.add(table); spill.finish()  # doctest: +SKIP
>>> for rows, offsets in spill.reordered(order, offsets, 65_536): ...  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from datacopilot.parallel import pid_alive

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the pid alone decides
    fcntl = None

BATCH_ROWS = 65_536  # rows per record batch of a spill that is read back out of order, and per bucket
PREFIX = "dc-spill-"
LOCK = ".lock"
UNLOCKED_GRACE = 60.0  # seconds a spill directory without its lock file is left alone (being made)
_LIVE: set[str] = set()  # this process's spill directories, removed at exit if a stage did not


def _remove_live() -> None:
    for d in list(_LIVE):
        shutil.rmtree(d, ignore_errors=True)
    _LIVE.clear()


atexit.register(_remove_live)
os.register_at_fork(after_in_child=_LIVE.clear)  # a forked child does not remove its parent's spills


def _abandoned(d: str) -> bool:
    """Whether nobody holds the lock of the spill directory ``d`` (a directory without one was left before its
    lock was taken, or by an older version: abandoned once it is :data:`UNLOCKED_GRACE` seconds old, so one being
    made this instant in another PID namespace is not taken for it)."""
    if fcntl is None:
        return True
    try:
        with open(os.path.join(d, LOCK), "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True
    except FileNotFoundError:
        try:
            return time.time() - os.stat(d).st_mtime > UNLOCKED_GRACE
        except OSError:  # removed meanwhile
            return False
    except OSError:  # not readable: not ours to judge
        return False


def sweep(directory: str | None = None) -> list[str]:
    """Remove the spill directories in ``directory`` (TMPDIR) left by processes that are gone; their paths."""
    directory = directory or tempfile.gettempdir()
    gone = []
    try:
        names = os.listdir(directory)
    except OSError:
        return gone
    for name in names:
        pid = name[len(PREFIX):].split("-", 1)[0] if name.startswith(PREFIX) else ""
        path = os.path.join(directory, name)
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(pid) and _abandoned(path):
            shutil.rmtree(path, ignore_errors=True)
            gone.append(path)
    return gone


class Spill:
    """A temporary directory holding the rows of one stage; ``batch_rows`` > 0 gathers the rows added into record
    batches of about that many rows (else each table added is written as it comes). ``label`` is part of the
    directory's name."""

    def __init__(self, label: str, batch_rows: int = 0):
        sweep()
        self.dir = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-{label}")
        _LIVE.add(self.dir)
        self._lock = open(os.path.join(self.dir, LOCK), "wb")  # noqa: SIM115 - held until close
        if fcntl is not None:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.path = os.path.join(self.dir, "rows.arrow")
        self.batch_rows, self.rows = batch_rows, 0
        self._writer, self._schema, self._pending = None, None, []

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        if self._writer is None:
            self._schema = table.schema
            self._writer = pa.ipc.new_file(self.path, table.schema)
        self._pending.append(table.cast(self._schema) if table.schema != self._schema else table)
        self.rows += table.num_rows
        self._flush(force=False)

    def _flush(self, force: bool) -> None:
        n = sum(t.num_rows for t in self._pending)
        if self._pending and (force or n >= self.batch_rows):
            self._writer.write_table(pa.concat_tables(self._pending).combine_chunks(), max_chunksize=max(n, 1))
            self._pending = []

    def finish(self) -> bool:
        """Close the file; False when no row was added."""
        if self._writer is None:
            return False
        self._flush(force=True)
        self._writer.close()
        self._writer = None
        return True

    def batches(self, path: str | None = None) -> Iterator[pa.RecordBatch]:
        """The record batches of the spill file (or of ``path``), one read into memory at a time."""
        with pa.OSFile(path or self.path, "rb") as f:
            reader = pa.ipc.open_file(f)
            for b in range(reader.num_record_batches):
                yield reader.get_batch(b)

    def reordered(self, order: np.ndarray, offsets: np.ndarray, bucket_rows: int
                  ) -> Iterator[tuple[pa.Table, np.ndarray]]:
        """The rows in output order (``order`` of all rows, groups ``offsets``, as ``Grouper.arrange`` gives
        them), a bucket of whole groups at a time: ``(rows, the groups' offsets in them)``."""
        from datacopilot.engine.grouping import take_batch, windows

        n = len(order)
        pos = np.empty(n, np.int64)
        pos[order] = np.arange(n)
        runs = list(windows(offsets, bucket_rows))
        starts = np.array([offsets[lo] for lo, _ in runs] + [n], np.int64)
        bucket = (np.searchsorted(starts, pos, side="right") - 1).astype(np.int32)
        paths = [os.path.join(self.dir, f"bucket-{k:05d}.arrow") for k in range(len(runs))]
        writers: dict = {}
        try:
            base = 0
            for batch in self.batches():
                b = bucket[base:base + batch.num_rows]
                idx = np.argsort(b, kind="stable")
                for part in np.split(idx, np.flatnonzero(np.diff(b[idx])) + 1):
                    k = int(b[part[0]])
                    if k not in writers:
                        writers[k] = pa.ipc.new_file(paths[k], batch.schema)
                    writers[k].write_batch(take_batch(batch, part))
                base += batch.num_rows
        finally:
            for w in writers.values():
                w.close()
        os.unlink(self.path)
        for k, (lo, hi) in enumerate(runs):
            parts = list(self.batches(paths[k]))
            os.unlink(paths[k])
            rows = pa.Table.from_batches(parts).combine_chunks().to_batches()[0]
            del parts
            mine = np.flatnonzero(bucket == k)  # in input order, as the bucket file holds them
            rows = pa.Table.from_batches([take_batch(rows, np.argsort(pos[mine]))])
            yield rows, offsets[lo:hi + 1] - starts[k]

    def close(self) -> None:
        """Remove the files (after a run, or when it stops half way)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        shutil.rmtree(self.dir, ignore_errors=True)
        self._lock.close()
        _LIVE.discard(self.dir)
