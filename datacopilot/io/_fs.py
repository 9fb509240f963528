"""Paths for every reader and writer: local or fsspec URLs, glob and directory expansion, atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from contextvars import ContextVar
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
            found = [f for f in found if f not in img2dataset_sidecars(found)]
            if not found:
                raise InputError(f"{item}: directory holds no files with extensions {list(extensions)}")
            out += [_full(fs, f, item) for f in found]
        elif fs.exists(p):
            out.append(item)
        else:
            raise InputError(f"{item}: no such file")
    return out


def img2dataset_sidecars(files: list[str]) -> set[str]:
    """The files of a listing that img2dataset writes beside its shards and that hold no rows of their own:
    ``N_stats.json`` beside ``N.tar`` or ``N.parquet``, and ``N.parquet`` (the metadata, without the images)
    beside ``N.tar``; ``N`` is a shard number.

    >>> sorted(img2dataset_sidecars(["o/00000.tar", "o/00000.parquet", "o/00000_stats.json", "o/x_stats.json"]))
    ['o/00000.parquet', 'o/00000_stats.json']
    """
    have = set(files)
    out = set()
    for f in files:
        stem, dot, ext = f.rpartition(".")
        if not dot or not os.path.basename(stem).isdigit():
            continue
        if ext == "tar" and stem + ".parquet" in have:
            out.add(stem + ".parquet")
        if ext in ("tar", "parquet") and stem + "_stats.json" in have:
            out.add(stem + "_stats.json")
    return out


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator:
    """Write to a temporary name beside ``path`` and rename it into place only when the block succeeds."""
    fs, p = get_fs(path)
    d = p.rsplit("/", 1)[0] if "/" in p else ""
    if d:
        fs.makedirs(d, exist_ok=True)
    tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
    seen = _HASHED.get()
    try:
        with fs.open(tmp, mode) as f:
            if seen is not None and "b" in mode:
                f = Hashing(f)
                seen.append(f)
            yield f
        fs.mv(tmp, p)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


class Hashing:
    """A binary file that computes the sha256 and size of what is written through it.

    The digest is the file's only while the writes are sequential: a seek elsewhere or a truncate clears
    ``sequential``, and the caller then hashes the finished file instead.

    >>> import io
    >>> h = Hashing(io.BytesIO()); _ = h.write(b"abc"); h.size, h.sha256.hexdigest()[:8]
    (3, 'ba7816bf')
    """

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.sequential = True

    def write(self, data) -> int:
        n = self._f.write(data)
        view = memoryview(data).cast("B")
        n = len(view) if n is None else n
        self.sha256.update(view[:n])
        self.size += n
        return n

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = self._f.seek(offset, whence)
        if pos != self.size:
            self.sequential = False
        return pos

    def truncate(self, size: int | None = None):
        self.sequential = False
        return self._f.truncate(size)

    def __getattr__(self, name: str):
        if name.startswith("__"):  # e.g. __fspath__: the writer must write through this object
            raise AttributeError(name)
        return getattr(self._f, name)


_HASHED: ContextVar[list | None] = ContextVar("datacopilot_hashed_writes", default=None)


@contextlib.contextmanager
def hashed_writes() -> Iterator[list]:
    """Within the block (and this thread), every binary file :func:`atomic_open` writes goes through a
    :class:`Hashing` wrapper, appended to the yielded list: a writer's output is hashed as it is written,
    without reading the file back."""
    seen: list = []
    token = _HASHED.set(seen)
    try:
        yield seen
    finally:
        _HASHED.reset(token)


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
