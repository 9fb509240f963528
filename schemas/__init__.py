"""Field and media types, ``Schema``, the built-in schemas, the canonical sample and the converters."""

from .builtin import (BUILTIN, CAPTION, CAULDRON, IMAGE_TOKEN, MESSAGES, MIX, MM, MMC4, PAIRS, SHAREGPT, get_schema,
                      part_text)
from .convert import convert_row
from .detect import detect_schema, resolve_schema, row_roles, turn_roles
from .image import IMAGE_ARROW_TYPE, Image, data_url_bytes, decode_image, encode_image, read_image_bytes, resolve_path
from .schema import Schema
from .types import ArrowType
from .types import Bool, DType, Field, Float, Int, Json, List, OneOf, String, Struct
from .variant import JsonValueType, VariantType

__all__ = [
    "BUILTIN", "CAPTION", "CAULDRON", "IMAGE_TOKEN", "MESSAGES", "MIX", "MM", "MMC4", "PAIRS", "SHAREGPT",
    "detect_schema", "resolve_schema", "get_schema", "part_text", "row_roles", "turn_roles", "convert_row", "IMAGE_ARROW_TYPE",
    "Image", "data_url_bytes", "decode_image", "encode_image", "read_image_bytes", "resolve_path", "ArrowType",
    "Schema", "Bool", "DType", "Field", "Float", "Int", "Json", "List", "OneOf", "String", "Struct",
    "JsonValueType", "VariantType",
]
