"""What a writer is given: the rows (an Arrow table), their schema and the root their image paths resolve against.
An MMDataset is one too (``to_arrow()``, ``schema``, ``root``); the io layer builds this small value instead of a
dataset, so it never imports the facade above it."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from datacopilot.schemas import Schema


@dataclass(frozen=True)
class Rows:
    """Rows to write: ``table`` typed by ``schema``, image paths relative to ``root``."""

    table: pa.Table
    schema: Schema
    root: str | None = None

    def to_arrow(self) -> pa.Table:
        return self.table

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, key: slice) -> "Rows":
        """Rows ``key`` (a slice) of these, without a copy."""
        start, stop, step = key.indices(self.table.num_rows)
        if step != 1:
            raise ValueError("Rows takes contiguous slices only")
        return Rows(self.table.slice(start, stop - start), self.schema, self.root)
