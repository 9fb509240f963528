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

from .types import DType, _kind

IMAGE_ARROW_TYPE = pa.struct([pa.field("path", pa.string()), pa.field("bytes", pa.binary())])


@dataclass(frozen=True)
class Image(DType):
    """An image: a path, bytes, or both."""

    def arrow(self) -> pa.DataType:
        return IMAGE_ARROW_TYPE

    def normalize(self, value: Any) -> Any:
        if isinstance(value, str):
            return {"path": value, "bytes": None}
        if isinstance(value, (bytes, bytearray)):
            return {"path": None, "bytes": bytes(value)}
        if isinstance(value, dict) and "bytes_base64" in value:  # how JSON writers carry embedded images
            return {"path": value.get("path"), "bytes": base64.b64decode(value["bytes_base64"])}
        if isinstance(value, dict) and ("path" in value or "bytes" in value):
            return {"path": value.get("path"), "bytes": value.get("bytes")}
        return value

    def check(self, value, path, out):
        value = self.normalize(value)
        if not isinstance(value, dict):
            out.append(f"{path}: expected an image path or {{path, bytes}}, got {_kind(value)} {value!r}"[:300])
            return
        p, b = value.get("path"), value.get("bytes")
        if p is None and b is None:
            out.append(f"{path}: image has neither path nor bytes")
        if p is not None and not isinstance(p, str):
            out.append(f"{path}.path: expected a string, got {_kind(p)}")
        if b is not None and not isinstance(b, (bytes, bytearray)):
            out.append(f"{path}.bytes: expected bytes, got {_kind(b)}")


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
