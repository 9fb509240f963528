"""The local executor: record batches stream from the source through the operators, so memory holds a few
batches, never the dataset.

* Per-batch operators (Mapper, Filter, Augmenter) run in a chain; the chain before the first dataset-wide stage
  runs on ``num_workers`` threads or processes, batches kept in order (at most ``2 * num_workers`` in flight).
* An exact Deduplicator, and a banded near-duplicate one (MinHash-LSH: its keys are band keys), keeps only the
  keys seen so far (:class:`datacopilot.kernels.hashing.KeySet`) and streams; another near-duplicate one (images)
  spills its input to a temporary Arrow file while it collects signatures, then streams the file back without
  the duplicates. A Grouper (merge, sort, shuffle) spills its input the same way, then reads the rows back in its
  new order through bucket files, one bucket in memory at a time (:mod:`.spill`), and merges a window of groups at
  a time (:mod:`datacopilot.engine.grouping`). Memory holds the signatures and a bucket, not the rows.
* Each batch of an operator goes through the same task as ``ds.apply`` (:class:`operators.run._OpTask`), so
  rows and accounting equal ``ds.apply(ops)`` for operators that treat rows independently.

>>> from datacopilot.executors import get_executor
>>> get_executor("local", num_workers=2, mode="thread")
LocalExecutor(num_workers=2, mode='thread')
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from datacopilot.schemas.arrow_build import concat_tables
from tqdm.auto import tqdm

from datacopilot.errors import OperatorError
from datacopilot.history import OpRecord
from datacopilot.kernels.hashing import KeySet
from datacopilot.parallel import (
    _discard,
    _imported,
    _process_pool,
    _run,
    check_workers,
    to_ipc,
)

from .base import ExecResult, Executor


@dataclass
class End:
    """Marks the end of input units (their indices) in a stream of tables."""

    units: tuple


class Acc:
    """One operator's running accounting."""

    def __init__(self, label: str):
        self.label, self.rows_in, self.rows_out, self.failed, self.seconds = label, 0, 0, 0, 0.0
        self.dropped: Counter = Counter()
        self.counts: Counter = Counter()

    def record(self) -> OpRecord:
        return OpRecord(self.label, self.rows_in, self.rows_out, dict(self.dropped), self.failed, self.seconds,
                        dict(self.counts))

    def restore(self, d: dict) -> None:
        self.rows_in, self.rows_out, self.failed = d["rows_in"], d["rows_out"], d["failed"]
        self.dropped, self.seconds = Counter(d["dropped"]), d["seconds"]
        self.counts = Counter(d.get("counts", {}))


def step(op, policy: str, table: pa.Table):
    """One operator over one batch, through ``ds.apply``'s task: (output, dropped, failures, quarantine, counts).
    ``failures`` holds (row in batch, message, traceback, row id)."""
    from datacopilot.operators.base import Filter
    from datacopilot.operators.run import _filter_output, _map_output, _OpTask

    res = _OpTask(op, policy)(table, 0)
    ids = table.column("id") if "id" in table.column_names else None
    failures = [(r, m, tb, ids[r].as_py() if ids is not None else None) for r, m, tb in res.failures]
    if failures and policy == "raise":
        return None, {}, failures, None, res.counts
    failed = np.zeros(table.num_rows, dtype=bool)
    failed[[f[0] for f in failures]] = True
    if isinstance(op, Filter):
        out, dropped = _filter_output(table, [res], failed, op)
    else:
        out, dropped = _map_output(table, [res]), {}
    q = None
    if failures and policy == "quarantine":
        q = table.take([f[0] for f in failures])
        q = q.append_column("_op", pa.array([op.label] * len(failures), pa.string()))
        q = q.append_column("_error", pa.array([f[1] for f in failures], pa.string()))
    return out, dropped, failures, q, res.counts


