"""Arrow IPC (Feather v2) reader and writer. Local files are memory-mapped: the dataset's buffers point
into the page cache, so holding shards larger than RAM costs little resident memory."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.ipc as ipc

from datacopilot.errors import InputError
from datacopilot.loading import Loaded
from datacopilot.schemas import Schema

from ._common import finish, with_schema_metadata
from ._fs import atomic_open, local_path, read_bytes
from .hf_features import decode_json_features


def read_ipc(path: str, schema: Schema | None, invalid: str = "raise") -> Loaded:
    local = local_path(path)
    try:
        source = pa.memory_map(local, "r") if local else pa.BufferReader(read_bytes(path))
        try:
            table = ipc.open_file(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            table = ipc.open_stream(source).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a readable Arrow IPC file (truncated or another format?): {e}") from e
    return finish(decode_json_features(table, path), schema, path, invalid)  # HF arrow files too


def write_ipc(ds, path: str, compression: str | None = None) -> None:
    """Uncompressed by default, so readers can memory-map it; ``compression="zstd"`` for smaller files."""
    table = with_schema_metadata(ds.to_arrow(), ds.schema)
    opts = ipc.IpcWriteOptions(compression=compression)
    with atomic_open(path, "wb") as f:
        with ipc.new_file(f, table.schema, options=opts) as w:
            w.write_table(table, max_chunksize=64 * 1024)
