"""Paths for every reader and writer: local or fsspec URLs, glob and directory expansion, atomic writes."""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator

import fsspec
from fsspec.core import url_to_fs

from datacopilot.errors import InputError

MANIFEST = "manifest.json"


def get_fs(path: str):
    """(filesystem, path within it) for a local path or an fsspec URL."""
    return url_to_fs(os.fspath(path))


def is_url(path: str) -> bool:
    return "://" in str(path)


def join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name if is_url(base) else os.path.join(base, name)


def parent(path: str) -> str:
    if is_url(path):
        return path.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(path))


def _full(fs, p: str, like: str) -> str:
    """Put the protocol back on a path an fsspec filesystem returned."""
    if not is_url(like):
        return p
    proto = like.split("://", 1)[0]
    return p if p.startswith(proto + "://") else f"{proto}://{p.lstrip('/') if proto != 'memory' else p}"


def expand(paths, extensions: tuple[str, ...]) -> list[str]:
    """Expand a path, glob, directory or list into files (sorted within each glob or directory).

    A directory with a manifest yields the shards the manifest lists, in its order.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise InputError("no paths given: pass a file, a glob, a directory or a list of them")
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        fs, p = get_fs(item)
        if any(ch in p for ch in "*?["):
            found = sorted(fs.glob(p))
            if not p.rsplit("/", 1)[-1].startswith("."):  # like a shell: `*` does not match hidden files
                found = [f for f in found if not f.rsplit("/", 1)[-1].startswith(".")]
            if not found:
                raise InputError(f"{item}: no files match")
            out += [_full(fs, f, item) for f in found if not fs.isdir(f)]
        elif fs.isdir(p):
            man = join(item, MANIFEST)
            if fs.exists(get_fs(man)[1]):
                import json

                with fs.open(get_fs(man)[1], "r") as f:
                    manifest = json.load(f)
                out += [join(item, s["file"]) for s in manifest["shards"]]
                continue
            found = sorted(f for f in fs.find(p) if f.endswith(extensions) and not os.path.basename(f).startswith("."))
            if not found:
                raise InputError(f"{item}: directory holds no files with extensions {list(extensions)}")
            out += [_full(fs, f, item) for f in found]
        elif fs.exists(p):
            out.append(item)
        else:
            raise InputError(f"{item}: no such file")
    return out


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator:
    """Write to a temporary name beside ``path`` and rename it into place only when the block succeeds."""
    fs, p = get_fs(path)
    d = p.rsplit("/", 1)[0] if "/" in p else ""
    if d:
        fs.makedirs(d, exist_ok=True)
    tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open(tmp, mode) as f:
            yield f
        fs.mv(tmp, p)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


def read_bytes(path: str) -> bytes:
    fs, p = get_fs(path)
    try:
        with fs.open(p, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise InputError(f"{path}: no such file") from e


def local_path(path: str) -> str | None:
    """The local filesystem path of ``path`` if it is local, else None."""
    fs, p = get_fs(path)
    return p if isinstance(fs, fsspec.implementations.local.LocalFileSystem) else None
