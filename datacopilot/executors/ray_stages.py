"""What runs inside Ray tasks and actors: the engine's runtime over one Arrow block, its accounting carried in it.

A block holds live rows (the data columns) and one *event row* (data columns null) holding, in ``__dc_acc``, the
pickled :class:`~datacopilot.engine.runtime.Accounting` of the block's rows for the stages run so far (rows in,
out, dropped by reason, failed, the first failure under ``on_error="raise"``, the quarantined rows) and, in
``__dc_payload``, a barrier's payload of the block's live rows (keys, signatures) until the barrier is decided.
Each stage takes the event row off, runs :func:`datacopilot.engine.run_chain` over the live rows ``batch_rows``
at a time with a fresh accounting, merges it into the block's and puts one event row back. The driver merges the
blocks' accountings in block order (:func:`accounting`), so row numbers and the first failure are the local
executor's. A task that Ray retries produces its block again from scratch and only one attempt's output is kept:
nothing is counted twice.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datacopilot.engine import Accounting, run_chain
from datacopilot.engine.barriers import apply_drops, merge_rows, observe
from datacopilot.engine.step import concat

ACC, PAYLOAD = "__dc_acc", "__dc_payload"
EVENTS = pa.schema([(ACC, pa.binary()), (PAYLOAD, pa.binary())])


def split(block: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(live rows without the ``__dc_*`` columns, the event rows with only them, as :data:`EVENTS`)."""
    if ACC not in block.column_names:
        return block, EVENTS.empty_table()
    col = block.column(ACC)
    n_ev = block.num_rows - col.null_count
    drop = [c for c in EVENTS.names if c in block.column_names]
    if n_ev == 0:
        return block.drop_columns(drop), EVENTS.empty_table()
    ev_at = np.flatnonzero(col.is_valid().to_numpy(zero_copy_only=False))
    live_n = block.num_rows - n_ev
    if ev_at[0] == live_n:  # the usual block: its live rows, then its event row (slices, no copy)
        live, ev = block.slice(0, live_n), block.slice(live_n)
    else:  # blocks Ray joined: events among the rows
        is_ev = pc.is_valid(col)
        live, ev = block.filter(pc.invert(is_ev)), block.filter(is_ev)
    ev = pa.table({f.name: ev.column(f.name) if f.name in ev.column_names else pa.nulls(n_ev, f.type)
                   for f in EVENTS}, schema=EVENTS)
    return live.drop_columns(drop), ev


def accounting(events: pa.Table, template: Accounting) -> Accounting:
    """The accountings of event rows (of consecutive rows, in order) merged into one fresh copy of ``template``."""
    acc = template.fresh()
    for b in events.column(ACC).to_pylist():
        acc.merge(pickle.loads(b))
    return acc


def event(acc: Accounting, payload: Any = None) -> pa.Table:
    """One event row holding ``acc`` (and a barrier's ``payload``)."""
    data = pickle.dumps(payload) if payload is not None else None
    return pa.table({ACC: pa.array([pickle.dumps(acc)], pa.binary()), PAYLOAD: pa.array([data], pa.binary())},
                    schema=EVENTS)


def join(live: pa.Table, ev: pa.Table) -> pa.Table:
    """Live rows followed by event rows in one block (missing columns are null)."""
    if not live.num_columns:
        return ev
    return pa.concat_tables([live, ev], promote_options="permissive")


def run_block(block: pa.Table, ops: list, first: int, template: Accounting, batch_rows: int) -> pa.Table:
    """Operators ``ops`` (``first, first + 1, ...`` of the plan) over the live rows of ``block``, ``batch_rows`` at
    a time (the batches the local executor gives them); a barrier closing the run observes its rows (they are held
    in the block, its payload in the event row, for the driver to decide). The block's accounting is taken from its
    event rows and given back, with this stage's, in one event row."""
    from datacopilot.engine import is_barrier

    got = run_stage(block, ops, first, template, batch_rows)
    if got is None:
        return block
    out, total, payload = got
    return join(out, event(total, payload if is_barrier(ops[-1]) else None))


