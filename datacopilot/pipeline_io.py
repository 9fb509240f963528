"""Pipeline input and output: a :class:`Source` reads its input unit by unit (one unit per file) in record
batches, so memory stays bounded; :class:`ShardSink` writes a pipeline's output as shards with a manifest that
records which input units are finished (for ``resume``); :func:`write_result` writes an in-memory result.

Streaming readers: jsonl in line blocks (Arrow's parser per block, the row path for a block it refuses),
parquet and Arrow IPC batch by batch; other formats (json, h5, webdataset) are read one whole file at a time.

>>> src = Source.from_paths("data/*.jsonl", schema="MM")  # doctest: +SKIP
>>> [t.num_rows for t in src.batches(src.units()[0])]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator

import pyarrow as pa

from datacopilot.errors import DataCopilotError, InputError
from datacopilot.history import OpRecord, format_history
from datacopilot.io import EXTENSIONS, FORMATS, format_of
from datacopilot.io._common import finish
from datacopilot.io._fs import (MANIFEST, atomic_open, check_entries, expand, file_sha256, get_fs, is_complete, join,
                                local_path, read_json)
from datacopilot.io.outputs import Staged
from datacopilot.io.shards import write_part
from datacopilot.media import file_roots, warn_roots
from datacopilot.schemas import Schema
from datacopilot.schemas.builtin import get_schema
from datacopilot.transforms import image_columns

BLOCK_BYTES = 16 << 20
REPORT = "report.json"
log = logging.getLogger("datacopilot")
MEMORY = "<memory>"


class Source:
    """Where a pipeline's rows come from: an MMDataset (one unit) or files (one unit per file)."""

    def __init__(self, dataset=None, paths: list[str] | None = None, schema: Schema | None = None,
                 format: str | None = None, root: str | None = None, spec=None):
        self.dataset, self.paths, self.format, self.spec = dataset, paths, format, spec
        self.schema = dataset.schema if dataset is not None else schema
        if root is None and dataset is not None:
            root = dataset.root
        if root is None and paths:
            dirs = set(file_roots(paths))  # a manifest's recorded root, else the files' directory
            root = dirs.pop() if len(dirs) == 1 else None
            if root is None and (schema is None or image_columns(schema)):  # as dc.load warns, before reading
                warn_roots(sorted(dirs), "files", "relative image paths are made absolute, each against its "
                           "file's root", stacklevel=5)
        self.root = root
        self.bad: list = []  # invalid input rows: (where, message, raw)

    @classmethod
    def from_dataset(cls, ds) -> Source:
        return cls(dataset=ds)

    @classmethod
    def from_paths(cls, paths, schema=None, format: str | None = None, root: str | None = None) -> Source:
        """Files, globs, directories (local or fsspec), expanded now so missing inputs fail early."""
        if format is not None and format not in FORMATS:
            raise DataCopilotError(f"`format` must be one of {sorted(FORMATS)}, got {format!r}")
        files = expand(paths, EXTENSIONS if format is None else FORMATS[format].extensions)
        s = get_schema(schema) if schema is not None else None
        spec = {"paths": [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]}
        if format:
            spec["format"] = format
        if s is not None:
            spec["schema"] = s.name
        if root is not None:
            spec["root"] = os.fspath(root)
        return cls(paths=files, schema=s, format=format, root=root, spec=spec)

    def units(self) -> list[str]:
        """The input units, in order: file paths, or ``["<memory>"]``."""
        return [MEMORY] if self.dataset is not None else list(self.paths)

    def columns(self) -> list[str] | None:
        """The input's columns when known before reading (a dataset, or a given schema)."""
        if self.dataset is not None:
            return self.dataset.columns
        return [f.name for f in self.schema.fields] if self.schema is not None else None

    def batches(self, unit: str, batch_size: int, invalid: str = "raise") -> Iterator[pa.Table]:
        """Tables of at most ``batch_size`` rows from one unit, validated (invalid rows raise or go to
        ``self.bad`` with ``invalid="quarantine"``)."""
        if self.dataset is not None:
            table = self.dataset.to_arrow()
            for start in range(0, table.num_rows, batch_size):
                yield table.slice(start, batch_size)
            return
        fmt = format_of(unit, self.format)
        if fmt.name == "jsonl":
            blocks = self._jsonl(unit, invalid)
        elif fmt.name in ("parquet", "arrow"):
            blocks = self._batched(unit, fmt.name, batch_size, invalid)
        else:
            loaded = fmt.read(unit, self.schema, invalid=invalid)
            blocks = iter([self._take(loaded)])
        for table in blocks:
            table = self._rooted(table, unit)
            for start in range(0, table.num_rows, batch_size):
                yield table.slice(start, batch_size)

    def _take(self, loaded) -> pa.Table:
        self.schema = self.schema or loaded.schema
        self.bad += loaded.bad
        return loaded.table

    def _rooted(self, table: pa.Table, unit: str) -> pa.Table:
        if self.root is None and self.schema is not None:  # files in several directories: absolute-ize
            from datacopilot.transforms import prefix_image_paths

            return prefix_image_paths(table, self.schema, file_roots([unit])[0])
        return table

    def _jsonl(self, path: str, invalid: str) -> Iterator[pa.Table]:
        """Line blocks of about BLOCK_BYTES, each screened (screen.py) and parsed; a line longer than
        screen.MAX_LINE_BYTES is never held whole: it raises, or is quarantined by its first bytes."""
        from datacopilot.io import screen

        fs, p = get_fs(path)
        line0, offset, rest = 1, 0, b""
        try:
            f = fs.open(p, "rb")
        except FileNotFoundError as e:
            raise InputError(f"{path}: no such file") from e
        with f:
            while True:
                chunk = f.read(BLOCK_BYTES)
                data = rest + chunk
                if chunk:
                    cut = data.rfind(b"\n") + 1
                    data, rest = data[:cut], data[cut:]
                if data.strip():
                    yield self._jsonl_block(data, path, line0, invalid, offset)
                line0, offset = line0 + data.count(b"\n"), offset + len(data)
                if not chunk:
                    return
                if len(rest) > screen.MAX_LINE_BYTES:
                    size, rest = self._skip_long_line(f, rest, path, line0, invalid)
                    line0, offset = line0 + 1, offset + size + 1

    def _skip_long_line(self, f, head: bytes, path: str, line: int, invalid: str) -> tuple[int, bytes]:
        """Read past an over-long line, keeping its first bytes for the quarantine: (its size, what follows)."""
        from datacopilot.io import screen

        size, tail = len(head), b""
        while True:
            chunk = f.read(BLOCK_BYTES)
            nl = chunk.find(b"\n")
            if not chunk or nl >= 0:
                size, tail = (size + nl, chunk[nl + 1:]) if nl >= 0 else (size, b"")
                break
            size += len(chunk)
        kept = min(size, screen.QUARANTINE_TEXT_BYTES)
        bad = [(f"{path}:{line}", f"{path}:{line}: line of {size} bytes; at most {screen.MAX_LINE_BYTES} are read "
                f"(datacopilot.io.screen.MAX_LINE_BYTES)",
                head[:kept].decode("utf-8", "backslashreplace") + f" ... ({size - kept} more bytes not kept)")]
        if invalid == "raise":
            screen.raise_flaws(bad)
        self.bad += bad
        return size, tail

    def _jsonl_block(self, data: bytes, path: str, line0: int, invalid: str, offset: int = 0) -> pa.Table:
        from datacopilot.io import screen
        from datacopilot.io.jsonl import read_lines

        data, flawed = screen.screened(data, path, invalid, line0, offset)
        self.bad += flawed
        return self._take(read_lines(data, path, self.schema, invalid, line0))

    def _batched(self, path: str, kind: str, batch_size: int, invalid: str) -> Iterator[pa.Table]:
        local = local_path(path)
        fs, p = get_fs(path)
        if kind == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(local or fs.open(p, "rb"))
            batches = pf.iter_batches(batch_size=batch_size)
        else:
            src = pa.memory_map(local, "r") if local else fs.open(p, "rb")
            try:
                reader = pa.ipc.open_file(src)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            except pa.ArrowInvalid:
                src.seek(0)
                batches = iter(pa.ipc.open_stream(src))
        for i, b in enumerate(batches):
            yield self._take(finish(pa.Table.from_batches([b]), self.schema, path, invalid,
                                    lambda r, i=i: f"{path}: batch {i} row {r}"))

    def to_spec(self) -> dict:
        if self.spec is None:
            raise DataCopilotError("a pipeline over an in-memory dataset has no spec; build it from paths")
        return dict(self.spec)


