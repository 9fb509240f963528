"""Lazy pipelines: a plan of operators over a source, run by an executor only when asked.

``ds.lazy()`` or :func:`pipeline` builds a :class:`Pipeline`; ``.apply(ops)`` returns a new plan; ``.collect()``
returns an MMDataset; ``.write(dir)`` streams the output to shards with a manifest (resumable) and a
``report.json`` (per operator: rows in / out / dropped by reason / failed). A plan is data too:
``to_spec()`` / ``from_spec()`` / ``from_yaml()``, with operators looked up in the registry by name.

>>> import datacopilot as dc
>>> from datacopilot.operators import create
>>> ds = dc.MMDataset.from_rows([{"conversations": [{"from": "human", "value": "hi  there"},
...                                                 {"from": "gpt", "value": "hello"}]}], schema="MM")
>>> out = ds.lazy().apply(create("clean_whitespace")).collect()
>>> out[0]["conversations"][0]["value"], out.history()[-1].rows_out
('hi there', 1)
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import pyarrow as pa

from datacopilot.errors import DataCopilotError, SchemaError
from datacopilot.engine import POLICIES, Operator

from .source import Source

SPEC_KEYS = ("source", "schema", "on_error", "batch_size", "ops", "output", "executor")


class Pipeline:
    """An immutable plan: a source, operators in order, an error policy (``raise`` / ``skip`` /
    ``quarantine``) and a batch size. Build it with :func:`pipeline` or ``MMDataset.lazy()``."""

    #: The eager dataset a collected plan becomes. The facade registers ``MMDataset`` here when it is imported
    #: (``datacopilot.dataset``), so the plan, below it, never imports it.
    dataset_type: ClassVar[type | None] = None

    def __init__(self, source: Source, ops: Sequence = (), on_error: str = "raise", batch_size: int = 1024,
                 output: dict | None = None, executor: dict | None = None):
        if on_error not in POLICIES:
            raise DataCopilotError(f"`on_error` must be one of {POLICIES}, got {on_error!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataCopilotError(f"`batch_size` must be a positive integer, got {batch_size!r}")
        self.source, self.on_error, self.batch_size = source, on_error, batch_size
        self.ops = tuple(as_ops(ops, "a pipeline"))
        self.output, self.executor = dict(output or {}), dict(executor or {})

    def _replace(self, **changes) -> Pipeline:
        kw = {"source": self.source, "ops": self.ops, "on_error": self.on_error, "batch_size": self.batch_size,
              "output": self.output, "executor": self.executor}
        return Pipeline(**{**kw, **changes})

    def apply(self, ops) -> Pipeline:
        """A new pipeline with ``ops`` (an operator or a list) appended.

        >>> p2 = p.apply([create("filter_turns", min_turns=2)])  # doctest: +SKIP
        """
        return self._replace(ops=self.ops + tuple(as_ops(ops, "a pipeline")))

    def __repr__(self) -> str:
        src = "<MMDataset>" if self.source.dataset is not None else f"{len(self.source.paths)} file(s)"
        return f"Pipeline({src} -> {' -> '.join(op.label for op in self.ops) or '(no ops)'})"

    # -- planning (used by executors) -----------------------------------------------------------------------
    def prepared_ops(self) -> list:
        """The operators checked against the columns they read (each against what the earlier ones leave) and the
        source's schema (a conversation operator refuses PAIRS by name), and given the source's image root when
        they read image files."""
        columns = self.source.columns()
        if columns is None:
            columns = self._peek_columns()
        schema = self.source.schema.name if self.source.schema is not None else None
        out = []
        for op in self.ops:
            if columns is not None:
                op.check(columns, schema)
                columns = columns + [c for c in op.writes if c not in columns]
            if op.uses_root and op.p.get("root") is None and self.source.root:
                op = op.replace(root=self.source.root)
            out.append(op)
        return out

    def _peek_columns(self) -> list[str] | None:
        units = self.source.units()
        if not units:
            return None
        invalid = "raise" if self.on_error == "raise" else "quarantine"
        bad = len(self.source.bad)
        for table in self.source.batches(units[0], 1, invalid):
            del self.source.bad[bad:]
            return table.column_names
        return [f.name for f in self.source.schema.fields] if self.source.schema is not None else None

    def output_schema(self, table: pa.Table):
        """The source's schema when ``table`` still conforms to it, else one inferred from its columns."""
        from datacopilot.schemas import resolve_schema

        if self.source.schema is not None:
            try:
                self.source.schema.conform(table)
                return self.source.schema
            except SchemaError:
                pass
        return resolve_schema(table, None)

    def empty_output(self) -> pa.Table:
        if self.source.dataset is not None:
            return self.source.dataset.to_arrow().schema.empty_table()
        if self.source.schema is not None:
            return self.source.schema.arrow().empty_table()
        return pa.table({})

    # -- running --------------------------------------------------------------------------------------------
    def collect(self, executor: str | Any = "local", **options: Any):
        """Run the plan; a new MMDataset with one history record per operator and the quarantined rows.

        ``options`` go to the executor (local: ``num_workers``, ``mode``, ``progress``).
        """
        from datacopilot.executors import get_executor
        from datacopilot.loading import quarantine_table
        from datacopilot.schemas import Schema

        MMDataset = eager_type()
        self.source.bad.clear()  # each run reads the input again: its invalid rows are counted afresh
        result = get_executor(executor, **options).run(self)
        src = self.source
        history = (src.dataset.history() if src.dataset is not None else []) + list(result.records)
        parts = [src.dataset.quarantine if src.dataset is not None else None]
        for q in (quarantine_table(src.bad) if src.bad else None, result.quarantine):
            if q is not None and q.num_rows:
                parts.append(MMDataset(q, Schema.infer(q.schema, "QUARANTINE"), root=src.root))
        table = result.table
        return MMDataset(table, self.output_schema(table), root=src.root, history=history,
                         quarantine=MMDataset.merge_quarantines(parts))

    def write(self, out_dir: str | None = None, format: str | None = None, executor: str | Any | None = None,
              resume: bool = False, max_rows_per_shard: int | None = None, image_paths: str | None = None,
              **options: Any) -> dict:
        """Stream the output to shards under ``out_dir`` (with ``manifest.json``, ``report.json`` and failed
        rows under ``quarantine/``); returns the report. ``resume=True`` skips the input files a previous,
        interrupted run finished. Unset arguments come from the spec's ``output`` / ``executor`` sections.

        Image paths are kept as they are (``image_paths="keep"``, the default) and the manifest records the
        ``root`` they resolve against, which ``load`` of the output uses; ``"relative"`` (to ``out_dir``) or
        ``"absolute"`` rewrites them, shard by shard, and the manifest's ``image_paths`` and a log line say how
        many. A run is resumed only with the ``image_paths`` it was started with.

        >>> report = pipe.write("out/", format="arrow", resume=True)  # doctest: +SKIP
        >>> report = pipe.write("out/", image_paths="relative")  # doctest: +SKIP
        """
        from datacopilot.executors import get_executor
        from datacopilot.media import check_image_paths

        out = self.output
        out_dir = out_dir or out.get("dir")
        if not out_dir:
            raise DataCopilotError("write needs an output directory (`out_dir`, or `output.dir` in the spec)")
        ex = executor if executor is not None else self.executor.get("name", "local")
        if executor is None and not options:
            options = {k: v for k, v in self.executor.items() if k != "name"}
        rows = max_rows_per_shard if max_rows_per_shard is not None else out.get("max_rows_per_shard", 100_000)
        paths = check_image_paths(image_paths if image_paths is not None else out.get("image_paths", "keep"))
        self.source.bad.clear()
        return get_executor(ex, **options).write(self, os.fspath(out_dir), format=format or out.get("format", "arrow"),
                                                 resume=resume, max_rows_per_shard=rows, image_paths=paths)

    # -- specs ----------------------------------------------------------------------------------------------
    def to_spec(self) -> dict:
        """The plan as plain data (for YAML/JSON); the source must be files."""
        spec: dict = {"source": self.source.to_spec()}
        spec["on_error"] = self.on_error
        spec["batch_size"] = self.batch_size
        spec["ops"] = [{"name": op.name, **op.params()} for op in self.ops]
        if self.output:
            spec["output"] = dict(self.output)
        if self.executor:
            spec["executor"] = dict(self.executor)
        return spec

    @classmethod
    def from_spec(cls, spec: dict, base_dir: str | None = None) -> Pipeline:
        """A pipeline from plain data; relative paths resolve against ``base_dir``. See :mod:`pipeline_spec`."""
        from .pipeline_spec import make_ops, parse_spec

        parts = parse_spec(spec, base_dir)
        src = parts["source"]
        p = pipeline(src["paths"], schema=src["schema"], format=src["format"], on_error=parts["on_error"],
                     batch_size=parts["batch_size"], root=src["root"])
        return cls(p.source, make_ops(parts["ops"], base_dir), on_error=p.on_error, batch_size=p.batch_size, output=parts["output"],
                   executor=parts["executor"])

    @classmethod
    def from_yaml(cls, path: str) -> Pipeline:
        """A pipeline from a YAML (or JSON) file; relative paths resolve against the file's directory."""
        from .pipeline_spec import read_spec

        return cls.from_spec(read_spec(path), os.path.dirname(os.path.abspath(path)))

    def to_yaml(self, path: str | None = None) -> str:
        """The spec as YAML text (written to ``path`` when given)."""
        import yaml

        text = yaml.safe_dump(self.to_spec(), sort_keys=False)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text


