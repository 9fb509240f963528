"""The ``Image`` media type: Arrow ``struct<path: string, bytes: binary>``, decoded lazily with Pillow.

A path may be absolute, relative to the dataset's root, or an fsspec URL (``s3://...``, ``memory://...``).
When ``bytes`` is set the image travels inside the row and the path is only a name.
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from datacopilot.errors import InputError

from .types import DType, is_image_dtype, type_name  # noqa: F401 (is_image_dtype: re-exported)

IMAGE_ARROW_TYPE = pa.struct([pa.field("path", pa.string()), pa.field("bytes", pa.binary())])


@dataclass(frozen=True)
class Image(DType):
    """An image: a path, bytes, or both."""

    is_image = True

    def arrow(self) -> pa.DataType:
        return IMAGE_ARROW_TYPE

    def normalize(self, value: Any) -> Any:
        if isinstance(value, str):
            return {"path": value, "bytes": None}
        if isinstance(value, (bytes, bytearray)):
            return {"path": None, "bytes": bytes(value)}
        if isinstance(value, dict) and "bytes_base64" in value:  # how JSON writers carry embedded images
            out = {"path": value.get("path"), "bytes": _b64(value["bytes_base64"])}
            out.update((k, v) for k, v in value.items() if k not in ("path", "bytes", "bytes_base64"))
            return out
        if isinstance(value, dict) and ("path" in value or "bytes" in value):
            out = {"path": value.get("path"), "bytes": value.get("bytes")}
            out.update((k, v) for k, v in value.items() if k not in out)  # extra keys (width, ...) travel along
            return out
        return value

    def check(self, value, path, out):
        value = self.normalize(value)
        if not isinstance(value, dict):
            out.append(f"{path}: expected an image path or {{path, bytes}}, got {type_name(value)} {value!r}"[:300])
            return
        p, b = value.get("path"), value.get("bytes")
        if p is None and b is None:
            out.append(f"{path}: image has neither path nor bytes")
        if p is not None and not isinstance(p, str):
            out.append(f"{path}.path: expected a string, got {type_name(p)}")
        if b is not None and not isinstance(b, (bytes, bytearray)):
            out.append(f"{path}.bytes: expected bytes, got {type_name(b)}")


def _b64(text):
    if not isinstance(text, str):
        return text
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return text  # left as it is: check() reports it


def data_url_bytes(url: str) -> bytes | None:
    """The bytes of a ``data:`` URL (``data:image/png;base64,...``), or None for any other path."""
    if not url.startswith("data:"):
        return None
    head, sep, body = url.partition(",")
    if not sep:
        raise InputError(f"data URL {url[:40]!r}...: no ',' before the payload")
    if head.endswith(";base64"):
        try:
            return base64.b64decode(body, validate=True)
        except ValueError as e:
            raise InputError(f"data URL {url[:40]!r}...: bad base64: {e}") from e
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(body)


def resolve_path(path: str, root: str | None) -> str:
    """Resolve an image path against a dataset root (a local directory or an fsspec URL prefix)."""
    if "://" in path or os.path.isabs(path) or not root:
        return path
    if "://" in root:
        return root.rstrip("/") + "/" + path
    return os.path.join(root, path)


def read_image_bytes(value: dict | str, root: str | None = None) -> bytes:
    """The encoded bytes of an image value; reads the file (local or fsspec) when only a path is set."""
    value = Image().normalize(value)
    if value.get("bytes") is not None:
        return bytes(value["bytes"])
    path = value.get("path")
    if not path:
        raise InputError("image has neither path nor bytes")
    data = data_url_bytes(path)
    if data is not None:
        return data
    full = resolve_path(path, root)
    try:
        if "://" in full:
            import fsspec

            with fsspec.open(full, "rb") as f:
                return f.read()
        with open(full, "rb") as f:
            return f.read()
    except (FileNotFoundError, OSError) as e:
        raise InputError(f"image {path!r} not found (looked at {full!r}): {e}") from e


def decode_image(value: dict | str, root: str | None = None):
    """Decode an image value to a ``PIL.Image.Image`` (loaded, so the file is closed)."""
    from PIL import Image as PILImage

    data = read_image_bytes(value, root)
    try:
        img = PILImage.open(io.BytesIO(data))
        img.load()
        return img
    except Exception as e:  # Pillow raises many types for corrupt data
        name = value if isinstance(value, str) else (value.get("path") or "<bytes>")
        raise InputError(f"image {name!r} does not decode: {e}") from e


def encode_image(img, format: str = "PNG", path: str | None = None) -> dict:
    """Encode a ``PIL.Image.Image`` into an image value with embedded bytes."""
    buf = io.BytesIO()
    img.save(buf, format=format)
    return {"path": path, "bytes": buf.getvalue()}


def as_image_lists(arr) -> pa.Array:
    """Any image column as a list column, row by row (vectorized): a single image (or null) as a list of 0 or 1,
    a list as it is, a mix of both (a variant) each row as its own shape.

    >>> as_image_lists(pa.array([{"path": "a.png", "bytes": None}, None], IMAGE_ARROW_TYPE)).to_pylist()
    [[{'path': 'a.png', 'bytes': None}], []]
    """
    import numpy as np
    import pyarrow.compute as pc

    from .variant import is_variant

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    t = arr.type
    if is_variant(t):
        st = arr.storage
        parts = [as_image_lists(st.field(i)) for i in range(t.storage_type.num_fields)]
        out = parts[0]
        for i, p in enumerate(parts[1:], 1):
            if p.type != out.type:
                p = p.cast(out.type)
            out = pc.if_else(st.field(i).is_valid(), p, out)
        return out
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return arr
    valid = np.asarray(arr.is_valid(), dtype=bool)
    offsets = np.concatenate([[0], np.cumsum(valid)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), arr.filter(pa.array(valid)))
