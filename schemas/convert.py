"""Converters between the built-in schemas, through the canonical conversation form."""

from __future__ import annotations

from .builtin import get_schema
from .schema import Schema
from datacopilot.errors import ConversionError


def convert_row(row: dict, src: "str | Schema", dst: "str | Schema") -> dict:
    """Convert one normalized row from ``src`` to ``dst``.

    Raises :class:`ConversionError` when ``dst`` cannot hold the row's information.

    >>> convert_row({"id": "1", "image": "a.png", "caption": "a red circle"}, "CAPTION", "MM")["conversations"]
    [{'from': 'human', 'value': '<image>'}, {'from': 'gpt', 'value': 'a red circle'}]
    """
    src, dst = get_schema(src), get_schema(dst)
    if src.to_canonical is None or dst.from_canonical is None:
        raise ConversionError(f"no converter from {src.name} to {dst.name}")
    if src == dst:
        return row
    row = src.normalize_row(row)
    return dst.from_canonical(src.to_canonical(row))
