"""What every executor's ``write`` shares around the one shard writer (:class:`datacopilot.io.sink.ShardSink`): the
sink of a plan (:func:`open_sink`, with the plan's fingerprint that a resume must match), the invalid input rows
added to the quarantine (:func:`with_invalid`), the published report (:func:`make_report`), and the write of a
result held in memory (:func:`write_result`, ``Executor.write``'s default).

>>> sink = open_sink(plan, "out/", "parquet", 100_000, resume=False)  # doctest: +SKIP
>>> sink.finished  # doctest: +SKIP
False
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from datacopilot.history import OpRecord, format_history
from datacopilot.io.identity import as_plain, file_stats
from datacopilot.io.sink import ShardSink, read_report
from datacopilot.source import MEMORY

__all__ = ["open_sink", "make_report", "plan_fingerprint", "plan_identity", "records_from", "with_invalid",
           "write_result"]


def plan_fingerprint(plan, format: str, max_rows: int | None, image_paths: str = "keep") -> str:
    """A digest of what decides a written output's rows and shards: the operators with their parameters, the
    error policy, the format, the shard size and what is done to image paths; a run is resumed only by a plan
    with the same fingerprint. (``image_paths="keep"`` adds nothing: runs staged before it existed resume.)"""
    spec = {"ops": [{"name": op.name, **op.params()} for op in plan.ops], "on_error": plan.on_error,
            "format": format, "max_rows_per_shard": max_rows}
    if image_paths != "keep":
        spec["image_paths"] = image_paths
    text = json.dumps(spec, sort_keys=True, default=lambda o: getattr(o, "__qualname__", type(o).__name__))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_identity(plan, format: str, max_rows: int | None, image_paths: str = "keep") -> dict:
    """What ``plan``'s output is made from, as plain data kept in its manifest (``pipeline.plan``), which a resume
    must match and whose differences it names (:func:`datacopilot.io.identity.plan_changes`): the input files
    with their sizes and modification times (an in-memory dataset by its rows), the schema given (a detected one
    follows from the files), the input format and image root, the operators with their parameters, the error
    policy and the output options."""
    src = plan.source
    if src.dataset is not None:
        sources = [{"unit": MEMORY, "rows": len(src.dataset)}]
        given = src.dataset.schema.name
    else:
        sources = file_stats(src.units())
        given = src.spec.get("schema") if src.spec is not None else getattr(src.schema, "name", None)
    return as_plain({"sources": sources, "schema": given, "input_format": src.format, "root": src.root,
                     "ops": [{"name": op.name, "params": op.params()} for op in plan.ops],
                     "on_error": plan.on_error, "format": format, "max_rows_per_shard": max_rows,
                     "image_paths": image_paths})


def open_sink(plan, out_dir: str, format: str, max_rows: int | None, resume: bool,
              image_paths: str = "keep") -> ShardSink:
    """The sink of ``plan``'s output in ``out_dir``: one unit per input unit, fingerprinted by the plan, whose
    identity (:func:`plan_identity`) a resume must match."""
    from datacopilot.media import check_image_paths

    image_paths = check_image_paths(image_paths)
    return ShardSink(out_dir, format, max_rows, plan.source.units(), resume,
                     plan_fingerprint(plan, format, max_rows, image_paths), image_paths,
                     plan=plan_identity(plan, format, max_rows, image_paths))


def records_from(dicts: list[dict]) -> list[OpRecord]:
    return [OpRecord(d["op"], d["rows_in"], d["rows_out"], d["dropped"], d["failed"], d["seconds"],
                     d.get("counts", {})) for d in dicts]


def make_report(out_dir: str, manifest: dict, show: bool = True) -> dict:
    """The published run's report (per operator rows in / out / dropped by reason / failed): its report.json,
    which the publish of ``manifest`` moved in; printed with ``show``."""
    report = read_report(out_dir, manifest)
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
    """Run ``plan`` in memory on ``executor`` and write the whole result as one segment, its shards on threads
    (``resume`` skips only a finished run)."""
    sink = open_sink(plan, out_dir, format, max_rows_per_shard, resume, image_paths)
    if sink.finished:
        return make_report(out_dir, sink.manifest)
    if sink.done:  # a streamed run's progress: this write is one segment of every unit, it starts over
        sink = open_sink(plan, out_dir, format, max_rows_per_shard, False, image_paths)
    result = executor.run(plan)
    root = plan.source.root
    if result.table.num_rows:
        sink.write_table(result.table, plan.output_schema(result.table), root)
    sink.end_units(tuple(range(len(sink.units))), plan.source.schema, root,
                   with_invalid(result.quarantine, plan.source.bad), result.records, {}, len(plan.source.bad))
    return make_report(out_dir, sink.manifest)