@dataclass
class Chain:
    """Per-batch operators one after the other over one batch (picklable: runs in a worker)."""

    ops: list
    policy: str

    def __call__(self, table: pa.Table, offset: int = 0) -> list:
        parts = []
        for op in self.ops:
            t0 = time.perf_counter()
            out, dropped, failures, q, counts = step(op, self.policy, table)
            parts.append((table.num_rows, out, dropped, failures, q, time.perf_counter() - t0, counts))
            if out is None:
                break
            table = out
        return parts


class Run:
    """The state of one execution: accumulators per operator, quarantined tables, dedup seen-sets."""

    def __init__(self, plan, ops: list):
        self.plan, self.ops, self.policy = plan, ops, plan.on_error
        self.acc = [Acc(op.label) for op in ops]
        self.quarantine: list[pa.Table] = []
        self.seen: dict = {}  # op index -> kernels.hashing.KeySet

    def account(self, i: int, parts: list) -> pa.Table | None:
        """Fold a chain's per-op parts (ops ``i, i+1, ...``) into the accumulators; the chain's output."""
        out = None
        for j, (n, out, dropped, failures, q, secs, counts) in enumerate(parts, i):
            a = self.acc[j]
            if failures and self.policy == "raise":
                row, msg, tb, row_id = failures[0]
                raise OperatorError(a.label, a.rows_in + row, msg, tb, row_id=row_id)
            a.rows_in += n
            a.rows_out += out.num_rows
            a.dropped.update(dropped)
            a.failed += len(failures)
            a.seconds += secs
            a.counts.update(counts)
            if q is not None:
                self.quarantine.append(q)
        return out

    def take_quarantine(self) -> pa.Table | None:
        q, self.quarantine = self.quarantine, []
        return pa.concat_tables(q, promote_options="permissive") if q else None

    def save_state(self, out_dir: str, seg: int) -> dict:
        """Write the dedup seen-sets into ``out_dir`` (a write's staging area; new files per segment); their
        names."""
        from datacopilot.io._fs import atomic_open, get_fs, join

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
        from datacopilot.io._fs import get_fs, join

        for a, d in zip(self.acc, records):
            a.restore(d)
        for k, name in state.get("seen", {}).items():
            fs, p = get_fs(join(out_dir, name))
            with fs.open(p, "rb") as f:
                self.seen[int(k)] = KeySet(np.load(f))


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
        i, ops = 0, run.ops
        first = True
        while i < len(ops):
            if ops[i].kind == "group":
                stream = _group(stream, run, i, plan.batch_size, show)
                i += 1
                continue
            if ops[i].kind == "dedup":
                streams = not ops[i].near or ops[i].banded
                stream = (_exact if streams else _near)(stream, run, i)
                i += 1
                continue
            j = i
            while j < len(ops) and ops[j].kind not in ("dedup", "group"):
                j += 1
            stream = self._chain(stream, run, i, Chain(ops[i:j], plan.on_error), parallel=first)
            first, i = False, j
        return stream

    def _chain(self, stream, run: Run, i: int, chain: Chain, parallel: bool) -> Iterator:
        if not parallel or self.num_workers == 1:
            for item in stream:
                yield item if isinstance(item, End) else run.account(i, chain(item))
            return
        in_flight = 2 * self.num_workers
        with contextlib.ExitStack() as stack:
            if self.mode == "process":  # batches go through shared-memory slots (the pipe when there is none)
                pool = stack.enter_context(_process_pool(self.num_workers))
                slots = stack.enter_context(pool.slots(in_flight + 1))
                payload = pickle.dumps((list(sys.path), __import__("cloudpickle").dumps(chain)))
                seq = itertools.count()

                def submit(t):
                    data = None
                    if slots is not None:
                        with contextlib.suppress(OSError):  # shared memory full: this batch goes by pipe
                            data = slots.put(next(seq) % len(slots.paths), t)
                    return pool.ex.submit(_run, payload, data or to_ipc(t), 0, None, pool.dir)
            else:
                ex = stack.enter_context(ThreadPoolExecutor(max_workers=self.num_workers))
                submit = lambda t: ex.submit(chain, t, 0)
            pending: deque = deque()
            try:
                for item in stream:
                    pending.append(item if isinstance(item, End) else submit(item))
                    while len(pending) > in_flight or (pending and isinstance(pending[0], End)):
                        yield _done(pending.popleft(), run, i)
                while pending:
                    yield _done(pending.popleft(), run, i)
            finally:  # stopped early: no worker may still read a slot when the next run writes it
                running = [f for f in pending if not isinstance(f, End) and not f.cancel()]
                wait_futures(running)
                for f in running:
                    if f.exception() is None:
                        _discard(f.result())

    # -- Executor ---------------------------------------------------------------------------------------
    def run(self, plan) -> ExecResult:
        run = Run(plan, plan.prepared_ops())
        tables = [t for t in self.stream(plan, run) if not isinstance(t, End) and t.num_rows]
        table = concat_tables(tables) if tables else plan.empty_output()
        return ExecResult(table, [a.record() for a in run.acc], run.take_quarantine())

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
                               [a.record() for a in run.acc], run.save_state(stage, sink.segment), taken)
                _remove(stage, old.values())
            else:
                sink.add(item, plan.output_schema(item), root)
        return make_report(out_dir, sink.manifest, show=self.progress is not False)


