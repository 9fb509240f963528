"""The Ray executor: the same operators, on Ray Data.

* Per-batch operators (mappers, filters, augmenters) run as ``map_batches`` over Arrow blocks: consecutive
  stateless ones as one task per block running them in turn (as the local executor's chain), ones with state
  (those overriding ``setup()``, e.g. a model or a language detector) as actor pools with ``concurrency``,
  ``num_cpus`` and ``num_gpus``; ``setup()`` runs once per actor.
* Every task runs the engine's runtime (:func:`datacopilot.engine.run_chain`) over its block, ``batch_size`` rows
  at a time, with a fresh :class:`~datacopilot.engine.Accounting` that travels back in the block
  (:mod:`.ray_stages`).
* Deduplicators and groupers are barriers (:mod:`datacopilot.engine.barriers`): the task closing the run before
  one observes its rows (its keys or signatures are held in the block's event row, its rows stay in the object
  store); a deduplicator's keys are then hash-partitioned across tasks (by the stage's own task when its
  operators have no state: no task more per block), each partition decides its own and the dropped rows go back
  to their blocks (:mod:`.ray_dedup`), a grouper's rows are range- or hash-partitioned
  (:mod:`.ray_group`); the driver holds references and per-block counts. ``barriers="driver"`` decides a
  deduplicator on the driver as before (``dedup_drops``, online against the keys seen so far), and a grouper's
  order (``group_order``), for comparison.
* Files are read in parallel, one Ray task per input file or per part of a big one (``split_bytes``: jsonl
  byte ranges, parquet row groups, Arrow IPC record batches), with datacopilot's own readers (same rows, same
  validation, same lines in messages as the local executor); ``write`` writes the shards in parallel Ray tasks
  (:mod:`.ray_write`).
* The driver merges the blocks' accountings in block order at the end, so a task Ray retries after a worker dies
  never counts twice, and the rows, the per-operator records, the quarantine and the first failure raised (its
  row among the operator's input) are the local executor's.

>>> import datacopilot as dc
>>> from datacopilot.operators import create
>>> ds = dc.MMDataset.from_rows([{"conversations": [{"from": "human", "value": "hi  there"},
...                                                 {"from": "gpt", "value": "hello"}]}], schema="MM")
>>> table, records, quarantine = run_ops_on_ray(ds, [create("clean_whitespace")])  # doctest: +SKIP
>>> records[0].rows_out  # doctest: +SKIP
1
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from datacopilot.engine import POLICIES, Accounting, Deduplicator, Evaluator, Grouper, Operator, is_barrier
from datacopilot.errors import DataCopilotError, MissingDependencyError
from datacopilot.history import OpRecord
from datacopilot.io.parts import SPLIT_BYTES, check_split_bytes
from datacopilot.schemas.arrow_build import concat_tables

from . import ray_stages as st


def require_ray():
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise MissingDependencyError("ray", "ray") from e
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how operators run: ``address`` of a cluster (None: start or reuse a local Ray), resources of
    each task or actor, ``concurrency`` (actors per pool for operators with state), then what an operator asks
    for itself (:meth:`Operator.resources`, e.g. a model operator's ``num_gpus``), then ``resources`` per
    operator name overriding both (e.g. ``{"filter_language": {"concurrency": 4, "num_gpus": 1}}``).
    ``block_rows``: rows per Ray block (at least the plan's ``batch_size``); a task still gives the operators
    ``batch_size`` rows at a time, so bigger blocks only mean fewer tasks. ``split_bytes``: files bigger than
    this are read in parts of about this size, a task each (None: one task per file). ``barriers``:
    ``"partitioned"`` (a deduplicator's keys hash-partitioned across tasks, :mod:`.ray_dedup`) or ``"driver"``
    (decided on the driver against the keys seen so far, as before; kept for comparison)."""

    address: str | None = None
    num_cpus: float = 1
    num_gpus: float = 0
    concurrency: int = 1
    resources: dict | None = None
    block_rows: int = 8192
    split_bytes: int | None = SPLIT_BYTES
    barriers: str = "partitioned"

    def __post_init__(self):
        if isinstance(self.block_rows, bool) or not isinstance(self.block_rows, int) or self.block_rows < 1:
            raise DataCopilotError(f"`block_rows` must be a positive integer, got {self.block_rows!r}")
        check_split_bytes(self.split_bytes)
        if self.barriers not in ("partitioned", "driver"):
            raise DataCopilotError(f"`barriers` must be one of ('partitioned', 'driver'), got {self.barriers!r}")

    def of(self, op) -> dict:
        over = dict((self.resources or {}).get(op.name, {}))
        bad = set(over) - {"num_cpus", "num_gpus", "concurrency"}
        if bad:
            raise DataCopilotError(f"resources[{op.name!r}]: unknown key(s) {sorted(bad)}; expected num_cpus, "
                                   f"num_gpus, concurrency")
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "concurrency": self.concurrency,
                **op.resources(), **over}


