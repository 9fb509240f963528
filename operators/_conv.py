"""Reading and rewriting the conversation column of a record batch, whatever the schema calls it.

MM and MIX keep turns in ``conversations`` as ``{from, value}`` (``human``/``gpt`` or ``user``/``assistant``);
MESSAGES keeps them in ``messages`` as ``{role, content}``. Roles are read in one canonical form: ``user``,
``assistant``, ``system``. PAIRS and CAPTION are refused with the conversion to use.
"""

from __future__ import annotations

from functools import cached_property
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


class Turns:
    """The turns of a batch, flattened: turns ``offsets[r]:offsets[r + 1]`` are row ``r``'s.

    ``code`` holds each turn's canonical role as a small integer (:mod:`datacopilot.kernels.text`: USER,
    ASSISTANT, SYSTEM, OTHER, NULL); ``role`` the canonical role strings (object), ``row`` the row of each turn and
    ``text`` the turn texts (string, nulls as ``""``). Each is computed on first use, once per batch, so an
    operator pays only for what it reads.
    """

    def __init__(self, column: str, role_key: str, text_key: str, values: pa.Array, offsets: np.ndarray,
                 n_rows: int):
        self.column, self.role_key, self.text_key = column, role_key, text_key
        self.values, self.offsets, self.n_rows = values, offsets, n_rows

    def _field(self, name: str) -> pa.Array:
        # StructArray.field ignores the struct's own nulls: pc.struct_field where a turn is null
        return self.values.field(name) if not self.values.null_count else pc.struct_field(self.values, name)

    @cached_property
    def raw_roles(self) -> pa.Array:
        return self._field(self.role_key)

    @cached_property
    def raw_text(self) -> pa.Array:
        """The turn texts as stored (nulls kept)."""
        return self._field(self.text_key)

    @cached_property
    def text(self) -> pa.Array:
        raw = self.raw_text
        return pc.fill_null(raw, "") if raw.null_count else raw

    @cached_property
    def row(self) -> np.ndarray:
        """int64, the row of each turn."""
        return np.repeat(np.arange(self.n_rows, dtype=np.int64), np.diff(self.offsets))

    @cached_property
    def role(self) -> np.ndarray:
        return canonical_roles(self.raw_roles)

    @cached_property
    def code(self) -> np.ndarray:
        from datacopilot.kernels import text as k

        raw = self.raw_roles
        if pa.types.is_string(raw.type) or pa.types.is_large_string(raw.type):
            code = k.role_codes(*k.string_buffers(raw))
            if raw.null_count:
                code[~raw.is_valid().to_numpy(zero_copy_only=False)] = k.NULL
            return code
        role = self.role
        code = np.full(len(role), k.OTHER, np.uint8)
        for name, c in (("user", k.USER), ("assistant", k.ASSISTANT), ("system", k.SYSTEM), (None, k.NULL)):
            code[np.array([r == name if name else r is None for r in role], dtype=bool)] = c
        return code

    def select(self, role: str) -> np.ndarray:
        """Mask of the turns of ``role`` (``"all"`` for every non-system turn, ``"any"`` for every turn)."""
        from datacopilot.kernels import text as k

        if role == "any":
            return np.ones(len(self.values), dtype=bool)
        if role == "all":
            return self.code != k.SYSTEM
        if role in _CODES:
            return self.code == getattr(k, _CODES[role])
        return self.role == role

    def __len__(self) -> int:
        return len(self.values)

    def count(self, turns: np.ndarray) -> np.ndarray:
        """The number of ``turns`` (a mask) in each row (int64)."""
        from datacopilot.kernels import text as k

        return k.row_count(self.offsets, np.ascontiguousarray(turns, dtype=bool))

    def text_buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, bytes) of the turn texts (:func:`datacopilot.kernels.text.string_buffers`; a null text as
        ``""``)."""
        from datacopilot.kernels import text as k

        return k.string_buffers(self.text)

    def per_row(self, values: np.ndarray, turns: np.ndarray, how: str, empty: float = 0) -> np.ndarray:
        """Reduce per-turn ``values`` of the ``turns`` mask to one per row: ``sum``, ``min``, ``max`` or ``any``
        (``empty`` for a row with no such turn; a sum is 0 there)."""
        from datacopilot.kernels import text as k

        sel = np.ascontiguousarray(turns, dtype=bool)
        if how == "any":
            return k.row_any(self.offsets, np.ascontiguousarray(values, dtype=bool), sel)
        vals = np.ascontiguousarray(values, dtype=np.float64)
        if how == "sum":
            return k.row_sum(self.offsets, vals, sel)
        lo, hi = k.row_min_max(self.offsets, vals, sel, float(empty), float(empty))
        return lo if how == "min" else hi


_CODES = {"user": "USER", "assistant": "ASSISTANT", "system": "SYSTEM"}


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
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:  # the turns of the valid rows (a null row's hidden values are left out)
        values = arr.flatten()
        offsets = np.zeros(len(arr) + 1, np.int64)
        np.cumsum(pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False), out=offsets[1:])
    else:
        raw = arr.offsets.to_numpy()
        start = int(raw[0])
        offsets = raw.astype(np.int64) - start
        values = arr.values.slice(start, int(offsets[-1]))
    return Turns(col, role_key, text_key, values, offsets, batch.num_rows)


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
    if new_texts is texts:  # nothing changed: the batch as it is
        return pa.Table.from_batches([batch])
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


def replace_rows(op: Operator, batch: pa.RecordBatch, rows: np.ndarray, convs: list) -> pa.Table:
    """The batch with the conversations of ``rows`` (indices, ascending) replaced by ``convs`` (lists of turn
    dicts, original keys); the other rows' conversations are taken as they are."""
    col, _, _ = conversation_column(op, batch)
    if not len(rows):
        return pa.Table.from_batches([batch])
    arr = batch.column(col)
    where = np.arange(len(arr), dtype=np.int64)
    where[rows] = len(arr) + np.arange(len(rows))
    new = pa.concat_arrays([arr, pa.array(convs, type=arr.type)]).take(pa.array(where))
    return _with_column(batch, col, new)


