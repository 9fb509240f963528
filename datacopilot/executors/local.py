"""The local executor: record batches stream from the source through the plan on this machine, so memory holds a
few batches, never the dataset. It only schedules; what runs is the engine's (:mod:`datacopilot.engine`).

* The plan is cut into segments, each a run of per-batch operators ended by at most one barrier (dedup, group).
  Every segment runs on ``num_workers`` threads or processes (:func:`datacopilot.parallel.map_ordered`, batches
  kept in order, at most ``2 * num_workers`` in flight): :func:`~datacopilot.engine.runtime.run_chain` over the
  batch, then the barrier's observe step (its keys or signatures), each worker with its own
  :class:`~datacopilot.engine.runtime.Accounting`, merged here in input order.
* A barrier decides here: an exact or banded deduplicator online, against the keys seen so far; a near-duplicate
  one (images) and a grouper after spilling their rows to a temporary Arrow file (:mod:`.spill`), which is then
  read back without the duplicates, or in the grouper's order a bucket at a time, groups merged a window at a
  time. Memory holds the keys or signatures and a bucket, not the rows.
* With more than one worker, a worker call takes a trip of about :data:`TRIP_ROWS` rows and runs the segment over
  each ``batch_size`` rows of it (fewer, larger hand-overs; the operators see the same batches); the input is read
  and parsed on a thread of its own, :data:`AHEAD` trips ahead, and a write's shards are written while the next
  rows run (the stream runs on a thread of its own, its End markers carrying the accounting taken at the end of
  their units).

>>> from datacopilot.executors import get_executor
>>> get_executor("local", num_workers=2, mode="thread")
LocalExecutor(num_workers=2, mode='thread')
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from datacopilot.engine import Accounting, StepOut, is_barrier, run_chain
from datacopilot.engine.barriers import (SeenKeys, apply_drops, dedup_drops, decide_online, group_order,
                                         merge_rows)
from datacopilot.parallel import check_workers, map_ordered
from datacopilot.schemas.arrow_build import concat_tables

from .base import ExecResult, Executor


TRIP_ROWS = 8192  # rows per worker call with num_workers > 1 (a multiple of the plan's batch size)
AHEAD = 6  # trips read and parsed ahead of the workers; also the stream's results held ahead of the sink


@dataclass
class End:
    """Marks the end of input units (their indices) in a stream of tables: ``bad``, the invalid input rows read
    by then (-1: not known); ``taken``, the run's quarantine, records and seen keys taken there (a stream run on a
    thread of its own, :func:`_taken`)."""

    units: tuple
    bad: int = -1
    taken: tuple | None = None


@dataclass
class Segment:
    """Per-batch operators ``first .. first + len(ops) - 1`` of a plan, then at most one barrier (picklable: it
    runs in a worker). Called on a batch: the rows out of the chain (the barrier's rows that did not fail), the
    barrier's payload for them, and the worker's accounting of these operators."""

    ops: list
    barrier: object | None
    policy: str
    piece: int | None = None  # rows per run of the chain (a trip of more rows runs it piece by piece)

    def __call__(self, table: pa.Table, offset: int = 0):
        acc = Accounting(self.ops + ([self.barrier] if self.barrier is not None else []), self.policy)
        if self.piece is None or table.num_rows <= self.piece:
            table, payload = self._run(table, acc)
            return table, payload, acc
        tables, payload = [], []
        for start in range(0, table.num_rows, self.piece):
            out, got = self._run(table.slice(start, self.piece), acc)
            if out.num_rows or not tables:
                tables.append(out)
            payload.extend(got)
            if acc.failed:
                break
        return (concat_tables(tables) if len(tables) > 1 else tables[0]), payload, acc

    def _run(self, table: pa.Table, acc: Accounting) -> tuple[pa.Table, list]:
        from datacopilot.engine.barriers import observe

        table = run_chain(self.ops, table, self.policy, acc)
        payload: list = []
        if self.barrier is not None and table.num_rows and not acc.failed:
            out = observe(self.barrier, len(self.ops), table, self.policy, acc)
            table, payload = out.table, out.payload
        return table, payload


def segments(ops: list, policy: str, piece: int | None = None) -> list[tuple[int, Segment]]:
    """The plan's operators as segments: ``(index of the segment's first operator, segment)``; ``piece``: the rows
    each runs its chain over at a time (None: the whole table it is given)."""
    out, first = [], 0
    for k, op in enumerate(ops):
        if is_barrier(op):
            out.append((first, Segment(list(ops[first:k]), op, policy, piece)))
            first = k + 1
    if first < len(ops):
        out.append((first, Segment(list(ops[first:]), None, policy, piece)))
    return out


class Run:
    """The state of one execution: the accounting, and the seen keys of online deduplicators (by operator)."""

    def __init__(self, plan, ops: list):
        self.plan, self.ops, self.policy = plan, ops, plan.on_error
        self.acc = Accounting(ops, plan.on_error)
        self.seen: dict[int, SeenKeys] = {}

    def take_quarantine(self) -> pa.Table | None:
        return self.acc.take_quarantine()

    def records(self) -> list:
        return self.acc.records()

    def seen_arrays(self) -> dict[int, np.ndarray]:
        """A copy of the dedup seen-sets (taken by a stream running ahead of the sink)."""
        return {k: v.array().copy() for k, v in self.seen.items()}

    def save_state(self, out_dir: str, seg: int, seen: dict[int, np.ndarray] | None = None) -> dict:
        """Write the dedup seen-sets (or the copy ``seen`` of them) into ``out_dir`` (a write's staging area; new
        files per segment); their names."""
        from datacopilot.io.fs import atomic_open, get_fs, join

        names = {}
        for k, v in (seen if seen is not None else self.seen_arrays()).items():
            name = f"_state/seen-{k}-{seg:05d}.npy"
            fs, d = get_fs(join(out_dir, "_state"))
            fs.makedirs(d, exist_ok=True)
            with atomic_open(join(out_dir, name), "wb") as f:
                np.save(f, v)
            names[str(k)] = name
        return {"seen": names}

    def restore(self, out_dir: str, state: dict, records: list[dict]) -> None:
        from datacopilot.io.fs import get_fs, join

        for a, d in zip(self.acc.ops, records):
            a.restore(d)
        for k, name in state.get("seen", {}).items():
            fs, p = get_fs(join(out_dir, name))
            with fs.open(p, "rb") as f:
                self.seen[int(k)] = SeenKeys(np.load(f))


class LocalExecutor(Executor):
    """Streams record batches through the operators on this machine (``num_workers`` threads or processes)."""

    name = "local"

    def __init__(self, num_workers: int = 1, mode: str = "thread", progress: bool | None = None):
        check_workers(num_workers, mode)
        self.num_workers, self.mode, self.progress = num_workers, mode, progress

    def __repr__(self) -> str:
        return f"LocalExecutor(num_workers={self.num_workers}, mode={self.mode!r})"

    # -- the stream ---------------------------------------------------------------------------------------
    def stream(self, plan, run: Run, skip: set[str] = frozenset()) -> Iterator:
        """Tables (and End markers) out of the last operator, for every unit not in ``skip``; a progress bar of
        the input rows taken (rows/s) when ``progress`` is on (by default: when stderr is a terminal)."""
        from .spill import sweep

        sweep()  # spill directories left by drivers killed with -9 (no exit handler ran): removed at the start
        src = plan.source
        invalid = "raise" if plan.on_error == "raise" else "quarantine"
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        bar = tqdm(desc="pipeline", unit="rows", disable=not show, leave=False)
        trip = self._trip(plan.batch_size)

        def source():
            try:
                for u, unit in enumerate(src.units()):
                    if unit in skip:
                        continue
                    for table in src.batches(unit, trip, invalid):
                        yield table
                        bar.update(table.num_rows)
                    yield End((u,), len(src.bad))
            finally:
                bar.close()

        stream: Iterator = source() if trip == plan.batch_size else ahead(source(), AHEAD)
        piece = plan.batch_size if trip > plan.batch_size else None
        for first, seg in segments(run.ops, plan.on_error, piece):
            stream = self._segment(stream, run, first, seg)
            if seg.barrier is None:
                continue
            k, op = first + len(seg.ops), seg.barrier
            if op.kind == "dedup" and op.online:
                stream = _online(stream, run, k)
            elif op.kind == "dedup":
                stream = _near(stream, run, k)
            else:
                stream = _group(stream, run, k, plan.batch_size, show)
        return stream

    def _trip(self, batch_size: int) -> int:
        """Rows per worker call: a multiple of ``batch_size`` near TRIP_ROWS with several workers, else one batch."""
        return batch_size * max(1, TRIP_ROWS // batch_size) if self.num_workers > 1 else batch_size

    def _segment(self, stream: Iterator, run: Run, first: int, seg: Segment) -> Iterator:
        """The segment over every table of ``stream`` on the workers, in order: its rows, or ``(rows, payload)``
        when it ends with a barrier; each worker's accounting merged into the run's (an error under ``raise`` is
        raised here, in input order)."""
        for item in map_ordered(stream, seg, num_workers=self.num_workers, mode=self.mode,
                                passed=lambda x: isinstance(x, End)):
            if isinstance(item, End):
                yield item
                continue
            table, payload, acc = item
            run.acc.merge(acc, first)
            run.acc.check()
            yield (table, payload) if seg.barrier is not None else table

    # -- Executor ---------------------------------------------------------------------------------------
    def run(self, plan) -> ExecResult:
        run = Run(plan, plan.prepared_ops())
        tables = [t for t in self.stream(plan, run) if not isinstance(t, End) and t.num_rows]
        table = concat_tables(tables) if tables else plan.empty_output()
        return ExecResult(table, run.records(), run.take_quarantine())

    def write(self, plan, out_dir: str, format: str = "arrow", resume: bool = False,
              max_rows_per_shard: int | None = 100_000, image_paths: str = "keep") -> dict:
        from .output import make_report, open_sink, with_invalid

        run = Run(plan, plan.prepared_ops())
        sink = open_sink(plan, out_dir, format, max_rows_per_shard, resume, image_paths)
        if sink.finished:
            return make_report(out_dir, sink.manifest, show=self.progress is not False)
        if sink.done:  # resumed: the state of the finished segments lives in the staging area
            run.restore(sink.stage, sink.state, sink.manifest["pipeline"]["records"])
        sink.begin()
        root = plan.source.root
        taken = 0  # invalid input rows already written to the quarantine
        stream = self.stream(plan, run, sink.done)
        if self.num_workers > 1:  # shards written here while the stream runs on
            stream = ahead(_taken(stream, run), AHEAD)
        for item in stream:
            if isinstance(item, End):
                old, stage = dict(sink.state.get("seen", {})), sink.stage
                upto = item.bad if item.bad >= 0 else len(plan.source.bad)
                bad, taken = plan.source.bad[taken:upto], upto
                quarantine, records, seen = item.taken or (run.take_quarantine(), run.records(), None)
                sink.end_units(item.units, plan.source.schema, root, with_invalid(quarantine, bad),
                               records, run.save_state(stage, sink.segment, seen), len(bad))
                _remove(stage, old.values())
            else:
                sink.add(item, plan.output_schema(item), root)
        return make_report(out_dir, sink.manifest, show=self.progress is not False)


def _remove(stage: str, names) -> None:
    """Seen-sets of earlier segments, no longer referred to by the staged manifest."""
    from datacopilot.io.fs import get_fs, join

    for name in names:
        fs, p = get_fs(join(stage, name))
        if fs.exists(p):
            fs.rm(p)


def _online(stream: Iterator, run: Run, k: int) -> Iterator:
    """An exact or banded deduplicator, decided batch by batch against the keys seen so far."""
    op = run.ops[k]
    for item in stream:
        if isinstance(item, End):
            yield item
            continue
        table, payload = item
        rows = decide_online(op, k, StepOut(table, payload=payload), run.seen.setdefault(k, SeenKeys()), run.acc)
        yield rows


def _collect(stream: Iterator, spill) -> tuple[list, list[End]]:
    """Hold a barrier's rows in ``spill`` while collecting its payload pieces: (pieces, the End markers met)."""
    pieces, ends = [], []
    for item in stream:
        if isinstance(item, End):
            ends.append(item)
            continue
        table, payload = item
        pieces.extend(payload)
        spill.add(table)
    return pieces, ends


