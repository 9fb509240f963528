"""Image work over whole datasets: embedding image bytes into rows, and the one policy for image paths.

A dataset's ``root`` is where its relative image paths resolve (LLaVA's ``--image_folder``). Writers keep the
paths as they are unless asked (:func:`rebase_image_paths`), and loading never rewrites them without a warning
(:func:`settle_roots`)."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from datacopilot.schemas import read_image_bytes

from .errors import DataCopilotError, InputError
from .transforms import image_columns


def _embed_value(value: Any, root: str | None) -> Any:
    if isinstance(value, list):
        return [_embed_value(v, root) for v in value]
    if isinstance(value, dict) and value.get("bytes") is None and value.get("path"):
        return {"path": value["path"], "bytes": read_image_bytes(value, root)}
    return value


class EmbedImages:
    """A batched map task: read every image a row refers to by path into the row's ``bytes``.

    A missing or unreadable image raises InputError naming the row (its ``id`` when it has one) and the path,
    which the dataset's error policy turns into a raise, a skip or a quarantined row.
    """

    def __init__(self, columns: list[str], root: str | None):
        self.columns, self.root = columns, root

    def __call__(self, row: dict) -> dict:
        out = dict(row)
        for c in self.columns:
            try:
                out[c] = _embed_value(row.get(c), self.root)
            except InputError as e:
                rid = f" (id {row['id']!r})" if row.get("id") is not None else ""
                raise InputError(f"{c}{rid}: {e}") from e
        return out


def embed_images(ds, num_workers: int = 8, on_error: str = "raise"):
    """Return ``ds`` with every image's bytes read in (threads: the work is I/O)."""
    cols = [c for c in image_columns(ds.schema) if c in ds.columns]
    task = EmbedImages(cols, ds.root)
    return ds.map(task, num_workers=num_workers, mode="thread", batch_size=64, on_error=on_error)



IMAGE_PATHS = ("keep", "relative", "absolute")
log = logging.getLogger("datacopilot")


class ImagePathWarning(UserWarning):
    """Image paths were changed on load because one dataset cannot hold several roots."""


@dataclass(frozen=True)
class ImagePaths:
    """What a writer did with the image paths of the rows it wrote.

    ``mode`` is the ``image_paths`` asked for; ``root`` the directory (or URL prefix) the written relative paths
    resolve against, None when that is the output's own directory or no path is relative; ``rewritten`` how many
    paths were changed (0 with ``"keep"``).
    """

    mode: str
    root: str | None
    rewritten: int

    def as_dict(self) -> dict:
        return {"mode": self.mode, "root": self.root, "rewritten": self.rewritten}

    def manifest(self) -> dict:
        """The keys a manifest records: ``image_paths`` (mode, rewritten) and, when set, ``root``."""
        out = {"image_paths": {"mode": self.mode, "rewritten": self.rewritten}}
        return {**out, "root": self.root} if self.root else out


def parent(path: str) -> str:
    """The directory of a local path or fsspec URL (absolute when local)."""
    if "://" in str(path):
        return str(path).rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(path))


def _full_root(root: str | None) -> str:
    if root and "://" in root:
        return root.rstrip("/")
    return os.path.abspath(root or ".")


def count_relative_paths(table: pa.Table, schema) -> int:
    """How many images of ``table`` a relative path alone points to (what a root is needed for).

    >>> from datacopilot import MMDataset
    >>> ds = MMDataset.from_rows([{"id": "1", "image": "coco/x.jpg", "conversations": [
    ...     {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a cat"}]}], schema="MM")
    >>> count_relative_paths(ds.to_arrow(), ds.schema)
    1
    """
    return sum(_count_chunk(c) for name in image_columns(schema) if name in table.column_names
               for c in table.column(name).chunks)


def _count_chunk(arr: pa.Array) -> int:
    from datacopilot.schemas.variant import is_variant

    if is_variant(arr.type):
        st = arr.storage
        return sum(_count_chunk(st.field(i)) for i in range(st.type.num_fields))
    if pa.types.is_list(arr.type):
        return _count_chunk(arr.flatten())
    if pa.types.is_null(arr.type) or not len(arr):
        return 0
    paths = arr.field("path")
    rel = pc.and_(pc.invert(pc.or_(pc.starts_with(paths, "/"), pc.match_substring(paths, "://"))),
                  pc.and_(pc.is_null(arr.field("bytes")), pc.is_valid(arr)))
    return int(pc.sum(rel.fill_null(False).cast(pa.int64())).as_py() or 0)


def check_image_paths(mode: str) -> str:
    if mode not in IMAGE_PATHS:
        raise DataCopilotError(f"`image_paths` must be one of {list(IMAGE_PATHS)}, got {mode!r}")
    return mode


