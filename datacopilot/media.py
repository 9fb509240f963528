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
