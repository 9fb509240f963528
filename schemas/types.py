"""Field types: each maps to an Arrow type, validates Python values with a field path, and can screen a
whole Arrow array for bad rows at once (the vectorized fast path of validation)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def bool_mask(x) -> np.ndarray:
    """A boolean Arrow array or chunked array (nulls as given by the caller's fill) as one numpy mask."""
    if not pc.any(x).as_py():  # the common case, nothing flagged: no conversion
        return np.zeros(len(x), dtype=bool)
    if isinstance(x, pa.ChunkedArray):
        x = pa.concat_arrays(x.chunks) if x.num_chunks else pa.array([], pa.bool_())
    return x.fill_null(False).to_numpy(zero_copy_only=False)


def null_mask(x) -> np.ndarray | None:
    """The nulls of an array or chunked array as a numpy mask; None when it holds none (Arrow counts them when
    it builds the array: no pass over the values)."""
    return bool_mask(x.is_null()) if x.null_count else None


def list_parents(arr) -> np.ndarray:
    """The row each value of ``pc.list_flatten(arr)`` comes from, for an array or a chunked array whole (a null
    list holds no values)."""
    lens = int_values(pc.list_value_length(arr).fill_null(0))
    return np.repeat(np.arange(len(arr)), lens)


def int_values(x) -> np.ndarray:
    if isinstance(x, pa.ChunkedArray):
        return np.concatenate([c.to_numpy() for c in x.chunks]) if x.num_chunks else np.zeros(0, np.int64)
    return x.to_numpy()


class DType:
    """Base of all field types. ``bad_mask`` takes an array or a chunked array whole (one call per column, not
    per chunk: HF's Arrow files come in 1,000-row batches)."""

    is_image = False  # the Image media type sets it (types.py cannot import image.py: it imports us)

    def arrow(self) -> pa.DataType:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, value: Any, path: str, out: list[str]) -> None:
        """Append a message to ``out`` for every problem of ``value`` (not None) at ``path``."""
        raise NotImplementedError  # pragma: no cover

    def normalize(self, value: Any) -> Any:
        """Turn a value as found in files into the value stored in Arrow (identity for most types)."""
        return value

    def bad_mask(self, arr: pa.Array) -> np.ndarray | None:
        """Vectorized screen: a boolean mask of rows that may be invalid, or None when none can be."""
        return None


def type_name(value: Any) -> str:
    """The type of ``value`` as error messages name it (``null`` for None)."""
    return type(value).__name__ if value is not None else "null"


@dataclass(frozen=True)
class String(DType):
    choices: tuple[str, ...] | None = None

    def arrow(self) -> pa.DataType:
        return pa.string()

    def check(self, value, path, out):
        if not isinstance(value, str):
            out.append(f"{path}: expected a string, got {type_name(value)} {value!r}"[:300])
        elif self.choices is not None and value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            out.append(f"{path}: expected one of {allowed}, got {value!r}")

    def bad_mask(self, arr):
        if self.choices is None:
            return None
        ok = choice_mask(arr, self.choices, skip_if_all=True)
        if ok is None:  # every value one of the choices (nulls are the caller's): no mask
            return None
        return ~bool_mask(ok.fill_null(True))


EQUAL_CHOICES = 4  # up to this many choices, one ``pc.equal`` each beats ``pc.is_in``'s hash set


def choice_mask(arr, choices: tuple[str, ...], skip_if_all: bool = False):
    """Whether each string of ``arr`` (an array or a chunked array, whole) is one of ``choices`` (null for null):
    a few ``pc.equal`` (each a byte comparison, no hashing) for a few choices, as roles are. With
    ``skip_if_all``, None when every value is one of them (counted from the comparisons: no mask built).

    >>> choice_mask(pa.array(["human", "bot", None]), ("human", "gpt")).to_pylist()
    [True, False, None]
    >>> choice_mask(pa.chunked_array([["human"], ["gpt", None]]), ("human", "gpt"), skip_if_all=True) is None
    True
    """
    choices = tuple(dict.fromkeys(choices))  # distinct: each value matches at most one (the count below)
    if len(choices) > EQUAL_CHOICES or not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        ok = pc.is_in(arr, value_set=pa.array(choices, arr.type))
        ok = pc.if_else(arr.is_valid(), ok, None) if arr.null_count else ok
        return None if skip_if_all and pc.all(ok).as_py() is not False else ok
    each = [pc.equal(arr, c) for c in choices]
    if skip_if_all and sum(_true_count(e) for e in each) == len(arr) - arr.null_count:
        return None
    ok = each[0]
    for e in each[1:]:
        ok = pc.or_(ok, e)
    return ok


def _true_count(x) -> int:
    """The true values of a boolean array or chunked array (Arrow counts set bits: no numpy conversion)."""
    chunks = x.chunks if isinstance(x, pa.ChunkedArray) else [x]
    return sum(c.true_count for c in chunks)


