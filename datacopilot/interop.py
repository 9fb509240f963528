"""Arrow tables to and from the engines that hold them (Hugging Face datasets, polars), losslessly.

- HF datasets 2.x has no feature for an Arrow extension type, so a column that holds one (a variant id that is a
  string in some rows and an integer in others, a JSON value of mixed shapes) goes to HF as its storage (a struct
  with one child per alternative; never stringified) and its real type is recorded in the table's
  ``huggingface`` schema metadata under ``datacopilot.types``; :func:`from_hf_table` puts the type back.
- polars hands extension columns back over its own storage types (string views, large lists): :func:`from_polars_table`
  casts them back to the plain types the schemas use.

>>> import pyarrow as pa
>>> from datacopilot.schemas.variant import variant_array
>>> t = pa.table({"id": variant_array({"str": pa.array(["a", None]), "int": pa.array([None, 7])})})
>>> from_hf_table(to_hf_table(t)).column("id").to_pylist()
['a', 7]
"""

from __future__ import annotations

import base64
import json

import pyarrow as pa

from datacopilot.schemas.variant import JsonValueType, VariantType, has_extension, storage_of, unwrap, wrap

HF_KEY = b"huggingface"
TYPES_KEY = "datacopilot.types"


def to_hf_table(table: pa.Table) -> pa.Table:
    """``table`` with every column that holds an extension type replaced by its storage (zero-copy), the
    columns' real types recorded in the ``huggingface`` schema metadata (HF rewrites every other key), under
    ``datacopilot.types`` as an Arrow IPC schema in base64."""
    typed = [f for f in table.schema if has_extension(f.type)]
    if not typed:
        return table
    cols = [unwrap(c) if has_extension(f.type) else c for f, c in zip(table.schema, table.columns)]
    meta = dict(table.schema.metadata or {})
    hf = _hf_meta(meta)
    hf[TYPES_KEY] = base64.b64encode(pa.schema(typed).serialize().to_pybytes()).decode()
    meta[HF_KEY] = json.dumps(hf)
    return pa.Table.from_arrays(cols, names=table.column_names).replace_schema_metadata(meta)


def _hf_meta(meta: dict) -> dict:
    try:
        out = json.loads(meta.get(HF_KEY) or "{}")
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def from_hf_table(table: pa.Table) -> pa.Table:
    """The inverse of :func:`to_hf_table`: columns recorded in ``datacopilot.types`` get their type back when
    their storage still matches it (a column HF work has since changed is left as it is)."""
    meta = dict(table.schema.metadata or {})
    hf = _hf_meta(meta)
    if TYPES_KEY not in hf:
        return table
    raw = base64.b64decode(hf.pop(TYPES_KEY))
    types = {f.name: f.type for f in pa.ipc.read_schema(pa.py_buffer(raw))}
    cols = []
    for name, col in zip(table.column_names, table.columns):
        t = types.get(name)
        cols.append(wrap(col, t) if t is not None and col.type == storage_of(t) else col)
    meta[HF_KEY] = json.dumps(hf)
    return pa.Table.from_arrays(cols, names=table.column_names).replace_schema_metadata(meta)


def plain(t: pa.DataType) -> pa.DataType:
    """``t`` with large and view string, binary and list types replaced by the plain ones at every depth,
    extension types included (their storage made plain too)."""
    if isinstance(t, JsonValueType):
        return JsonValueType()
    if isinstance(t, VariantType):
        return VariantType(plain(t.storage_type))
    if pa.types.is_large_string(t) or t == pa.string_view():
        return pa.string()
    if pa.types.is_large_binary(t) or t == pa.binary_view():
        return pa.binary()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return pa.list_(plain(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, plain(f.type), f.nullable) for f in t])
    return t


