"""Writing a pipeline's output on Ray: each shard is written by a Ray task from the output blocks it spans, so
rows never pass through the driver, into the staging area of the output; the driver tallies the accounting, then
writes the quarantine shard and publishes the output with its manifest and report (through
:class:`datacopilot.pipeline_io.ShardSink`, as the local executor's write does).

Shards have the boundaries the default ``Executor.write`` gives them: ``max_rows_per_shard`` rows each, in order.

>>> get_executor("ray").write(plan, "out/")  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from datacopilot.schemas.arrow_build import concat_tables

from . import ray_stages as st


def write_shard(path: str, name: str, fmt: str, schema, root, first_row: int, skip: int, n: int,
                *blocks: pa.Table, image_paths: str = "keep", out_dir: str = ""):
    """A Ray task: rows ``skip .. skip + n`` of the live rows of ``blocks``, written as one shard at ``path`` (a
    staged path; ``first_row`` is the output's row number of its first row), their image paths kept or rewritten
    (``image_paths``, against ``root`` and the output directory ``out_dir``) here, in the task; returns its
    manifest entry and what was done to the image paths (:class:`datacopilot.media.ImagePaths`)."""
    from datacopilot.dataset import MMDataset
    from datacopilot.io import FORMATS
    from datacopilot.io._fs import file_sha256
    from datacopilot.io.shards import write_part
    from datacopilot.media import image_paths_for

    live = [st.split(b)[0] for b in blocks]
    table = concat_tables([t for t in live if t.num_rows]).slice(skip, n)
    ds, info = image_paths_for(MMDataset(table, schema, root=root), out_dir, image_paths, FORMATS[fmt].embeds_images)
    write_part(fmt, ds, path, first_row)
    digest, size = file_sha256(path)
    return {"file": name, "rows": table.num_rows, "bytes": size, "sha256": digest}, info


def summary(block: pa.Table) -> tuple[pa.Table, int, pa.Schema]:
    """A Ray task: a block's event rows, its number of live rows and their schema."""
    live, ev = st.split(block)
    return ev, live.num_rows, live.schema


def write_on_ray(executor, plan, out_dir: str, format: str, resume: bool, max_rows: int | None,
                 image_paths: str = "keep") -> dict:
    """Run ``plan`` on Ray and write its output under ``out_dir``; returns the report (see Executor.write)."""
    from datacopilot.media import add_image_paths, check_image_paths
    from datacopilot.pipeline_io import ShardSink, make_report, plan_fingerprint, with_invalid

    from .ray import _get, account, at_driver, execute

    src = plan.source
    sink = ShardSink(out_dir, format, max_rows, src.units(), resume,
                     plan_fingerprint(plan, format, max_rows, check_image_paths(image_paths)), image_paths)
    if sink.finished:
        return make_report(out_dir, sink.manifest)
    if sink.done:  # a local run's progress (segments, dedup state): a Ray write is one segment, it starts over
        sink = ShardSink(out_dir, format, max_rows, src.units(), False, sink.fingerprint, image_paths)
    data = src.dataset.to_arrow() if src.dataset is not None else src
    ray, refs, ops, root, seconds = execute(data, plan.prepared_ops(), plan.on_error, root=src.root,
                                            batch_size=plan.batch_size, options=executor.options)
    sums = _get(ray, [ray.remote(summary).remote(r) for r in refs])
    counts = [n for _, n, _ in sums]
    total = sum(counts)
    records, quarantine = account(pa.concat_tables([e for e, _, _ in sums]), total, ops, plan.on_error, root,
                                  seconds)
    bounds = np.cumsum([0, *counts])
    step = max_rows or max(total, 1)
    schema = None
    if total:
        like = next(s for (_, n, s) in sums if n)
        schema = plan.output_schema(like.empty_table())
    write = ray.remote(write_shard)
    # the tasks write and rewrite image paths where the driver means (a worker's cwd is not the driver's)
    at = at_driver
    where, root_at = at(out_dir), at(root)
    tasks = []
    for k, start in enumerate(range(0, total, step)):
        end = min(start + step, total)
        span = [i for i in range(len(refs)) if bounds[i] < end and bounds[i + 1] > start and counts[i]]
        name = sink.shard_name(k)
        tasks.append(write.remote(at(sink.run.path(name)), name, format, schema, root_at, start,
                                  int(start - bounds[span[0]]), end - start, *[refs[i] for i in span],
                                  image_paths=image_paths, out_dir=where))
    written = _get(ray, tasks)
    sink.pending, sink.schema, sink.k = [entry for entry, _ in written], schema, len(tasks)
    for _, info in written:  # the manifest records the root of kept paths, or how many were rewritten
        add_image_paths(sink.manifest, info)
    sink.end_units(tuple(range(len(sink.units))), src.schema, root, with_invalid(quarantine, src.bad), records, {},
                   len(src.bad))
    return make_report(out_dir, sink.manifest)
