"""Sharded output with a manifest: ``part-gNNNN-00000.<ext>`` files plus ``manifest.json`` (rows, bytes and
sha256 per shard), written by :mod:`datacopilot.io.sink` and checked here. The shards are staged and published in
one atomic step (:mod:`datacopilot.io.outputs`), so a write killed at any moment leaves the previous output or the
new one, never a mix."""

from __future__ import annotations

from datacopilot.errors import InputError

from ._fs import MANIFEST, check_entries, is_complete, join, read_json
from .sink import ShardSink, check_limits, shard_bounds, write_part

__all__ = ["write_shards", "verify_problems", "verify_shards", "shard_bounds", "write_part"]


def write_shards(ds, directory: str, format: str = "arrow", max_rows_per_shard: int | None = 100_000,
                 max_bytes_per_shard: int | None = None, image_paths: str = "keep", **options) -> dict:
    """Write ``ds`` to ``directory`` as shards of at most ``max_rows_per_shard`` rows (and ``max_bytes_per_shard``
    bytes of Arrow data) with a ``manifest.json``; returns the manifest. The shards are staged and published
    atomically: until the write ends, ``directory`` holds its previous output unchanged. (The writer is
    :class:`datacopilot.io.sink.ShardSink`, the one every output is written with.)

    >>> man = dc.write_shards(ds, "out/", format="parquet", max_rows_per_shard=50_000)  # doctest: +SKIP
    >>> dc.load("out/").to_list() == ds.to_list()  # doctest: +SKIP
    True
    """
    check_limits(max_rows_per_shard, max_bytes_per_shard)
    sink = ShardSink(directory, format, max_rows_per_shard, image_paths=image_paths, options=options)
    sink.write_table(ds.to_arrow(), ds.schema, ds.root, max_bytes=max_bytes_per_shard)
    return sink.publish(ds.schema)


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
