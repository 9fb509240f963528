"""Groupers on Ray as distributed stages: the rows move once, each to the one task that needs it, and the driver
holds references and per-block counts, nothing per row (:mod:`datacopilot.engine.partitions` has the rules).

1. *count*: a task per block reads what the stage before left in it (its live rows, its accounting, the grouper's
   signatures) and returns its number of rows and whether a failure waits to be raised (to the driver), its
   accounting (an event row, which travels ahead of the output) and, for a ``"hash"`` grouper, its keyed rows'
   ``(position, key, size)``, for a ``"range"`` one a sample of its signatures.
2. ``"range"`` (``sort``, ``shuffle``): one task picks the range boundaries from the samples; a task per group of
   consecutive blocks (see below) splits their rows by range (:func:`~datacopilot.engine.partitions.range_of`);
   a task per range sorts its rows.
3. ``"hash"`` (``merge_same_image``): a task per group of consecutive blocks scatters their keyed rows by key
   partition; a task per key partition decides the groups of its keys (each row's leader,
   :func:`~datacopilot.engine.partitions.leaders`) and returns them per group of blocks; a task per group of
   consecutive blocks (see below) takes its rows' leaders and sends its rows to the output range of their
   leader; a task per range
   lays out and merges its groups (:func:`~datacopilot.engine.barriers.merge_rows`).

The ranges' tasks yield blocks of about ``block_rows`` rows, then their accounting. A grouper with its own
``arrange`` is decided on the driver from all the signatures, as before (:func:`driver_group`).

Ray keeps a task's result smaller than ``max_direct_call_object_size`` (100 KiB by default) in its owner's
memory, the driver's, not in the object store: so the ``"hash"`` stage scatters and decides per group of blocks
whose piece for one partition holds at least that much (``partitions.INLINE_BYTES``), not per block (a block's
share of one partition, 16 to 24 bytes for each of ``block_rows / partitions`` rows, would be kept inline:
measured, 200,000 rows, +8 MB of driver peak). The pieces of rows (split by range, routed) are made per group of
consecutive blocks of at least twice that per range, by the blocks' bytes: a block's share of one range shrinks
as the ranges grow with the blocks (4M rows in 488 blocks, 31 ranges: the driver at 1.1 GB, per block).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from datacopilot.engine import partitions as pt
from datacopilot.engine.barriers import group_order, merge_rows
from datacopilot.engine.grouping import layout, order_keys, take_rows, windows
from datacopilot.engine.step import concat
from datacopilot.schemas.arrow_build import concat_tables

from . import ray_stages as st

#: what the driver held for the last grouper stage: ``blocks``, ``partitions``, ``refs`` (object references made,
#: at most ``blocks * (2 + 2 * partitions)`` and the output blocks), ``fetched_bytes`` (what it got: per-block
#: counts, range boundaries)
DRIVER: dict = {}


def group(ray, ds, op, k: int, template, batch_size: int, block_rows: int, get):
    """The barrier of grouper ``op`` (operator ``k``) over the blocks of ``ds``: a Ray dataset of the events of
    the blocks, then the output (``get``: ``ray.get`` re-raising a datacopilot error from a worker)."""
    if op.partitioning is None:
        return driver_group(ray, ds, op, k, template, batch_size, block_rows, get)
    refs = list(ds.to_arrow_refs())
    blocks = len(refs)
    parts = pt.partition_count(blocks, int(ray.cluster_resources().get("CPU", 1)))
    count = ray.remote(_count).options(num_returns=3)
    counted = [count.remote(r, template, op) for r in refs]
    events = [c[1] for c in counted]
    stats = get(ray, [c[0] for c in counted])
    DRIVER.clear()
    DRIVER.update(blocks=blocks, partitions=parts, fetched_bytes=len(pickle.dumps(stats)),
                  refs=blocks + sum(len(c) for c in counted))
    if any(failed for _, failed, _, _ in stats):  # the first failure of all the blocks, raised now
        st.accounting(pa.concat_tables(get(ray, events)), template).check()
    counts = np.array([n for n, _, _, _ in stats], np.int64)
    sizes = np.array([b for _, _, _, b in stats], np.int64)  # each block's bytes
    bases = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    if not counts.sum():
        return ray.data.from_arrow_refs(events)
    if op.partitioning == "hash":
        keyed = np.array([m for _, _, m, _ in stats], np.int64)
        gens = _hash_stage(ray, refs, counted, op, k, template, batch_size, block_rows, parts, counts, bases, keyed,
                           sizes)
    else:
        gens = _range_stage(ray, refs, counted, op, k, template, batch_size, block_rows, parts, bases, sizes, get)
    DRIVER["refs"] += len(gens)
    del refs, counted  # each held now by the tasks that take it, freed as they end
    out = [ref for g in gens for ref in g]
    DRIVER["refs"] += len(out)
    return ray.data.from_arrow_refs(events + out)


def _many(ref_or_refs, n: int) -> list:
    return list(ref_or_refs) if n > 1 else [ref_or_refs]


def _range_stage(ray, refs, counted, op, k, template, batch_size, block_rows, parts, bases, sizes, get) -> list:
    bounds = get(ray, ray.remote(_bounds).remote(op, parts, bases, *(c[2] for c in counted)))
    DRIVER["fetched_bytes"] += bounds.nbytes
    ranges, held = bounds.num_rows + 1, ray.put(bounds)
    # the rows split per group of consecutive blocks of about twice INLINE_BYTES per range (``sizes``: each
    # block's bytes): a piece under INLINE_BYTES would be kept in the driver's memory, and with the ranges growing
    # with the blocks a block's share of one range gets that small (measured: 4M rows, 488 blocks, 31 ranges,
    # the driver at 1.1 GB)
    groups = pt.block_groups(sizes, 2 * ranges * pt.INLINE_BYTES)
    split = ray.remote(_split_range).options(num_returns=ranges)
    pieces = [_many(split.remote(op, bases[lo:hi], held, ranges, *refs[lo:hi]), ranges) for lo, hi in groups]
    sort = ray.remote(_sort_range).options(num_returns="streaming")
    DRIVER["refs"] += len(groups) * ranges
    DRIVER["split_groups"] = len(groups)
    return [sort.remote(op, k, template, batch_size, block_rows, *(p[q] for p in pieces)) for q in range(ranges)]


def _hash_stage(ray, refs, counted, op, k, template, batch_size, block_rows, parts, counts, bases, keyed,
                sizes) -> list:
    # the keys scattered and the leaders decided per group of blocks whose piece for one partition holds about
    # twice INLINE_BYTES of leaders (16 bytes a keyed row; twice: the partitions' shares vary): Ray keeps smaller
    # results in the driver's memory, and the specs of the tasks they are passed to, inlined, for as long as
    # their lineage is kept
    groups = pt.block_groups(keyed, 2 * parts * pt.INLINE_BYTES // 16)
    scatter = ray.remote(_scatter).options(num_returns=parts)
    scattered = [_many(scatter.remote(parts, bases[lo:hi], *(counted[i][2] for i in range(lo, hi))), parts)
                 for lo, hi in groups]
    decide = ray.remote(_decide).options(num_returns=len(groups))
    decided = [_many(decide.remote(op, *(g[p] for g in scattered)), len(groups)) for p in range(parts)]
    cuts = pt.output_cuts(counts, parts)
    ranges = len(cuts) - 1
    # the rows routed per group of consecutive blocks of about twice INLINE_BYTES per range, as a range stage
    # splits them (a block's share of one range can be smaller), with the decisions of the key groups they span
    key_group = np.repeat(np.arange(len(groups)), [hi - lo for lo, hi in groups])
    route = ray.remote(_route).options(num_returns=ranges)
    routes = pt.block_groups(sizes, 2 * ranges * pt.INLINE_BYTES)
    routed = [_many(route.remote(bases[lo:hi], cuts, hi - lo, *refs[lo:hi],
                                 *(d[g] for g in range(key_group[lo], key_group[hi - 1] + 1) for d in decided)),
                    ranges) for lo, hi in routes]
    merge = ray.remote(_merge_range).options(num_returns="streaming")
    DRIVER["refs"] += len(groups) * 2 * parts + len(routes) * ranges
    DRIVER["split_groups"] = len(routes)
    return [merge.remote(op, k, template, batch_size, block_rows, *(r[q] for r in routed)) for q in range(ranges)]


# -- tasks ----------------------------------------------------------------------------------------------------
def _payload(ev: pa.Table) -> list:
    return [p for b in ev.column(st.PAYLOAD).to_pylist() if b is not None for p in pickle.loads(b)]


def _count(block: pa.Table, template, op):
    """A block's ``(rows, failed, keyed rows (``"hash"``), bytes)``, its event row without the payload, then its
    keyed rows (``"hash"``: an ``(m, 3)`` uint64 array of local position, key, size) or a sample of its signatures
    (``"range"``: ``(local positions, signatures)`` per batch)."""
    live, ev = st.split(block)
    acc = st.accounting(ev, template)
    pieces = _payload(ev)
    if op.partitioning == "range":
        sample, at = [], 0
        for p in pieces:
            idx = pt.sample_at(len(p))
            sample.append((at + idx, pt.take_signatures(p, idx)))
            at += len(p)
        return (live.num_rows, acc.failed, 0, live.nbytes), st.event(acc), sample
    sigs = (np.concatenate([np.asarray(p, dtype=np.uint64).reshape(-1, 2) for p in pieces]) if pieces
            else np.zeros((0, 2), np.uint64))
    keyed = np.flatnonzero(sigs[:, 0] != 0)
    table = np.stack([keyed.astype(np.uint64), sigs[keyed, 0], sigs[keyed, 1]], axis=1)
    return (live.num_rows, acc.failed, len(keyed), live.nbytes), st.event(acc), table


def _scatter(parts: int, bases: np.ndarray, *keyed) -> tuple | np.ndarray:
    """A group of blocks' keyed rows (``(m, 3)``: local position, key, size) by key partition, as ``(m, 3)``
    uint64 arrays of global position, key, size."""
    table = np.concatenate([np.column_stack([t[:, 0] + np.uint64(b), t[:, 1:]]) for b, t in zip(bases, keyed)])
    which = pt.hash_of(table[:, 1], parts)
    return _by(which, parts, lambda idx: table[idx])


def _bounds(op, parts: int, bases: np.ndarray, *samples) -> pa.Table:
    keys = [pt.with_positions(op.order_by(sigs, base + at), base + at)
            for base, sample in zip(bases, samples) for at, sigs in sample if len(at)]
    if not keys:
        return pa.table({pt.POS: pa.array([], pa.int64())})
    return pt.range_bounds(op, pa.concat_tables(keys, promote_options="permissive"), parts)


def _split_range(op, bases: np.ndarray, bounds: pa.Table, ranges: int, *blocks: pa.Table):
    """Consecutive blocks' rows (the first of each at global position ``bases[i]``) by range: per range, ``(its
    rows, their order keys with their positions)``, in input order."""
    lives, keys = [], []
    for block, base in zip(blocks, bases):
        live, ev = st.split(block)
        pieces = _payload(ev)
        got = order_keys(op, pieces, int(base)) if pieces else pa.table({})
        keys.append(pt.with_positions(got, int(base) + np.arange(live.num_rows)))
        lives.append(live)
    live = _rows(lives)
    keys = pa.concat_tables(keys, promote_options="permissive") if len(keys) > 1 else keys[0]
    return _by(pt.range_of(op, keys, bounds), ranges, lambda idx: (take_rows(live, idx), keys.take(pa.array(idx))))


def _by(which: np.ndarray, n: int, piece) -> tuple | object:
    """``piece(rows of which == q)`` for each ``q < n`` (one value when ``n == 1``, as Ray returns it)."""
    idx = np.argsort(which, kind="stable")
    cut = np.searchsorted(which[idx], np.arange(n + 1))
    out = tuple(piece(idx[cut[q]:cut[q + 1]]) for q in range(n))
    return out if n > 1 else out[0]


def _emit(outs: Iterator[pa.Table], block_rows: int) -> Iterator[pa.Table]:
    held, n = [], 0
    for t in outs:
        held.append(t)
        n += t.num_rows
        if n >= block_rows:
            yield concat(held)
            held, n = [], 0
    if held and n:
        yield concat(held)


def _apply(op, k: int, template, batch_size: int, block_rows: int, rows: pa.Table, order: np.ndarray,
           offsets: np.ndarray, positions: np.ndarray) -> Iterator[pa.Table]:
    """A range's rows in their order, groups merged, in blocks of about ``block_rows`` rows, then its event row
    (a failed merge named by the row's position among the grouper's input)."""
    acc = template.fresh()
    yield from _emit(merge_rows(op, k, rows, order, offsets, acc, batch_size, positions), block_rows)
    yield st.event(acc)


def _rows(tables: list[pa.Table]) -> pa.Table:
    """The rows of a range's pieces, in order (pieces without rows left out: a block of events has no columns)."""
    held = [t for t in tables if t.num_rows]
    return concat_tables(held) if held else tables[0]


