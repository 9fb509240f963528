"""The facade's functions over files: :func:`load` reads with :func:`datacopilot.io.read` and wraps the rows in an
:class:`~datacopilot.MMDataset` (the io layer below never builds one)."""

from __future__ import annotations

from datacopilot.schemas import Schema

from .dataset import MMDataset


def load(paths, schema: "Schema | str | None" = None, format: str | None = None, invalid: str = "raise",
         root: str | None = None, progress: bool | None = None, partial: bool = False, verify: bool = False):
    """Load files into an :class:`~datacopilot.MMDataset`.

    Parameters
    ----------
    paths: a file, a glob, a directory (its ``manifest.json`` shards, or every file of a known extension), a
        list of these, any of them local or an fsspec URL; or an in-memory polars / pandas DataFrame, HF
        ``datasets.Dataset`` or Arrow table.
    schema: a Schema or built-in name (``"MM"``, ``"MIX"``, ``"PAIRS"``, ``"MESSAGES"``, ``"CAPTION"``); detected
        from the columns when None.
    format: force a format (``jsonl``, ``json``, ``parquet``, ``arrow``, ``h5``, ``webdataset``); by extension
        otherwise.
    invalid: ``"raise"`` (default: a ValidationError listing every invalid row with file and line) or
        ``"quarantine"`` (invalid rows go to ``ds.quarantine`` with their errors).
    root: where relative image paths resolve (LLaVA's ``--image_folder``); by default the ``root`` a
        directory's manifest records, else the files' directory. Files from several directories without
        ``root`` get absolute image paths, with an ImagePathWarning.
    partial: read an output directory whose write did not finish (its manifest says so, or a write was
        interrupted before it published): the part it finished. Refused with an InputError by default.
    verify: check the size and sha256 of every file a directory's manifest lists before reading (an InputError
        names each file that differs).

    Example
    -------
    >>> ds = datacopilot.load("data/*.jsonl", schema="MM")  # doctest: +SKIP
    """
    from .io import read
    from .loading import quarantine_table

    got = read(paths, schema, format=format, invalid=invalid, root=root, progress=progress, partial=partial,
               verify=verify)
    quarantine = None
    if got.bad:
        q = quarantine_table(got.bad)
        quarantine = MMDataset(q, Schema.infer(q.schema, "QUARANTINE"))
    return MMDataset(got.table, got.schema, root=got.root, history=(got.record,), quarantine=quarantine)
