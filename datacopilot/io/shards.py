"""Sharded output with a manifest: ``part-gNNNN-00000.<ext>`` files plus ``manifest.json`` (rows, bytes and
sha256 per shard). The shards are staged and published in one atomic step (:mod:`datacopilot.io.outputs`), so a
write killed at any moment leaves the previous output or the new one, never a mix."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from datacopilot.errors import DataCopilotError, InputError

from ._fs import MANIFEST, check_entries, file_sha256, get_fs, hashed_writes, is_complete, join, read_json
from .outputs import Staged


def write_part(format: str, ds, path: str, first_row: int = 0, **options) -> None:
    """Write one shard of an output; ``first_row`` is the output's row number of its first row (a webdataset
    shard numbers its ``__key__``s from it, so keys are unique across the shards of one output).

    >>> write_part("webdataset", ds[100:200], "out/part-00001.tar", first_row=100)  # doctest: +SKIP
    """
    from . import writer_for

    if format == "webdataset":
        options = {"key_offset": first_row, **options}
    writer_for(format)(ds, path, **options)


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
    """Write ``ds`` to ``directory`` as shards of at most ``max_rows_per_shard`` rows (and ``max_bytes_per_shard``
    bytes of Arrow data) with a ``manifest.json``; returns the manifest. The shards are staged and published
    atomically: until the write ends, ``directory`` holds its previous output unchanged.

    >>> man = dc.write_shards(ds, "out/", format="parquet", max_rows_per_shard=50_000)  # doctest: +SKIP
    >>> dc.load("out/").to_list() == ds.to_list()  # doctest: +SKIP
    True
    """
    from . import FORMATS

    if format not in FORMATS:
        raise DataCopilotError(f"`format` must be one of {sorted(FORMATS)}, got {format!r}")
    ext = FORMATS[format].extensions[0]
    from datacopilot.media import image_paths_for

    fs, d = get_fs(directory)
    ds, paths = image_paths_for(ds, directory if "://" in directory else d, image_paths, FORMATS[format].embeds_images)
    table = ds.to_arrow()
    bounds = shard_bounds(table, max_rows_per_shard, max_bytes_per_shard)
    run = Staged.fresh(directory)

    def one(i: int, a: int, b: int) -> dict:
        name = f"part-{run.tag}-{i:05d}{ext}"
        path = run.path(name)
        with hashed_writes() as files:
            write_part(format, ds[a:b], path, first_row=a, **options)
        if len(files) == 1 and files[0].sequential:  # hashed on the way out: no second read of the file
            digest, size = files[0].sha256.hexdigest(), files[0].size
        else:  # a writer that seeks (h5) or writes otherwise
            digest, size = file_sha256(path)
        return {"file": name, "rows": b - a, "bytes": size, "sha256": digest}

    # shards are independent: Arrow's writers and compressors release the GIL, so threads overlap them
    with ThreadPoolExecutor(max_workers=min(len(bounds), os.cpu_count() or 1, 8)) as pool:
        futures = [pool.submit(one, i, a, b) for i, (a, b) in enumerate(bounds)]
        shards = [f.result() for f in tqdm(futures, desc=f"write {format} shards", unit="shard", leave=False,
                                           disable=len(futures) < 8)]
    manifest = {"format": format, "schema": ds.schema.name, "rows": len(ds), "shards": shards,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **paths.manifest()}
    return run.publish(manifest)


def verify_problems(directory: str, partial: bool = False) -> tuple[dict, list[str]]:
    """(the manifest, one problem per listed file that is missing or whose size or sha256 differs); an
    InputError when ``directory`` has no manifest, or an incomplete one without ``partial``.

    >>> manifest, problems = verify_problems("out/")  # doctest: +SKIP
    """
    manifest = read_json(join(directory, MANIFEST))
    if manifest is None:
        from ._fs import output_files

        output_files(directory, partial=partial)  # says why when a write was interrupted
        raise InputError(f"{directory}: no {MANIFEST} (not an output written by datacopilot)")
    if not is_complete(manifest) and not partial:
        raise InputError(f"{directory}: incomplete output: its {MANIFEST} says the write did not finish; pass "
                         "partial=True to check what it finished")
    return manifest, check_entries(directory, manifest)


def verify_shards(directory: str, partial: bool = False) -> dict:
    """Check every file of an output's manifest against its size and sha256; the manifest, or an InputError
    naming every bad file.

    >>> dc.verify_shards("out/")["rows"]  # doctest: +SKIP
    1000
    """
    manifest, problems = verify_problems(directory, partial)
    if problems:
        raise InputError(f"{directory}: {len(problems)} file(s) do not match the manifest: " + "; ".join(problems))
    return manifest
