"""Dataset-wide reordering as pipeline stages: ``shuffle`` (a seeded permutation of all rows) and ``sort`` (by
columns or struct fields, stable). Both are groupers whose groups are single rows: while the rows wait (in memory
for ``ds.apply``, in the local executor's memory-mapped spill file, in Ray's object store), executors keep only what
the order needs, nothing per row for ``shuffle`` until the rows are counted (then the permutation, 8 bytes a row)
and the key values for ``sort``; then they read the rows back in the new order, a window at a time.

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

from .base import Grouper, check_int
from .registry import register


@register
class Shuffle(Grouper):
    """All rows in a random order, seeded: the order of ``ds.shuffle(seed)`` over the rows that reach it."""

    name = "shuffle"

    def __init__(self, seed: int = 0):
        super().__init__(seed=check_int(self, "seed", seed, minimum=0))

    def signatures(self, batch: pa.RecordBatch) -> np.ndarray:
        return np.zeros((batch.num_rows, 0), np.uint8)  # nothing to keep: the rows are only counted

    def arrange(self, parts: list) -> tuple[np.ndarray, np.ndarray]:
        n = sum(len(p) for p in parts)
        return np.random.default_rng(self.p["seed"]).permutation(n), np.arange(n + 1)


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

    def arrange(self, parts: list) -> tuple[np.ndarray, np.ndarray]:
        if not parts:
            return np.zeros(0, np.int64), np.zeros(1, np.int64)
        keys = pa.concat_tables(parts, promote_options="permissive")
        order = "descending" if self.p["descending"] else "ascending"
        try:
            idx = pc.sort_indices(keys, sort_keys=[(f"k{i}", order) for i in range(len(self.keys))])
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            types = ", ".join(f"{k} ({t})" for k, t in zip(self.keys, keys.schema.types))
            raise self.error(f"cannot sort by {types}: {e}") from None
        return idx.to_numpy().astype(np.int64), np.arange(keys.num_rows + 1)
