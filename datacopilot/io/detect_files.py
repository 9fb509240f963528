"""Which schema the files of one load hold, decided from every file rather than the first.

Each file is read with the schema asked for or, when none is, with the schema detected on that file. An empty
file (an h5 export with fewer rows than files, an empty first jsonl shard) tells nothing and is skipped. When the
non-empty files disagree, the first schema (in file order) that reads every file without more invalid rows is
taken (a ShareGPT shard without system turns looks like MM, and SHAREGPT reads it the same); when none does, a
SchemaError names every file and what it looked like.
"""

from __future__ import annotations

from typing import Callable, Iterable

from datacopilot.errors import InputError, SchemaError
from datacopilot.loading import Loaded
from datacopilot.schemas import Schema


def read_files(files: Iterable[str], schema: Schema | None, read: Callable[..., Loaded],
               invalid: str) -> tuple[list[Loaded], Schema | None]:
    """``read(path, schema, invalid=invalid)`` for every file, and the one schema they share.

    >>> loads, schema = read_files(["a.jsonl", "b.jsonl"], None, read_jsonl, "raise")  # doctest: +SKIP
    >>> schema.name  # doctest: +SKIP
    'MM'
    """
    paths, loads = [], []
    for path in files:
        paths.append(path)
        loads.append(read(path, schema, invalid=invalid))
    if schema is not None:
        return loads, schema
    shown = [i for i, ld in enumerate(loads) if ld.table.num_rows or ld.bad]  # an empty file tells nothing
    if not shown:
        return loads, loads[-1].schema if loads else None
    found: list[Schema] = []
    for i in shown:
        if loads[i].schema not in found:
            found.append(loads[i].schema)
    if len(found) == 1:
        return _reread_empty(paths, loads, found[0], read, invalid), found[0]
    for candidate in found:
        again = _read_all_as(paths, loads, candidate, read, invalid)
        if again is not None:
            return _reread_empty(paths, again, candidate, read, invalid), candidate
    lines = [f"  {paths[i]}: {_looks(loads[i])}" for i in shown]
    raise SchemaError(f"the files hold rows of different shapes; load them apart or pass schema=:\n" + "\n".join(lines))


def _looks(loaded: Loaded) -> str:
    return f"{loaded.schema.name} (columns {loaded.table.column_names})"


def _reread_empty(paths, loads, schema, read, invalid) -> list[Loaded]:
    """Empty files given the columns of the first non-empty one (no rows to read again)."""
    full = [ld.table for ld in loads if ld.table.num_rows]
    if not full or len(full) == len(loads):
        return loads
    like = full[0].slice(0, 0)
    return [ld if ld.table.num_rows else Loaded(like, schema, ld.bad) for ld in loads]


def _read_all_as(paths, loads, schema, read, invalid) -> list[Loaded] | None:
    """Every file read as ``schema``, or None when one does not fit it (or loses more rows to the quarantine)."""
    out = []
    for p, ld in zip(paths, loads):
        if ld.schema == schema:
            out.append(ld)
            continue
        try:
            again = read(p, schema, invalid=invalid)
        except (SchemaError, InputError):  # ValidationError included; a caption tar read as MM
            return None
        if len(again.bad) > len(ld.bad):
            return None
        out.append(again)
    return out
