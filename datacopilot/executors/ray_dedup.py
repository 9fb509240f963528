"""A deduplicator's barrier on Ray as a distributed stage: its keys hash-partitioned across tasks, each partition
deciding its own (:mod:`datacopilot.engine.dedup_parts`), the decisions routed back to the blocks. The driver
holds object refs only, O(blocks x partitions), never a key or a row position.

1. **scatter**, in the task that runs the stage ending with the deduplicator (:func:`stage_scatter`: its
   operators over the block, the keys observed, then scattered; no task of its own and the block is not fetched
   again), or one task per block after a stage that ran in an actor pool (:func:`scatter_block`): the block's
   payload (keys, band keys, perceptual hashes) split by partition of the key's hash, each partition's
   ``(keys, rows, extra)`` put in the object store of the task's node; the task returns the block's live row
   count, whether a failure waits to be raised, and the refs. The driver turns the counts into each block's first
   global position (blocks are in input order).
2. **decide**, one task per partition (:func:`decide_part`), given that partition's pieces of every block: the
   dropped positions (smallest position per key wins; for perceptual hashes, the pairs a partition's buckets join,
   then one task joins the pairs of all partitions into clusters, :func:`cluster_part`) split by block, each
   block's put in the object store.
3. **apply**, one task per block (:func:`apply_part`): the block's rows without the dropped ones, counted as the
   local executor counts them (:func:`datacopilot.engine.barriers.apply_drops`).

The rows out are the local executor's, row for row. Objects a task puts are owned by its worker: when a node dies
while the barrier runs, the barrier is run again from its input blocks (which Ray rebuilds from their lineage),
up to :data:`ATTEMPTS` times.
"""

from __future__ import annotations

import numpy as np

from datacopilot.engine import dedup_parts as dp
from datacopilot.errors import DataCopilotError

from . import ray_stages as st

ATTEMPTS = 3  # runs of a barrier when objects are lost (a node died)


def partition_count(ray, blocks: int) -> int:
    """Partitions of a barrier's keys: one per CPU of the cluster, at most one per block."""
    return max(1, min(blocks, int(ray.cluster_resources().get("CPU", 1))))


def scatter_block(block, op, template, parts: int):
    """Scatter (in a Ray task, two returns): ``((live rows, a failure waits, [one ref per partition]), the
    block's event row without the payload)``."""
    import ray

    from datacopilot.engine.barriers import keys_of

    (pieces, n, failed), ev = st.observed(block, template)
    keys = keys_of(op, pieces)
    got = len(keys) if keys is not None else 0
    if got != n:
        raise DataCopilotError(f"{op.label}: {got} keys for a block of {n} rows")
    return (n, failed, [ray.put(piece) for piece in dp.scatter(op, keys, parts)]), ev


def stage_scatter(block, ops: list, first: int, template, batch_rows: int, parts: int):
    """The stage of operators ``ops`` (``first, ...`` of the plan), which ends with a deduplicator, and the scatter
    of its keys, in one Ray task (three returns): ``(the block's rows out with their event row, without the
    payload: the keys leave in the pieces; (live rows, a failure waits, [one ref per partition]); that event
    row)``. The rows, keys and accounting are :func:`.ray_stages.run_block`'s, then :func:`scatter_block`'s."""
    import ray

    from datacopilot.engine.barriers import keys_of

    op = ops[-1]
    got = st.run_stage(block, ops, first, template, batch_rows)
    if got is None:  # no live rows: nothing ran
        out, ev = st.split(block)
        acc, pieces = st.accounting(ev, template), []
    else:
        out, acc, pieces = got
    keys = keys_of(op, pieces)
    n = len(keys) if keys is not None else 0
    if n != out.num_rows:
        raise DataCopilotError(f"{op.label}: {n} keys for a block of {out.num_rows} rows")
    ev = st.event(acc)
    return st.join(out, ev), (n, acc.failed, [ray.put(piece) for piece in dp.scatter(op, keys, parts)]), ev


