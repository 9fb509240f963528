"""Pipeline output: :class:`ShardSink` writes a pipeline's output as shards with a manifest that records which
input units are finished (for ``resume``); :func:`write_result` writes an in-memory result. The input side,
:class:`Source`, lives in :mod:`datacopilot.source` (imported here too).
"""

from __future__ import annotations

import json
import logging
import time

import pyarrow as pa

from datacopilot.errors import DataCopilotError, InputError
from datacopilot.history import OpRecord, format_history
from datacopilot.io import FORMATS
from datacopilot.io._fs import MANIFEST, atomic_open, check_entries, file_sha256, get_fs, is_complete, join, read_json
from datacopilot.io.outputs import Staged
from datacopilot.io.shards import write_part
from datacopilot.schemas import Schema
from datacopilot.source import MEMORY, Source

__all__ = ["MEMORY", "ShardSink", "Source", "make_report", "plan_fingerprint", "read_manifest", "records_from",
           "with_invalid", "write_result"]

REPORT = "report.json"
log = logging.getLogger("datacopilot")


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