def image_paths_for(ds, directory: str, mode: str = "keep", embeds: bool = False):
    """``(ds, ImagePaths)``: the rows a writer into ``directory`` should write, and what was done to their paths;
    :func:`rebase_image_paths` over ``ds``'s table, schema and root, the rows given back as a dataset of ``ds``'s
    own class (its history and quarantine kept).

    >>> from datacopilot import MMDataset
    >>> ds = MMDataset.from_rows([{"id": "1", "image": "coco/x.jpg", "conversations": [
    ...     {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a cat"}]}], schema="MM", root="/img")
    >>> out, info = image_paths_for(ds, "/out", "relative")
    >>> out[0]["image"]["path"], info.rewritten, info.root
    ('../img/coco/x.jpg', 1, None)
    >>> image_paths_for(ds, "/out")[1]
    ImagePaths(mode='keep', root='/img', rewritten=0)
    """
    table, root, info = rebase_image_paths(ds.to_arrow(), ds.schema, ds.root, directory, mode, embeds)
    if not info.rewritten:
        return ds, info
    return type(ds)(table, ds.schema, root=root, history=ds.history(), quarantine=ds.quarantine), info


def rebase_image_paths(table: pa.Table, schema, root: str | None, directory: str, mode: str = "keep",
                       embeds: bool = False) -> tuple[pa.Table, str | None, ImagePaths]:
    """``(table, root, ImagePaths)``: the rows a writer into ``directory`` should write, the root their relative
    paths then resolve against, and what was done to their paths.

    ``"keep"`` (the default) writes every path exactly as it is in the rows; they still resolve against
    ``root``, which the result names (a manifest records it as ``root``). ``"relative"`` rewrites relative
    paths to be relative to ``directory``, so the output and its images move as one tree (absolute when either
    side is a URL); ``"absolute"`` resolves them against the root. Absolute paths, URLs and images that carry
    their bytes are never changed, and a format that embeds image bytes (``embeds``) needs no rewrite.

    >>> from datacopilot.schemas import MM
    >>> rows = pa.table({"id": ["1"], "image": [{"path": "coco/x.jpg", "bytes": None}]})
    >>> _, new_root, info = rebase_image_paths(rows, MM, "/img", "/out", "absolute")
    >>> new_root, info.rewritten
    (None, 1)
    """
    from .transforms import prefix_image_paths

    check_image_paths(mode)
    if embeds or not any(c in table.column_names for c in image_columns(schema)):
        return table, root, ImagePaths(mode, None, 0)
    n = count_relative_paths(table, schema)
    full = _full_root(root)
    if mode == "keep" or not n:
        return table, root, ImagePaths(mode, full if n else None, 0)
    url = "://" in full or "://" in directory
    if mode == "relative" and not url:
        route = os.path.relpath(full, os.path.abspath(directory))
        if route == ".":
            return table, root, ImagePaths(mode, None, 0)
        return prefix_image_paths(table, schema, route), directory, ImagePaths(mode, None, n)
    if mode == "relative" and full == directory.rstrip("/"):
        return table, root, ImagePaths(mode, None, 0)
    return prefix_image_paths(table, schema, full), None, ImagePaths(mode, None, n)


def say_image_paths(path: str, info: ImagePaths, recorded: bool) -> None:
    """Say what a write did with image paths: rewritten ones at INFO; kept relative paths whose root is not the
    output's directory and that the output cannot record (``recorded`` False) at WARNING, with the root to
    load it with."""
    if info.rewritten:
        log.info("%s: %d image path(s) rewritten (image_paths=%r)", path, info.rewritten, info.mode)
    elif info.root and not recorded and info.root != _full_root(parent(path)):
        log.warning("%s: image paths kept as they are in the rows, relative to %s (this format cannot record it): "
                    "load it with root=%r, or write with image_paths='relative' or 'absolute'",
                    path, info.root, info.root)


def recorded_root(directory: str) -> str | None:
    """The image root a directory's ``manifest.json`` records (written by ``write_shards`` and pipeline writes
    that kept the paths), or None.

    >>> recorded_root("/nonexistent") is None
    True
    """
    import json

    from fsspec.core import url_to_fs

    fs, p = url_to_fs(directory.rstrip("/") + "/manifest.json" if "://" in directory
                      else os.path.join(directory, "manifest.json"))
    try:
        if not fs.exists(p):
            return None
        with fs.open(p, "r") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest.get("root") if isinstance(manifest, dict) else None


def file_roots(files: list[str]) -> list[str]:
    """Where the relative image paths of each data file resolve by default: the ``root`` its directory's
    manifest records, else the file's directory (LLaVA's ``--image_folder`` is given as ``root=`` instead).

    >>> file_roots(["/data/a.jsonl", "/data/b.jsonl"])
    ['/data', '/data']
    """
    seen: dict[str, str] = {}
    for f in files:
        d = parent(f)
        if d not in seen:
            seen[d] = recorded_root(d) or d
    return [seen[parent(f)] for f in files]


