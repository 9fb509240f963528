"""``Schema``: a name and typed fields, the matching Arrow schema, row validation and conversion hooks."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa

from datacopilot.errors import SchemaError

from .arrow_build import conform_array
from .types import ArrowType, DType, Field, Struct


class Schema:
    """A named, typed description of a dataset's rows.

    Parameters
    ----------
    name: the schema's name, e.g. ``"MM"``.
    fields: the typed fields. Columns not named here are allowed and carried along unchanged.
    to_canonical / from_canonical: converters to and from the canonical conversation form
        (see :mod:`datacopilot.schemas.convert`); None for schemas that cannot convert.

    Example
    -------
    >>> from datacopilot.schemas import MM
    >>> MM.validate_row({"id": "1", "conversations": [{"from": "bot", "value": "hi"}]}, where="data.jsonl:17")
    ["data.jsonl:17: conversations[0].from: expected one of 'human', 'gpt', got 'bot'"]
    """

    def __init__(
        self,
        name: str,
        fields: Iterable[Field],
        to_canonical: Callable[[dict], dict] | None = None,
        from_canonical: Callable[[dict], dict] | None = None,
        doc: str = "",
    ):
        self.name = name
        self.fields = tuple(fields)
        self.struct = Struct(self.fields)
        self.to_canonical = to_canonical
        self.from_canonical = from_canonical
        self.doc = doc
        seen = set()
        for f in self.fields:
            if f.name in seen:
                raise SchemaError(f"schema {name}: duplicate field {f.name!r}")
            seen.add(f.name)

    # -- structure ------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise SchemaError(f"schema {self.name} has no field {name!r}; fields: {self.names}")

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(f.name, f.dtype.arrow(), nullable=True) for f in self.fields])

    @classmethod
    def infer(cls, arrow_schema: pa.Schema, name: str = "INFERRED") -> "Schema":
        """A schema that types every column as it is in ``arrow_schema`` and constrains nothing."""
        return cls(name, [Field(f.name, ArrowType(f.type), required=False) for f in arrow_schema])

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Schema) and self.name == other.name and self.fields == other.fields

    def __hash__(self) -> int:
        return hash((self.name, self.fields))

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.name}{'' if f.required else '?'}: {f.dtype.arrow()}" for f in self.fields)
        return f"Schema({self.name}: {inner})"

    # -- rows -----------------------------------------------------------------------------------------
    def normalize_row(self, row: dict) -> dict:
        """Turn a row as found in files (image paths as strings, ``meta`` as objects) into its stored form."""
        return self.struct.normalize(row)

    def normalize_column(self, name: str, values: list) -> list:
        """:meth:`normalize_row` for one column's values (unchanged for columns outside the schema)."""
        if name not in self.names:
            return values
        dtype = self.field(name).dtype
        return [dtype.normalize(v) for v in values]

    def column_array(self, name: str, values: list) -> pa.Array:
        """One column of rows as found in files or returned by a map, as an Arrow array of this schema's type,
        as wide as the values (ids that mix str and int, unknown keys in turns); any key not in the schema is
        typed as Arrow infers it, or as JSON values when rows disagree."""
        from .arrow_build import to_array

        dtype = self.field(name).dtype if name in self.names else None
        return to_array(dtype, self.normalize_column(name, values), f"column {name!r}")

    def validate_row(self, row: Any, where: str = "") -> list[str]:
        """Every problem of one row, each message prefixed with ``where`` (e.g. ``"data.jsonl:17"``)."""
        out: list[str] = []
        self.struct.check(row, "", out)
        prefix = f"{where}: " if where else ""
        return [prefix + m for m in out]

    # -- tables ---------------------------------------------------------------------------------------
    def conform(self, table: pa.Table) -> pa.Table:
        """Cast the schema's columns to their Arrow types and add missing optional columns as nulls.

        Extra columns are kept after the schema's own, and so are the children of struct columns (turns,
        image records) that the schema does not name. Raises :class:`SchemaError` naming the column when
        a required column is missing or a column cannot be cast.
        """
        if self._conforms(table):  # as conform builds it: no schema metadata
            return table.replace_schema_metadata(None) if table.schema.metadata else table
        cols, names = [], []
        for f in self.fields:
            want = f.dtype.arrow()
            if f.name not in table.column_names:
                if f.required:
                    raise SchemaError(f"schema {self.name}: missing required column {f.name!r}; got {table.column_names}")
                cols.append(pa.nulls(len(table), want))
            else:
                col = table.column(f.name)
                try:
                    col = _cast(col, f.dtype, f"column {f.name!r}")
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, SchemaError) as e:
                    raise SchemaError(
                        f"schema {self.name}: column {f.name!r} has type {col.type}, expected {want}: {e}"
                    ) from e
                cols.append(col)
            names.append(f.name)
        for name in table.column_names:
            if name not in names:
                cols.append(table.column(name))
                names.append(name)
        return pa.Table.from_arrays(cols, names=names)

    def _conforms(self, table: pa.Table) -> bool:
        """Whether ``table`` already is what :meth:`conform` makes of it but for its schema metadata (the
        schema's columns first, in order, each of the type it would be cast to): a table conformed once, or read
        from a file of the schema's types, costs a look at its types."""
        from .arrow_build import conform_type

        names = table.column_names
        if names[:len(self.fields)] != self.names or not all(f.nullable and not f.metadata for f in table.schema):
            return False  # (conform's table has only nullable fields, without field metadata)
        return all(table.schema.field(i).type == conform_type(f.dtype, table.schema.field(i).type)
                   for i, f in enumerate(self.fields))

    def bad_rows(self, table: pa.Table) -> np.ndarray:
        """Vectorized screen of a conformed table: a mask of rows that may be invalid (no false negatives
        for required fields and choices; :meth:`validate_row` gives the messages)."""
        mask = np.zeros(table.num_rows, dtype=bool)
        for f in self.fields:
            if f.name not in table.column_names:
                if f.required:
                    mask[:] = True
                continue
            start = 0
            for chunk in table.column(f.name).chunks:  # chunk by chunk: memory-mapped data stays mapped
                end = start + len(chunk)
                if f.required:
                    mask[start:end] |= np.asarray(chunk.is_null(), dtype=bool)
                sub = f.dtype.bad_mask(chunk)
                if sub is not None:
                    mask[start:end] |= sub
                start = end
        return mask


def _cast(col: pa.ChunkedArray, dtype: DType, where: str = "") -> pa.ChunkedArray:
    """Cast to what ``dtype`` wants for this column (see :func:`~datacopilot.schemas.arrow_build.conform_array`):
    across struct field order and missing struct fields (which become nulls), keeping the children the schema
    does not name, and from the shapes files and data frames hold (an image as a path string, ``meta`` as an
    object)."""
    return conform_array(col, dtype, where)
