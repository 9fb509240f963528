"""The vectorized work of ``merge_same_image`` (operators/augment.py): the rows' group keys, and groups of rows
merged into one, on the flattened turns of a batch (Arrow and numpy, Python only for the ids and the rare first
question that receives the image placeholders).

>>> import datacopilot as dc
>>> from datacopilot.operators import create
>>> rows = [{"id": i, "image": "a.png", "conversations": [{"from": "human", "value": "<image>\\nq" + i},
...                                                       {"from": "gpt", "value": "a" + i}]} for i in "12"]
>>> t = dc.MMDataset.from_rows(rows, schema="MM").to_arrow()
>>> op = create("merge_same_image")
>>> s = signatures(op, t); bool(s[0, 0] == s[1, 0]), s[:, 1].tolist()
(True, [1, 1])
>>> m = merge(op, t, np.array([0, 2])).to_pylist()[0]
>>> m["id"], [x["value"] for x in m["conversations"]]
('1+2', ['<image>\\nq1', 'a1', 'q2', 'a2'])
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datacopilot.engine.step import as_batch
from datacopilot.kernels.hashing import combine, hash_bytes, hash_strings, mix64
from datacopilot.schemas import IMAGE_TOKEN
from datacopilot.schemas.image import as_image_lists
from datacopilot.schemas.variant import is_variant

from ._augment import batch_rows, exchanges
from ._conv import ROLES, conversation_column, turns

_PLACEHOLDER = IMAGE_TOKEN.replace("<", "\\<").replace(">", "\\>") + "\n?"


def _fold(row: np.ndarray, h: np.ndarray, n: int) -> np.ndarray:
    """One uint64 per row from the hashes of its items (``row`` ascending), order-dependent; 0 for no item."""
    out = np.zeros(n, np.uint64)
    if len(row):
        starts = np.concatenate([[0], np.flatnonzero(np.diff(row)) + 1])
        pos = np.arange(len(row)) - np.repeat(starts, np.diff(np.concatenate([starts, [len(row)]])))
        with np.errstate(over="ignore"):
            np.add.at(out, row, mix64(combine(pos.astype(np.uint64), h)))
        out[np.unique(row)] |= np.uint64(1)
    return out


def _item_hashes(values: pa.Array) -> np.ndarray:
    """One hash per image value: a path string, or a ``{path, bytes}`` struct (both count)."""
    if pa.types.is_struct(values.type):
        names = {values.type.field(i).name for i in range(values.type.num_fields)}
        h = hash_strings(pc.struct_field(values, "path")) if "path" in names else np.zeros(len(values), np.uint64)
        b = np.zeros(len(values), np.uint64)  # an item's hash must not depend on the other items of the batch
        if "bytes" in names and pc.struct_field(values, "bytes").null_count < len(values):
            b = hash_bytes(pc.struct_field(values, "bytes").to_pylist())
        return combine(h, b)
    return hash_strings(values.cast(pa.string()))


def image_hashes(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """Per row a hash of its image(s) (``image``, or the list ``images``), 0 for a row without any."""
    n, names = table.num_rows, table.schema.names
    col = "image" if "image" in names else "images" if "images" in names else None
    if col is None:
        return np.zeros(n, np.uint64)
    arr = table.column(col)
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if is_variant(arr.type):
        arr = as_image_lists(arr)
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        values = arr.flatten()
        row = pc.list_parent_indices(arr).to_numpy().astype(np.int64)
        valid = values.is_valid().to_numpy(zero_copy_only=False)
        return _fold(row[valid], _item_hashes(values.filter(valid)), n)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    out = np.zeros(n, np.uint64)
    out[valid] = _item_hashes(arr.filter(valid)) | np.uint64(1)
    return out


def _layout(op, batch):
    """The flattened turns, with for each turn: is it a user turn, is it before the row's first user turn."""
    t = turns(op, batch)
    known = np.isin(t.role, tuple(set(ROLES.values())))
    if not known.all():  # the per-row code names the row's bad turn
        r = int(t.row[~known][0])
        k, rows = batch_rows(op, batch.slice(r, 1))
        exchanges(op, rows[0].get(k.col), k)
    user = t.role == "user"
    starts = np.zeros(t.n_rows + 1, np.int64)
    np.cumsum(np.bincount(t.row, minlength=t.n_rows), out=starts[1:])
    seen = np.concatenate([[0], np.cumsum(user)])
    prefix = (seen[1:] - seen[starts[t.row]]) == 0
    return t, user, prefix, starts