def from_polars_table(table: pa.Table) -> pa.Table:
    """A table polars handed back (``df.to_arrow()``) with the plain types the schemas use."""
    cols = []
    for f, col in zip(table.schema, table.columns):
        want = plain(f.type)
        if want == f.type:
            cols.append(col)
        elif has_extension(f.type):
            cols.append(wrap(unwrap(col).cast(storage_of(want)), want))
        else:
            cols.append(col.cast(want))
    return pa.Table.from_arrays(cols, names=table.column_names)


def from_pandas_table(df) -> pa.Table:
    """A pandas DataFrame as an Arrow table, the index left out. An ``object`` column Arrow cannot type as one
    (ids that are strings in some rows and integers in others) is built value by value with each value's own
    type kept (a JSON-value column; a schema's conform makes it its variant), never stringified.

    >>> import pandas as pd
    >>> from_pandas_table(pd.DataFrame({"id": ["a", 7]})).column("id").to_pylist()
    ['a', 7]
    """
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    from datacopilot.schemas.arrow_build import to_array

    arrays, names = [], []
    for name in df.columns:
        col = df[name]
        try:
            arr = pa.Array.from_pandas(col)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            values = [None if _is_missing(v) else v for v in col.tolist()]
            arr = to_array(None, values, f"column {name!r}")
        arrays.append(arr)
        names.append(str(name))
    return pa.Table.from_arrays(arrays, names=names)


def _is_missing(v) -> bool:
    """pandas' missing markers (None, NaN, NA, NaT) in an object column."""
    if v is None:
        return True
    try:
        import pandas as pd

        return v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v)
    except ImportError:  # pragma: no cover - a DataFrame came from somewhere
        return isinstance(v, float) and v != v


DESCRIPTION_MARK = "datacopilot.types:"  # how the types travel through save_to_disk, which rewrites the metadata


def to_hf(table: pa.Table):
    """A ``datasets.Dataset`` over :func:`to_hf_table` of ``table``. ``save_to_disk`` rewrites the Arrow files'
    ``huggingface`` metadata from the features, so the recorded types also go in the dataset's
    ``info.description`` (the one free-form field HF keeps in ``dataset_info.json``), where :func:`from_hf`
    finds them after ``load_from_disk``. The dataset gets a random fingerprint, as HF gives work it cannot hash."""
    import datasets
    from datasets.fingerprint import generate_random_fingerprint

    hf_table = to_hf_table(table)
    types = _hf_meta(dict(hf_table.schema.metadata or {})).get(TYPES_KEY)
    info = datasets.DatasetInfo(description=DESCRIPTION_MARK + types) if types else None
    # without a fingerprint HF hashes the table by pickling every buffer (most of a save_to_disk's time); a table
    # in memory has no cache to find again, so a random one is what HF itself gives non-hashable work
    return datasets.Dataset(hf_table, info=info, fingerprint=generate_random_fingerprint())


def from_hf(hf_dataset) -> pa.Table:
    """The Arrow table of a ``datasets.Dataset`` (zero-copy; only the selected rows after select / filter /
    shuffle) with the types :func:`to_hf` recorded put back, from the table's metadata or, after
    ``save_to_disk`` / ``load_from_disk``, from ``info.description``."""
    table = hf_dataset.data.table
    meta = dict(table.schema.metadata or {})
    if getattr(hf_dataset, "_indices", None) is not None:  # after select / filter / shuffle: only those rows
        table = hf_dataset.with_format("arrow")[:]
    table = table.replace_schema_metadata(meta)
    description = getattr(hf_dataset.info, "description", "") or ""
    if description.startswith(DESCRIPTION_MARK):
        table = with_types_record(table, description[len(DESCRIPTION_MARK):].strip())
    return from_hf_table(table)


def with_types_record(table: pa.Table, record: str) -> pa.Table:
    """``table`` with ``record`` (a :data:`TYPES_KEY` value) in its ``huggingface`` metadata unless it has one."""
    meta = dict(table.schema.metadata or {})
    hf = _hf_meta(meta)
    if TYPES_KEY in hf:
        return table
    hf[TYPES_KEY] = record
    meta[HF_KEY] = json.dumps(hf)
    return table.replace_schema_metadata(meta)
