"""What runs inside Ray workers: operators over one Arrow block, with the accounting carried in the data.

A block holds live rows (the data columns) and *event rows* (only the ``__dc_*`` columns, data columns null):

* drops: ``__dc_stage`` = the operator's index, ``__dc_reason`` = how many rows it dropped in this block, by
  reason, as JSON (one event, however many rows);
* a failure: ``__dc_stage``, ``__dc_error``, ``__dc_tb``, ``__dc_payload`` (the failed row as Arrow IPC bytes,
  for the quarantine) and ``__dc_row`` (its index among the block's rows given to the operator);
* a count: ``__dc_stage``, ``__dc_n`` = live rows the operator was given in this block, ``__dc_sec`` = time spent,
  ``__dc_counts`` = the operator's own counters as JSON (see ``operators.base.Outcome``), and for a deduplicator
  ``__dc_payload`` = its keys or signatures of the rows that did not fail, in row order.

Consecutive operators without state run as one stage (:func:`run_chain`, one task per block, as the local
executor's chain); each stage passes the event rows of earlier stages through and adds its own, so the driver
derives every operator's rows in / out / dropped / failed from the final blocks alone. A task that Ray retries produces its
output again from scratch and only one attempt's output is kept: nothing is counted twice.

The operator hooks run through :class:`datacopilot.operators.run._OpTask`, the same code as the local executor
(a batch that raises is retried row by row, so only the rows that fail are failed).
"""

from __future__ import annotations

import json
import pickle
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

STAGE, REASON, ERROR, TB, PAYLOAD, ROW, N, SEC, COUNTS = (
    "__dc_stage", "__dc_reason", "__dc_error", "__dc_tb", "__dc_payload", "__dc_row", "__dc_n", "__dc_sec",
    "__dc_counts")
META = pa.schema([(STAGE, pa.int32()), (REASON, pa.string()), (ERROR, pa.string()), (TB, pa.string()),
                  (PAYLOAD, pa.binary()), (ROW, pa.int64()), (N, pa.int64()), (SEC, pa.float64()),
                  (COUNTS, pa.string())])