def replace_row_texts(op: Operator, batch: pa.RecordBatch, t: Turns, rows: np.ndarray, convs: list) -> pa.Table:
    """The batch with the turn texts of ``rows`` (indices, ascending) replaced by those of ``convs`` (lists of turn
    dicts, original keys, each with as many turns as the row has: only texts changed). Only the text column is
    rebuilt (the changed turns put in place); roles, other fields and the lists are kept as they are."""
    if not len(rows):
        return pa.Table.from_batches([batch])
    col = t.column
    need = np.zeros(t.n_rows, dtype=bool)
    need[rows] = True
    turns_of = np.repeat(need, np.diff(t.offsets))
    texts = pa.array([turn.get(t.text_key) for conv in convs for turn in conv], type=t.raw_text.type)
    if len(texts) != int(turns_of.sum()):
        raise op.error(f"replace_row_texts: {len(texts)} turns given for {int(turns_of.sum())}")
    new_text = pc.replace_with_mask(t.raw_text, pa.array(turns_of), texts)
    values = t.values
    fields = [values.type.field(i) for i in range(values.type.num_fields)]
    children = [new_text if f.name == t.text_key else values.field(f.name) for f in fields]
    new_values = pa.StructArray.from_arrays(children, fields=fields,
                                            mask=values.is_null() if values.null_count else None)
    arr = batch.column(col)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    large = pa.types.is_large_list(arr.type)
    offsets = pa.array(t.offsets, pa.int64() if large else pa.int32())
    cls = pa.LargeListArray if large else pa.ListArray
    new = cls.from_arrays(offsets, new_values, type=arr.type, mask=arr.is_null() if arr.null_count else None)
    return _with_column(batch, col, new)


def _with_column(batch: pa.RecordBatch, col: str, new: pa.Array) -> pa.Table:
    table = pa.Table.from_batches([batch])
    return table.set_column(table.schema.get_field_index(col), table.schema.field(col), new)


def image_counts(batch: pa.RecordBatch) -> np.ndarray:
    """Number of images per row: ``image`` (0 or 1, or a list of them) or the length of ``images``."""
    names = batch.schema.names
    col = batch.column("image") if "image" in names else batch.column("images") if "images" in names else None
    if col is None:
        return np.zeros(batch.num_rows, dtype=np.int64)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    if "image" in names and not isinstance(t, pa.ExtensionType):  # one image or none (a null): its validity
        if not col.null_count:
            return np.ones(len(col), dtype=np.int64)
        return col.is_valid().to_numpy(zero_copy_only=False).astype(np.int64)
    from datacopilot.schemas.image import as_image_lists  # a variant: one image in some rows, a list in others

    return pc.fill_null(pc.list_value_length(as_image_lists(col)), 0).to_numpy().astype(np.int64)
