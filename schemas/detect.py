"""Which built-in schema a file's columns (and, where the columns leave it open, its turns' roles) match."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from .builtin import CAPTION, CAULDRON, MESSAGES, MIX, MM, MMC4, PAIRS, SHAREGPT
from .schema import Schema
from .variant import storage_of

_MM_ROLES = {"human", "gpt"}
_MIX_ROLES = {"user", "assistant"}
_SHAREGPT_ONLY = {"system", "function_call", "observation"}
_SHAREGPT_ROLES = {"human", "gpt", "user", "assistant"} | _SHAREGPT_ONLY


def detect_schema(arrow_schema: pa.Schema, roles: set | None = None) -> Schema | None:
    """The built-in schema whose shape the columns match, or None.

    ``roles`` are the ``from`` values seen in ``conversations`` (see :func:`turn_roles`): ShareGPT and MM share
    their columns and differ in the roles they allow.

    >>> detect_schema(pa.schema([("conversations", pa.list_(pa.struct([("from", pa.string())])))]), {"system"}).name
    'SHAREGPT'
    """
    names = set(arrow_schema.names)
    if "messages" in names:
        return MESSAGES
    if "texts" in names and "conversations" not in names:
        return CAULDRON
    if "text_list" in names and "image_info" in names:
        return MMC4
    if "caption" in names and "conversations" not in names:
        return CAPTION
    if "conversations" not in names:
        return None
    t = storage_of(arrow_schema.field("conversations").type)
    if pa.types.is_list(t) and pa.types.is_list(t.value_type):
        return PAIRS
    if "images" in names and "image" not in names:
        it = storage_of(arrow_schema.field("images").type)
        if pa.types.is_list(it) and pa.types.is_struct(it.value_type) and it.value_type.get_field_index("url") >= 0:
            return MIX
        if _no_values(it) and roles and roles <= _MIX_ROLES:  # DataCopilot MIX text-only rows: ``images: null``
            return MIX
        return SHAREGPT
    if names & {"system", "tools", "videos"}:
        return SHAREGPT
    if roles and not roles <= _MM_ROLES:
        if roles <= _MIX_ROLES and "image" not in names:
            return MIX
        if roles & _SHAREGPT_ONLY and roles <= _SHAREGPT_ROLES:
            return SHAREGPT
    return MM  # unknown roles ('bot') stay MM, whose validation names them


def _no_values(t: pa.DataType) -> bool:
    """A column type that tells nothing of its values' shape: all null, or lists of nulls (empty lists)."""
    return pa.types.is_null(t) or (pa.types.is_list(t) and pa.types.is_null(t.value_type))


def turn_roles(table: pa.Table) -> set | None:
    """The distinct ``from`` values of a table's ``conversations`` turns (vectorized), or None."""
    if "conversations" not in table.column_names:
        return None
    t = table.schema.field("conversations").type
    if not (pa.types.is_list(t) and pa.types.is_struct(t.value_type) and t.value_type.get_field_index("from") >= 0):
        return None
    out = set()
    for chunk in table.column("conversations").chunks:
        out |= {v for v in pc.unique(chunk.flatten().field("from")).to_pylist() if v is not None}
    return out


def row_roles(rows: list) -> set:
    """:func:`turn_roles` for Python rows."""
    out = set()
    for r in rows:
        convs = r.get("conversations") if isinstance(r, dict) else None
        if isinstance(convs, list):
            out.update(t.get("from") for t in convs if isinstance(t, dict) and isinstance(t.get("from"), str))
    return out


def resolve_schema(table: pa.Table, schema=None) -> Schema:
    """``schema`` (a Schema or a built-in name) when given; else the built-in schema the table matches (columns
    and roles), else a schema inferred from its columns that constrains nothing."""
    from .builtin import get_schema

    if schema is not None:
        return get_schema(schema)
    return detect_schema(table.schema, turn_roles(table)) or Schema.infer(table.schema)
