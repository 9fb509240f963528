"""Dataset-wide reordering as pipeline stages: ``shuffle`` (a seeded permutation of all rows) and ``sort`` (by
columns or struct fields, stable). Both are groupers whose groups are single rows: while the rows wait (in memory
for ``ds.apply``, in the local executor's memory-mapped spill file, in Ray's object store), executors keep only what
the order needs, nothing per row for ``shuffle`` until the rows are counted (then a key of each row's position, 8
bytes a row: :func:`~datacopilot.engine.grouping.shuffle_keys`) and the key values for ``sort``; then they read the
rows back in the new order, a window at a time. On Ray both are range-partitioned stages
(:mod:`datacopilot.engine.partitions`): no process holds anything per row of the whole dataset.

They give the rows of ``ds.shuffle(seed)`` and ``ds.sort(by, reverse=descending)`` on the same rows (one
column name or a list of them; ``sort`` also takes struct fields, ``"image.path"``), on every executor:

>>> from datacopilot.operators import create
>>> dc.pipeline("raw/*.jsonl", schema="MM").apply([create("sort", by="image.path"),
...                                                 create("merge_same_image")]).write("out/")  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datacopilot.engine.grouping import shuffle_keys

from .base import Grouper, check_int
from .registry import register


@register
class Shuffle(Grouper):
    """All rows in a random order, seeded: the order of ``ds.shuffle(seed)`` over the rows that reach it."""

    name = "shuffle"

    def __init__(self, seed: int = 0):
        super().__init__(seed=check_int(self, "seed", seed, minimum=0))

    sort_keys = [("key", "ascending")]

    def signatures(self, batch: pa.RecordBatch) -> np.ndarray:
        return np.zeros((batch.num_rows, 0), np.uint8)  # nothing to keep: the rows are only counted

    def order_by(self, sigs, positions: np.ndarray) -> pa.Table:
        return pa.table({"key": shuffle_keys(self.p["seed"], positions)})


@register
class Sort(Grouper):
    """Rows sorted by ``by`` (a column, a struct field as ``"image.path"``, or a list of them), ascending or
    ``descending``; stable (equal keys keep their order); nulls last."""

    name = "sort"

    def __init__(self, by: str | list[str] = "id", descending: bool = False):
        keys = [by] if isinstance(by, str) else by
        if not isinstance(keys, (list, tuple)) or not keys or not all(isinstance(k, str) and k for k in keys):
            raise self.error(f"`by` must be a column name or a list of them, got {by!r}")
        if not isinstance(descending, bool):
            raise self.error(f"`descending` must be True or False, got {descending!r}")
        super().__init__(by=by if isinstance(by, str) else list(by), descending=descending)
        self.keys = list(keys)
        # the key columns as errors name them ("image.path"; a key given twice: "id#1")
        self.names = [k if self.keys.count(k) == 1 else f"{k}#{i}" for i, k in enumerate(self.keys)]
        self.sort_keys = [(k, "descending" if descending else "ascending") for k in self.names]
        self.reads = tuple(dict.fromkeys(k.split(".")[0] for k in self.keys))

    def signatures(self, batch: pa.RecordBatch) -> pa.Table:
        cols = {}
        for i, key in enumerate(self.keys):
            name, *path = key.split(".")
            col = batch.column(name)
            for field in path:
                if not pa.types.is_struct(col.type) or col.type.get_field_index(field) < 0:
                    raise self.error(f"`by`: {key!r} is not a field of column {name!r} ({batch.column(name).type})")
                col = pc.struct_field(col, field)
            cols[f"k{i}"] = col
        return pa.table(cols)

    def order_by(self, sigs: pa.Table, positions: np.ndarray) -> pa.Table:
        return sigs.rename_columns(self.names)
