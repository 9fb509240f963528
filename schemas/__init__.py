"""Field and media types, ``Schema``, the built-in schemas and their converters."""

from .builtin import BUILTIN, CAPTION, IMAGE_TOKEN, MESSAGES, MIX, MM, PAIRS, detect_schema, get_schema
from .convert import convert_row
from .image import IMAGE_ARROW_TYPE, Image, decode_image, encode_image, read_image_bytes, resolve_path
from .schema import ArrowType, Schema
from .types import Bool, DType, Field, Float, Int, Json, List, String, Struct

__all__ = [
    "BUILTIN", "CAPTION", "IMAGE_TOKEN", "MESSAGES", "MIX", "MM", "PAIRS", "detect_schema", "get_schema",
    "convert_row", "IMAGE_ARROW_TYPE", "Image", "decode_image", "encode_image", "read_image_bytes",
    "resolve_path", "ArrowType", "Schema", "Bool", "DType", "Field", "Float", "Int", "Json", "List", "String",
    "Struct",
]
