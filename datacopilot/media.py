"""Image work over whole datasets: embedding image bytes into rows, so a shard carries its own images."""

from __future__ import annotations

from typing import Any

from datacopilot.schemas import read_image_bytes

from .errors import InputError
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



def rebase_images(ds, directory: str):
    """``ds`` with relative image paths rewritten for files written into ``directory``.

    A relative path resolves against the dataset's root; written elsewhere it would point nowhere. Local paths
    become relative to ``directory`` (so a folder of data and images can move as a whole); when either side is
    a URL they become absolute.
    """
    import os

    from .dataset import MMDataset
    from .transforms import prefix_image_paths

    root = ds.root
    if not root or not any(c in ds.columns for c in image_columns(ds.schema)):
        return ds
    if "://" in root or "://" in directory:
        if root.rstrip("/") == directory.rstrip("/"):
            return ds
        return ds.with_absolute_paths()
    root, directory = os.path.abspath(root), os.path.abspath(directory)
    if root == directory:
        return ds
    table = prefix_image_paths(ds.to_arrow(), ds.schema, os.path.relpath(root, directory))
    return MMDataset(table, ds.schema, root=directory, history=ds.history(), quarantine=ds.quarantine)


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