def _remove(stage: str, names) -> None:
    """Seen-sets of earlier segments, no longer referred to by the staged manifest."""
    from datacopilot.io._fs import get_fs, join

    for name in names:
        fs, p = get_fs(join(stage, name))
        if fs.exists(p):
            fs.rm(p)


def _done(item, run: Run, i: int):
    return item if isinstance(item, End) else run.account(i, _imported(item.result()))


def _exact(stream, run: Run, i: int) -> Iterator:
    """A dedup stage over keys, one or several a row (LSH bands): a row goes when one of its keys was seen."""
    from datacopilot.transforms import filter_table

    op, a = run.ops[i], run.acc[i]
    for item in stream:
        if isinstance(item, End):
            yield item
            continue
        t0 = time.perf_counter()
        keys, ok = _hook(run, i, item)
        first = run.seen.setdefault(i, KeySet()).new_rows(keys)
        keep = np.zeros(item.num_rows, dtype=bool)
        keep[ok] = first
        out = filter_table(item, keep)
        n = int((~first).sum())
        if n:
            a.dropped[op.drop_reason] += n
        a.rows_in += item.num_rows
        a.rows_out += out.num_rows
        a.seconds += time.perf_counter() - t0
        yield out


def _hook(run: Run, i: int, table: pa.Table):
    """A dedup operator's keys or signatures for the rows that did not fail, and those rows' indices."""
    from datacopilot.operators.run import _OpTask, _pieces

    op, a = run.ops[i], run.acc[i]
    res = _OpTask(op, run.policy)(table, 0)
    failed = np.zeros(table.num_rows, dtype=bool)
    if res.failures:
        ids = table.column("id") if "id" in table.column_names else None
        row, msg, tb = res.failures[0]
        if run.policy == "raise":
            raise OperatorError(a.label, a.rows_in + row, msg, tb,
                                row_id=ids[row].as_py() if ids is not None else None)
        failed[[f[0] for f in res.failures]] = True
        a.failed += len(res.failures)
        if run.policy == "quarantine":
            q = table.take([f[0] for f in res.failures])
            q = q.append_column("_op", pa.array([a.label] * len(res.failures), pa.string()))
            run.quarantine.append(q.append_column("_error", pa.array([f[1] for f in res.failures], pa.string())))
    pieces = list(_pieces([res]))
    ok = np.flatnonzero(~failed)
    if op.kind == "group":
        return pieces, ok
    if op.near and not op.banded:
        return (np.concatenate(pieces) if pieces else None), ok
    width = (len(ok), -1) if op.banded else (-1,)
    return (np.concatenate(pieces).astype(np.uint64).reshape(width) if pieces else np.zeros(0, np.uint64)), ok