def split(block: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(live rows without the ``__dc_*`` columns, event rows with only them)."""
    if STAGE not in block.column_names:
        return block, META.empty_table()
    dead = pc.is_valid(block.column(STAGE))
    events = block.filter(dead).select(META.names).cast(META)
    live = block.filter(pc.invert(dead)).drop_columns([c for c in META.names if c in block.column_names])
    return live, events


def events(stage: int, n: int, **cols) -> pa.Table:
    """``n`` event rows of ``stage``; ``cols`` give the other ``__dc_*`` columns (lists of length n)."""
    data = {STAGE: [stage] * n}
    data.update(cols)
    return pa.table({f.name: pa.array(data.get(f.name, [None] * n), f.type) for f in META})


def join(live: pa.Table, parts: list[pa.Table]) -> pa.Table:
    """Live rows followed by event rows in one block (missing columns are null)."""
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return live
    return pa.concat_tables([live, *parts], promote_options="permissive")


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def _apply(op, live: pa.Table, policy: str):
    """One operator over rows: (output, drop reasons, failures as (row, message, traceback), a deduplicator's
    keys of the rows that did not fail (else None), the operator's counters)."""
    from datacopilot.operators.base import Deduplicator, Filter, Grouper
    from datacopilot.operators.run import _map_output, _OpTask, _pieces, filter_pieces
    from datacopilot.transforms import filter_table

    res = _OpTask(op, policy)(live, 0)
    failed = np.zeros(live.num_rows, dtype=bool)
    failed[[f[0] for f in res.failures]] = True
    keys, drops = None, Counter()
    if isinstance(op, Filter):
        out, reasons = filter_pieces(live, list(_pieces([res])), failed, op)
        drops.update(reasons)
    elif isinstance(op, (Deduplicator, Grouper)):
        pieces = list(_pieces([res]))
        keys = pieces if isinstance(op, Grouper) else (np.concatenate(pieces) if pieces else None)
        out = filter_table(live, ~failed)
        if res.failures and policy == "raise":  # the retry stopped at the failure: rows after it have no keys
            out = live.slice(0, res.failures[0][0])  # (the run raises that failure once it ends)
    else:
        out = _map_output(live, [res])
    return out, drops, res.failures, keys, res.counts


class _Tally:
    """One operator's accounting over the slices of a block."""

    def __init__(self):
        self.given, self.seconds, self.drops, self.counts = 0, 0.0, Counter(), Counter()
        self.failures: list = []  # (row among the rows given in this block, message, traceback, the row)
        self.keys: list = []


def run_chain(block: pa.Table, ops: list, first: int, policy: str, batch_rows: int) -> pa.Table:
    """Operators ``ops`` (stages ``first, first + 1, ...`` of the plan) one after the other over the live rows of
    ``block``, ``batch_rows`` rows at a time (the batches the local executor gives them). Adds per operator its
    failure events, one count event (rows given, seconds, counters, a deduplicator's keys) and one drop event
    holding its drop reasons as JSON."""
    from datacopilot.operators.base import Deduplicator, Grouper

    live, old = split(block)
    if not live.num_rows:
        return join(live, [old])
    acc = [_Tally() for _ in ops]
    outs, t = [], live
    for start in range(0, live.num_rows, batch_rows):
        t = live.slice(start, batch_rows)
        for op, a in zip(ops, acc):
            if not t.num_rows:
                break
            t0 = time.perf_counter()
            out, drops, failures, keys, counts = _apply(op, t, policy)
            a.failures += [(a.given + r, msg, tb, t.slice(r, 1)) for r, msg, tb in failures]
            a.given += t.num_rows
            a.drops.update(drops)
            a.counts.update(counts)
            if keys is not None:
                a.keys.append(keys)
            a.seconds += time.perf_counter() - t0
            t = out
        if t.num_rows:
            outs.append(t)
    new = []
    for j, (op, a) in enumerate(zip(ops, acc)):
        if not a.given:
            continue
        stage = first + j
        if a.failures:
            f = a.failures
            new.append(events(stage, len(f), **{ERROR: [x[1] for x in f], TB: [x[2] for x in f],
                                                PAYLOAD: [to_ipc(x[3]) for x in f], ROW: [x[0] for x in f]}))
        payload = None
        if isinstance(op, Grouper):  # its signature pieces as they came (any per-row objects)
            payload = pickle.dumps([p for ps in a.keys for p in ps])
        elif isinstance(op, Deduplicator):
            payload = pickle.dumps(np.concatenate(a.keys) if a.keys else None)
        new.append(events(stage, 1, **{N: [a.given], SEC: [a.seconds], PAYLOAD: [payload],
                                       COUNTS: [json.dumps(dict(a.counts)) if a.counts else None]}))
        if a.drops:
            new.append(events(stage, 1, **{REASON: [json.dumps(dict(a.drops))]}))
    out = pa.concat_tables(outs, promote_options="permissive") if len(outs) > 1 else (outs[0] if outs else t)
    return join(out, [old, *new])


class StageActor:
    """An actor of a pool for operators with state: their ``setup()`` runs once, when the actor starts."""

    def __init__(self, ops: list, first: int, policy: str, batch_rows: int):
        self.ops, self.first, self.policy, self.batch_rows = ops, first, policy, batch_rows
        for op in ops:
            op.ensure_setup()

    def __call__(self, block: pa.Table) -> pa.Table:
        return run_chain(block, self.ops, self.first, self.policy, self.batch_rows)


def dedup_keys(block: pa.Table, stage: int) -> tuple[list, int]:
    """A deduplicator's payloads of ``stage`` in this block (in order) and the number of live rows."""
    live, ev = split(block)
    mine = ev.filter(pc.and_(pc.equal(ev.column(STAGE), stage), pc.is_valid(ev.column(N))))
    parts = [pickle.loads(p) for p in mine.column(PAYLOAD).to_pylist()]
    return [p for p in parts if p is not None], live.num_rows


def _cleared(ev: pa.Table, stage: int) -> pa.Table:
    """The events without the key payloads of ``stage`` (no longer needed once its barrier is passed)."""
    cleared = pc.if_else(pc.and_(pc.equal(ev.column(STAGE), stage), pc.is_valid(ev.column(N))),
                         pa.scalar(None, pa.binary()), ev.column(PAYLOAD))
    return ev.set_column(ev.schema.get_field_index(PAYLOAD), PAYLOAD, cleared)


def dedup_mark(block: pa.Table, drop: np.ndarray, stage: int, reason: str) -> pa.Table:
    """Turn the live rows marked in ``drop`` into drop events; clear the stage's key payloads."""
    from datacopilot.transforms import filter_table

    live, ev = split(block)
    ev = _cleared(ev, stage)
    n = int(drop.sum())
    new = [events(stage, 1, **{REASON: [json.dumps({reason: n})]})] if n else []
    return join(filter_table(live, ~drop), [ev, *new])


def group_merge(op, stage: int, policy: str, batch_rows: int, order: np.ndarray, offsets: np.ndarray,
                takes: list[np.ndarray], *sources: pa.Table) -> pa.Table:
    """A run of a Grouper's output (groups ``offsets`` over rows ``order``, indices into the rows taken):
    ``sources[j]`` is a block holding some of those rows, ``takes[j]`` their indices among its live rows; the
    rows taken are ``sources[0]``'s, then ``sources[1]``'s, ... Adds the failures and counters of the merges."""
    from datacopilot.engine.grouping import merge_windows

    pool = pa.concat_tables([split(src)[0].take(pa.array(t)) for src, t in zip(sources, takes)],
                            promote_options="permissive")
    outs, new, counts = [], [], Counter()
    for out, fails, c in merge_windows(op, pool, order, offsets, policy, batch_rows):
        outs.append(out)
        counts.update(c)
        for members, msg, tb in fails:  # (no __dc_row: the rows may come from other blocks; the id names them)
            new.append(events(stage, len(members), **{ERROR: [msg] * len(members), TB: [tb] * len(members),
                                                      PAYLOAD: [to_ipc(pool.slice(int(r), 1)) for r in members]}))
    if counts:
        new.append(events(stage, 1, **{N: [0], COUNTS: [json.dumps(dict(counts))]}))
    return join(pa.concat_tables(outs, promote_options="permissive"), new)


def events_of(block: pa.Table, stage: int) -> pa.Table:
    """Only the event rows of a block, the key payloads of ``stage`` cleared (its live rows went elsewhere)."""
    return _cleared(split(block)[1], stage)


def decide(op, blocks) -> list[np.ndarray]:
    """Per block, the rows to drop among its rows with keys, as ``operators.run`` decides them (the first row of
    a key is kept). ``blocks`` yields ``(key parts, live rows)`` in block order: exact and banded (LSH) keys are
    decided one block at a time against a :class:`~datacopilot.kernels.hashing.KeySet` of the keys seen, so
    the driver holds one block's keys and the set; other near-duplicate signatures all at once."""
    from datacopilot.errors import DataCopilotError
    from datacopilot.kernels.hashing import KeySet

    if op.near and not op.banded:
        blocks = list(blocks)
        parts = [p for ps, _ in blocks for p in ps]
        drop = np.asarray(op.duplicates(np.concatenate(parts)), dtype=bool) if parts else np.zeros(0, bool)
        bounds = np.cumsum([0, *(n for _, n in blocks)])
        if len(drop) != bounds[-1]:
            raise DataCopilotError(f"{op.label}: {len(drop)} signatures for {bounds[-1]} rows")
        return [drop[bounds[i]:bounds[i + 1]] for i in range(len(blocks))]
    seen, out = KeySet(), []
    for parts, n in blocks:
        keys = np.concatenate(parts).astype(np.uint64, copy=False) if parts else np.zeros(0, np.uint64)
        if len(keys) != n:
            raise DataCopilotError(f"{op.label}: {len(keys)} keys for {n} rows")
        out.append(~seen.new_rows(keys))
    return out


def tally(ev: pa.Table, n_ops: int) -> tuple[list[int], list[Counter], list[int], list[float], list[Counter]]:
    """Per stage: rows in, drop reasons, failures, seconds, the operator's counters, from all event rows."""
    rows_in, dropped, failed, secs = [0] * n_ops, [Counter() for _ in range(n_ops)], [0] * n_ops, [0.0] * n_ops
    counts = [Counter() for _ in range(n_ops)]
    cols = (STAGE, REASON, ERROR, N, SEC, COUNTS)
    for s, reason, err, n, sec, cnt in zip(*(ev.column(c).to_pylist() for c in cols)):
        if err is not None:
            failed[s] += 1
        elif n is not None:
            rows_in[s] += n
            secs[s] += sec or 0.0
            if cnt:
                counts[s].update(json.loads(cnt))
        elif reason is not None:
            dropped[s].update(json.loads(reason))
    return rows_in, dropped, failed, secs, counts


def first_failure(ev: pa.Table) -> tuple[int, int | None, int]:
    """(stage, row among all the rows given to that operator, index in ``ev``) of the failure ``ds.apply`` raises
    first: the earliest operator's first failed row. Events are in block order and a block's failures come before
    its count, so the rows of earlier blocks are the counts seen so far. A grouper's failed merge has no row
    (None): its rows may come from several blocks, and the error names the row's id."""
    stages, errs, rows, ns = (ev.column(c).to_pylist() for c in (STAGE, ERROR, ROW, N))
    k = min(s for s, e in zip(stages, errs) if e is not None)
    before = 0
    for i, (s, e, r, n) in enumerate(zip(stages, errs, rows, ns)):
        if s != k:
            continue
        if e is not None:
            return k, (before + r if r is not None else None), i
        before += n or 0
    raise AssertionError("no failure")  # pragma: no cover