def stateful(op) -> bool:
    """True when the operator builds state in ``setup()`` (it then runs in an actor pool)."""
    return type(op).setup is not Operator.setup


def init(options: RayOptions | None = None):
    """Connect to Ray (``options.address``) or start a local instance, unless one is already up."""
    ray = require_ray()
    if not ray.is_initialized():
        address = options.address if options else None
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": None}))
    return ray


def _blocks(table: pa.Table, batch_size: int) -> list[pa.Table]:
    return [table.slice(i, batch_size) for i in range(0, table.num_rows, batch_size)] or [table]


def _read_unit(source, unit: str, batch_size: int, invalid: str, part=None, report: bool = False):
    """A Ray task over one input file, or one part of it: yields its validated blocks, then the list of its
    invalid rows; with ``report``, first the schema the source holds after its first block (what the file's next
    parts are read with)."""
    source.bad = []
    blocks = source.batches(unit, batch_size, invalid, part)
    if report:
        first = next(blocks, None)
        yield source.schema
        if first is not None:
            yield first
    # not `yield from`: Ray drives the generator with send(), which a list iterator lacks
    for block in blocks:  # noqa: UP028
        yield block
    yield source.bad


def _split_units(source, units: list[str], target: int, batch_size: int) -> list:
    """A Ray task: the parts of each of ``units`` (:meth:`Source.parts`), so the driver opens no file."""
    return [source.parts(u, target, batch_size) for u in units]


def _count_part(source, unit: str, part) -> int:
    """A Ray task: what ``part`` holds of the lines or rows counted before the file's next parts."""
    return source.count(unit, part)


SPLIT_FILES = 64  # files whose parts one split task works out


class _Read:
    """One launched read task: its streaming generator, the refs taken from it ahead (a reported schema)."""

    def __init__(self, gen, report: bool):
        self.gen, self.report, self.head = gen, report, []

    def schema(self, ray):
        """The schema the task reported; raises what the task raised before reporting it."""
        self.head.append(next(self.gen))
        return get(ray, self.head[0])

    def collect(self, ray) -> tuple[list, list]:
        """(refs of its blocks, its invalid rows), once it has finished; raises what it raised."""
        got = self.head + list(self.gen)
        if self.report and len(got) > 1:
            got = got[1:]
        return got[:-1], get(ray, got[-1])