def _collect(stream, run: Run, i: int, spill) -> tuple[list, list[End]]:
    """Run a dataset-wide stage's hook over the whole input, writing the rows that did not fail to ``spill``:
    (its signatures as the batches gave them, the End markers met)."""
    a, sigs, ends = run.acc[i], [], []
    for item in stream:
        if isinstance(item, End):
            ends.append(item)
            continue
        t0 = time.perf_counter()
        s, ok = _hook(run, i, item)
        a.rows_in += item.num_rows
        if s is not None and len(ok):
            if isinstance(s, list):  # a grouper's pieces, kept as its hook gave them
                sigs.extend(s)
            else:
                sigs.append(s)
        spill.add(item.take(ok) if len(ok) != item.num_rows else item)
        a.seconds += time.perf_counter() - t0
    return sigs, ends


def _ended(ends: list[End]) -> Iterator:
    if ends:
        yield End(tuple(u for e in ends for u in e.units))


def _near(stream, run: Run, i: int) -> Iterator:
    """Spill the input to a temporary Arrow file while collecting signatures; then stream it back."""
    from datacopilot.transforms import filter_table

    from .spill import Spill

    op, a = run.ops[i], run.acc[i]
    spill = Spill("dc-neardup-")
    try:
        sigs, ends = _collect(stream, run, i, spill)
        have = spill.finish()
        drop = np.asarray(op.duplicates(np.concatenate(sigs)), dtype=bool) if sigs else np.zeros(0, bool)
        n = int(drop.sum())
        if n:
            a.dropped[op.drop_reason] += n
        if have:
            start = 0
            for rb in spill.batches():
                out = filter_table(pa.Table.from_batches([rb]), ~drop[start:start + rb.num_rows])
                start += rb.num_rows
                a.rows_out += out.num_rows
                yield out
        yield from _ended(ends)
    finally:
        spill.close()


def _group(stream, run: Run, i: int, batch_size: int, show: bool = False) -> Iterator:
    """A Grouper: spill the input while collecting signatures; then read the rows back in the order the grouper
    arranges, a bucket at a time (:meth:`.spill.Spill.reordered`), and merge their groups a window at a time (a
    progress bar of the rows read back when ``show``)."""
    from datacopilot.engine.grouping import arranged, merge_windows

    from .spill import BATCH_ROWS, Spill

    op, a = run.ops[i], run.acc[i]
    spill = Spill(f"dc-{op.name or 'group'}-", batch_rows=BATCH_ROWS)
    try:
        parts, ends = _collect(stream, run, i, spill)
        if spill.finish():
            t0 = time.perf_counter()
            order, offsets = arranged(op, parts, spill.rows)
            del parts
            bar = tqdm(total=spill.rows, desc=op.label, unit="rows", disable=not show, leave=False)
            for rows, offs in spill.reordered(order, offsets, BATCH_ROWS):
                bar.update(rows.num_rows)
                for out, fails, counts in merge_windows(op, rows, np.arange(rows.num_rows), offs, run.policy,
                                                        batch_size):
                    a.counts.update(counts)
                    if fails:
                        _group_failures(run, i, rows, fails)
                    a.rows_out += out.num_rows
                    a.seconds += time.perf_counter() - t0
                    yield out
                    t0 = time.perf_counter()
            bar.close()
        yield from _ended(ends)
    finally:
        spill.close()


def _group_failures(run: Run, i: int, rows: pa.Table, fails: list) -> None:
    """Count (and quarantine, or raise) the rows of the groups whose merge failed."""
    from datacopilot.engine.grouping import take_rows

    a = run.acc[i]
    idx = np.array([r for members, _, _ in fails for r in members], np.int64)
    msgs = [msg for members, msg, _ in fails for _ in members]
    if run.policy == "raise":
        row_id = take_rows(rows, idx[:1]).column("id")[0].as_py() if "id" in rows.column_names else None
        raise OperatorError(a.label, int(idx[0]), fails[0][1], fails[0][2], row_id=row_id)
    a.failed += len(idx)
    if run.policy == "quarantine":
        q = take_rows(rows, idx).append_column("_op", pa.array([a.label] * len(idx), pa.string()))
        run.quarantine.append(q.append_column("_error", pa.array(msgs, pa.string())))
