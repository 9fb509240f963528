"""datacopilot: a Schema-typed, Arrow-backed multimodal data engine for vision-language SFT data.

>>> import datacopilot as dc
>>> ds = dc.load("train.jsonl", schema="MM")  # doctest: +SKIP

The package is lazy (PEP 562): ``import datacopilot`` loads nothing of the engine, and a public name (``dc.load``,
``dc.MMDataset``, ...) or a submodule (``dc.io``, ``dc.dataset``) is imported on first access, so importing a lower
layer such as ``datacopilot.kernels.hashing`` or ``datacopilot.schemas`` does not pull in the dataset, the pipeline
or the executors.
"""

import importlib as _importlib
import sys as _sys
import types as _types
import typing as _typing

__version__ = "0.1.0"

# public name -> the module that defines it (relative to this package); a name mapped to ``None`` is the module itself
_EXPORTS: dict[str, str | None] = {
    "MMDataset": ".dataset",
    "Schema": ".schemas",
    "load": ".api",
    "write": ".io",
    "write_shards": ".io",
    "verify_shards": ".io",
    "errors": None,
    "pipeline": ".pipeline",
    "MM": ".schemas",
    "MIX": ".schemas",
    "PAIRS": ".schemas",
    "MESSAGES": ".schemas",
    "CAPTION": ".schemas",
}

__all__ = ["MMDataset", "Schema", "load", "write", "write_shards", "verify_shards", "errors", "pipeline",
           "MM", "MIX", "PAIRS", "MESSAGES", "CAPTION"]

if _typing.TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from . import errors
    from .dataset import MMDataset
    from .api import load
    from .io import verify_shards, write, write_shards
    from .pipeline import pipeline
    from .schemas import CAPTION, MESSAGES, MIX, MM, PAIRS, Schema


def __getattr__(name: str) -> _typing.Any:
    """Import a public name, or a submodule (``datacopilot.io``), on first access and cache it on the package."""
    if name in _EXPORTS:
        where = _EXPORTS[name]
        value = (_importlib.import_module(f".{name}", __name__) if where is None
                 else getattr(_importlib.import_module(where, __name__), name))
    elif name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    else:
        try:
            value = _importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise  # the submodule exists but one of its imports is missing
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({n for n in globals() if not n.startswith("_")} | set(__all__) | {"__version__"})


class _Package(_types.ModuleType):
    """The package's module type: importing the submodule ``datacopilot.pipeline`` (which the import system then
    sets as the package's attribute ``pipeline``) does not shadow the function ``dc.pipeline`` it defines."""

    def __setattr__(self, name: str, value: _typing.Any) -> None:
        if name in _EXPORTS and _EXPORTS[name] == f".{name}" and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