def settle_roots(tables: list, schema, files: list[str], root: str | None):
    """``(tables, root)`` for tables read from ``files`` (one table per file).

    With an explicit ``root``, or one default root for all files (:func:`file_roots`), no path changes. Files
    under several roots cannot share the one ``root`` of a dataset, so their relative paths are made absolute,
    each against its own file's root, and an ImagePathWarning says so, naming the roots: pass ``root=`` to keep
    the paths exactly as they are.
    """
    from .transforms import prefix_image_paths

    if root is not None or not files:
        return tables, root
    roots = file_roots(files)
    if len(set(roots)) == 1:
        return tables, roots[0]
    if warn_absolute(tables, schema, roots, "files"):
        tables = [prefix_image_paths(t, schema, r) for t, r in zip(tables, roots)]
    return tables, None


def warn_absolute(tables: list, schema, roots: list[str], what: str,
                  hint: str = "pass root= to keep the paths as they are") -> int:
    """Warn (ImagePathWarning) that the relative image paths of ``tables``, under several ``roots``, are made
    absolute; returns how many there are (no warning when none)."""
    n = sum(count_relative_paths(t, schema) for t in tables)
    if n:
        warn_roots(roots, what, f"{n} relative image path(s) made absolute", hint, stacklevel=5)
    return n


def warn_roots(roots: list[str], what: str, done: str, hint: str = "pass root= to keep the paths as they are",
               stacklevel: int = 4) -> None:
    """The ImagePathWarning of :func:`warn_absolute`: ``done`` (what happens to the paths) because ``what``
    resolve against several ``roots``. A pipeline source gives it when it is built, before reading a row."""
    shown = sorted({str(r) for r in roots})
    warnings.warn(f"{done}: the {what} resolve against {len(shown)} root(s) ({', '.join(shown[:3])}"
                  f"{', ...' if len(shown) > 3 else ''}) and a dataset has one root; {hint}", ImagePathWarning,
                  stacklevel=stacklevel)


def add_image_paths(manifest: dict, info: ImagePaths) -> None:
    """Add what one shard's writer did with its image paths (:func:`image_paths_for`) to an output's
    ``manifest``: the mode, the rewritten paths summed over the shards, and the ``root`` kept paths resolve
    against.

    >>> m = {}; add_image_paths(m, ImagePaths("relative", None, 2)); add_image_paths(m, ImagePaths("relative", None, 1))
    >>> m
    {'image_paths': {'mode': 'relative', 'rewritten': 3}}
    """
    before = manifest.get("image_paths") or {}
    n = info.rewritten + (before.get("rewritten", 0) if before.get("mode") == info.mode else 0)
    manifest.update(ImagePaths(info.mode, info.root, n).manifest())


def image_paths_of(manifest: dict) -> ImagePaths:
    """What an output's manifest says its writer did with image paths (``keep`` when it says nothing)."""
    p = manifest.get("image_paths") or {}
    return ImagePaths(p.get("mode", "keep"), manifest.get("root"), int(p.get("rewritten", 0)))


def keep_image_paths(ds, manifest: dict):
    """``ds`` unchanged, for a pipeline's shard writer: the paths are kept as they are and ``manifest`` records
    the root they resolve against (``root``), so ``load`` of the output finds the images."""
    _, _, info = rebase_image_paths(ds.to_arrow(), ds.schema, ds.root, "", "keep")
    manifest.update(info.manifest())
    return ds


def record_root(manifest: dict, root: str | None) -> None:
    """Record in ``manifest`` that its shards keep their image paths, relative to ``root`` (when there is one).

    >>> m = {}; record_root(m, "/data/images"); m
    {'image_paths': {'mode': 'keep', 'rewritten': 0}, 'root': '/data/images'}
    """
    manifest.update(ImagePaths("keep", _full_root(root) if root else None, 0).manifest())


def _exists(path: str) -> bool:
    import os

    if "://" in path:
        from fsspec.core import url_to_fs

        fs, p = url_to_fs(path)
        return fs.exists(p)
    return os.path.exists(path)


def missing_images(ds, num_workers: int = 16) -> list[str]:
    """One message per image a row refers to by path that does not exist, naming the row (and its id), the
    field and the path; empty when every image is there. Checked on ``num_workers`` threads (I/O bound)."""
    from concurrent.futures import ThreadPoolExecutor

    from datacopilot.schemas import resolve_path

    checks = []  # (row, field, path)
    ids = ds.to_arrow().column("id").to_pylist() if "id" in ds.columns else None
    for col in image_columns(ds.schema):
        if col not in ds.columns:
            continue
        for i, v in enumerate(ds.to_arrow().column(col).to_pylist()):
            for j, img in enumerate(v if isinstance(v, list) else [v]):
                if isinstance(img, dict) and img.get("bytes") is None and img.get("path"):
                    field = f"{col}[{j}]" if isinstance(v, list) else col
                    checks.append((i, field, img["path"]))
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        found = list(pool.map(lambda c: _exists(resolve_path(c[2], ds.root)), checks))
    out = []
    for (i, field, path), ok in zip(checks, found):
        if not ok:
            rid = f" (id {ids[i]!r})" if ids is not None and ids[i] is not None else ""
            out.append(f"row {i}{rid}: {field}: image {path!r} not found under {ds.root or '.'}")
    return out