def run_stage(block: pa.Table, ops: list, first: int, template: Accounting, batch_rows: int
              ) -> tuple[pa.Table, Accounting, list] | None:
    """What :func:`run_block` computes, not joined: ``(the live rows out, the block's accounting with this
    stage's, the payload pieces of a barrier closing the run)``; None for a block without live rows."""
    from datacopilot.engine import is_barrier

    live, old = split(block)
    if not live.num_rows:
        return None
    acc, policy = template.fresh(), template.policy
    barrier = ops[-1] if is_barrier(ops[-1]) else None
    chain = ops[:-1] if barrier is not None else ops
    outs, payload, t = [], [], live
    for start in range(0, live.num_rows, batch_rows):
        t = run_chain(chain, live.slice(start, batch_rows), policy, acc, first)
        if barrier is not None and t.num_rows:
            seen = observe(barrier, first + len(chain), t, policy, acc)
            payload += seen.payload
            t = seen.table
        if t.num_rows:
            outs.append(t)
        if policy == "raise" and acc.failed:  # the run raises this failure once it ends
            break
    out = concat(outs) if outs else t  # (no rows: the last batch's empty output)
    total = accounting(old, template)
    total.merge(acc)
    return out, total, payload


class StageActor:
    """An actor of a pool for operators with state: their ``setup()`` runs once, when the actor starts."""

    def __init__(self, ops: list, first: int, template: Accounting, batch_rows: int):
        self.ops, self.first, self.template, self.batch_rows = ops, first, template, batch_rows
        for op in ops:
            op.ensure_setup()

    def __call__(self, block: pa.Table) -> pa.Table:
        return run_block(block, self.ops, self.first, self.template, self.batch_rows)


def observed(block: pa.Table, template: Accounting) -> tuple[tuple[list, int, bool], pa.Table]:
    """A barrier's view of a block: ``((its payload pieces, its live rows, whether a failure waits to be raised),
    the block's event row without the payload)`` (a Ray task with two returns)."""
    live, ev = split(block)
    pieces = [p for b in ev.column(PAYLOAD).to_pylist() if b is not None for p in pickle.loads(b)]
    acc = accounting(ev, template)
    return (pieces, live.num_rows, acc.failed), event(acc)


def apply_block(block: pa.Table, op, k: int, drop: np.ndarray, template: Accounting) -> pa.Table:
    """A deduplicator's decision applied to a block: its live rows without those marked in ``drop``, the drops and
    rows out counted in its accounting, its payload cleared."""
    live, ev = split(block)
    acc = accounting(ev, template)
    out = apply_drops(op, k, live, drop, acc)
    return join(out, event(acc))


def merge_block(op, k: int, template: Accounting, batch_rows: int, order: np.ndarray, offsets: np.ndarray,
                held: np.ndarray, takes: list[np.ndarray], *sources: pa.Table) -> pa.Table:
    """A run of a Grouper's output (groups ``offsets`` over rows ``order``, indices into the rows taken):
    ``sources[j]`` is a block holding some of those rows, ``takes[j]`` their indices among its live rows; the rows
    taken are ``sources[0]``'s, then ``sources[1]``'s, ..., ``held`` their indices among all the rows the grouper
    holds (a failed merge's row is named by it). The rows out, with the accounting of the merges."""
    pool = pa.concat_tables([split(src)[0].take(pa.array(t)) for src, t in zip(sources, takes)],
                            promote_options="permissive")
    acc = template.fresh()
    outs = list(merge_rows(op, k, pool, order, offsets, acc, batch_rows))
    a = acc.ops[k]
    if a.error is not None:  # the pool's row -> the row among the grouper's input (not shifted on merging:
        a.error.row = int(held[a.error.row])  # this accounting counted no rows in)
    return join(concat(outs) if outs else pool.schema.empty_table(), event(acc))
