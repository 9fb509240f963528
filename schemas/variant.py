"""Two Arrow extension types that let a column hold what JSON files hold, losslessly.

- ``VariantType``: a value that is one of several alternatives (an id that is a string in some rows and an integer
  in others; an image that is one image or a list of them; a turn's content that is text or a list of parts).
  Storage is a struct with one child per alternative, exactly one set per valid row; ``as_py`` gives that child's
  value, so rows read back exactly as they were written. A column whose rows all take the same alternative is
  stored as that alternative's plain Arrow type instead: the variant only appears when the data is mixed.
- ``JsonValueType``: a value of any JSON shape (an extra key whose rows disagree on its type), stored as compact
  JSON text; ``as_py`` parses it back.

Both survive Arrow IPC and Parquet (their names travel in the Arrow schema) and polars keeps them as extension
columns.

>>> arr = variant_array({"str": pa.array(["a", None]), "int": pa.array([None, 7])}, [0, 1])
>>> arr.to_pylist()
['a', 7]
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

VARIANT_NAME = "datacopilot.variant"
JSON_NAME = "datacopilot.json"


class VariantScalar(pa.ExtensionScalar):
    def as_py(self, *args, **kwargs):
        s = self.value
        if s is None or not s.is_valid:
            return None
        for _, v in s.items():
            if v.is_valid:
                return v.as_py(*args, **kwargs)
        return None


class VariantType(pa.ExtensionType):
    """One of several alternatives, named by the storage struct's fields (``str``/``int``, ``one``/``many``...)."""

    def __init__(self, storage: pa.StructType):
        if not pa.types.is_struct(storage):
            raise TypeError(f"a variant's storage is a struct, got {storage}")
        super().__init__(storage, VARIANT_NAME)

    def __arrow_ext_serialize__(self) -> bytes:
        return b""

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        return cls(storage_type)

    def __arrow_ext_scalar_class__(self):
        return VariantScalar

    @property
    def tags(self) -> list[str]:
        return [self.storage_type.field(i).name for i in range(self.storage_type.num_fields)]

    def alternative(self, tag: str) -> pa.DataType:
        return self.storage_type.field(tag).type


class JsonValueScalar(pa.ExtensionScalar):
    def as_py(self, *args, **kwargs):
        v = self.value
        return None if v is None or not v.is_valid else json.loads(v.as_py())


class JsonValueType(pa.ExtensionType):
    """Any JSON value, stored as compact JSON text."""

    def __init__(self, storage: pa.DataType = pa.string()):
        super().__init__(storage, JSON_NAME)  # another text type when an engine hands it back (polars: views)

    def __arrow_ext_serialize__(self) -> bytes:
        return b""

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        return cls(storage_type)  # the storage the data has: a fixed pa.string() would misread other buffers

    def __arrow_ext_scalar_class__(self):
        return JsonValueScalar


for _t in (VariantType(pa.struct([("a", pa.null())])), JsonValueType()):
    try:
        pa.register_extension_type(_t)
    except pa.ArrowKeyError:  # already registered (module reloaded)
        pass


def is_variant(t: pa.DataType) -> bool:
    return isinstance(t, VariantType)


def dump_json(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def variant_array(children: dict[str, pa.Array], valid=None) -> pa.ExtensionArray:
    """A variant array from one full-length child array per alternative (null where another applies)."""
    names = list(children)
    arrays = [children[n] for n in names]
    mask = None
    if arrays:
        set_any = np.zeros(len(arrays[0]), dtype=bool)
        for a in arrays:
            set_any |= np.asarray(a.is_valid(), dtype=bool)
        if not set_any.all():
            mask = pa.array(~set_any)
    storage = pa.StructArray.from_arrays(arrays, names=names, mask=mask)
    return pa.ExtensionArray.from_storage(VariantType(storage.type), storage)


def storage_of(t: pa.DataType) -> pa.DataType:
    """``t`` with every extension type replaced by its storage type, at every depth."""
    if isinstance(t, pa.ExtensionType):
        return storage_of(t.storage_type)
    if pa.types.is_struct(t):
        return pa.struct([pa.field(t.field(i).name, storage_of(t.field(i).type)) for i in range(t.num_fields)])
    if pa.types.is_list(t):
        return pa.list_(storage_of(t.value_type))
    if pa.types.is_large_list(t):
        return pa.large_list(storage_of(t.value_type))
    return t


def has_extension(t: pa.DataType) -> bool:
    return storage_of(t) != t


def wrap(arr: pa.Array, t: pa.DataType) -> pa.Array:
    """View a storage array (as built by ``pa.array(values, storage_of(t))``) as type ``t`` (zero-copy)."""
    if not has_extension(t):
        return arr
    if isinstance(arr, pa.ChunkedArray):
        return pa.chunked_array([wrap(c, t) for c in arr.chunks], t)
    if isinstance(t, pa.ExtensionType):
        return pa.ExtensionArray.from_storage(t, wrap(arr, t.storage_type))
    if pa.types.is_struct(t):
        kids = [wrap(arr.field(i), t.field(i).type) for i in range(t.num_fields)]
        return pa.StructArray.from_arrays(kids, fields=list(t), mask=_null_mask(arr))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        cls = pa.ListArray if pa.types.is_list(t) else pa.LargeListArray
        values = wrap(arr.values, t.value_type)
        return cls.from_arrays(arr.offsets, values, type=t, mask=_null_mask(arr))
    return arr


def unwrap(arr):
    """The storage view of an array (extension types replaced at every depth; zero-copy)."""
    t = arr.type
    if not has_extension(t):
        return arr
    if isinstance(arr, pa.ChunkedArray):
        return pa.chunked_array([unwrap(c) for c in arr.chunks], storage_of(t))
    if isinstance(t, pa.ExtensionType):
        return unwrap(arr.storage)
    if pa.types.is_struct(t):
        kids = [unwrap(arr.field(i)) for i in range(t.num_fields)]
        return pa.StructArray.from_arrays(kids, names=[t.field(i).name for i in range(t.num_fields)],
                                          mask=_null_mask(arr))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        cls = pa.ListArray if pa.types.is_list(t) else pa.LargeListArray
        return cls.from_arrays(arr.offsets, unwrap(arr.values), mask=_null_mask(arr))
    return arr


def _null_mask(arr: pa.Array):
    if arr.null_count == 0:
        return None
    return arr.is_null()
