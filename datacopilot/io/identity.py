"""What a pipeline's output was made from, kept in its manifest (``pipeline.plan``) so that a resumed run can be
checked against it and, when it differs, told what changed: the input files with their sizes and modification
times, the schema and format they are read with, the operators with their parameters, the error policy and the
output options (:func:`plan_changes`).

>>> old = {"sources": [{"unit": "a.jsonl", "size": 10}], "schema": "MM",
...        "ops": [{"name": "filter_length", "params": {"max_chars": 100}}]}
>>> new = {"sources": [{"unit": "a.jsonl", "size": 12}], "schema": "MIX",
...        "ops": [{"name": "filter_length", "params": {"max_chars": 200}}]}
>>> plan_changes(old, new)
['source a.jsonl: size 10 -> 12', 'schema MM -> MIX', 'operator 1 filter_length: max_chars 100 -> 200']
"""

from __future__ import annotations

import json
import os
import time

from ._fs import get_fs, local_path, parent

__all__ = ["as_plain", "file_stats", "plan_changes"]

UNSET = "(unset)"
#: the parts of a plan other than its sources and operators, in the order changes are told, with their names
OPTIONS = (("schema", "schema"), ("input_format", "input format"), ("root", "image root"),
           ("on_error", "on_error"), ("format", "output format"), ("max_rows_per_shard", "max_rows_per_shard"),
           ("image_paths", "image_paths"))


def as_plain(value):
    """``value`` as JSON data (what a manifest can hold): objects that JSON cannot write (a function given as a
    parameter) by their qualified name, as the plan's fingerprint names them."""
    return json.loads(json.dumps(value, sort_keys=True,
                                 default=lambda o: getattr(o, "__qualname__", type(o).__name__)))


def file_stats(units: list[str]) -> list[dict]:
    """``{"unit", "size", "mtime"}`` of each input file (``mtime``: nanoseconds for a local file, else as its
    filesystem tells it, None where it tells nothing): local files by ``os.stat``, files behind a URL by one
    listing of each directory (not a request per file). A unit that is not a file (``<memory>``) is named alone.

    >>> file_stats(["<memory>"])
    [{'unit': '<memory>'}]
    """
    remote: dict = {}
    for unit in units:
        if "<" not in unit and local_path(unit) is None:
            remote.setdefault(parent(unit), []).append(unit)
    listed: dict = {}
    for directory, names in remote.items():
        fs, p = get_fs(directory)
        try:
            entries = fs.ls(p, detail=True)
        except (OSError, ValueError):
            entries = []
        by_name = {e["name"].rstrip("/"): e for e in entries if isinstance(e, dict)}
        for unit in names:
            listed[unit] = by_name.get(get_fs(unit)[1].rstrip("/"))
    out = []
    for unit in units:
        entry: dict = {"unit": unit}
        if "<" not in unit:
            entry.update(_stat(unit, listed.get(unit)))
        out.append(entry)
    return out


def _stat(unit: str, info: dict | None) -> dict:
    local = local_path(unit)
    try:
        if local is not None:
            st = os.stat(local)
            return {"size": st.st_size, "mtime": st.st_mtime_ns}
        if info is None:  # not in its directory's listing: asked for alone
            fs, p = get_fs(unit)
            info = fs.info(p)
    except (OSError, ValueError):  # gone since it was listed: the read will say so
        return {"size": None, "mtime": None}
    stamp = next((info[k] for k in ("mtime", "LastModified", "last_modified", "updated", "created")
                  if info.get(k) is not None), None)
    if hasattr(stamp, "timestamp"):  # a datetime (an info), where a listing may give seconds
        stamp = stamp.timestamp()
    return {"size": info.get("size"), "mtime": None if stamp is None else str(stamp)}


def _stamp(v) -> str:
    if isinstance(v, int):
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(v / 1e9)) + f".{v % 1_000_000_000:09d}Z"
    return str(v)


def _sources(old: list[dict], new: list[dict]) -> list[str]:
    before, after = {s["unit"]: s for s in old}, {s["unit"]: s for s in new}
    out = [f"source {u}: removed" for u in before if u not in after]
    out += [f"source {u}: added" for u in after if u not in before]
    for u, a in after.items():
        b = before.get(u)
        if b is None:
            continue
        if b.get("size") != a.get("size"):
            out.append(f"source {u}: size {b.get('size')} -> {a.get('size')}")
        elif b.get("mtime") != a.get("mtime"):
            out.append(f"source {u}: modified ({_stamp(b.get('mtime'))} -> {_stamp(a.get('mtime'))})")
        if {k: v for k, v in b.items() if k not in ("size", "mtime")} != \
                {k: v for k, v in a.items() if k not in ("size", "mtime")}:
            out.append(f"source {u}: {b} -> {a}")
    if not out and [s["unit"] for s in old] != [s["unit"] for s in new]:
        out.append("sources: the same files in another order")
    return out


def _ops(old: list[dict], new: list[dict]) -> list[str]:
    out = []
    if len(old) != len(new):
        out.append(f"operators: {len(old)} -> {len(new)} ({' -> '.join(o['name'] for o in old) or '(none)'} "
                   f"became {' -> '.join(o['name'] for o in new) or '(none)'})")
        return out
    for k, (b, a) in enumerate(zip(old, new), 1):
        if b["name"] != a["name"]:
            out.append(f"operator {k}: {b['name']} -> {a['name']}")
            continue
        pb, pa_ = b.get("params", {}), a.get("params", {})
        for key in sorted(set(pb) | set(pa_)):
            if pb.get(key, UNSET) != pa_.get(key, UNSET):
                out.append(f"operator {k} {a['name']}: {key} {_show(pb.get(key, UNSET))} -> "
                           f"{_show(pa_.get(key, UNSET))}")
    return out


def _show(v) -> str:
    return v if v == UNSET else json.dumps(v, sort_keys=True)


def plan_changes(old: dict, new: dict) -> list[str]:
    """What differs from the plan ``old`` (a manifest's ``pipeline.plan``) in ``new``, one line each, in the order
    sources, options (schema, error policy, output), operators (numbered from 1); empty when they are the same."""
    out = _sources(old.get("sources", []), new.get("sources", []))
    for key, name in OPTIONS:
        if old.get(key) != new.get(key):
            out.append(f"{name} {old.get(key)} -> {new.get(key)}")
    return out + _ops(old.get("ops", []), new.get("ops", []))
