"""Sharded output with a manifest: ``part-00000.<ext>`` files plus ``manifest.json`` (rows, bytes and sha256
per shard), each shard written atomically and the manifest last, so a manifest means a complete write."""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from datacopilot.errors import DataCopilotError, InputError

from ._fs import MANIFEST, atomic_open, get_fs, hashed_writes, join


def _sha256(path: str) -> tuple[str, int]:
    fs, p = get_fs(path)
    h, n = hashlib.sha256(), 0
    with fs.open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def shard_bounds(table, max_rows: int | None, max_bytes: int | None) -> list[tuple[int, int]]:
    """Row ranges of the shards: at most ``max_rows`` rows and ``max_bytes`` bytes of Arrow data each (a row
    larger than ``max_bytes`` gets a shard of its own). Sizes are measured per slice, so shards stay within the
    limit even when row sizes vary a lot."""
    n_rows = table.num_rows
    if max_rows is not None and max_rows < 1:
        raise DataCopilotError(f"`max_rows_per_shard` must be positive, got {max_rows!r}")
    if max_bytes is not None and max_bytes < 1:
        raise DataCopilotError(f"`max_bytes_per_shard` must be positive, got {max_bytes!r}")
    per = min(n_rows, max_rows) if max_rows is not None else n_rows
    out, start = [], 0
    while start < n_rows:
        end = min(start + per, n_rows)
        if max_bytes is not None and table.slice(start, end - start).nbytes > max_bytes:
            lo, hi = start + 1, end  # the largest end in [lo, hi] whose slice fits (at least one row)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if table.slice(start, mid - start).nbytes <= max_bytes:
                    lo = mid
                else:
                    hi = mid - 1
            end = lo
        out.append((start, end))
        start = end
    return out or [(0, 0)]


def write_shards(ds, directory: str, format: str = "arrow", max_rows_per_shard: int | None = 100_000,
                 max_bytes_per_shard: int | None = None, image_paths: str = "keep", **options) -> dict:
    from . import FORMATS, writer_for

    if format not in FORMATS:
        raise DataCopilotError(f"`format` must be one of {sorted(FORMATS)}, got {format!r}")
    ext = FORMATS[format].extensions[0]
    from datacopilot.media import image_paths_for

    fs, d = get_fs(directory)
    fs.makedirs(d, exist_ok=True)
    ds, paths = image_paths_for(ds, directory if "://" in directory else d, image_paths, FORMATS[format].embeds_images)
    table = ds.to_arrow()
    write = writer_for(format)

    def one(i: int, a: int, b: int) -> dict:
        name = f"part-{i:05d}{ext}"
        path = join(directory, name)
        with hashed_writes() as files:
            write(ds[a:b], path, **options)
        if len(files) == 1 and files[0].sequential:  # hashed on the way out: no second read of the file
            digest, size = files[0].sha256.hexdigest(), files[0].size
        else:  # a writer that seeks (h5) or writes otherwise
            digest, size = _sha256(path)
        return {"file": name, "rows": b - a, "bytes": size, "sha256": digest}

    bounds = shard_bounds(table, max_rows_per_shard, max_bytes_per_shard)
    # shards are independent: Arrow's writers and compressors release the GIL, so threads overlap them
    with ThreadPoolExecutor(max_workers=min(len(bounds), os.cpu_count() or 1, 8)) as pool:
        futures = [pool.submit(one, i, a, b) for i, (a, b) in enumerate(bounds)]
        shards = [f.result() for f in tqdm(futures, desc=f"write {format} shards", unit="shard", leave=False,
                                           disable=len(futures) < 8)]
    manifest = {"format": format, "schema": ds.schema.name, "rows": len(ds), "shards": shards,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **paths.manifest()}
    with atomic_open(join(directory, MANIFEST), "wb") as f:
        f.write(json.dumps(manifest, indent=1).encode())
    return manifest


def verify_shards(directory: str) -> dict:
    """Check every shard of a manifest against its size and sha256; raise InputError naming the first bad one."""
    fs, p = get_fs(join(directory, MANIFEST))
    if not fs.exists(p):
        raise InputError(f"{directory}: no {MANIFEST} (an incomplete or foreign write)")
    with fs.open(p, "r") as f:
        manifest = json.load(f)
    for s in manifest["shards"]:
        path = join(directory, s["file"])
        if not get_fs(path)[0].exists(get_fs(path)[1]):
            raise InputError(f"{path}: listed in the manifest but missing")
        digest, size = _sha256(path)
        if size != s["bytes"] or digest != s["sha256"]:
            raise InputError(f"{path}: checksum mismatch (manifest says {s['bytes']} bytes, {s['sha256'][:12]}…; "
                             f"file has {size} bytes, {digest[:12]}…)")
    return manifest