def _input(ray, data, batch_size: int, invalid: str, split_bytes: int | None = None):
    """A Ray dataset of the input: a table split in blocks, or a pipeline Source's files read one Ray task per
    file, or per part of a file bigger than ``split_bytes`` (:mod:`datacopilot.io.parts`: jsonl byte ranges,
    parquet row groups, Arrow IPC record batches); the invalid rows found are added to ``source.bad``, in file
    order, as the local executor does. A file's first part is read at once; its other parts once the counts of
    the lines before them are known (a task per part counts them, when the split could not) and, without a
    schema, once the first part has detected one (read with it, as a whole-file read reads its later blocks).
    So the rows, blocks' order, messages and invalid rows are those of one task per file."""
    if isinstance(data, pa.Table):
        return ray.data.from_arrow(_blocks(data, batch_size))
    from datacopilot.io.parts import counted

    read = ray.remote(_read_unit).options(num_returns="streaming")
    shipped = copy.copy(data)  # the workers read the files and their images where the driver means
    shipped.root, shipped.paths = at_driver(data.root), [at_driver(u) for u in data.paths]
    units = [at_driver(u) for u in data.units()]
    parts: list = [[] for _ in units]
    if split_bytes is not None:
        split = ray.remote(_split_units)
        chunks = [units[i:i + SPLIT_FILES] for i in range(0, len(units), SPLIT_FILES)]
        parts = [ps for got in get(ray, [split.remote(shipped, c, split_bytes, batch_size) for c in chunks])
                 for ps in got]
    count = ray.remote(_count_part)
    counts = [[count.remote(shipped, u, p) for p in ps[:-1]] if any(p.before is None for p in ps) else None
              for u, ps in zip(units, parts)]
    report = shipped.schema is None
    reads = [[_Read(read.remote(shipped, u, batch_size, invalid, ps[0] if ps else None, report and bool(ps)),
                    report and bool(ps))] for u, ps in zip(units, parts)]
    for u, ps, n, rs in zip(units, parts, counts, reads):
        if len(ps) < 2:
            continue
        ps = counted(ps, get(ray, n)) if n is not None else ps
        src, k = shipped, 1
        try:
            while src.schema is None and k < len(ps):  # the parts in turn until one has detected the schema
                src = copy.copy(shipped)
                src.schema = rs[-1].schema(ray)
                if src.schema is None:
                    rs.append(_Read(read.remote(src, u, batch_size, invalid, ps[k], True), True))
                    k += 1
        except DataCopilotError:  # the part raised before it had a schema: the error comes in file order
            continue
        rs += [_Read(read.remote(src, u, batch_size, invalid, p), False) for p in ps[k:]]
    refs = []
    for rs in reads:
        for r in rs:
            got, bad = r.collect(ray)
            refs += got
            data.bad += bad
    return ray.data.from_arrow_refs(refs)