@dataclass(frozen=True)
class Int(DType):
    minimum: int | None = None

    def arrow(self):
        return pa.int64()

    def check(self, value, path, out):
        if isinstance(value, bool) or not isinstance(value, int):
            out.append(f"{path}: expected an integer, got {type_name(value)} {value!r}"[:300])
        elif self.minimum is not None and value < self.minimum:
            out.append(f"{path}: expected an integer >= {self.minimum}, got {value!r}")

    def bad_mask(self, arr):
        if self.minimum is None or not pa.types.is_integer(arr.type):
            return None
        return bool_mask(pc.less(arr, self.minimum).fill_null(False))


@dataclass(frozen=True)
class Float(DType):
    def arrow(self):
        return pa.float64()

    def check(self, value, path, out):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out.append(f"{path}: expected a number, got {type_name(value)} {value!r}"[:300])


@dataclass(frozen=True)
class Bool(DType):
    def arrow(self):
        return pa.bool_()

    def check(self, value, path, out):
        if not isinstance(value, bool):
            out.append(f"{path}: expected true or false, got {type_name(value)} {value!r}"[:300])


@dataclass(frozen=True)
class Json(DType):
    """Free-form JSON (e.g. ``meta``), stored as compact JSON text so any shape survives unchanged."""

    def arrow(self):
        return pa.string()

    def check(self, value, path, out):
        try:
            json.dumps(value) if not isinstance(value, str) else None
        except (TypeError, ValueError) as e:
            out.append(f"{path}: not JSON-serializable: {e}")

    def normalize(self, value):
        if value is None or isinstance(value, str):
            return value
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class List(DType):
    inner: DType
    length: int | None = None  # fixed length, e.g. a [question, answer] pair

    def arrow(self):
        return pa.list_(self.inner.arrow())

    def check(self, value, path, out):
        if not isinstance(value, (list, tuple)):
            out.append(f"{path}: expected a list, got {type_name(value)} {value!r}"[:300])
            return
        if self.length is not None and len(value) != self.length:
            out.append(f"{path}: expected {self.length} items, got {len(value)}")
        for i, v in enumerate(value):
            if v is None:
                out.append(f"{path}[{i}]: missing value")
            else:
                self.inner.check(v, f"{path}[{i}]", out)

    def normalize(self, value):
        if not isinstance(value, (list, tuple)):
            return value
        return [self.inner.normalize(v) for v in value]

    def bad_mask(self, arr):
        n = len(arr)
        values = pc.list_flatten(arr)
        bad_vals = null_mask(values)
        inner = self.inner.bad_mask(values)
        if inner is not None:
            bad_vals = inner if bad_vals is None else bad_vals | inner
        mask = np.zeros(n, dtype=bool)
        if bad_vals is not None and bad_vals.any():
            mask[np.unique(list_parents(arr)[bad_vals])] = True
        if self.length is not None:
            lens = int_values(pc.list_value_length(arr).fill_null(self.length))
            mask |= lens != self.length
        return mask


