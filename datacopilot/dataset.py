"""``MMDataset``: an immutable, Schema-typed dataset over an Arrow table. Every method returns a new one."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from datacopilot.schemas import Schema, get_schema, resolve_schema
from datacopilot.schemas.image import decode_image
from datacopilot.schemas.arrow_build import concat_tables

from . import transforms
from .errors import DataCopilotError, SchemaError
from .history import OpRecord, format_history
from .parallel import PIECE_ROWS, run_batches, show_progress


class MMDataset:
    """An immutable multimodal dataset: an Arrow table plus its :class:`~datacopilot.schemas.Schema`.

    Parameters
    ----------
    table: the rows, as an Arrow table (it may be memory-mapped from Arrow IPC files).
    schema: a Schema or a built-in schema's name; detected from the columns when None.
    root: where relative image paths are resolved (a directory or an fsspec URL prefix; LLaVA's
        ``--image_folder``). Image filters, dedup by image, ``embed_images``, training and writers all use it;
        writers keep the paths as they are unless asked (``image_paths=``).

    Example
    -------
    >>> ds = MMDataset.from_rows([{"id": "1", "conversations": [{"from": "human", "value": "hi"},
    ...                                                        {"from": "gpt", "value": "hello"}]}], schema="MM")
    >>> len(ds), ds[0]["conversations"][1]["value"]
    (1, 'hello')
    """

    def __init__(self, table: pa.Table, schema: "Schema | str | None" = None, root: str | None = None,
                 history: Sequence[OpRecord] = (), quarantine: "MMDataset | None" = None):
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if not isinstance(table, pa.Table):
            raise DataCopilotError(f"`table` must be a pyarrow Table, got {type(table).__name__}")
        self._schema = resolve_schema(table, schema)
        self._table = self._schema.conform(table)
        self.root = root
        self._history = tuple(history)
        self.quarantine = quarantine

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: Sequence[dict], schema: "Schema | str | None" = None, root: str | None = None,
                  validate: bool = True) -> "MMDataset":
        """Build a dataset from Python dicts (validated against ``schema`` unless ``validate=False``)."""
        from .loading import rows_to_table

        s = get_schema(schema) if schema is not None else None
        table, s = rows_to_table(list(rows), s, source="rows", validate=validate)
        return cls(table, s, root=root)

    @classmethod
    def from_polars(cls, df, schema: "Schema | str | None" = None, root: str | None = None) -> "MMDataset":
        """Build a dataset from a polars DataFrame (extension columns, as :meth:`to_polars` gives them, included).

        >>> MMDataset.from_polars(ds.to_polars()).to_list() == ds.to_list()  # doctest: +SKIP
        True
        """
        from .interop import from_polars_table

        return cls(from_polars_table(df.to_arrow()), schema, root=root)

    @classmethod
    def from_hf(cls, hf_dataset, schema: "Schema | str | None" = None, root: str | None = None) -> "MMDataset":
        """Build a dataset from a Hugging Face ``datasets.Dataset`` (zero-copy over its Arrow table). Columns
        :meth:`to_hf` stored as their storage get their types back; columns of a ``Json`` feature (JSON text) are
        decoded.

        >>> MMDataset.from_hf(ds.to_hf()).to_list() == ds.to_list()  # doctest: +SKIP
        True
        """
        from .interop import from_hf
        from .io.hf_features import decode_json_features

        return cls(decode_json_features(from_hf(hf_dataset)), schema, root=root)

    @classmethod
    def from_pandas(cls, df, schema: "Schema | str | None" = None, root: str | None = None) -> "MMDataset":
        """Build a dataset from a pandas DataFrame; an object column of mixed str / int ids keeps each id's type."""
        from .interop import from_pandas_table

        return cls(from_pandas_table(df), schema, root=root)

    @staticmethod
    def merge_quarantines(parts: list) -> "MMDataset | None":
        """One quarantine from several, None entries skipped (see :func:`merge_quarantines`)."""
        return merge_quarantines(parts)

    def _new(self, table: pa.Table, record: OpRecord | None = None, schema: Schema | None = None,
             quarantine: "MMDataset | None" = None) -> "MMDataset":
        hist = self._history + ((record,) if record is not None else ())
        q = merge_quarantines([self.quarantine, quarantine])
        return MMDataset(table, schema or self._schema, root=self.root, history=hist, quarantine=q)

    # -- basics ---------------------------------------------------------------------------------------
    @property
    def schema(self) -> Schema:
        return self._schema

    @property
    def columns(self) -> list[str]:
        return self._table.column_names

    @property
    def nbytes(self) -> int:
        return self._table.nbytes

    def __len__(self) -> int:
        return self._table.num_rows

    def __repr__(self) -> str:
        return f"MMDataset(schema={self._schema.name}, rows={len(self)}, columns={self.columns})"

    def __getitem__(self, key: Any) -> "dict | MMDataset":
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row index {int(key)} out of range for a dataset of {n} rows")
            return self._table.slice(i, 1).to_pylist()[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                return self._new(self._table.slice(start, max(0, stop - start)))
            return self._new(self._table.take(np.arange(start, stop, step)))
        if isinstance(key, str):
            raise DataCopilotError(f"use ds.select([{key!r}]) or ds.to_arrow()[{key!r}] for a column")
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"a boolean mask must have {n} entries, got {idx.shape}")
            return self._new(transforms.filter_table(self._table, idx))
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f"rows are selected by int, slice, list of ints or a boolean mask, got {key!r}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.max() >= n or idx.min() < -n):
            raise IndexError(f"row indices out of range for a dataset of {n} rows")
        return self._new(self._table.take(np.where(idx < 0, idx + n, idx)))

    def __iter__(self) -> Iterator[dict]:
        for batch in self._table.to_batches(max_chunksize=1024):
            yield from batch.to_pylist()

    def __add__(self, other: "MMDataset") -> "MMDataset":
        return self.concat(other)

    def concat(self, *others: "MMDataset") -> "MMDataset":
        """Rows of this dataset followed by the others'; the schemas must be equal.

        Relative image paths are made absolute when the datasets have different roots, so none is lost.
        """
        parts = [self]
        for o in others:
            if not isinstance(o, MMDataset):
                raise DataCopilotError(f"can only add an MMDataset, got {type(o).__name__}")
            if o.schema != self.schema:
                raise SchemaError(f"cannot add datasets of different schemas: {self.schema.name} and {o.schema.name}"
                                  f" (convert one with ds.convert({self.schema.name!r}))")
            parts.append(o)
        roots = {p.root for p in parts}
        root = self.root
        if len(roots) > 1:
            from .media import warn_absolute

            rooted = [p for p in parts if p.root]  # a part without a root keeps its paths
            warn_absolute([p._table for p in rooted], self._schema, [p.root for p in rooted], "datasets",
                          "give them one root to keep the paths as they are")
            parts = [p.with_absolute_paths() for p in parts]
            root = None
        table = concat_tables([p._table for p in parts], self._schema)
        hist = tuple(r for p in parts for r in p._history)
        q = merge_quarantines([p.quarantine for p in parts])
        return MMDataset(table, self._schema, root=root, history=hist, quarantine=q)

    def with_absolute_paths(self) -> "MMDataset":
        """The same rows with image paths resolved against ``root`` (no-op without a root)."""
        if not self.root:
            return self
        return MMDataset(transforms.prefix_image_paths(self._table, self._schema, self.root), self._schema,
                         root=None, history=self._history, quarantine=self.quarantine)

    def history(self) -> list[OpRecord]:
        """What every operation so far did to the rows: in, out, dropped by reason, failed."""
        return list(self._history)

    def info(self, print_: bool = True) -> dict:
        """A summary: rows, schema, columns with types, size in memory, history. Printed unless ``print_=False``."""
        info = {
            "rows": len(self), "schema": self._schema.name, "root": self.root,
            "columns": {f.name: str(f.type) for f in self._table.schema},
            "nbytes": self.nbytes, "history": [r.as_dict() for r in self._history],
            "quarantined": len(self.quarantine) if self.quarantine is not None else 0,
        }
        if print_:
            print(f"MMDataset: {info['rows']} rows, schema {info['schema']}, {info['nbytes'] / 1e6:.1f} MB")
            for k, v in info["columns"].items():
                print(f"  {k}: {v}")
            if self._history:
                print(format_history(self._history))
        return info

    def head(self, n: int = 5) -> "MMDataset":
        return self[:n]

    def image(self, i: int, field: str | None = None):
        """Decode the image of row ``i`` (``field`` defaults to ``image``, or the first of ``images``)."""
        row = self[i]
        if field is None:
            field = "image" if "image" in row else "images"
        value = row.get(field)
        if isinstance(value, list):  # images (MIX: {id, url}), or MM's image list (LLaVA-NeXT)
            value = value[0] if value else None
            if isinstance(value, dict) and "url" in value:
                value = value["url"]
        if value is None:
            raise DataCopilotError(f"row {i} has no image in field {field!r}")
        return decode_image(value, self.root)

    def to_arrow(self) -> pa.Table:
        return self._table

    def to_polars(self):
        import polars as pl

        return pl.from_arrow(self._table)

    def to_pandas(self):
        return self._table.to_pandas()

    def to_hf(self):
        """A Hugging Face ``datasets.Dataset`` over the same Arrow data. Columns HF has no feature for (ids that
        mix strings and integers, values of mixed JSON shapes) go as their Arrow storage, a struct with one child
        per alternative, with their real types in the schema metadata: :meth:`from_hf` gives them back.

        >>> ds.to_hf().num_rows == len(ds)  # doctest: +SKIP
        True
        """
        try:
            import datasets
        except ImportError as e:
            from .errors import MissingDependencyError

            raise MissingDependencyError("datasets", "hf") from e
        from .interop import to_hf

        return to_hf(self._table)

    def to_list(self) -> list[dict]:
        return self._table.to_pylist()

    # -- reshaping ------------------------------------------------------------------------------------
    def select(self, columns: "str | Sequence[str]") -> "MMDataset":
        columns = [columns] if isinstance(columns, str) else columns
        self._check_columns(columns)
        t = self._table.select(list(columns))
        return self._new(t, schema=resolve_schema(t, None))

    def drop(self, columns: "str | Sequence[str]") -> "MMDataset":
        columns = [columns] if isinstance(columns, str) else columns
        self._check_columns(columns)
        t = self._table.drop_columns(list(columns))
        keep = all(f.name in t.column_names or not f.required for f in self._schema.fields)
        return self._new(t, schema=self._schema if keep else resolve_schema(t, None))

    def rename(self, mapping: dict[str, str]) -> "MMDataset":
        self._check_columns(mapping)
        t = self._table.rename_columns([mapping.get(c, c) for c in self.columns])
        return self._new(t, schema=resolve_schema(t, None))

    def _check_columns(self, columns) -> None:
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise DataCopilotError(f"no column(s) {missing}; columns: {self.columns}")

    def with_columns(self, *exprs, **named) -> "MMDataset":
        """Add or replace columns computed by polars expressions (the vectorized fast path).

        >>> import polars as pl
        >>> ds.with_columns(n_turns=pl.col("conversations").list.len())  # doctest: +SKIP
        """
        t0 = time.perf_counter()
        t = transforms.with_columns(self._table, list(exprs), named)
        rec = OpRecord("with_columns", len(self), t.num_rows, seconds=time.perf_counter() - t0)
        return self._new(t, rec)

    def convert(self, schema: "Schema | str") -> "MMDataset":
        """The same rows in another built-in schema; raises ConversionError naming the row that cannot fit."""
        from .loading import convert_table

        target = get_schema(schema)
        if target == self._schema:
            return self
        t0 = time.perf_counter()
        t = convert_table(self._table, self._schema, target)
        return self._new(t, OpRecord(f"convert:{target.name}", len(self), t.num_rows,
                                     seconds=time.perf_counter() - t0), schema=target)

    # -- ordering and sampling ------------------------------------------------------------------------
    def shuffle(self, seed: int | None = None) -> "MMDataset":
        """All rows in a random order: with a ``seed``, the order of the ``shuffle`` operator on every executor
        (:func:`~datacopilot.engine.grouping.shuffle_keys`)."""
        from datacopilot.engine.grouping import shuffle_keys

        seed = int(np.random.default_rng().integers(2**63)) if seed is None else seed
        return self._new(self._table.take(np.argsort(shuffle_keys(seed, np.arange(len(self))), kind="stable")))

    def sample(self, n: int, seed: int | None = None) -> "MMDataset":
        """``n`` distinct rows drawn at random (in random order)."""
        if not 0 <= n <= len(self):
            raise DataCopilotError(f"`n` must be between 0 and {len(self)}, got {n!r}")
        return self._new(self._table.take(np.random.default_rng(seed).choice(len(self), n, replace=False)))

    def sort(self, key: "str | Sequence[str] | Callable[[dict], Any]", reverse: bool = False) -> "MMDataset":
        """Sort by column name(s) or by a function of the row (stable)."""
        order = "descending" if reverse else "ascending"
        if callable(key):
            keys = [key(r) for r in self]
            idx = sorted(range(len(keys)), key=keys.__getitem__, reverse=reverse)
            return self._new(self._table.take(idx))
        names = [key] if isinstance(key, str) else list(key)
        self._check_columns(names)
        return self._new(self._table.sort_by([(k, order) for k in names]))

    def split(self, fractions: "float | Sequence[float]", seed: int | None = None) -> list["MMDataset"]:
        """Split into parts by fractions (``0.9`` -> 90% / 10%); shuffled first when ``seed`` is given."""
        fr = [fractions, 1 - fractions] if isinstance(fractions, (int, float)) else list(fractions)
        if any(f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
            raise DataCopilotError(f"`fractions` must be non-negative and sum to 1, got {fractions!r}")
        ds = self.shuffle(seed) if seed is not None else self
        bounds = np.round(np.cumsum([0] + fr) * len(self)).astype(int)
        return [ds[int(a):int(b)] for a, b in zip(bounds[:-1], bounds[1:])]

    def shard(self, num_shards: int, index: int, contiguous: bool = True) -> "MMDataset":
        """Shard ``index`` of ``num_shards``: contiguous blocks, or every ``num_shards``-th row."""
        if num_shards < 1 or not 0 <= index < num_shards:
            raise DataCopilotError(f"need 0 <= index < num_shards, got index={index}, num_shards={num_shards}")
        if not contiguous:
            return self[index::num_shards]
        bounds = np.linspace(0, len(self), num_shards + 1).astype(int)
        return self[int(bounds[index]):int(bounds[index + 1])]

    # -- cleaning -------------------------------------------------------------------------------------
    def unique(self, by: "str | Sequence[str] | None" = None) -> "MMDataset":
        """Keep the first row of each distinct value of ``by`` (all columns when None)."""
        names = self.columns if by is None else ([by] if isinstance(by, str) else list(by))
        self._check_columns(names)
        t0 = time.perf_counter()
        keep = transforms.first_distinct(self._table, names)
        n_drop = int(len(self) - keep.sum())
        rec = OpRecord(f"unique({','.join(names)})", len(self), int(keep.sum()),
                       {f"duplicate {','.join(names)}": n_drop} if n_drop else {}, seconds=time.perf_counter() - t0)
        return self._new(transforms.filter_table(self._table, keep), rec)

    def nonempty(self) -> "MMDataset":
        """Drop rows where a required field is null or empty (an empty string, list or conversation turn)."""
        t0 = time.perf_counter()
        keep = transforms.nonempty_mask(self._table, self._schema)
        n_drop = int(len(self) - keep.sum())
        rec = OpRecord("nonempty", len(self), int(keep.sum()), {"empty field": n_drop} if n_drop else {},
                       seconds=time.perf_counter() - t0)
        return self._new(transforms.filter_table(self._table, keep), rec)

    def validate(self) -> list[str]:
        """Every problem of every row (empty when all are valid), never raising: the problems found when the
        data was loaded with ``invalid="quarantine"`` (broken JSON, invalid UTF-8, nesting too deep, over-long
        lines, each with its file and line), then each row's against the schema (an image with neither path
        nor bytes included) and any text that is not valid UTF-8.

        >>> dc.load("train.jsonl", invalid="quarantine").validate()  # doctest: +SKIP
        ['train.jsonl:7: invalid utf-8 at byte offset 913 (column 40)']
        """
        from .io.screen import invalid_utf8_rows
        from .loading import table_problems

        found = []
        q = self.quarantine.to_arrow() if self.quarantine is not None else None
        if q is not None and "_source" in q.column_names and "_error" in q.column_names:
            op = q.column("_op").to_pylist() if "_op" in q.column_names else [None] * q.num_rows
            found += [m for m, o in zip(q.column("_error").to_pylist(), op) if o is None and m is not None]
        found += [m for _, m in table_problems(self._table, self._schema, source="row")]
        return found + [f"row {i}: {m}" for i, m in invalid_utf8_rows(self._table)]

    def sanitize(self) -> "MMDataset":
        """Drop the rows that do not validate against the schema, each counted with its first problem."""
        from .loading import table_problems

        t0 = time.perf_counter()
        probs = table_problems(self._table, self._schema, source="row")
        first: dict[int, str] = {}
        for i, m in probs:
            first.setdefault(i, m)
        reasons = Counter(transforms.problem_field(m) for m in first.values())
        keep = np.ones(len(self), dtype=bool)
        keep[list(first)] = False
        rec = OpRecord("sanitize", len(self), int(keep.sum()), {f"invalid {k}": v for k, v in reasons.items()},
                       seconds=time.perf_counter() - t0)
        return self._new(transforms.filter_table(self._table, keep), rec)

    # -- Python functions over rows or batches, and operators: the lazy plan, collected --------------------
    def map(self, fn: Callable, *, batched: bool = False, num_workers: int = 1, mode: str = "thread",
            batch_size: int | None = None, on_error: str = "raise", schema: "Schema | str | None" = None,
            progress: bool | None = None, name: str | None = None) -> "MMDataset":
        """Apply ``fn`` to every row (a dict -> a dict, or None to drop the row) or, with ``batched=True``, to
        every ``pyarrow.RecordBatch`` (-> a table, batch, dict of columns or polars DataFrame; None drops it).

        Runs over ``num_workers`` threads or processes (``mode``), keeping order; lambdas and closures work in
        process mode. ``batch_size`` rows go to the function at a time (default 1024). ``on_error``: ``"raise"``
        (an OperatorError naming the row), ``"skip"`` (count it as failed) or ``"quarantine"`` (also keep the
        failed row with its error in ``result.quarantine``); only the rows that fail are failed, also when a
        batched function raises (it is tried again row by row). The output keeps this schema when it fits, else
        ``schema`` or one detected from the columns. ``name`` labels the step in :meth:`history` (``"map <the
        function's name>"`` by default). It is ``ds.lazy().apply(FunctionMap(fn)).collect()``
        (:class:`~datacopilot.engine.functions.FunctionMap`).

        >>> ds.map(lambda r: {**r, "id": r["id"].upper()}, num_workers=2, mode="process")  # doctest: +SKIP
        """
        from .engine.functions import FunctionMap

        out = self._collect(FunctionMap(fn, batched, self._schema.column_array, name), num_workers, mode, on_error,
                            batch_size, progress)
        if schema is None:
            return out
        return MMDataset(out._table, get_schema(schema), root=out.root, history=out._history,
                         quarantine=out.quarantine)

    def filter(self, predicate: Any, *, batched: bool = False, num_workers: int = 1, mode: str = "thread",
               batch_size: int | None = None, on_error: str = "raise", progress: bool | None = None,
               name: str | None = None) -> "MMDataset":
        """Keep the rows for which ``predicate`` holds.

        ``predicate`` is a polars expression (vectorized over the whole dataset at once, the fast path), or a
        function of a row returning a bool or ``(bool, reason)``, or with ``batched=True`` a function of a
        RecordBatch returning a mask. Dropped rows are counted by reason in :meth:`history`, under ``name``
        (``"filter <the function's name>"`` by default) unless the function gives one. A function runs as
        :meth:`map` does (``ds.lazy().apply(FunctionFilter(fn)).collect()``).

        >>> import polars as pl
        >>> ds.filter(pl.col("conversations").list.len() >= 2)  # doctest: +SKIP
        """
        if transforms.is_polars_expr(predicate):  # an expression may look at every row (pl.col("x").mean())
            t0 = time.perf_counter()
            keep = transforms.expr_mask(self._table, predicate)
            name = name or f"filter {predicate}"[:120]
            n_drop = int(len(self) - keep.sum())
            rec = OpRecord(name, len(self), int(keep.sum()), {name: n_drop} if n_drop else {}, 0,
                           time.perf_counter() - t0)
            return self._new(transforms.filter_table(self._table, keep), rec)
        if not callable(predicate):
            raise DataCopilotError(f"`predicate` must be a polars expression or a function, got {predicate!r}")
        from .engine.functions import FunctionFilter

        return self._collect(FunctionFilter(predicate, batched, name), num_workers, mode, on_error, batch_size,
                             progress)

    def apply(self, ops, num_workers: int = 1, mode: str = "thread", on_error: str = "raise",
              batch_size: int | None = None, progress: bool | None = None) -> "MMDataset":
        """Run one operator or a list of them (``datacopilot.operators``) in order; one history record each.
        It is ``ds.lazy(on_error, batch_size).apply(ops).collect(num_workers=, mode=, progress=)``.

        >>> from datacopilot.operators import create
        >>> ds.apply([create("clean_unicode"), create("filter_turns", min_turns=2)])  # doctest: +SKIP
        """
        from .pipeline import as_ops

        return self._collect(as_ops(ops, "apply"), num_workers, mode, on_error, batch_size, progress)

    def evaluate(self, op, num_workers: int = 1, mode: str = "thread", batch_size: int | None = None) -> dict:
        """An :class:`~datacopilot.engine.Evaluator`'s statistics over every row (rows are not changed): the
        barrier protocol's observe over each batch, then its decision, the merged statistics. A row the
        evaluator fails on raises an OperatorError naming it.

        >>> from datacopilot.operators import create
        >>> ds.evaluate(create("dataset_stats"))["rows"]  # doctest: +SKIP
        """
        from .engine import Accounting
        from .engine.barriers import evaluated

        if getattr(op, "kind", None) != "evaluator":
            raise DataCopilotError(f"evaluate takes an Evaluator, got {op!r}")
        op.check(self.columns, self._schema.name)
        if op.uses_root and op.p.get("root") is None and self.root:
            op = op.replace(root=self.root)
        acc, pieces = Accounting([op], "raise"), []
        for part, payload in run_batches(self._table, _Observe(op), num_workers=num_workers, mode=mode,
                                         batch_size=batch_size, desc=op.label, stop=lambda r: r[0].failed):
            acc.merge(part)
            pieces += payload
        acc.check()
        return evaluated(op, pieces)

    def lazy(self, on_error: str = "raise", batch_size: int = 1024):
        """A lazy :class:`~datacopilot.pipeline.Pipeline` over this dataset: ``ds.lazy().apply(ops).collect()``."""
        from .pipeline import pipeline

        return pipeline(self, on_error=on_error, batch_size=batch_size)

    def _collect(self, ops, num_workers: int, mode: str, on_error: str, batch_size: int | None,
                 progress: bool | None) -> "MMDataset":
        """``ops`` as the lazy plan over this dataset, collected on the local executor. A progress bar shows by
        default from 50,000 rows, or when a model operator runs on a terminal."""
        if progress is None:
            ops_ = ops if isinstance(ops, list) else [ops]
            slow = any(getattr(op, "spec", None) is not None for op in ops_)  # a model operator: slow per row
            progress = sys.stderr.isatty() if slow else show_progress(None, len(self))
        plan = self.lazy(on_error=on_error, batch_size=PIECE_ROWS if batch_size is None else batch_size)
        return plan.apply(ops).collect(num_workers=num_workers, mode=mode, progress=progress)

    def embed_images(self, num_workers: int = 8, on_error: str = "raise") -> "MMDataset":
        """Read every image referred to by path into the rows, so written shards carry their own images.

        A missing image raises InputError naming the row and the path (or is skipped / quarantined per
        ``on_error``).
        """
        from .media import embed_images

        return embed_images(self, num_workers=num_workers, on_error=on_error)

    # -- batches and output ---------------------------------------------------------------------------
    def iter_batches(self, size: int = 1024) -> Iterator[pa.RecordBatch]:
        """Record batches of at most ``size`` rows (zero-copy slices)."""
        if size < 1:
            raise DataCopilotError(f"`size` must be positive, got {size!r}")
        for start in range(0, len(self), size):
            yield from self._table.slice(start, size).combine_chunks().to_batches() or []

    def write(self, path: str, format: str | None = None, image_paths: str = "keep", **options) -> str:
        """Write to one file (format from the extension, or ``format``); atomic. Returns the path.

        Image paths are written as they are (``image_paths="keep"``; a log line names their root when the file
        cannot record it), or rewritten ``"relative"`` to the file's directory or ``"absolute"`` (logged).

        >>> ds.write("out/llava.parquet", image_paths="relative")  # doctest: +SKIP
        """
        from .io import write

        return write(self, path, format=format, image_paths=image_paths, **options)

    def write_shards(self, directory: str, format: str = "arrow", max_rows_per_shard: int | None = 100_000,
                     max_bytes_per_shard: int | None = None, image_paths: str = "keep", **options) -> dict:
        """Write shards plus a ``manifest.json`` (rows, bytes, sha256 per shard). Returns the manifest.

        Image paths are kept as they are by default and the manifest records their ``root``, which ``load``
        uses; ``image_paths="relative"`` or ``"absolute"`` rewrites them, and the manifest's ``image_paths``
        says how many were rewritten.

        >>> ds.write_shards("shards/")["root"]  # doctest: +SKIP
        '/data/llava/images'
        """
        from .io import write_shards

        return write_shards(self, directory, format=format, max_rows_per_shard=max_rows_per_shard,
                            max_bytes_per_shard=max_bytes_per_shard, image_paths=image_paths, **options)


@dataclass
class _Observe:
    """An evaluator observes one slice (in a worker): its accounting and its statistics."""

    op: Any

    def __call__(self, table: pa.Table, offset: int) -> tuple:
        from .engine import Accounting
        from .engine.barriers import observe

        acc = Accounting([self.op], "raise")
        out = observe(self.op, 0, table, "raise", acc)
        return acc, out.payload


def merge_quarantines(parts: list) -> "MMDataset | None":
    """One quarantine from several (None entries skipped). Rows keep their columns where the tables fit
    together; where they do not (a column changed type between steps) each row becomes JSON text in ``_row``
    beside its ``_source`` and ``_error``, so no failed row is ever lost to a merge."""
    from .loading import quarantine_table

    parts = [p for p in parts if p is not None]
    if len(parts) <= 1:
        return parts[0] if parts else None
    tables = [p.to_arrow() for p in parts]
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        bad = []
        for t in tables:
            for r in t.to_pylist():
                source = r.pop("_source", None) or r.pop("_op", None)
                error = r.pop("_error", None)
                raw = r.pop("_row", None)
                bad.append((source, error, raw if raw is not None and not r else r))
        table = quarantine_table(bad)
    return MMDataset(table, Schema.infer(table.schema, "QUARANTINE"))


def _register() -> None:
    """Make MMDataset what a collected plan becomes (the plan does not import the facade above it)."""
    from .pipeline import Pipeline

    Pipeline.dataset_type = MMDataset


_register()
