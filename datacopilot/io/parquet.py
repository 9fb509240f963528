"""Parquet reader and writer."""

from __future__ import annotations

import pyarrow.parquet as pq

from datacopilot.errors import InputError
from datacopilot.loading import Loaded
from datacopilot.schemas import Schema

from ._common import finish, with_schema_metadata
from ._fs import atomic_open, get_fs


def read_parquet(path: str, schema: Schema | None, invalid: str = "raise") -> Loaded:
    fs, p = get_fs(path)
    try:
        table = pq.read_table(p, filesystem=fs)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable parquet file: {e}") from e
    return finish(table, schema, path, invalid)


def write_parquet(ds, path: str, compression: str = "snappy") -> None:
    table = with_schema_metadata(ds.to_arrow(), ds.schema)
    with atomic_open(path, "wb") as f:
        pq.write_table(table, f, compression=compression)
