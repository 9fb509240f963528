"""What Hugging Face datasets records about a table's columns in its ``huggingface`` schema metadata, read
where it changes the values: a column of a ``Json`` feature (HF datasets 5) holds each value as JSON text, so
``"7"`` is the integer 7 and ``"\\"a\\""`` the string ``a``, not text with quotes."""

from __future__ import annotations

import json

import pyarrow as pa

from datacopilot.errors import InputError
from datacopilot.schemas.arrow_build import to_array

HF_KEY = b"huggingface"


def json_feature_columns(schema: pa.Schema) -> list[str]:
    """The top-level columns the ``huggingface`` metadata marks as ``Json`` features.

    >>> meta = {"huggingface": '{"info": {"features": {"id": {"_type": "Json"}, "x": {"_type": "Value"}}}}'}
    >>> json_feature_columns(pa.schema([("id", pa.string()), ("x", pa.int64())], metadata=meta))
    ['id']
    """
    raw = (schema.metadata or {}).get(HF_KEY)
    if not raw:
        return []
    try:
        features = json.loads(raw).get("info", {}).get("features") or {}
    except (ValueError, AttributeError):
        return []  # metadata we cannot read changes nothing
    if not isinstance(features, dict):
        return []
    return [name for name, feat in features.items()
            if isinstance(feat, dict) and feat.get("_type") == "Json" and name in schema.names]


def decode_json_features(table: pa.Table, source: str = "table", row0: int = 0) -> pa.Table:
    """``table`` with the text of every ``Json``-feature column parsed into the values it encodes (typed as
    wide as they are: a column of strings and integers becomes a variant). Text that is not JSON is an
    InputError naming ``source``, the row (``row0``: the row number of the table's first row) and the column.

    >>> meta = {"huggingface": '{"info": {"features": {"id": {"_type": "Json"}}}}'}
    >>> t = pa.table({"id": ['"a"', "7", None]}).replace_schema_metadata(meta)
    >>> decode_json_features(t).column("id").to_pylist()
    ['a', 7, None]
    """
    names = json_feature_columns(table.schema)
    for name in names:
        col = table.column(name)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue  # already decoded (a reader that knows the feature)
        values = []
        for i, text in enumerate(col.to_pylist()):
            try:
                values.append(None if text is None else json.loads(text))
            except ValueError as e:
                raise InputError(f"{source}: row {row0 + i}: column {name!r} is a Json feature but holds "
                                 f"{text[:60]!r}, not JSON: {e}") from e
        arr = to_array(None, values, f"column {name!r}")
        table = table.set_column(table.column_names.index(name), name, arr)
    if names:  # decoded once: the marks go, so nothing parses the values twice
        table = table.replace_schema_metadata({k: v for k, v in table.schema.metadata.items() if k != HF_KEY})
    return table