def _ended(ends: list[End]) -> Iterator:
    if ends:
        yield End(tuple(u for e in ends for u in e.units), max(e.bad for e in ends))


def _taken(stream: Iterator, run: Run) -> Iterator:
    """``stream`` with the run's quarantine, records and seen keys taken at each End marker (for a consumer on
    another thread, that reads them while the stream runs on)."""
    for item in stream:
        if isinstance(item, End):
            item = End(item.units, item.bad, (run.take_quarantine(), run.records(), run.seen_arrays()))
        yield item


def ahead(items: Iterator, depth: int) -> Iterator:
    """The items of ``items``, produced on a thread of their own at most ``depth`` ahead of the consumer; its
    error raised here, in its place. Closed early, the producer stops at its next item and closes ``items``
    on its own thread (so a pool it holds waits for what it has pending)."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        end = (False, None)
        try:
            for item in items:
                if not put((True, item)):
                    break
        except BaseException as e:  # noqa: BLE001 - raised again in the consumer
            end = (False, e)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        put(end)

    worker = threading.Thread(target=produce, name="datacopilot-ahead", daemon=True)
    worker.start()
    try:
        while True:
            more, x = q.get()
            if not more:
                if x is not None:
                    raise x
                return
            yield x
    finally:
        stop.set()
        worker.join()


def _near(stream: Iterator, run: Run, k: int) -> Iterator:
    """A near-duplicate deduplicator: spill the rows while collecting signatures; decide; stream them back."""
    from .spill import Spill

    op = run.ops[k]
    spill = Spill("neardup-")
    try:
        pieces, ends = _collect(stream, spill)
        have = spill.finish()
        t0 = time.perf_counter()
        drop = dedup_drops(op, pieces)
        run.acc.drop(k, op.drop_reason, int(drop.sum()))
        run.acc.ops[k].seconds += time.perf_counter() - t0
        if have:
            start = 0
            for rb in spill.batches():
                rows = pa.Table.from_batches([rb])
                yield apply_drops(op, k, rows, drop[start:start + rb.num_rows], run.acc, counted=True)
                start += rb.num_rows
        yield from _ended(ends)
    finally:
        spill.close()


def _group(stream: Iterator, run: Run, k: int, batch_size: int, show: bool = False) -> Iterator:
    """A Grouper: spill the rows while collecting signatures; then read them back in the order the grouper
    arranges, a bucket at a time (:meth:`.spill.Spill.reordered`), and merge their groups a window at a time (a
    progress bar of the rows read back when ``show``)."""
    from .spill import BATCH_ROWS, Spill

    op = run.ops[k]
    spill = Spill(f"{op.name or 'group'}-", batch_rows=BATCH_ROWS)
    try:
        pieces, ends = _collect(stream, spill)
        if spill.finish():
            order, offsets = group_order(op, pieces, spill.rows)
            del pieces
            bar = tqdm(total=spill.rows, desc=op.label, unit="rows", disable=not show, leave=False)
            at = 0
            for rows, offs in spill.reordered(order, offsets, BATCH_ROWS):
                bar.update(rows.num_rows)
                held = order[at:at + rows.num_rows]  # their positions among the grouper's input
                at += rows.num_rows
                for out in merge_rows(op, k, rows, np.arange(rows.num_rows), offs, run.acc, batch_size, held):
                    yield out
                run.acc.check()
            bar.close()
        yield from _ended(ends)
    finally:
        spill.close()
