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

>>> from datacopilot.executors import get_executor
>>> get_executor("local", num_workers=2, mode="thread")
LocalExecutor(num_workers=2, mode='thread')
"""

from __future__ import annotations

import sys
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


@dataclass
class End:
    """Marks the end of input units (their indices) in a stream of tables."""

    units: tuple


@dataclass
class Segment:
    """Per-batch operators ``first .. first + len(ops) - 1`` of a plan, then at most one barrier (picklable: it
    runs in a worker). Called on a batch: the rows out of the chain (the barrier's rows that did not fail), the
    barrier's payload for them, and the worker's accounting of these operators."""

    ops: list
    barrier: object | None
    policy: str

    def __call__(self, table: pa.Table, offset: int = 0):
        from datacopilot.engine.barriers import observe

        acc = Accounting(self.ops + ([self.barrier] if self.barrier is not None else []), self.policy)
        table = run_chain(self.ops, table, self.policy, acc)
        payload: list = []
        if self.barrier is not None and table.num_rows and not acc.failed:
            out = observe(self.barrier, len(self.ops), table, self.policy, acc)
            table, payload = out.table, out.payload
        return table, payload, acc


def segments(ops: list, policy: str) -> list[tuple[int, Segment]]:
    """The plan's operators as segments: ``(index of the segment's first operator, segment)``."""
    out, first = [], 0
    for k, op in enumerate(ops):
        if is_barrier(op):
            out.append((first, Segment(list(ops[first:k]), op, policy)))
            first = k + 1
    if first < len(ops):
        out.append((first, Segment(list(ops[first:]), None, policy)))
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

    def save_state(self, out_dir: str, seg: int) -> dict:
        """Write the dedup seen-sets into ``out_dir`` (a write's staging area; new files per segment); their
        names."""
        from datacopilot.io.fs import atomic_open, get_fs, join

        names = {}
        for k, v in self.seen.items():
            name = f"_state/seen-{k}-{seg:05d}.npy"
            fs, d = get_fs(join(out_dir, "_state"))
            fs.makedirs(d, exist_ok=True)
            with atomic_open(join(out_dir, name), "wb") as f:
                np.save(f, v.array())
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
        src = plan.source
        invalid = "raise" if plan.on_error == "raise" else "quarantine"
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        bar = tqdm(desc="pipeline", unit="rows", disable=not show, leave=False)

        def source():
            try:
                for u, unit in enumerate(src.units()):
                    if unit in skip:
                        continue
                    for table in src.batches(unit, plan.batch_size, invalid):
                        yield table
                        bar.update(table.num_rows)
                    yield End((u,))
            finally:
                bar.close()

        stream: Iterator = source()
        for first, seg in segments(run.ops, plan.on_error):
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
        from datacopilot.pipeline_io import ShardSink, make_report, plan_fingerprint, with_invalid

        run = Run(plan, plan.prepared_ops())
        units = plan.source.units()
        sink = ShardSink(out_dir, format, max_rows_per_shard, units, resume,
                         plan_fingerprint(plan, format, max_rows_per_shard, image_paths), image_paths)
        if sink.finished:
            return make_report(out_dir, sink.manifest, show=self.progress is not False)
        if sink.done:  # resumed: the state of the finished segments lives in the staging area
            run.restore(sink.stage, sink.state, sink.manifest["pipeline"]["records"])
        sink.begin()
        root = plan.source.root
        taken = 0  # invalid input rows already written to the quarantine
        for item in self.stream(plan, run, sink.done):
            if isinstance(item, End):
                old, stage = dict(sink.state.get("seen", {})), sink.stage
                bad, taken = plan.source.bad[taken:], len(plan.source.bad)
                sink.end_units(item.units, plan.source.schema, root, with_invalid(run.take_quarantine(), bad),
                               run.records(), run.save_state(stage, sink.segment), taken)
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
        yield End(tuple(u for e in ends for u in e.units))


def _near(stream: Iterator, run: Run, k: int) -> Iterator:
    """A near-duplicate deduplicator: spill the rows while collecting signatures; decide; stream them back."""
    from .spill import Spill

    op = run.ops[k]
    spill = Spill("dc-neardup-")
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
    spill = Spill(f"dc-{op.name or 'group'}-", batch_rows=BATCH_ROWS)
    try:
        pieces, ends = _collect(stream, spill)
        if spill.finish():
            order, offsets = group_order(op, pieces, spill.rows)
            del pieces
            bar = tqdm(total=spill.rows, desc=op.label, unit="rows", disable=not show, leave=False)
            for rows, offs in spill.reordered(order, offsets, BATCH_ROWS):
                bar.update(rows.num_rows)
                for out in merge_rows(op, k, rows, np.arange(rows.num_rows), offs, run.acc, batch_size):
                    yield out
                run.acc.check()
            bar.close()
        yield from _ended(ends)
    finally:
        spill.close()