def _sort_range(op, k: int, template, batch_size: int, block_rows: int, *pieces) -> Iterator[pa.Table]:
    rows = _rows([r for r, _ in pieces])
    keys = pa.concat_tables([kk for _, kk in pieces], promote_options="permissive")
    order = pt.sort_range(op, keys)
    positions = keys.column(pt.POS).to_numpy()
    yield from _apply(op, k, template, batch_size, block_rows, rows, order, np.arange(rows.num_rows + 1), positions)


def _decide(op, *pieces) -> tuple | np.ndarray:
    """A key partition: every keyed row of its keys (from every group of blocks, in order) -> per group, ``(m, 2)``
    int64 global positions and their leaders' positions."""
    which = np.concatenate([np.full(len(p), g, np.int64) for g, p in enumerate(pieces)])
    table = np.concatenate(pieces)
    pos = table[:, 0].astype(np.int64)
    lead = pt.leaders(pos, table[:, 1], table[:, 2], op.capacity)
    return _by(which, len(pieces), lambda idx: np.stack([pos[idx], lead[idx]], axis=1))


def _route(bases: np.ndarray, cuts: np.ndarray, n: int, *args):
    """Consecutive blocks' rows (``args[:n]``, the first of each at global position ``bases[i]``) by the output
    range of their leader, given the decisions (``args[n:]``) of the key groups they span: ``(rows, positions,
    leaders)`` per range, in input order."""
    lives, poss, leads = [], [], []
    for block, base in zip(args[:n], bases):
        live, _ = st.split(block)
        pos = int(base) + np.arange(live.num_rows, dtype=np.int64)
        lead = pos.copy()  # a row without a key leads its own group
        for d in args[n:]:  # (the decisions of the blocks' groups: this block's rows taken)
            mine = d[(d[:, 0] >= base) & (d[:, 0] < base + live.num_rows)]
            lead[mine[:, 0] - base] = mine[:, 1]
        lives.append(live)
        poss.append(pos)
        leads.append(lead)
    live, pos, lead = _rows(lives), np.concatenate(poss), np.concatenate(leads)
    return _by(pt.range_index(cuts, lead), len(cuts) - 1, lambda idx: (take_rows(live, idx), pos[idx], lead[idx]))