def as_ops(ops, what: str) -> list:
    """``ops`` (one operator or several) as a list, refusing what is not an operator and evaluators (which
    change no rows: they run with ``MMDataset.evaluate``); ``what`` names the caller in the error."""
    ops = [ops] if isinstance(ops, Operator) else list(ops)
    for op in ops:
        if not isinstance(op, Operator):
            raise DataCopilotError(f"{what} takes operators (see datacopilot.operators.create), got {op!r}")
        if op.kind == "evaluator":
            raise DataCopilotError(f"{op.label} is an evaluator: it changes no rows; use ds.evaluate(op)")
    return ops


def pipeline(source, ops=None, schema=None, on_error: str = "raise", format: str | None = None,
             batch_size: int = 1024, root: str | None = None) -> Pipeline:
    """A lazy pipeline over an MMDataset or files (paths, globs, directories; local or fsspec).

    >>> import datacopilot as dc
    >>> p = dc.pipeline("data/*.jsonl", schema="MM", on_error="quarantine")  # doctest: +SKIP
    >>> p.apply(create("filter_turns", min_turns=2)).write("out/")  # doctest: +SKIP
    """
    if isinstance(source, eager_type()):
        if schema is not None:
            source = source.convert(schema)
        src = Source.from_dataset(source)
    else:
        src = Source.from_paths(source, schema=schema, format=format, root=root)
    return Pipeline(src, ops or (), on_error=on_error, batch_size=batch_size)


def eager_type() -> type:
    """The registered eager dataset class (:attr:`Pipeline.dataset_type`), the facade imported by name first
    when nothing imported it yet (as the registry imports operators by name)."""
    if Pipeline.dataset_type is None:
        importlib.import_module("datacopilot.dataset")
    return Pipeline.dataset_type