def matches(dtype: DType, value: Any) -> bool:
    """Whether a Python value has the shape of ``dtype`` (the type, not its constraints): picks a OneOf's
    alternative."""
    if isinstance(dtype, String):
        return isinstance(value, str)
    if isinstance(dtype, Int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(dtype, Float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(dtype, Bool):
        return isinstance(value, bool)
    if isinstance(dtype, List):
        return isinstance(value, (list, tuple))
    if dtype.is_image:
        return isinstance(value, (str, bytes, bytearray)) or (
            isinstance(value, dict) and bool({"path", "bytes", "bytes_base64"} & value.keys()))
    if isinstance(dtype, Struct):
        return isinstance(value, dict)
    return True


def arrow_matches(dtype: DType, t: pa.DataType) -> bool:
    """Whether an Arrow type can hold ``dtype``'s values as they are (picks a OneOf's alternative for a column)."""
    if isinstance(dtype, (String, Json)):
        return pa.types.is_string(t) or pa.types.is_large_string(t)
    if isinstance(dtype, Int):
        return pa.types.is_integer(t)
    if isinstance(dtype, Float):
        return pa.types.is_floating(t) or pa.types.is_integer(t)
    if isinstance(dtype, Bool):
        return pa.types.is_boolean(t)
    if isinstance(dtype, List):
        return pa.types.is_list(t) or pa.types.is_large_list(t)
    if dtype.is_image:  # a path, or {path, bytes}
        return pa.types.is_struct(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
    if isinstance(dtype, Struct):
        return pa.types.is_struct(t)
    return False


@dataclass(frozen=True)
class OneOf(DType):
    """A value that takes one of several shapes, each a named alternative: an id that is a string or an
    integer, an image or a list of images. Stored as the plain type of the alternative the rows use, or as a
    :class:`~datacopilot.schemas.variant.VariantType` when rows mix them (each keeps its own shape)."""

    alternatives: tuple[tuple[str, DType], ...]

    def arrow(self):
        return self.alternatives[0][1].arrow()

    def pick(self, value: Any) -> tuple[str, DType] | None:
        for tag, d in self.alternatives:
            if matches(d, value):
                return tag, d
        return None

    def pick_arrow(self, t: pa.DataType) -> tuple[str, DType] | None:
        for tag, d in self.alternatives:
            if arrow_matches(d, t):
                return tag, d
        return None

    def describe(self) -> str:
        return " or ".join(_describe(d) for _, d in self.alternatives)

    def check(self, value, path, out):
        alt = self.pick(value)
        if alt is None:
            out.append(f"{path}: expected {self.describe()}, got {type_name(value)} {value!r}"[:300])
        else:
            alt[1].check(value, path, out)

    def normalize(self, value):
        alt = self.pick(value)
        return value if alt is None else alt[1].normalize(value)

    def bad_mask(self, arr):
        from .variant import is_variant

        if isinstance(arr, pa.ChunkedArray) and is_variant(arr.type):  # chunk by chunk (extension storage)
            parts = [self.bad_mask(c) for c in arr.chunks]
            return np.concatenate(parts) if parts else np.zeros(0, bool)
        if is_variant(arr.type):
            storage = arr.storage
            mask = np.zeros(len(arr), dtype=bool)
            for tag, d in self.alternatives:
                if storage.type.get_field_index(tag) < 0:
                    continue
                child = storage.field(tag)
                sub = d.bad_mask(child)
                if sub is not None:
                    mask |= sub & np.asarray(child.is_valid(), dtype=bool)
            return mask
        alt = self.pick_arrow(arr.type)
        return None if alt is None else alt[1].bad_mask(arr)


_DESCRIBE = {"String": "a string", "Int": "an integer", "Float": "a number", "Bool": "true or false",
             "Struct": "an object", "Image": "an image path or {path, bytes}"}


def is_image_dtype(dtype: DType) -> bool:
    """Whether a field holds images: ``Image``, a list of them, or either (MM's ``image``)."""
    if dtype.is_image:
        return True
    if isinstance(dtype, List):
        return dtype.inner.is_image
    if isinstance(dtype, OneOf):
        return any(is_image_dtype(d) for _, d in dtype.alternatives)
    return False


@dataclass(frozen=True)
class ArrowType(DType):
    """A field of any Arrow type that the schema does not constrain (used by inferred schemas)."""

    type: pa.DataType

    def arrow(self):
        return self.type

    def check(self, value, path, out):
        return None


def _describe(d: DType) -> str:
    if isinstance(d, List):
        return "a list of images" if d.inner.is_image else "a list"
    return _DESCRIBE.get(type(d).__name__, type(d).__name__)


@dataclass(frozen=True)
class Field:
    """A named field; ``required`` fields must be present and not null. Writers of JSON leave a null optional
    field out, as files in the wild do, unless ``null_key`` says the format keeps the key (SCHEMA.MIX's
    ``images: null``)."""

    name: str
    dtype: DType
    required: bool = True
    doc: str = ""
    null_key: bool = False


@dataclass(frozen=True)
class Struct(DType):
    fields: tuple[Field, ...] = field(default_factory=tuple)

    def arrow(self):
        return pa.struct([pa.field(f.name, f.dtype.arrow(), nullable=True) for f in self.fields])

    def check(self, value, path, out):
        if not isinstance(value, dict):
            where = f"{path}: " if path else ""  # a whole row: the caller's prefix names it
            out.append(f"{where}expected an object, got {type_name(value)} {value!r}"[:300])
            return
        for f in self.fields:
            v = value.get(f.name)
            sub = f"{path}.{f.name}" if path else f.name
            if v is None:
                if f.required:
                    out.append(f"{sub}: missing required field")
            else:
                f.dtype.check(v, sub, out)

    def normalize(self, value):
        if not isinstance(value, dict):
            return value
        out = dict(value)
        for f in self.fields:
            if f.name in out:
                out[f.name] = f.dtype.normalize(out[f.name])
        return out

    def bad_mask(self, arr):
        mask = np.zeros(len(arr), dtype=bool)
        names = [arr.type.field(i).name for i in range(arr.type.num_fields)]
        for f in self.fields:
            if f.name not in names:
                if f.required:
                    mask[:] = True
                continue
            child = pc.struct_field(arr, [names.index(f.name)])
            if f.required and child.null_count:
                mask |= bool_mask(child.is_null())
            sub = f.dtype.bad_mask(child)
            if sub is not None:
                mask |= sub
        # a null struct hides its children: do not flag it here (the parent decides)
        return mask & bool_mask(arr.is_valid()) if arr.null_count else mask
