"""Operators by name, so a pipeline can be written as data (YAML/JSON) and users can add their own.

>>> from datacopilot.operators import Filter, register, create
>>> @register
... class KeepAll(Filter):
...     name, reads = "keep_all_example", ()
...     def keep(self, batch):
...         return [True] * batch.num_rows
>>> create("keep_all_example").label
'keep_all_example'
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from datacopilot.errors import DataCopilotError

from .base import KINDS, Operator

_REGISTRY: dict[str, type[Operator]] = {}
_NOT_BUILTIN = {"base", "registry", "run"}
_loaded = False


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(cls: type[Operator]) -> type[Operator]:
    """Class decorator: register ``cls`` under ``cls.name``. A name taken by another class is refused."""
    if not (isinstance(cls, type) and issubclass(cls, Operator)):
        raise DataCopilotError(f"@register takes an Operator subclass, got {cls!r}")
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name:
        raise DataCopilotError(f"{_qualname(cls)}: an operator needs a non-empty class attribute `name`")
    if cls.kind not in KINDS:
        raise DataCopilotError(f"{_qualname(cls)}: `kind` must be one of {KINDS}, got {cls.kind!r}")
    old = _REGISTRY.get(name)
    if old is not None and old is not cls and _qualname(old) != _qualname(cls):  # same qualname: a reload
        raise DataCopilotError(f"operator name {name!r} is taken by {_qualname(old)}; cannot register "
                               f"{_qualname(cls)} under it")
    _REGISTRY[name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove an operator from the registry (tests, notebooks redefining a class)."""
    _REGISTRY.pop(name, None)


def load_builtins() -> None:
    """Import every built-in operator module of this package once (they register on import)."""
    global _loaded
    if _loaded:
        return
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and info.name not in _NOT_BUILTIN:
            importlib.import_module(f"{__package__}.{info.name}")
    _loaded = True


def get_operator(name: str) -> type[Operator]:
    """The operator class registered under ``name``."""
    load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DataCopilotError(f"unknown operator {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def create(name: str, **params) -> Operator:
    """An operator built by name: ``create("filter_turns", min_turns=2)``."""
    return get_operator(name)(**params)


def _parameters(cls: type[Operator]) -> list[dict]:
    out = []
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        entry = {"name": p.name}
        if p.default is not p.empty:
            entry["default"] = p.default
        if p.annotation is not p.empty:
            entry["type"] = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__",
                                                                                         str(p.annotation))
        out.append(entry)
    return out


def list_operators(kind: str | None = None) -> list[dict]:
    """Every registered operator: name, kind, first docstring line, reads, writes and parameters."""
    load_builtins()
    rows = []
    for name in sorted(_REGISTRY):
        cls = _REGISTRY[name]
        if kind is not None and cls.kind != kind:
            continue
        doc = inspect.cleandoc(cls.__doc__ or "").split("\n")[0]
        rows.append({"name": name, "kind": cls.kind, "doc": doc, "reads": list(cls.reads),
                     "writes": list(cls.writes), "parameters": _parameters(cls)})
    return rows
