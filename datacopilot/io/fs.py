"""The file layer every reader, writer and output uses, public for the rest of the engine and the apps: local
paths or fsspec URLs, glob and directory expansion, atomic writes, hashing, manifests and staging.

Code outside :mod:`datacopilot.io` imports these names from here, not from the private module
``datacopilot.io._fs`` that defines them.

>>> from datacopilot.io.fs import join, parent
>>> join("s3://bucket/out", "part-0.arrow"), parent("/data/train.jsonl")
('s3://bucket/out/part-0.arrow', '/data')
"""

from ._fs import (
    MANIFEST,
    STAGING,
    Hashing,
    atomic_open,
    check_entries,
    expand,
    file_sha256,
    get_fs,
    hashed_writes,
    img2dataset_sidecars,
    is_complete,
    is_url,
    join,
    local_path,
    locate,
    mapped_bytes,
    output_files,
    parent,
    read_bytes,
    read_json,
    staging_dirs,
)

__all__ = ["MANIFEST", "STAGING", "Hashing", "atomic_open", "check_entries", "expand", "file_sha256", "get_fs",
           "hashed_writes", "img2dataset_sidecars", "is_complete", "is_url", "join", "local_path", "locate",
           "mapped_bytes", "output_files", "parent", "read_bytes", "read_json", "staging_dirs"]
