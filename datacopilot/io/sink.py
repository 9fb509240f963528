"""The one shard writer: every directory output (``write_shards``, a pipeline's write on any executor, the shards
Ray's tasks write) goes through :class:`ShardSink`, which owns

* the names: ``part-gNNNN-IIIII<ext>``, the generation and the shard's index in the output (the quarantine's
  ``quarantine/part-gNNNN-QQQQQ.arrow``), so a segment written again after a crash rewrites the same files;
* one shard: :func:`write_shard` writes rows into a staged path and hashes them as they are written; it runs
  where the rows are (the driver, a thread, a Ray task) and returns the shard's manifest entry, which the sink
  records (:meth:`ShardSink.record`);
* the manifest: ``format``, ``schema``, ``rows``, ``shards`` and ``quarantine`` (``file``, ``rows``, ``bytes``,
  ``sha256`` each), ``image_paths`` (and ``root``), ``created``, ``generation``, ``complete``; a pipeline's adds
  ``pipeline`` (its input units, the finished ones, the plan's fingerprint and identity (:mod:`.identity`), its
  run state, the invalid input rows of the finished units) and ``report``;
* staging and the atomic publish (:class:`datacopilot.io.outputs.Staged`);
* streaming (:meth:`ShardSink.add`: tables cut into shards of ``max_rows``) or a whole table at once on threads
  (:meth:`ShardSink.write_table`), and for a pipeline the finished input units (:meth:`ShardSink.end_units`),
  which a resumed run continues from.

>>> import tempfile
>>> from datacopilot import MMDataset
>>> ds = MMDataset.from_rows([{"id": "a", "caption": "x"}, {"id": "b", "caption": "y"}], schema="CAPTION")
>>> sink = ShardSink(tempfile.mkdtemp(), "jsonl", max_rows=1)
>>> sink.write_table(ds.to_arrow(), ds.schema, ds.root)
>>> [(s["file"], s["rows"]) for s in sink.publish(ds.schema)["shards"]]
[('part-g0001-00000.jsonl', 1), ('part-g0001-00001.jsonl', 1)]
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pyarrow as pa
from tqdm.auto import tqdm

from datacopilot.errors import DataCopilotError, InputError, PlanChangedError
from datacopilot.schemas import Schema
from datacopilot.schemas.arrow_build import concat_tables

from ._fs import MANIFEST, atomic_open, check_entries, file_sha256, get_fs, hashed_writes, is_complete, join, read_json
from .formats import FORMATS, writer_for
from .identity import plan_changes
from .outputs import Staged
from .rows import Rows

REPORT = "report.json"
log = logging.getLogger("datacopilot")


def check_limits(max_rows: int | None, max_bytes: int | None = None) -> None:
    if max_rows is not None and max_rows < 1:
        raise DataCopilotError(f"`max_rows_per_shard` must be positive, got {max_rows!r}")
    if max_bytes is not None and max_bytes < 1:
        raise DataCopilotError(f"`max_bytes_per_shard` must be positive, got {max_bytes!r}")


def shard_bounds(table, max_rows: int | None, max_bytes: int | None) -> list[tuple[int, int]]:
    """Row ranges of the shards: at most ``max_rows`` rows and ``max_bytes`` bytes of Arrow data each (a row
    larger than ``max_bytes`` gets a shard of its own). Sizes are measured per slice, so shards stay within the
    limit even when row sizes vary a lot; an empty table is one empty shard.

    >>> shard_bounds(pa.table({"a": range(5)}), 2, None)
    [(0, 2), (2, 4), (4, 5)]
    """
    check_limits(max_rows, max_bytes)
    n_rows = table.num_rows
    per = min(n_rows, max_rows) if max_rows is not None else n_rows
    out, start = [], 0
    while start < n_rows:
        end = min(start + per, n_rows)
        if max_bytes is not None and table.slice(start, end - start).nbytes > max_bytes:
            lo, hi = start + 1, end  # the largest end in [lo, hi] whose slice fits (at least one row)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if table.slice(start, mid - start).nbytes <= max_bytes:
                    lo = mid
                else:
                    hi = mid - 1
            end = lo
        out.append((start, end))
        start = end
    return out or [(0, 0)]


def shard_rows(format: str, table: pa.Table, schema, root, out_dir: str, image_paths: str = "keep"):
    """``(ds, ImagePaths)``: the rows of a shard of ``out_dir`` as the writer of ``format`` gets them, their image
    paths kept or rewritten (``image_paths``) against ``out_dir``, where the shard is published (not the staging
    area), and what was done to them."""
    from datacopilot.media import rebase_image_paths

    table, root, info = rebase_image_paths(table, schema, root, out_dir, image_paths, FORMATS[format].embeds_images)
    return Rows(table, schema, root), info


def write_part(format: str, ds, path: str, first_row: int = 0, **options) -> None:
    """Write one shard of an output; ``first_row`` is the output's row number of its first row (a webdataset
    shard numbers its ``__key__``s from it, so keys are unique across the shards of one output).

    >>> write_part("webdataset", ds[100:200], "out/part-00001.tar", first_row=100)  # doctest: +SKIP
    """

    if format == "webdataset":
        options = {"key_offset": first_row, **options}
    writer_for(format)(ds, path, **options)


def write_shard(format: str, ds, path: str, name: str, first_row: int = 0, **options) -> dict:
    """Write ``ds`` (rows from :func:`shard_rows`) as the shard ``name`` at the staged ``path``; its manifest
    entry (``file``, ``rows``, ``bytes``, ``sha256``). Runs anywhere: the driver, a thread, a Ray task.

    Rows in several chunks (the batches a pipeline made) are combined first, so an Arrow IPC shard is one record
    batch whatever the batches were. A slice of one chunk is written as it is, without a copy; Arrow's IPC writer
    then keeps a few bytes of the slice's buffer layout, so the same rows can give Arrow IPC files that differ
    in those bytes (and sha256) by how they were sliced. Parquet and the text formats give the same bytes for
    the same rows on every path."""

    table = ds.to_arrow()
    if any(c.num_chunks > 1 for c in table.columns):
        ds = Rows(table.combine_chunks(), ds.schema, ds.root)
    with hashed_writes() as files:
        write_part(format, ds, path, first_row, **options)
    if len(files) == 1 and files[0].sequential:  # hashed on the way out: no second read of the file
        digest, size = files[0].sha256.hexdigest(), files[0].size
    else:  # a writer that seeks (h5) or writes otherwise
        digest, size = file_sha256(path)
    return {"file": name, "rows": len(ds), "bytes": size, "sha256": digest}


def _key(table: pa.Table, schema) -> tuple:
    """What the pieces of a streamed shard must share: their Arrow types and their Schema."""
    return table.schema.remove_metadata(), getattr(schema, "name", None)


def _round_trips(rows: pa.Table, head: pa.Table) -> bool:
    """Whether ``head``, the parquet table of ``rows``, is ``rows`` and parquet gives it back exactly: a streamed
    shard whose later rows change its types is read back and written whole."""
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(head.slice(0, 1), buf)
    back = pq.read_table(io.BytesIO(buf.getvalue()))
    same = rows.schema.remove_metadata() == head.schema.remove_metadata()
    return same and back.schema.remove_metadata() == head.schema.remove_metadata() and back.equals(head.slice(0, 1))


def read_manifest(out_dir: str) -> dict | None:
    """The published manifest of ``out_dir`` (what ``load`` reads), or None."""
    return read_json(join(out_dir, MANIFEST))


def read_report(out_dir: str, manifest: dict) -> dict:
    """The report a pipeline's publish of ``manifest`` moved into ``out_dir``; an InputError when it is missing
    or of another generation."""
    report = read_json(join(out_dir, REPORT))
    if report is None or report.get("generation") != manifest.get("generation"):
        raise InputError(f"{join(out_dir, REPORT)}: missing or not the report of generation "
                         f"{manifest.get('generation')} of {out_dir}")
    return report


class ShardSink:
    """Writes the output in ``out_dir`` as shards of at most ``max_rows`` rows into the staging area of a new
    generation of it, then publishes it in one atomic step.

    A plain write (``units`` None: ``write_shards``) adds its rows and calls :meth:`publish`. A pipeline's write
    (``units``: its input units, in order) calls :meth:`end_units` when units end: their rows and quarantine
    are written, and the staged manifest (atomically) lists them as finished; after the last, the run's report
    is staged and the output published with it. With ``resume`` it continues the newest staged run, after
    checking that it was written for the same inputs and plan (``plan``, the plan's identity kept in the
    manifest: a :class:`~datacopilot.errors.PlanChangedError` names what differs; ``fingerprint`` for a manifest
    written before identities were kept) and that its manifest describes the staged files; a published output of
    the same plan whose files check out is a finished run (``finished``: nothing to write).

    Rows reach the sink by :meth:`add` (streamed, cut at ``max_rows``), :meth:`write_table` (a whole table,
    shards written on threads) or :meth:`record` (a shard a worker wrote under :meth:`shard_name` at
    :meth:`path`, recorded in order). ``options`` go to the format's writer.
    """

    def __init__(self, out_dir: str, format: str = "arrow", max_rows: int | None = 100_000,
                 units: list[str] | None = None, resume: bool = False, fingerprint: str | None = None,
                 image_paths: str = "keep", options: dict | None = None, plan: dict | None = None):
        from datacopilot.media import check_image_paths

        check_image_paths(image_paths)
        if format not in FORMATS:
            raise DataCopilotError(f"`format` must be one of {sorted(FORMATS)}, got {format!r}")
        check_limits(max_rows)
        if resume and units is None:
            raise DataCopilotError("`resume` needs the input `units` of a pipeline's write")
        self.dir, self.format, self.max_rows, self.units = out_dir, format, max_rows, units
        self.ext, self.fingerprint, self.finished = FORMATS[format].extensions[0], fingerprint, False
        self.image_paths, self.options, self.plan = image_paths, dict(options or {}), plan
        self.manifest = {"format": format, "schema": None, "rows": 0, "shards": [], "quarantine": [],
                         "image_paths": {"mode": image_paths, "rewritten": 0}}
        if units is not None:
            self.manifest["pipeline"] = {"units": units, "fingerprint": fingerprint, "image_paths": image_paths,
                                         "done": [], "segments": 0, "records": [], "state": {}, "invalid": 0,
                                         "complete": False}
            if plan is not None:
                self.manifest["pipeline"]["plan"] = plan
        self.run = self._resumed() if resume else None
        if self.run is None and not self.finished:
            self.run = Staged.fresh(out_dir)
        self.begin()

    # -- resume ----------------------------------------------------------------------------------------------
    def _same_plan(self, m: dict, where: str) -> None:
        """Refuse to continue ``m`` (a staged or published manifest at ``where``) with another plan: a
        PlanChangedError naming what changed (a manifest written before plans were kept in it: an InputError)."""
        p = m.get("pipeline", {})
        if p.get("image_paths", "keep") != self.image_paths:
            raise InputError(f"{where}: cannot resume: its shards were written with image_paths="
                             f"{p.get('image_paths', 'keep')!r}, now image_paths={self.image_paths!r}; resume with "
                             f"image_paths={p.get('image_paths', 'keep')!r}, or write again without resume=True")
        if p.get("plan") is not None and self.plan is not None:
            changes = plan_changes(p["plan"], self.plan)
            if changes:
                raise PlanChangedError(where, changes)
        if p.get("units") != self.units:
            raise InputError(f"{where}: cannot resume: its manifest was written for other inputs "
                             f"({len(p.get('units', []))} unit(s), now {len(self.units)})")
        if p.get("fingerprint") not in (None, self.fingerprint):
            raise InputError(f"{where}: cannot resume: its manifest was written by another plan (operators, "
                             "their parameters, the error policy, the format or the shard size differ); write "
                             "again without resume=True")

    def _resumed(self) -> Staged | None:
        """The staged run to continue, or None (``finished`` set when the published output is this run's)."""
        staged = Staged.staged(self.dir)
        if staged is not None:
            run, m = staged
            self._same_plan(m, run.stage)
            stage = run.stage.rstrip("/").rsplit("/", 1)[-1]
            problems = check_entries(self.dir, m, stage)
            problems += [f"{join(run.stage, n)}: listed in the manifest but missing"
                         for n in m.get("pipeline", {}).get("state", {}).get("seen", {}).values()
                         if not get_fs(join(run.stage, n))[0].exists(get_fs(join(run.stage, n))[1])]
            if problems:
                raise InputError(f"{self.dir}: cannot resume: the staged manifest does not describe the files "
                                 f"present ({'; '.join(problems)}); write again without resume=True")
            self.manifest = m
            if m.get("complete"):  # killed while publishing: finish that
                self.manifest, self.finished = run.publish(m), True
                return None
            return run
        published = read_manifest(self.dir)
        if published is not None and "pipeline" in published:
            self._same_plan(published, f"{self.dir} (its published output; no run of this plan is staged)")
            if is_complete(published):
                problems = check_entries(self.dir, published)
                if not published.get("report"):  # published before reports were listed in the manifest
                    problems.append(f"{join(self.dir, REPORT)}: not listed in the manifest")
                if not problems:
                    self.manifest, self.finished = published, True
                    return None
                log.warning("%s: the published output does not match its manifest (%s): writing it again",
                            self.dir, "; ".join(problems))
        return None

    @property
    def done(self) -> set[str]:
        """The finished input units (a staged run's, when resumed)."""
        return set(self.manifest["pipeline"]["done"])

    @property
    def segment(self) -> int:
        """How many segments (units finished together) are recorded."""
        return self.manifest["pipeline"]["segments"]

    @property
    def state(self) -> dict:
        """The run state of the finished segments (dedup seen-sets), named relative to :attr:`stage`."""
        return self.manifest["pipeline"]["state"]

    @property
    def stage(self) -> str:
        """The staging directory, where a run keeps its state files next to the staged shards."""
        return self.run.stage

    # -- shards ----------------------------------------------------------------------------------------------
    def begin(self) -> None:
        """Start a segment: no rows buffered, no shard pending."""
        self.pending, self.pending_q, self.buf, self.k, self.schema = [], [], [], 0, None
        self.out, self.mixed = None, False  # the parquet shard being streamed; this shard written whole

    def shard_name(self, k: int) -> str:
        """The name of the current segment's ``k``-th shard: the generation and its index in the output."""
        return f"part-{self.run.tag}-{len(self.manifest['shards']) + k:05d}{self.ext}"

    def path(self, name: str) -> str:
        """Where the file ``name`` is staged."""
        return self.run.path(name)

    def first_row(self) -> int:
        """The output's row number of the next shard's first row."""
        return self.manifest["rows"] + sum(e["rows"] for e in self.pending)

    def record(self, entry: dict, info=None, schema=None) -> None:
        """Record the segment's next shard, written by :func:`write_shard` under :meth:`shard_name` (a thread's,
        a Ray task's), with what :func:`shard_rows` did to its image paths (``info``; None: already counted) and
        the Schema of its rows (the manifest's ``schema``)."""
        from datacopilot.media import add_image_paths

        if entry["file"] != self.shard_name(self.k):
            raise DataCopilotError(f"{self.dir}: shard {entry['file']!r} recorded out of order: the next is "
                                   f"{self.shard_name(self.k)!r}")
        if info is not None:
            add_image_paths(self.manifest, info)
        if schema is not None:
            self.schema = schema
        self.pending.append(entry)
        self.k += 1

    def write(self, table: pa.Table, schema, root) -> None:
        """Write ``table`` now, as the segment's next shard."""
        name = self.shard_name(self.k)
        ds, info = shard_rows(self.format, table, schema, root, self.dir, self.image_paths)
        self.record(write_shard(self.format, ds, self.path(name), name, self.first_row(), **self.options), info)

    def add(self, table: pa.Table, schema, root) -> None:
        """Buffer ``table``; every ``max_rows`` buffered rows are written as a shard. A parquet shard (with the
        writer's defaults, image paths kept) is streamed: its file is opened once its first rows decide its
        layout, and written a row group at a time, so that only about a row group of rows is held."""
        if not table.num_rows:
            return
        if self._streams():
            self._add_streamed(table, schema, root)
            return
        self.buf.append(table)
        self.schema = schema
        while self.max_rows and sum(t.num_rows for t in self.buf) >= self.max_rows:
            whole = concat_tables(self.buf, schema)
            self.write(whole.slice(0, self.max_rows), schema, root)
            rest = whole.slice(self.max_rows)
            self.buf = [rest] if rest.num_rows else []

    # -- a streamed parquet shard ----------------------------------------------------------------------------
    def _streams(self) -> bool:
        return self.format == "parquet" and self.image_paths == "keep" and bool(self.max_rows) and not self.options

    def _add_streamed(self, table: pa.Table, schema, root) -> None:
        while table.num_rows:
            held = sum(t.num_rows for t in self.buf) + (self.out["rows"] if self.out else 0)
            piece, table = table.slice(0, self.max_rows - held), table.slice(self.max_rows - held)
            if self.out is not None and (self.out["key"] != _key(piece, schema)):
                self._unstream()  # the shard's rows are typed over all of them: written whole
            if self.buf and not self.out and _key(self.buf[0], self.schema) != _key(piece, schema):
                self.mixed = True
            self.buf.append(piece)
            self.schema = schema
            self._stream_groups(root, held + piece.num_rows >= self.max_rows)
            if held + piece.num_rows >= self.max_rows:
                self._close_shard(root)

    def _stream_groups(self, root, last: bool) -> None:
        """Open the shard's file once its first rows are buffered (not when they are the whole shard: that is
        written whole), then write every full row group buffered."""
        from .parquet import HEAD_ROWS, ParquetStream, parquet_table

        n = sum(t.num_rows for t in self.buf)
        if self.out is None and not self.mixed and not last and n >= HEAD_ROWS:
            whole = concat_tables(self.buf, self.schema)
            head = parquet_table(shard_rows(self.format, whole.slice(0, HEAD_ROWS), self.schema, root, self.dir,
                                            self.image_paths)[0])
            if not _round_trips(whole.slice(0, HEAD_ROWS), head):
                self.mixed = True
                return
            name = self.shard_name(self.k)
            stack = ExitStack()
            with hashed_writes() as files:  # the file is hashed as it is written, as write_shard's
                f = stack.enter_context(atomic_open(self.path(name), "wb"))
            self.out = {"name": name, "stack": stack, "files": files, "writer": ParquetStream(f, head),
                        "rows": 0, "infos": [], "key": _key(self.buf[0], self.schema)}
            self.buf = [whole]
        while self.out is not None and (n := sum(t.num_rows for t in self.buf)) and (
                n >= self.out["writer"].rows or last):
            whole = concat_tables(self.buf, self.schema)
            group = whole.slice(0, self.out["writer"].rows).combine_chunks()
            ds, info = shard_rows(self.format, group, self.schema, root, self.dir, self.image_paths)
            self.out["writer"].write(parquet_table(ds))
            self.out["rows"] += group.num_rows
            self.out["infos"].append(info)
            rest = whole.slice(group.num_rows)
            self.buf = [rest] if rest.num_rows else []

    def _close_shard(self, root) -> None:
        """Finish the shard: the streamed file closed and recorded, or the buffered rows written whole."""
        from datacopilot.media import add_image_paths

        if self.out is not None:
            self._stream_groups(root, True)
        out, self.out, self.mixed = self.out, None, False
        if out is None:
            if self.buf:
                self.write(concat_tables(self.buf, self.schema), self.schema, root)
                self.buf = []
            return
        out["writer"].close()
        out["stack"].close()
        path, files = self.path(out["name"]), out["files"]
        if len(files) == 1 and files[0].sequential:
            digest, size = files[0].sha256.hexdigest(), files[0].size
        else:
            digest, size = file_sha256(path)
        for info in out["infos"]:
            add_image_paths(self.manifest, info)
        self.record({"file": out["name"], "rows": out["rows"], "bytes": size, "sha256": digest})

    def _unstream(self) -> None:
        """Stop streaming the shard: its written rows read back (exactly the rows added: :func:`_round_trips`)
        in front of the buffered ones, its file dropped; the shard is written whole when it ends."""
        import pyarrow.parquet as pq

        out, self.out, self.mixed = self.out, None, True
        out["writer"].close()
        out["stack"].close()
        path = self.path(out["name"])
        fs, p = get_fs(path)
        with fs.open(p, "rb") as f:
            back = pq.read_table(f).replace_schema_metadata(None)
        fs.rm(p)
        self.buf = [back, *self.buf] if back.num_rows else self.buf

    def write_table(self, table: pa.Table, schema, root, max_bytes: int | None = None) -> None:
        """Write a whole table as the segment's next shards (``max_rows`` rows and ``max_bytes`` bytes of Arrow
        data each, see :func:`shard_bounds`; an empty table is one empty shard), on threads: Arrow's writers and
        compressors release the GIL. Image paths are rewritten once, before the table is cut."""
        from datacopilot.media import add_image_paths

        ds, info = shard_rows(self.format, table, schema, root, self.dir, self.image_paths)
        add_image_paths(self.manifest, info)
        bounds = shard_bounds(ds.to_arrow(), self.max_rows, max_bytes)
        self.schema = schema
        names, first = [self.shard_name(self.k + i) for i in range(len(bounds))], self.first_row()

        def one(i: int, a: int, b: int) -> dict:
            return write_shard(self.format, ds[a:b], self.path(names[i]), names[i], first + a, **self.options)

        with ThreadPoolExecutor(max_workers=min(len(bounds), os.cpu_count() or 1, 8)) as pool:
            futures = [pool.submit(one, i, a, b) for i, (a, b) in enumerate(bounds)]
            entries = [f.result() for f in tqdm(futures, desc=f"write {self.format} shards", unit="shard",
                                                leave=False, disable=len(futures) < 8)]
        for entry in entries:
            self.record(entry)

    def write_quarantine(self, table: pa.Table, root) -> None:
        """Write failed and invalid rows as the segment's quarantine shard (Arrow, schema inferred)."""
        from datacopilot.media import add_image_paths

        name = f"quarantine/part-{self.run.tag}-{len(self.manifest['quarantine']) + len(self.pending_q):05d}.arrow"
        ds, info = shard_rows("arrow", table, Schema.infer(table.schema, "QUARANTINE"), root, self.dir,
                              self.image_paths)
        add_image_paths(self.manifest, info)
        self.pending_q.append(write_shard("arrow", ds, self.path(name), name))

    # -- finishing -------------------------------------------------------------------------------------------
    def flush(self, root) -> None:
        """Write the buffered rows as a shard (the last of a segment may hold fewer than ``max_rows``)."""
        if self.out is not None:
            self._close_shard(root)
        if self.buf:
            self.write(concat_tables(self.buf, self.schema), self.schema, root)
            self.buf = []

    def _commit(self, schema) -> dict:
        """The manifest with the segment's shards in it."""
        m = self.manifest
        m["shards"] += self.pending
        m["quarantine"] += self.pending_q
        m["rows"] = sum(s["rows"] for s in m["shards"])
        if self.schema is not None or schema is not None:
            m["schema"] = (self.schema or schema).name
        m["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return m

    def _publish(self, m: dict) -> dict:
        from datacopilot.media import image_paths_of, say_image_paths

        self.manifest = self.run.publish(m)
        say_image_paths(self.dir, image_paths_of(self.manifest), recorded=True)
        self.begin()
        return self.manifest

    def publish(self, schema=None, root=None) -> dict:
        """Publish a plain write (no ``units``): its buffered rows written, the manifest replaced atomically;
        returns the published manifest."""
        if self.units is not None:
            raise DataCopilotError(f"{self.dir}: a pipeline's write publishes when its last unit ends (end_units)")
        self.flush(root)
        return self._publish(self._commit(schema))

    def end_units(self, units: tuple, schema, root, quarantine: pa.Table | None, records: list, state: dict,
                  bad: int = 0) -> None:
        """Flush the segment's rows and quarantine, then record its units (indices into ``units``) as finished
        in the staged manifest (atomically), with the accounting so far (``records``, one OpRecord per
        operator) and the run ``state``; ``bad``: the invalid input rows read in these units (in the quarantine
        given), added to those of the units finished before, also by the runs this one resumes. After the last
        unit, stage the run's report and publish the output with it."""
        self.flush(root)
        if quarantine is not None and quarantine.num_rows:
            self.write_quarantine(quarantine, root)
        m, p = self._commit(schema), self.manifest["pipeline"]
        p["done"] += [self.units[u] for u in units]
        p["segments"] += 1
        p["records"], p["state"] = [r.as_dict() for r in records], state
        p["invalid"] = p.get("invalid", 0) + bad
        p["complete"] = len(set(p["done"])) == len(self.units)
        if p["complete"]:
            p["state"] = {}  # the state files stay in the staging area, which publishing removes
            m["report"] = self._stage_report(m, records, p["invalid"])
            self._publish(m)
        else:
            m["complete"] = False
            self.run.save(m)
            self.begin()

    def _stage_report(self, manifest: dict, records: list, bad: int) -> dict:
        """Write the run's report into the staging area (published with the shards); its manifest entry."""
        report = {"output": self.dir, "format": manifest["format"], "rows": manifest["rows"],
                  "shards": len(manifest["shards"]), "quarantined": sum(s["rows"] for s in manifest["quarantine"]),
                  "invalid_input_rows": bad, "ops": [r.as_dict() for r in records],
                  "generation": self.run.generation}
        path = self.run.path(REPORT)
        with atomic_open(path, "wb") as f:
            f.write(json.dumps(report, indent=1).encode())
        digest, size = file_sha256(path)
        return {"file": REPORT, "bytes": size, "sha256": digest}


__all__ = ["REPORT", "ShardSink", "check_limits", "read_manifest", "read_report", "shard_bounds", "shard_rows",
           "write_part", "write_shard"]