def _merge_range(op, k: int, template, batch_size: int, block_rows: int, *pieces) -> Iterator[pa.Table]:
    rows = _rows([r for r, _, _ in pieces])
    pos = np.concatenate([p for _, p, _ in pieces])
    order, offsets = layout(np.concatenate([g for _, _, g in pieces]))  # by leader, then position
    yield from _apply(op, k, template, batch_size, block_rows, rows, order, offsets, pos)


# -- the driver-side decision: a grouper with its own arrange (and the comparison in bench/ray_group.py) ------
def driver_group(ray, ds, op, k: int, template, batch_size: int, block_rows: int, get):
    """Signatures per block -> the output order decided on the driver (``group_order``, holding every signature)
    -> one task per run of about ``block_rows`` output rows takes its rows from the blocks that hold them (passed
    as arguments: Ray fetches them from its object store) and merges its groups. The blocks' accountings travel
    on in blocks of their own, ahead of the output."""
    refs = list(ds.to_arrow_refs())
    task = ray.remote(st.observed).options(num_returns=2)
    got = [task.remote(r, template) for r in refs]
    out = [e for _, e in got]
    seen, fetched = [], 0
    for meta, _ in got:
        pieces, n, failed = get(ray, meta)
        fetched += sum(getattr(p, "nbytes", 0) for p in pieces)
        if failed:
            st.accounting(pa.concat_tables(get(ray, out)), template).check()
        seen.append((pieces, n))
    DRIVER.clear()
    DRIVER.update(blocks=len(refs), partitions=0, fetched_bytes=fetched)
    bounds = np.cumsum([0, *(n for _, n in seen)])
    order, offsets = group_order(op, [p for pieces, _ in seen for p in pieces], int(bounds[-1]))
    del seen
    merge = ray.remote(st.merge_block)
    for lo, hi in windows(offsets, block_rows):
        rows = order[offsets[lo]:offsets[hi]]
        block = np.searchsorted(bounds, rows, side="right") - 1
        srcs = np.unique(block)
        pos = np.argsort(block, kind="stable")  # the rows taken: source by source, in the order given
        takes = [rows[pos[block[pos] == c]] - bounds[c] for c in srcs]
        local = np.empty(len(rows), np.int64)
        local[pos] = np.arange(len(rows))
        held = rows[pos]  # the rows taken, as indices among all the rows held
        out.append(merge.remote(op, k, template, batch_size, local, offsets[lo:hi + 1] - offsets[lo], held, takes,
                                *(refs[c] for c in srcs)))
    DRIVER["refs"] = len(refs) + len(out)
    return ray.data.from_arrow_refs(out)