def get(ray, refs):
    """``ray.get``, re-raising a datacopilot error from a worker as itself."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, DataCopilotError):
            raise e.cause from None
        raise


def at_driver(path: str | None) -> str | None:
    """A local path made absolute against the driver's working directory (a Ray worker has its own); a URL
    or None as it is.

    >>> at_driver("s3://b/x"), at_driver(None), at_driver("/a/b")
    ('s3://b/x', None, '/a/b')
    """
    return path if path is None or "://" in path else os.path.abspath(path)


def _check_ops(ops, on_error: str, columns: list[str] | None, root) -> list:
    if on_error not in POLICIES:
        raise DataCopilotError(f"`on_error` must be one of {POLICIES}, got {on_error!r}")
    ops = [ops] if isinstance(ops, Operator) else list(ops)
    out = []
    for op in ops:
        if not isinstance(op, Operator) or isinstance(op, Evaluator):
            raise DataCopilotError(f"the ray executor runs mappers, filters, augmenters and deduplicators, got {op!r}")
        if columns is not None:
            op.check(columns)
            columns = sorted(set(columns) | set(op.writes))
        if op.uses_root and (op.p.get("root") or root):  # given or filled in, absolute: a worker's cwd is not ours
            op = op.replace(root=at_driver(op.p.get("root") or root))
        out.append(op)
    return out


def run_ops_on_ray(data, ops: Sequence, on_error: str = "raise", *, schema=None, root=None,
                   batch_size: int = 1024, options: RayOptions | None = None
                   ) -> tuple[pa.Table, list[OpRecord], pa.Table | None]:
    """Run operators on Ray over ``data``: an MMDataset, an Arrow table, paths of files (read with ``schema``;
    invalid rows raise, or under ``skip`` / ``quarantine`` are left out) or a pipeline Source.

    Returns ``(rows, one OpRecord per operator, quarantined rows or None)`` -- the same rows in the same order and
    the same records as ``ds.apply(ops, on_error=on_error)``. ``on_error="raise"`` raises the first failure as an
    OperatorError (naming the operator and the row id) once the run has finished.

    >>> table, records, _ = run_ops_on_ray(ds, [create("filter_turns", min_turns=2)])  # doctest: +SKIP
    """
    ray, refs, ops, _, _ = execute(data, ops, on_error, schema=schema, root=root, batch_size=batch_size,
                                            options=options)
    parts = [st.split(b) for b in get(ray, refs)]
    table = concat_tables([live for live, _ in parts if live.num_columns])
    records, quarantine = account(pa.concat_tables([ev for _, ev in parts]), table.num_rows, ops, on_error)
    return table, records, quarantine


def execute(data, ops: Sequence, on_error: str, *, schema=None, root=None, batch_size: int = 1024,
            options: RayOptions | None = None):
    """Run the operators; returns ``(ray, refs of the output blocks in order, the operators as run, the image
    root, seconds)``. The blocks hold the live rows and their accounting (:mod:`.ray_stages`); under
    ``on_error="raise"`` a failure met before a barrier is raised there."""
    from datacopilot.source import Source

    from .spill import sweep

    sweep()  # the local executor's spill directories left by dead drivers on this machine, at the start of a run
    options = options or RayOptions()
    if not isinstance(data, (pa.Table, Source)):  # an MMDataset (its rows and root), else paths of files
        data = Source.from_dataset(data) if hasattr(data, "to_arrow") else Source.from_paths(data, schema=schema,
                                                                                              root=root)
    if isinstance(data, Source):
        root = root if root is not None else data.root
        data = data.dataset.to_arrow() if data.dataset is not None else data
    columns = data.column_names if isinstance(data, pa.Table) else data.columns()
    ops = _check_ops(ops, on_error, columns, root)
    ray = init(options)
    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.op_resource_reservation_enabled
    ctx.execution_options.preserve_order = True  # rows in input order, as the local executor gives them
    # Ray Data reserves half of the CPUs per operator by default, which leaves one stage on two CPUs running one
    # task at a time; the stages of a plan run one after the other anyway (dedups are barriers)
    ctx.op_resource_reservation_enabled = False
    log = logging.getLogger("ray.data")
    level = log.level
    log.setLevel(max(level, logging.WARNING))  # no per-dataset INFO lines: the report says what happened
    t0 = time.perf_counter()
    template = Accounting(ops, on_error)  # each block's is a fresh copy
    try:
        ds = _input(ray, data, max(batch_size, options.block_rows), "raise" if on_error == "raise" else "quarantine",
                    options.split_bytes)
        for lo, hi in stages(ops, options):
            ds = _stage(ray, ds, ops[lo:hi], lo, template, options, batch_size)
        refs = list(ds.to_arrow_refs())
    finally:
        ctx.execution_options.preserve_order, ctx.op_resource_reservation_enabled = saved
        log.setLevel(level)
    return ray, refs, ops, root, time.perf_counter() - t0


def stages(ops: list, options: RayOptions) -> list[tuple[int, int]]:
    """The plan cut in stages, ``(first, end)`` operator indices: a run of operators without state that ask
    for the same resources (one task per block runs them all), a deduplicator closing the run it follows (it
    computes its keys in the same task), an operator with state alone (its actor pool).

    >>> from datacopilot.operators import create
    >>> stages([create("clean_whitespace"), create("filter_turns"), create("dedup_exact"),
    ...         create("dedup_near_text")], RayOptions())
    [(0, 3), (3, 4)]
    """
    out, i = [], 0
    while i < len(ops):
        j = i + 1
        if not stateful(ops[i]) and not is_barrier(ops[i]):
            res = options.of(ops[i])
            while j < len(ops) and not stateful(ops[j]) and options.of(ops[j]) == res:
                j += 1
                if is_barrier(ops[j - 1]):
                    break
        out.append((i, j))
        i = j
    return out


def _stage(ray, ds, ops: list, first: int, template: Accounting, options: RayOptions, batch_size: int):
    res = options.of(ops[0])
    common = {"batch_format": "pyarrow", "batch_size": None, "zero_copy_batch": True, "num_cpus": res["num_cpus"]}
    if res["num_gpus"]:
        have = ray.cluster_resources().get("GPU", 0)
        if have < res["num_gpus"]:  # Ray would wait for them forever
            raise DataCopilotError(f"{ops[0].label}: asks for {res['num_gpus']} GPU(s) per worker but the Ray "
                                   f"cluster has {have:g}; set num_gpus: 0 (the model spec or resources) or "
                                   f"connect to a cluster with GPUs")
        common["num_gpus"] = res["num_gpus"]
    if isinstance(ops[-1], Deduplicator) and options.barriers == "partitioned" and ops[-1].partitionable \
            and not stateful(ops[0]):  # the stage runs in the tasks that scatter its keys (no task more a block)
        from .ray_dedup import dedup

        resources = {"num_cpus": res["num_cpus"], **({"num_gpus": res["num_gpus"]} if res["num_gpus"] else {})}
        return dedup(ray, ds, ops[-1], first + len(ops) - 1, template, get, stage=(ops, first, batch_size, resources))
    if stateful(ops[0]):
        ds = ds.map_batches(st.StageActor, fn_constructor_args=(ops, first, template, batch_size),
                            concurrency=res["concurrency"], **common)
    else:
        ds = ds.map_batches(st.run_block, fn_args=(ops, first, template, batch_size), **common)
    if isinstance(ops[-1], Deduplicator):
        ds = _dedup(ray, ds, ops[-1], first + len(ops) - 1, template, options)
    elif isinstance(ops[-1], Grouper):
        ds = _group(ray, ds, ops[-1], first + len(ops) - 1, template, batch_size, options)
    return ds


def _observe(ray, ds, template: Accounting):
    """A barrier's observed blocks: ``(refs of the blocks, an iterator of their (payload pieces, live rows) in block
    order, as they come, refs of their event rows)``; under ``on_error="raise"`` a failure met is raised as it
    comes (the first of all the blocks: the earliest operator's first failed row)."""
    refs = list(ds.to_arrow_refs())
    task = ray.remote(st.observed).options(num_returns=2)
    got = [task.remote(r, template) for r in refs]
    events = [e for _, e in got]

    def seen():
        for meta, _ in got:
            pieces, n, failed = get(ray, meta)
            if failed:
                st.accounting(pa.concat_tables(get(ray, events)), template).check()
            yield pieces, n

    return refs, seen(), events


def _dedup(ray, ds, op, k: int, template: Accounting, options: RayOptions):
    """The barrier of a deduplicator: partitioned across tasks (:mod:`.ray_dedup`) when its keys can be
    (``op.partitionable``), else (or with ``options.barriers="driver"``) keys per block -> duplicates decided on the driver -> applied per block. There
    exact and banded keys are decided block by block as they come, against the keys seen so far (the driver holds
    one block's keys and the set) and each block's decision is sent as soon as it is made."""
    from datacopilot.engine.barriers import SeenKeys, dedup_drops, keys_of

    if options.barriers == "partitioned" and op.partitionable:
        from .ray_dedup import dedup

        return dedup(ray, ds, op, k, template, get)

    refs, seen, _ = _observe(ray, ds, template)
    if op.online:
        keys = SeenKeys()
        drops = ((~keys.keep(keys_of(op, pieces)), n) for pieces, n in seen)
    else:
        seen = list(seen)
        drop = dedup_drops(op, [p for pieces, _ in seen for p in pieces])
        bounds = np.cumsum([0, *(n for _, n in seen)])
        drops = ((drop[bounds[i]:bounds[i + 1]], n) for i, (_, n) in enumerate(seen))
    apply = ray.remote(st.apply_block)
    out = []
    for r, (d, n) in zip(refs, drops):
        if len(d) != n:
            raise DataCopilotError(f"{op.label}: {len(d)} keys for a block of {n} rows")
        out.append(apply.remote(r, op, k, d, template))
    return ray.data.from_arrow_refs(out)


def _group(ray, ds, op, k: int, template: Accounting, batch_size: int, options: RayOptions):
    """The barrier of a grouper, as distributed stages (:mod:`.ray_group`): rows range-partitioned by key
    (``sort``, ``shuffle``) or sent to the range of their group's first row once each key partition has decided
    its groups (``merge_same_image``); the driver holds references and per-block counts. With
    ``options.barriers="driver"`` (or a grouper with its own ``arrange``) the order is decided on the driver. The
    blocks' accountings travel on in blocks of their own, ahead of the output."""
    from . import ray_group

    block_rows = max(batch_size, options.block_rows)
    if options.barriers == "driver":
        return ray_group.driver_group(ray, ds, op, k, template, batch_size, block_rows, get)
    return ray_group.group(ray, ds, op, k, template, batch_size, block_rows, get)


def account(ev: pa.Table, rows_out: int, ops: list, policy: str):
    """One OpRecord per operator and the quarantined rows (None when none), from the event rows of a run's blocks
    (in block order) and its number of output rows; under ``policy="raise"`` the first failure (the one the local
    executor meets: the earliest operator's first failed row) is raised."""
    acc = st.accounting(ev, Accounting(ops, policy))
    acc.check()
    records = acc.records()
    if records and records[-1].rows_out != rows_out:  # each block's output counted once, or the records lie
        raise DataCopilotError(f"ray executor: {ops[-1].label} counted {records[-1].rows_out} rows out, the run "
                               f"gave {rows_out}")
    return records, acc.take_quarantine() if policy == "quarantine" else None
