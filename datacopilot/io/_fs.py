"""Paths for every reader and writer: local or fsspec URLs, glob and directory expansion, atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import mmap
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


def expand(paths, extensions: tuple[str, ...], partial: bool = False, verify: bool = False) -> list[str]:
    """Expand a path, glob, directory or list into files (sorted within each glob or directory).

    A directory with a manifest yields exactly the shards the manifest lists, in its order (see
    :func:`output_files` for ``partial`` and ``verify``); one without lists its files of ``extensions``, skipping
    hidden files and folders and what img2dataset writes beside its shards.

    >>> expand("/nonexistent.jsonl", (".jsonl",))
    Traceback (most recent call last):
    datacopilot.errors.InputError: /nonexistent.jsonl: no such file
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
            listed = output_files(item, partial=partial, verify=verify)
            if listed is not None:
                out += listed
                continue
            if verify:
                raise InputError(f"{item}: verify=True needs a {MANIFEST} to check the files against; this "
                                 "directory has none")
            base = p.rstrip("/") + "/"
            found = sorted(f for f in fs.find(p) if f.endswith(extensions)
                           and not any(c.startswith(".") for c in f[len(base):].split("/")))  # hidden: skipped
            found = [f for f in found if f not in img2dataset_sidecars(found)]
            if not found:
                raise InputError(f"{item}: directory holds no files with extensions {list(extensions)}")
            out += [_full(fs, f, item) for f in found]
        elif fs.exists(p):
            if verify:
                raise InputError(f"{item}: verify=True checks a directory with a {MANIFEST}; give the directory")
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


# -- outputs: the read side (the write side is datacopilot.io.outputs) -----------------------------------------
# An output directory holds ``manifest.json`` (the single file that names the files of the published output)
# and those files; a write in progress stages its files under ``.staging-gNNNN/`` (with a manifest of its own
# that says ``complete: false``), and publishes by moving them in and replacing ``manifest.json`` last.
STAGING = ".staging-"



def mapped_bytes(path: str, kind: str):
    """A file's bytes, memory-mapped when local (no copy: parsers read straight from the pages); ``kind`` names
    the format in the error for a directory."""
    local = local_path(path)
    if local is None:
        return read_bytes(path)
    try:
        with open(local, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b""
    except FileNotFoundError as e:
        raise InputError(f"{path}: no such file") from e
    except IsADirectoryError as e:
        raise InputError(f"{path}: is a directory, not a {kind} file") from e

def file_sha256(path: str) -> tuple[str, int]:
    """(sha256 hex digest, size in bytes) of a file, read in 1 MiB chunks.

    >>> file_sha256("out/part-g0001-00000.arrow")  # doctest: +SKIP
    ('9f86d081884c7d65...', 1048576)
    """
    fs, p = get_fs(path)
    h, n = hashlib.sha256(), 0
    with fs.open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def read_json(path: str) -> dict | None:
    """A JSON file's contents, or None when it does not exist; an unreadable one is an InputError."""
    import json

    fs, p = get_fs(path)
    try:
        with fs.open(p, "r") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e}); a manifest is written whole or not at all, so this file "
                         "was not written by datacopilot") from e


def is_complete(manifest: dict) -> bool:
    """Whether a manifest describes a finished write (manifests older than the ``complete`` key: a pipeline's
    says so under ``pipeline``, a ``write_shards`` one is complete).

    >>> is_complete({"shards": []}), is_complete({"complete": False}), is_complete({"pipeline": {"complete": False}})
    (True, False, False)
    """
    return bool(manifest.get("complete", True)) and bool(manifest.get("pipeline", {}).get("complete", True))


def staging_dirs(directory: str) -> list[str]:
    """The staging directories of ``directory`` (``.staging-gNNNN``), oldest generation first."""
    fs, p = get_fs(directory)
    try:
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(STAGING))


def locate(directory: str, stage: str | None, name: str) -> str:
    """Where a listed file is: in the staging directory ``stage`` (while a write is staged) or, once moved
    there by the publishing step, in ``directory`` itself."""
    if stage is not None:
        staged = join(join(directory, stage), name)
        fs, p = get_fs(staged)
        if fs.exists(p):
            return staged
    return join(directory, name)


def check_entries(directory: str, manifest: dict, stage: str | None = None, hashes: bool = True) -> list[str]:
    """One problem per listed file (shards, quarantine and a pipeline's ``report.json``) that is missing, of
    another size than recorded or, with ``hashes``, of another sha256; [] when the manifest describes the files
    present.

    >>> check_entries("out/", read_json("out/manifest.json"))  # doctest: +SKIP
    []
    """
    problems = []
    report = [manifest["report"]] if manifest.get("report") else []
    for s in manifest.get("shards", []) + manifest.get("quarantine", []) + report:
        path = locate(directory, stage, s["file"])
        fs, p = get_fs(path)
        if not fs.exists(p):
            problems.append(f"{path}: listed in the manifest but missing")
            continue
        digest, size = file_sha256(path) if hashes else (s.get("sha256"), int(fs.size(p) or 0))
        if size != s.get("bytes") or digest != s.get("sha256"):
            problems.append(f"{path}: checksum mismatch (manifest says {s.get('bytes')} bytes, "
                            f"{str(s.get('sha256'))[:12]}…; file has {size} bytes, {str(digest)[:12]}…)")
    return problems


def _progress(m: dict) -> str:
    p = m.get("pipeline", {})
    done = f"{len(set(p.get('done', [])))} of {len(p.get('units', []))} input(s) done, " if p else ""
    return f"{done}{m.get('rows', 0)} row(s) written"


def output_files(directory: str, partial: bool = False, verify: bool = False) -> list[str] | None:
    """The files of the output in ``directory``, exactly as its ``manifest.json`` lists them (nothing else of the
    directory), or None when it has neither a manifest nor a staged write (a plain folder).

    An incomplete output is refused with an InputError that says so: a manifest that says the write did not
    finish, or no manifest but a write that was interrupted before it published. ``partial=True`` reads the
    finished part of the newest unfinished write instead (or the published output when there is none).
    ``verify=True`` checks every listed file's size and sha256 first; an InputError names each bad file.

    >>> output_files("/nonexistent") is None
    True
    """
    published = read_json(join(directory, MANIFEST))
    stages = staging_dirs(directory)
    staged = None
    for stage in reversed(stages):  # the newest staged write that got as far as recording its progress
        m = read_json(join(join(directory, stage), MANIFEST))
        if m is not None:
            staged = (stage, m)
            break
    if partial and staged is not None:
        stage, manifest = staged
    elif published is not None:
        stage, manifest = None, published
        if not is_complete(manifest) and not partial:
            raise InputError(f"{directory}: incomplete output: its {MANIFEST} says the write did not finish "
                             f"({_progress(manifest)}); resume the write (resume=True), or pass partial=True to "
                             "read what it finished")
    elif staged is not None:
        raise InputError(f"{directory}: incomplete output: a write was interrupted before it published "
                         f"({_progress(staged[1])}, staged in {staged[0]}/); resume it (resume=True), or pass "
                         "partial=True to read what it finished")
    elif stages:
        raise InputError(f"{directory}: no output: a write was interrupted before it published anything (its "
                         f"unfinished files are in {stages[-1]}/); write it again")
    else:
        return None
    if verify:
        problems = check_entries(directory, manifest, stage)
        if problems:
            raise InputError(f"{directory}: {len(problems)} file(s) do not match the manifest: " + "; ".join(problems))
    return [locate(directory, stage, s["file"]) for s in manifest["shards"]]