def _positions(offsets: np.ndarray, pieces: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A partition's pieces of every block (in block order) as keys, global positions and extra."""
    keys = np.concatenate([p[0] for p in pieces])
    pos = np.concatenate([p[1] + offsets[b] for b, p in enumerate(pieces)])
    extra = None if pieces[0][2] is None else np.concatenate([p[2] for p in pieces])
    return keys, pos, extra


def _routed(dropped: np.ndarray, offsets: np.ndarray) -> list:
    """Sorted dropped positions put in the object store block by block: a ref per block, None for none."""
    import ray

    return [ray.put(d) if len(d) else None for d in dp.by_block(dropped, offsets)]


def decide_part(op, offsets: np.ndarray, *pieces) -> list:
    """Decide (a Ray task) one partition of exact or banded keys: per block, a ref to its dropped rows (None)."""
    keys, pos, _ = _positions(offsets, pieces)
    return _routed(dp.first_wins(keys, pos), offsets)


def pairs_part(op, offsets: np.ndarray, *pieces):
    """One partition of perceptual-hash buckets (a Ray task): a ref to the pairs of positions it joins."""
    import ray

    keys, pos, extra = _positions(offsets, pieces)
    return ray.put(dp.bucket_pairs(keys, pos, extra, op.p["max_distance"]))


def cluster_part(offsets: np.ndarray, *pairs) -> list:
    """The pairs of every partition joined in clusters (a Ray task over the pairs only): per block, a ref to its
    dropped rows (None)."""
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    return _routed(dp.cluster_drops(a, b), offsets)


def apply_part(block, op, k: int, template, n: int, *drops):
    """Apply (a Ray task, two returns): ``(the block without its dropped rows, True)``."""
    return st.apply_block(block, op, k, dp.drop_mask(n, list(drops)), template), True


def dedup(ray, ds, op, k: int, template, get, partitions: int | None = None, stage: tuple | None = None):
    """The barrier of deduplicator ``op`` (operator ``k``) over Ray dataset ``ds``: a Ray dataset of its output.
    ``get``: ``ray.get`` re-raising a datacopilot error as itself. ``stage``: ``(ops, first, batch_rows, Ray
    resources)`` of the stage that ends with ``op``, when ``ds`` is that stage's input (it then runs in the
    scatter's tasks, :func:`stage_scatter`); None when ``ds`` holds the stage's output."""
    refs = list(ds.to_arrow_refs())
    parts = partitions or partition_count(ray, len(refs))
    lost = (ray.exceptions.ObjectLostError, ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError)
    for attempt in range(ATTEMPTS):
        try:
            return ray.data.from_arrow_refs(_run(ray, refs, op, k, template, get, parts, stage))
        except lost + (ray.exceptions.RayTaskError,) as e:
            cause = e.cause if isinstance(e, ray.exceptions.RayTaskError) else e
            if not isinstance(cause, lost) or attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _run(ray, refs: list, op, k: int, template, get, parts: int, stage: tuple | None = None) -> list:
    """One run of the barrier (and of the stage before it, with ``stage``): the refs of its output blocks, once
    every block is applied."""
    blocks, counts, pieces = scatter_all(ray, refs, op, template, get, parts, stage)
    routed = decide_all(ray, op, counts, pieces, get)
    del pieces
    return apply_all(ray, blocks, op, k, template, counts, routed, get)


def scatter_all(ray, refs: list, op, template, get, parts: int, stage: tuple | None = None
                ) -> tuple[list, np.ndarray, list[list]]:
    """Scatter every block (running the stage first, with ``stage``): ``(refs of the blocks to apply the decision
    to, each block's live rows, [per partition, a ref per block to its piece]))``, once every block is scattered;
    a failure waiting to be raised (``on_error="raise"``) is raised, the first of all the blocks, as the local
    executor meets it."""
    import pyarrow as pa

    if stage is not None:
        ops, first, batch_rows, resources = stage
        task = ray.remote(stage_scatter).options(num_returns=3, **resources)
        got = [task.remote(r, ops, first, template, batch_rows, parts) for r in refs]
        blocks, got = [b for b, _, _ in got], [(m, e) for _, m, e in got]
    else:
        scatter = ray.remote(scatter_block).options(num_returns=2)
        blocks, got = refs, [scatter.remote(r, op, template, parts) for r in refs]
    metas = get(ray, [m for m, _ in got])  # O(blocks x partitions): counts, flags and refs
    if any(failed for _, failed, _ in metas):
        st.accounting(pa.concat_tables(get(ray, [e for _, e in got])), template).check()
    counts = np.array([n for n, _, _ in metas], np.int64)
    return blocks, counts, [[pieces[p] for _, _, pieces in metas] for p in range(parts)]


def decide_all(ray, op, counts: np.ndarray, pieces: list[list], get) -> list[list]:
    """Decide every partition: lists (one per deciding task) of a ref per block to its dropped rows (or None)."""
    offsets = np.concatenate([[0], np.cumsum(counts)])
    if op.near and not op.banded:
        pairs = ray.remote(pairs_part)
        found = get(ray, [pairs.remote(op, offsets, *part) for part in pieces])
        return [get(ray, ray.remote(cluster_part).remote(offsets, *found))]
    decide = ray.remote(decide_part)
    return get(ray, [decide.remote(op, offsets, *part) for part in pieces])


def apply_all(ray, refs: list, op, k: int, template, counts: np.ndarray, routed: list[list], get) -> list:
    """Apply the decision to every block: the refs of the output blocks, once all are applied (a lost object
    raises here, and the barrier runs again)."""
    apply = ray.remote(apply_part).options(num_returns=2)
    out = [apply.remote(r, op, k, template, int(counts[b]), *(d[b] for d in routed if d[b] is not None))
           for b, r in enumerate(refs)]
    get(ray, [ok for _, ok in out])
    return [block for block, _ in out]