def signatures(op, batch) -> np.ndarray:
    """``(n, 2)`` uint64: a key of the row's images and system turns (0 for a row without an image or without a
    question: it stays alone) and its number of exchanges."""
    batch = as_batch(batch)
    t, user, prefix, _ = _layout(op, batch)
    n = t.n_rows
    size = np.bincount(t.row[user], minlength=n).astype(np.uint64)
    img = image_hashes(batch)
    pre = np.zeros(n, np.uint64)
    if prefix.any():
        idx = np.flatnonzero(prefix)
        h = combine(hash_strings(pa.array(t.role[idx].tolist(), pa.string())), hash_strings(t.text.take(idx)))
        pre = _fold(t.row[idx], h, n)
    key = np.where((img != 0) & (size > 0), combine(img, pre) | np.uint64(1), np.uint64(0))
    return np.stack([key, size], axis=1)


def merge(op, table: pa.Table, offsets: np.ndarray) -> pa.Table:
    """One row per group (rows ``offsets[g]:offsets[g + 1]``): the first row, with the exchanges of the others
    appended to its conversation without their ``<image>`` placeholders (moved to the first question when it
    has none) and the ids joined with ``+``."""
    table = as_batch(table)
    col, _, text_key = conversation_column(op, table)
    t, user, prefix, starts = _layout(op, table)
    arr = table.column(col)
    values = arr.flatten()
    group = np.searchsorted(offsets, t.row, side="right") - 1
    later = t.row != offsets[group]
    ph = pc.count_substring(t.text, IMAGE_TOKEN).to_numpy().astype(np.int64)
    raw = pc.struct_field(values, text_key)
    stripped = pc.utf8_trim_whitespace(pc.replace_substring_regex(raw, _PLACEHOLDER, ""))
    text = pc.if_else(pa.array(later & (ph > 0)), stripped, raw)
    # a first member without placeholders takes the largest count of a later member on its first question
    n_groups = len(offsets) - 1
    first_ph = np.bincount(group[~later], ph[~later], minlength=n_groups)
    later_ph = np.zeros(n_groups, np.int64)
    ex = later & ~prefix
    np.maximum.at(later_ph, group[ex], np.bincount(t.row[ex], ph[ex], minlength=t.n_rows)[t.row[ex]])
    move = np.flatnonzero((first_ph == 0) & (later_ph > 0))
    if len(move):
        text = text.to_pylist()
        for g in move:
            r = offsets[g]
            q = starts[r] + int(np.argmax(user[starts[r]:starts[r + 1]]))
            text[q] = (IMAGE_TOKEN + "\n") * int(later_ph[g]) + (text[q] or "")
        text = pa.array(text, pa.string())
    fields = [values.type.field(i) for i in range(values.type.num_fields)]
    children = [text if f.name == text_key else pc.struct_field(values, f.name) for f in fields]
    keep = ~later | ~prefix  # later members' system turns equal the first's: dropped
    turns_out = pa.StructArray.from_arrays(children, fields=fields, mask=values.is_null()).filter(pa.array(keep))
    counts = np.bincount(group[keep], minlength=n_groups)
    large = pa.types.is_large_list(arr.type)
    list_offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64 if large else np.int32))
    conv = (pa.LargeListArray if large else pa.ListArray).from_arrays(list_offsets, turns_out, type=arr.type)
    out = pa.Table.from_batches([table]).take(pa.array(offsets[:-1]))
    out = out.set_column(out.schema.get_field_index(col), out.schema.field(col), conv)
    if "id" in out.column_names:
        ids = table.column("id").to_pylist()
        joined = []
        for a, b in zip(offsets[:-1], offsets[1:]):
            got = [str(i) for i in ids[a:b] if i is not None]
            joined.append("+".join(got) if got else None)
        i = out.schema.get_field_index("id")
        out = out.set_column(i, out.schema.field(i), pa.array(joined, pa.string()).cast(out.schema.field(i).type))
    return out
