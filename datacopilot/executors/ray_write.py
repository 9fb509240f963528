"""Writing a pipeline's output on Ray: each shard is written by a Ray task from the output blocks it spans, so
rows never pass through the driver, into the staging area of the output; the driver tallies the accounting, then
writes the quarantine shard and publishes the output with its manifest and report. Naming, hashing, the manifest and
the publish are the one shard writer's (:class:`datacopilot.io.sink.ShardSink`, as the local executor's write and
``write_shards`` use it): a task writes under the name the sink gives, the driver records the entries in order.

Shards have the boundaries the default ``Executor.write`` gives them: ``max_rows_per_shard`` rows each, in order.

>>> get_executor("ray").write(plan, "out/")  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from datacopilot.schemas.arrow_build import concat_tables

from . import ray_stages as st


def shard_task(path: str, name: str, fmt: str, schema, root, first_row: int, skip: int, n: int,
               *blocks: pa.Table, image_paths: str = "keep", out_dir: str = ""):
    """A Ray task: rows ``skip .. skip + n`` of the live rows of ``blocks``, written as the shard ``name`` at
    ``path`` (a staged path; ``first_row`` is the output's row number of its first row) by the one shard writer
    (:func:`datacopilot.io.sink.write_shard`), their image paths kept or rewritten (``image_paths``, against
    ``root`` and the output directory ``out_dir``) here, in the task; returns its manifest entry and what was done
    to the image paths, which the driver records (:meth:`datacopilot.io.sink.ShardSink.record`)."""
    from datacopilot.io.sink import shard_rows, write_shard

    live = [st.split(b)[0] for b in blocks]
    table = concat_tables([t for t in live if t.num_rows]).slice(skip, n)
    ds, info = shard_rows(fmt, table, schema, root, out_dir, image_paths)
    return write_shard(fmt, ds, path, name, first_row), info


def summary(block: pa.Table) -> tuple[pa.Table, int, pa.Schema]:
    """A Ray task: a block's event rows, its number of live rows and their schema."""
    live, ev = st.split(block)
    return ev, live.num_rows, live.schema


def write_on_ray(executor, plan, out_dir: str, format: str, resume: bool, max_rows: int | None,
                 image_paths: str = "keep") -> dict:
    """Run ``plan`` on Ray and write its output under ``out_dir``; returns the report (see Executor.write)."""
    from .output import make_report, open_sink, with_invalid
    from .ray import account, at_driver, execute, get

    src = plan.source
    sink = open_sink(plan, out_dir, format, max_rows, resume, image_paths)
    if sink.finished:
        return make_report(out_dir, sink.manifest)
    if sink.done:  # a local run's progress (segments, dedup state): a Ray write is one segment, it starts over
        sink = open_sink(plan, out_dir, format, max_rows, False, image_paths)
    data = src.dataset.to_arrow() if src.dataset is not None else src
    ray, refs, ops, root, _ = execute(data, plan.prepared_ops(), plan.on_error, root=src.root,
                                            batch_size=plan.batch_size, options=executor.options)
    sums = get(ray, [ray.remote(summary).remote(r) for r in refs])
    counts = [n for _, n, _ in sums]
    total = sum(counts)
    records, quarantine = account(pa.concat_tables([e for e, _, _ in sums]), total, ops, plan.on_error)
    bounds = np.cumsum([0, *counts])
    step = max_rows or max(total, 1)
    schema = None
    if total:
        like = next(s for (_, n, s) in sums if n)
        schema = plan.output_schema(like.empty_table())
    write = ray.remote(shard_task)
    # the tasks write and rewrite image paths where the driver means (a worker's cwd is not the driver's)
    at = at_driver
    where, root_at = at(out_dir), at(root)
    tasks = []
    for k, start in enumerate(range(0, total, step)):
        end = min(start + step, total)
        span = [i for i in range(len(refs)) if bounds[i] < end and bounds[i + 1] > start and counts[i]]
        name = sink.shard_name(k)
        tasks.append(write.remote(at(sink.path(name)), name, format, schema, root_at, start,
                                  int(start - bounds[span[0]]), end - start, *[refs[i] for i in span],
                                  image_paths=image_paths, out_dir=where))
    for entry, info in get(ray, tasks):  # in order; the manifest records the root of kept paths, or how many
        sink.record(entry, info, schema)   # were rewritten
    sink.end_units(tuple(range(len(sink.units))), src.schema, root, with_invalid(quarantine, src.bad), records, {},
                   len(src.bad))
    return make_report(out_dir, sink.manifest)
