"""Reading and rewriting the conversation column of a record batch, whatever the schema calls it.

MM and MIX keep turns in ``conversations`` as ``{from, value}`` (``human``/``gpt`` or ``user``/``assistant``);
MESSAGES keeps them in ``messages`` as ``{role, content}``. Roles are read in one canonical form: ``user``,
``assistant``, ``system``. PAIRS and CAPTION are refused with the conversion to use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .base import Operator

ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}
_UNSUPPORTED = ("PAIRS", "CAPTION")


class ConversationOp:
    """Mixin: the operator reads the conversation column (``conversations`` or ``messages``)."""

    reads = ("conversations|messages",)

    def check(self, columns: list[str], schema: str | None = None) -> None:
        if schema in _UNSUPPORTED:
            raise self.error(f"works on MM, MIX and MESSAGES conversations, not {schema}; "
                             f"convert first: ds.convert('MESSAGES')")
        Operator.check(self, columns, schema)


@dataclass
class Turns:
    """The turns of a batch, flattened: ``row[i]`` is the row of turn ``i``."""

    column: str
    role_key: str
    text_key: str
    row: np.ndarray  # int64, one per turn
    role: np.ndarray  # canonical role strings (object), one per turn
    text: pa.Array  # string, one per turn (nulls as "")
    n_rows: int

    def select(self, role: str) -> np.ndarray:
        """Mask of the turns of ``role`` (``"all"`` for every non-system turn, ``"any"`` for every turn)."""
        if role == "any":
            return np.ones(len(self.row), dtype=bool)
        if role == "all":
            return self.role != "system"
        return self.role == role

    def per_row(self, values: np.ndarray, turns: np.ndarray, how: str, empty: float = 0) -> np.ndarray:
        """Reduce per-turn ``values`` of the ``turns`` mask to one per row: ``sum``, ``min``, ``max`` or ``any``."""
        rows, vals = self.row[turns], np.asarray(values)[turns]
        if how == "any":
            out = np.zeros(self.n_rows, dtype=bool)
            out[rows[vals.astype(bool)]] = True
            return out
        out = np.full(self.n_rows, empty if how != "sum" else 0, dtype=np.float64)
        if how == "sum":
            np.add.at(out, rows, vals)
        else:
            seen = np.zeros(self.n_rows, dtype=bool)
            seen[rows] = True
            init = np.inf if how == "min" else -np.inf
            acc = np.full(self.n_rows, init)
            (np.minimum if how == "min" else np.maximum).at(acc, rows, vals)
            out[seen] = acc[seen]
        return out


def conversation_column(op: Operator, batch: pa.RecordBatch) -> tuple[str, str, str]:
    """(column, role key, text key) of the batch's conversations; OperatorError when there are none."""
    names = batch.schema.names
    for col in ("messages", "conversations"):
        if col not in names:
            continue
        t = batch.schema.field(col).type
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            v = t.value_type
            if pa.types.is_struct(v):
                keys = {v.field(i).name for i in range(v.num_fields)}
                for role_key, text_key in (("role", "content"), ("from", "value")):
                    if {role_key, text_key} <= keys:
                        return col, role_key, text_key
        raise op.error(f"column {col!r} of type {t} is not a list of turns ({{from, value}} or {{role, content}}); "
                       f"PAIRS rows must be converted first: ds.convert('MESSAGES')")
    raise op.error(f"needs column 'conversations' or 'messages'; the batch has {names}")


def turns(op: Operator, batch: pa.RecordBatch) -> Turns:
    """The flattened turns of ``batch`` (vectorized)."""
    col, role_key, text_key = conversation_column(op, batch)
    arr = batch.column(col)
    values = arr.flatten()
    row = pc.list_parent_indices(arr).to_numpy().astype(np.int64)
    role = canonical_roles(pc.struct_field(values, role_key))
    text = pc.fill_null(pc.struct_field(values, text_key), "")
    return Turns(col, role_key, text_key, row, role, text, batch.num_rows)


def canonical_roles(raw: pa.Array) -> np.ndarray:
    """The canonical role of each turn (object array; an unknown role as it is, a null as None), mapped once per
    distinct role: the column is dictionary-encoded and the few distinct values are looked up.

    >>> canonical_roles(pa.array(["human", "gpt", None, "bot", "system"])).tolist()
    ['user', 'assistant', None, 'bot', 'system']
    """
    if not len(raw):
        return np.zeros(0, object)
    enc = raw if pa.types.is_dictionary(raw.type) else pc.dictionary_encode(raw)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    names = enc.dictionary.to_pylist() + [None]  # the last entry stands for a null role
    canon = np.array([ROLES.get(r, r) for r in names], dtype=object)
    idx = pc.fill_null(enc.indices, len(names) - 1).to_numpy().astype(np.intp)
    return canon[idx]


def turn_counts(op: Operator, batch: pa.RecordBatch) -> np.ndarray:
    """Number of turns per row (0 for a null conversation)."""
    col, _, _ = conversation_column(op, batch)
    return pc.fill_null(pc.list_value_length(batch.column(col)), 0).to_numpy().astype(np.int64)


def replace_texts(op: Operator, batch: pa.RecordBatch, fn: Callable[[pa.Array], pa.Array]) -> pa.Table:
    """The batch with every turn's text replaced by ``fn(texts)`` (a vectorized function of a string array)."""
    col, _, text_key = conversation_column(op, batch)
    arr = batch.column(col)
    start, end = arr.offsets[0].as_py(), arr.offsets[-1].as_py()
    values = arr.values.slice(start, end - start)  # not flatten(): null lists may hide values
    texts = pc.struct_field(values, text_key)
    new_texts = fn(texts)
    fields = [values.type.field(i) for i in range(values.type.num_fields)]
    children = [new_texts if f.name == text_key else pc.struct_field(values, f.name) for f in fields]
    new_values = pa.StructArray.from_arrays(children, fields=fields, mask=values.is_null())
    offsets = pc.subtract(arr.offsets, arr.offsets[0])
    new = pa.ListArray.from_arrays(offsets, new_values, type=arr.type, mask=arr.is_null())
    return _with_column(batch, col, new)


def replace_conversations(op: Operator, batch: pa.RecordBatch, convs: list) -> pa.Table:
    """The batch with its conversation column replaced by ``convs`` (lists of turn dicts, original keys)."""
    col, _, _ = conversation_column(op, batch)
    new = pa.array(convs, type=batch.schema.field(col).type)
    return _with_column(batch, col, new)


def _with_column(batch: pa.RecordBatch, col: str, new: pa.Array) -> pa.Table:
    table = pa.Table.from_batches([batch])
    return table.set_column(table.schema.get_field_index(col), table.schema.field(col), new)


def image_counts(batch: pa.RecordBatch) -> np.ndarray:
    """Number of images per row: ``image`` (0 or 1) or the length of ``images``."""
    names = batch.schema.names
    if "image" in names:  # one image, or a list of them (LLaVA-NeXT)
        from datacopilot.schemas.image import as_image_lists

        return pc.fill_null(pc.list_value_length(as_image_lists(batch.column("image"))), 0).to_numpy().astype(np.int64)
    if "images" in names:
        return pc.fill_null(pc.list_value_length(batch.column("images")), 0).to_numpy().astype(np.int64)
    return np.zeros(batch.num_rows, dtype=np.int64)
