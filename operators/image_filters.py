"""Image filters: exists and decodes, resolution, aspect ratio, file size, blur.

Images come from ``image`` (MM, PAIRS, CAPTION) or ``images`` (MESSAGES: ``{path, bytes}``; MIX: ``{id, url}``).
Relative paths are resolved against the operator's ``root`` parameter; when it is None, ``ds.apply`` fills it in
with the dataset's root (``uses_root``), so ``create("filter_image_size", min_width=64)`` works on any dataset
and a pipeline written as data can still pin a root. Images are read on ``num_threads`` threads (the work is
I/O bound). A row is dropped when any of its images fails a rule; rows without images are kept. A missing
image is dropped as ``"image missing"``, a corrupt one as ``"image does not decode"``.

>>> from datacopilot.operators import create
>>> ds.apply([create("filter_image_exists"), create("filter_image_size", min_width=224)])  # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from datacopilot.errors import InputError
from datacopilot.schemas import read_image_bytes, resolve_path
from datacopilot.schemas.image import as_image_lists

from .base import Filter, check_float, check_int, check_order
from .registry import register

MISSING, CORRUPT = "image missing", "image does not decode"


def row_images(batch: pa.RecordBatch) -> list[list]:
    """The image values of each row (``{path, bytes}`` dicts or url strings)."""
    names = batch.schema.names
    if "image" in names:
        return [[v for v in vs if v is not None] for vs in as_image_lists(batch.column("image")).to_pylist()]
    if "images" in names:
        out = []
        for imgs in batch.column("images").to_pylist():
            out.append([i["url"] if isinstance(i, dict) and "url" in i else i for i in imgs or [] if i is not None])
        return out
    return [[] for _ in range(batch.num_rows)]


def _embedded_images(batch: pa.RecordBatch) -> tuple[pa.Array, np.ndarray] | None:
    """(the images, the offsets of each row's images in them) when every (non-null) image of the batch is a
    ``{path, bytes}`` with its bytes, else None."""
    names = batch.schema.names
    col = batch.column("image") if "image" in names else batch.column("images") if "images" in names else None
    if col is None:
        return None
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if pa.types.is_struct(t):  # one image per row (MM): a null row is a null image, skipped
        values, off = col, np.arange(len(col) + 1, dtype=np.int64)
    elif (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_struct(t.value_type):
        import pyarrow.compute as pc

        values = col.flatten()
        off = np.zeros(len(col) + 1, np.int64)
        np.cumsum(pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False), out=off[1:])
    else:
        return None
    if values.type.get_field_index("bytes") < 0:
        return None
    data = values.field("bytes")
    if data.null_count:
        missing = data.is_null().to_numpy(zero_copy_only=False)
        if (missing & values.is_valid().to_numpy(zero_copy_only=False)).any():  # an image read from its path
            return None
    return values, off


class ImageFilter(Filter):
    """Base of the image filters: ``judge(value)`` returns None to keep an image, or the reason to drop it."""

    reads = ("image|images",)
    uses_root = True

    def __init__(self, root: str | None = None, num_threads: int = 8, **params):
        if root is not None and not isinstance(root, str):
            raise self.error(f"`root` must be a directory or URL prefix, got {root!r}")
        super().__init__(root=root, num_threads=check_int(self, "num_threads", num_threads, 1, 256), **params)

    def read(self, value) -> bytes:
        return read_image_bytes(value, self.p["root"])

    def open(self, value, load: bool = False):
        """The image as a Pillow image (header only unless ``load``); InputError when missing or corrupt."""
        from PIL import Image

        data = self.read(value)
        try:
            img = Image.open(io.BytesIO(data))
            if load:
                img.load()
            return img
        except Exception as e:  # Pillow raises many types for corrupt data
            raise ValueError(str(e)) from e

    def judge(self, value) -> str | None:
        raise NotImplementedError

    def _judge_row(self, values: list) -> str | None:
        for v in values:
            try:
                why = self.judge(v)
            except InputError:
                why = MISSING
            except ValueError:
                why = CORRUPT
            if why is not None:
                return why
        return None

    def keep(self, batch: pa.RecordBatch):
        rows = row_images(batch)
        n = self.p["num_threads"]
        if n > 1 and sum(map(len, rows)) > 1:
            with ThreadPoolExecutor(max_workers=min(n, len(rows))) as ex:
                reasons = list(ex.map(self._judge_row, rows))
        else:
            reasons = [self._judge_row(r) for r in rows]
        reasons = np.array(reasons, dtype=object)
        return np.array([r is None for r in reasons], dtype=bool), reasons


@register
class FilterImageExists(ImageFilter):
    """Keep rows whose images exist and decode completely."""

    name = "filter_image_exists"

    def judge(self, value) -> str | None:
        self.open(value, load=True)
        return None


@register
class FilterImageSize(ImageFilter):
    """Keep rows whose images are within the given resolution: ``min_width`` <= width <= ``max_width`` and
    ``min_height`` <= height <= ``max_height`` in pixels (None: no bound). Reads only the image headers."""

    name = "filter_image_size"

    def __init__(self, min_width: int = 1, max_width: int | None = None, min_height: int = 1,
                 max_height: int | None = None, root: str | None = None, num_threads: int = 8):
        super().__init__(root, num_threads,
                         min_width=check_int(self, "min_width", min_width, minimum=0),
                         max_width=check_int(self, "max_width", max_width, minimum=1, optional=True),
                         min_height=check_int(self, "min_height", min_height, minimum=0),
                         max_height=check_int(self, "max_height", max_height, minimum=1, optional=True))
        check_order(self, "min_width", "max_width")
        check_order(self, "min_height", "max_height")

    def judge(self, value) -> str | None:
        w, h = self.open(value).size
        p = self.p
        if w < p["min_width"] or h < p["min_height"]:
            return f"image smaller than {p['min_width']}x{p['min_height']}"
        if (p["max_width"] is not None and w > p["max_width"]) or (p["max_height"] is not None and h > p["max_height"]):
            return f"image larger than {p['max_width']}x{p['max_height']}"
        return None


@register
class FilterAspectRatio(ImageFilter):
    """Keep rows whose images have ``min_ratio`` <= width / height <= ``max_ratio``."""

    name = "filter_aspect_ratio"

    def __init__(self, min_ratio: float = 0.25, max_ratio: float = 4.0, root: str | None = None,
                 num_threads: int = 8):
        super().__init__(root, num_threads, min_ratio=check_float(self, "min_ratio", min_ratio, minimum=0),
                         max_ratio=check_float(self, "max_ratio", max_ratio, minimum=0))
        check_order(self, "min_ratio", "max_ratio")

    def judge(self, value) -> str | None:
        w, h = self.open(value).size
        ratio = w / max(h, 1)
        if ratio < self.p["min_ratio"]:
            return f"aspect ratio below {self.p['min_ratio']}"
        if ratio > self.p["max_ratio"]:
            return f"aspect ratio above {self.p['max_ratio']}"
        return None


@register
class FilterFileSize(ImageFilter):
    """Keep rows whose encoded images take between ``min_bytes`` and ``max_bytes`` (None: no bound). Local
    files are measured without being read; embedded images by their bytes."""

    name = "filter_file_size"

    def __init__(self, min_bytes: int = 0, max_bytes: int | None = None, root: str | None = None,
                 num_threads: int = 8):
        super().__init__(root, num_threads, min_bytes=check_int(self, "min_bytes", min_bytes, minimum=0),
                         max_bytes=check_int(self, "max_bytes", max_bytes, minimum=0, optional=True))
        check_order(self, "min_bytes", "max_bytes")

    def _size(self, value) -> int:
        if isinstance(value, dict) and value.get("bytes") is not None:
            return len(value["bytes"])
        path = value.get("path") if isinstance(value, dict) else value
        full = resolve_path(path, self.p["root"]) if path else None
        if full and "://" not in full:
            try:
                return os.path.getsize(full)
            except OSError as e:
                raise InputError(f"image {path!r} not found (looked at {full!r}): {e}") from e
        return len(self.read(value))

    def keep(self, batch: pa.RecordBatch):
        """Vectorized when every image of the batch is embedded (its size is the length of its bytes); through
        :meth:`judge` per image otherwise."""
        found = _embedded_images(batch)
        if found is None:
            return super().keep(batch)
        from datacopilot.kernels.text import string_buffers

        values, off = found
        size = np.diff(string_buffers(values.field("bytes"))[0])  # a null image's size is masked below
        lo, hi = self.p["min_bytes"], self.p["max_bytes"]
        code = (size < lo).astype(np.int8)
        if hi is not None:
            code[(size > hi) & (code == 0)] = 2
        if values.null_count:
            code *= values.is_valid().to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(code)
        if not len(bad):
            return np.ones(batch.num_rows, dtype=bool), np.empty(batch.num_rows, dtype=object)
        rows = np.searchsorted(off, bad, side="right") - 1  # the row of each failing image (ascending)
        first = np.ones(len(rows), dtype=bool)  # a row's reason: its first failing image
        first[1:] = rows[1:] != rows[:-1]
        why = np.array([None, f"image file smaller than {lo} bytes", f"image file larger than {hi} bytes"], object)
        reasons = np.empty(batch.num_rows, dtype=object)
        reasons[rows[first]] = why[code[bad[first]]]
        keep = np.ones(batch.num_rows, dtype=bool)
        keep[rows] = False
        return keep, reasons

    def judge(self, value) -> str | None:
        size = self._size(value)
        if size < self.p["min_bytes"]:
            return f"image file smaller than {self.p['min_bytes']} bytes"
        if self.p["max_bytes"] is not None and size > self.p["max_bytes"]:
            return f"image file larger than {self.p['max_bytes']} bytes"
        return None


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a 2-D grayscale array (low = blurry)."""
    g = gray.astype(np.float64)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


@register
class FilterBlur(ImageFilter):
    """Keep rows whose images are sharp: the variance of the Laplacian of the grayscale image (scaled so its
    longer side is at most ``max_side`` pixels, for speed and comparable scores) is at least ``min_variance``."""

    name = "filter_blur"

    def __init__(self, min_variance: float = 100.0, max_side: int = 512, root: str | None = None,
                 num_threads: int = 8):
        super().__init__(root, num_threads, min_variance=check_float(self, "min_variance", min_variance, minimum=0),
                         max_side=check_int(self, "max_side", max_side, minimum=8))

    def score(self, value) -> float:
        img = self.open(value, load=True).convert("L")
        img.thumbnail((self.p["max_side"], self.p["max_side"]))
        return laplacian_variance(np.asarray(img))

    def judge(self, value) -> str | None:
        if self.score(value) < self.p["min_variance"]:
            return f"image blurry (Laplacian variance below {self.p['min_variance']})"
        return None
