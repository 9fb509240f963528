"""Hugging Face ``save_to_disk`` directories (``state.json``, ``dataset_info.json``, ``data-*.arrow``) read
without HF datasets: each Arrow stream memory-mapped (``pyarrow.memory_map`` + ``ipc.open_stream``), so the
table's buffers point into the page cache as HF's ``load_from_disk`` does, then typed and validated like any
other file. The id types :func:`datacopilot.interop.to_hf` records in ``info.description`` come back."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.ipc as ipc

from datacopilot.errors import InputError
from datacopilot.loading import Loaded
from datacopilot.schemas import Schema

from ._common import finish
from .hf_features import decode_json_features

STATE, INFO = "state.json", "dataset_info.json"


def is_hf_disk(path) -> bool:
    """Whether ``path`` is a local directory ``Dataset.save_to_disk`` wrote.

    >>> is_hf_disk("/nonexistent")
    False
    """
    p = str(path)
    return os.path.isdir(p) and os.path.isfile(os.path.join(p, STATE)) and os.path.isfile(os.path.join(p, INFO))


def hf_disk_table(path: str) -> pa.Table:
    """The rows of a ``save_to_disk`` directory as one memory-mapped table, the files in ``state.json``'s
    order, extension types recorded by :func:`datacopilot.interop.to_hf` restored."""
    from datacopilot.interop import DESCRIPTION_MARK, from_hf_table, with_types_record

    try:
        with open(os.path.join(path, STATE), encoding="utf-8") as f:
            state = json.load(f)
        with open(os.path.join(path, INFO), encoding="utf-8") as f:
            info = json.load(f)
        files = [d["filename"] for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a readable save_to_disk directory ({STATE} / {INFO}): {e}") from e
    if state.get("_indices_files"):  # pragma: no cover - datasets 2.x flattens indices on save
        raise InputError(f"{path}: an indices mapping is not supported; save a flattened dataset")
    tables = []
    for name in files:
        p = os.path.join(path, name)
        try:
            tables.append(ipc.open_stream(pa.memory_map(p, "r")).read_all())
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{p}: not a readable Arrow stream (truncated?): {e}") from e
    if not tables:
        raise InputError(f"{path}: {STATE} lists no data files")
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    description = info.get("description") or ""
    if description.startswith(DESCRIPTION_MARK):
        table = with_types_record(table, description[len(DESCRIPTION_MARK):].strip())
    return from_hf_table(table)


def read_hf_disk(path: str, schema: Schema | None, invalid: str = "raise") -> Loaded:
    """Read a ``save_to_disk`` directory: memory-mapped, then conformed and validated to ``schema`` (detected
    when None); messages name the directory and the row.

    >>> read_hf_disk("out/hf", None).table.num_rows  # doctest: +SKIP
    """
    return finish(decode_json_features(hf_disk_table(path), path), schema, path, invalid)