# -- output --------------------------------------------------------------------------------------------------
class ShardSink:
    """Writes a pipeline's output tables as shards (at most ``max_rows`` rows each) into the staging area of a
    new generation of ``out_dir`` (:mod:`datacopilot.io.outputs`): when input units end, their quarantine shard
    and the staged manifest (atomically), which lists the finished units; when the last ends, it publishes the
    output in one atomic step. Shards are named by generation and segment (units finished together), so a
    segment run again after a crash rewrites the same files.

    With ``resume`` it continues the newest staged run, after checking that it was written for the same inputs
    and plan (``fingerprint``) and that its manifest describes the staged files; a published output of the same
    plan whose files check out is a finished run (``finished``: nothing to write).
    """

    def __init__(self, out_dir: str, format: str, max_rows: int | None, units: list[str], resume: bool,
                 fingerprint: str | None = None, image_paths: str = "keep"):
        from datacopilot.media import check_image_paths

        check_image_paths(image_paths)
        if format not in FORMATS:
            raise DataCopilotError(f"`format` must be one of {sorted(FORMATS)}, got {format!r}")
        if max_rows is not None and max_rows < 1:
            raise DataCopilotError(f"`max_rows_per_shard` must be positive, got {max_rows!r}")
        self.dir, self.format, self.max_rows, self.units = out_dir, format, max_rows, units
        self.ext, self.fingerprint, self.finished = FORMATS[format].extensions[0], fingerprint, False
        self.image_paths = image_paths
        self.manifest = {"format": format, "schema": None, "rows": 0, "shards": [], "quarantine": [],
                         "image_paths": {"mode": image_paths, "rewritten": 0},
                         "pipeline": {"units": units, "fingerprint": fingerprint, "image_paths": image_paths,
                                      "done": [], "segments": 0, "records": [], "state": {}, "complete": False}}
        self.run = self._resumed() if resume else None
        if self.run is None and not self.finished:
            self.run = Staged.fresh(out_dir)
        self.begin()

    def _same_plan(self, m: dict, where: str) -> None:
        p = m.get("pipeline", {})
        if p.get("units") != self.units:
            raise InputError(f"{where}: cannot resume: its manifest was written for other inputs "
                             f"({len(p.get('units', []))} unit(s), now {len(self.units)})")
        if p.get("image_paths", "keep") != self.image_paths:
            raise InputError(f"{where}: cannot resume: its shards were written with image_paths="
                             f"{p.get('image_paths', 'keep')!r}, now image_paths={self.image_paths!r}; resume with "
                             f"image_paths={p.get('image_paths', 'keep')!r}, or write again without resume=True")
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
        return set(self.manifest["pipeline"]["done"])

    @property
    def segment(self) -> int:
        return self.manifest["pipeline"]["segments"]

    @property
    def state(self) -> dict:
        """The run state of the finished segments (dedup seen-sets), named relative to :attr:`stage`."""
        return self.manifest["pipeline"]["state"]

    @property
    def stage(self) -> str:
        """The staging directory, where a run keeps its state files next to the staged shards."""
        return self.run.stage

    def begin(self) -> None:
        self.pending, self.pending_q, self.buf, self.k, self.schema = [], [], [], 0, None

    def add(self, table: pa.Table, schema, root) -> None:
        if not table.num_rows:
            return
        self.buf.append(table)
        self.schema = schema
        while self.max_rows and sum(t.num_rows for t in self.buf) >= self.max_rows:
            whole = pa.concat_tables(self.buf, promote_options="permissive")
            self._shard(whole.slice(0, self.max_rows), schema, root)
            rest = whole.slice(self.max_rows)
            self.buf = [rest] if rest.num_rows else []

    def shard_name(self, k: int, quarantine: bool = False) -> str:
        """The name of the current segment's ``k``-th shard (or of its quarantine shard)."""
        if quarantine:
            return f"quarantine/part-{self.run.tag}-{self.segment:05d}.arrow"
        return f"part-{self.run.tag}-{self.segment:05d}-{k:04d}{self.ext}"

    def first_row(self) -> int:
        """The output's row number of the next shard's first row."""
        return self.manifest["rows"] + sum(e["rows"] for e in self.pending)

    def _shard(self, table: pa.Table, schema, root, quarantine: bool = False) -> None:
        from datacopilot.dataset import MMDataset
        from datacopilot.media import add_image_paths, image_paths_for

        if quarantine:
            name, fmt, first = self.shard_name(0, quarantine=True), "arrow", 0
            ds = MMDataset(table, Schema.infer(table.schema, "QUARANTINE"), root=root)
        else:
            name, fmt, first = self.shard_name(self.k), self.format, self.first_row()
            self.k += 1
            ds = MMDataset(table, schema, root=root)
        path = self.run.path(name)
        # paths relative to the output directory itself (where the shard is published), not the staging area
        ds, info = image_paths_for(ds, self.dir, self.image_paths, FORMATS[fmt].embeds_images)
        add_image_paths(self.manifest, info)
        write_part(fmt, ds, path, first)
        digest, size = file_sha256(path)
        entry = {"file": name, "rows": table.num_rows, "bytes": size, "sha256": digest}
        (self.pending_q if quarantine else self.pending).append(entry)

    def end_units(self, units: tuple, schema, root, quarantine: pa.Table | None, records: list[OpRecord],
                  state: dict, bad: int = 0) -> None:
        """Flush the segment's rows and quarantine, then record its units as finished in the staged manifest
        (atomically); after the last unit, stage the run's report (``bad``: the invalid input rows of the run)
        and publish the output with it."""
        if self.buf:
            self._shard(pa.concat_tables(self.buf, promote_options="permissive"), self.schema, root)
        if quarantine is not None and quarantine.num_rows:
            self._shard(quarantine, schema, root, quarantine=True)
        m, p = self.manifest, self.manifest["pipeline"]
        m["shards"] += self.pending
        m["quarantine"] += self.pending_q
        m["rows"] = sum(s["rows"] for s in m["shards"])
        if self.schema is not None or schema is not None:
            m["schema"] = (self.schema or schema).name
        p["done"] += [self.units[u] for u in units]
        p["segments"] += 1
        p["records"], p["state"] = [r.as_dict() for r in records], state
        p["complete"] = len(set(p["done"])) == len(self.units)
        m["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if p["complete"]:
            from datacopilot.media import image_paths_of, say_image_paths

            p["state"] = {}  # the state files stay in the staging area, which publishing removes
            m["report"] = self._stage_report(m, records, bad)
            self.manifest = self.run.publish(m)
            say_image_paths(self.dir, image_paths_of(self.manifest), recorded=True)
        else:
            m["complete"] = False
            self.run.save(m)
        self.begin()


    def _stage_report(self, manifest: dict, records: list[OpRecord], bad: int) -> dict:
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


def read_manifest(out_dir: str) -> dict | None:
    """The published manifest of ``out_dir`` (what ``load`` reads), or None."""
    return read_json(join(out_dir, MANIFEST))


def plan_fingerprint(plan, format: str, max_rows: int | None, image_paths: str = "keep") -> str:
    """A digest of what decides a written output's rows and shards: the operators with their parameters, the
    error policy, the format, the shard size and what is done to image paths; a run is resumed only by a plan
    with the same fingerprint. (``image_paths="keep"`` adds nothing: runs staged before it existed resume.)"""
    import hashlib

    spec = {"ops": [{"name": op.name, **op.params()} for op in plan.ops], "on_error": plan.on_error,
            "format": format, "max_rows_per_shard": max_rows}
    if image_paths != "keep":
        spec["image_paths"] = image_paths
    text = json.dumps(spec, sort_keys=True, default=lambda o: getattr(o, "__qualname__", type(o).__name__))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def records_from(dicts: list[dict]) -> list[OpRecord]:
    return [OpRecord(d["op"], d["rows_in"], d["rows_out"], d["dropped"], d["failed"], d["seconds"],
                     d.get("counts", {})) for d in dicts]


def make_report(out_dir: str, manifest: dict, show: bool = True) -> dict:
    """The published run's report (per operator rows in / out / dropped by reason / failed): its report.json,
    which the publish of ``manifest`` moved in; printed with ``show``."""
    report = read_json(join(out_dir, REPORT))
    if report is None or report.get("generation") != manifest.get("generation"):
        raise InputError(f"{join(out_dir, REPORT)}: missing or not the report of generation "
                         f"{manifest.get('generation')} of {out_dir}")
    if show:
        print(format_history(records_from(report["ops"])))
        print(f"{report['rows']} rows in {report['shards']} shard(s) -> {out_dir}"
              + (f"; {report['quarantined']} quarantined" if report["quarantined"] else ""))
    return report


def with_invalid(quarantine: pa.Table | None, bad: list) -> pa.Table | None:
    """The quarantine plus the invalid input rows ``bad`` ((where, message, raw) triples, kept as ``_source``,
    ``_error`` and the raw row as JSON text in ``_row``), so rows that never reached an operator are kept too."""
    from datacopilot.loading import quarantine_table

    if not bad:
        return quarantine
    invalid = quarantine_table(bad)
    if quarantine is None or not quarantine.num_rows:
        return invalid
    return pa.concat_tables([quarantine, invalid], promote_options="permissive")


def write_result(plan, executor, out_dir: str, format: str = "arrow", resume: bool = False,
                 max_rows_per_shard: int | None = 100_000, image_paths: str = "keep") -> dict:
    """Run ``plan`` in memory on ``executor`` and write the whole result as one segment (``resume`` skips only
    a finished run)."""
    sink = ShardSink(out_dir, format, max_rows_per_shard, plan.source.units(), resume,
                     plan_fingerprint(plan, format, max_rows_per_shard, image_paths), image_paths)
    if sink.finished:
        return make_report(out_dir, sink.manifest)
    result = executor.run(plan)
    root = plan.source.root
    step = max_rows_per_shard or max(result.table.num_rows, 1)
    for start in range(0, result.table.num_rows, step):
        part = result.table.slice(start, step)
        sink.add(part, plan.output_schema(part), root)
    sink.end_units(tuple(range(len(sink.units))), plan.source.schema, root,
                   with_invalid(result.quarantine, plan.source.bad), result.records, {}, len(plan.source.bad))
    return make_report(out_dir, sink.manifest)
