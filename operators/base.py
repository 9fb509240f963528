"""The Operator base classes: one hook per kind over an Arrow record batch; executors own everything else.

A concrete operator declares its registry ``name``, its ``kind``, the columns it ``reads`` and ``writes``, the
optional packages it ``requires``, validates its parameters in ``__init__`` and implements one hook:

====================  ====================================================================================
kind                  hook
====================  ====================================================================================
``Mapper``            ``map_batch(batch) -> table``: same rows, same order, columns added or replaced
``Filter``            ``keep(batch) -> mask`` or ``(mask, reasons)``: a reason string for each dropped row
``Augmenter``         ``augment(batch) -> table``: any number of rows out
``Synthesizer``       an Augmenter that makes new rows (usually with a model)
``Evaluator``         ``evaluate(batch) -> dict`` and ``merge(parts) -> dict``: statistics, rows unchanged
``Deduplicator``      ``keys(batch) -> uint64`` (exact), or ``signatures`` + ``duplicates`` (near-duplicate)
``Grouper``           ``signatures(batch) -> (n, 2) uint64`` and ``merge(table, offsets) -> table``: rows with
                      equal keys across the dataset become one row
====================  ====================================================================================

Heavy state (models, lookup tables) is built in ``setup()``, which the executor runs once per worker before
the first batch (:meth:`Operator.ensure_setup` is thread-safe). An operator pickles as its class and its
parameters, so a worker rebuilds it and runs ``setup()`` itself; a model never travels between processes.

A hook may also return an :class:`Outcome`: its usual result plus counters (a model operator's ``generated``
and ``rejected: <reason>``, summed into the operator's record) and, for a Filter, columns written for the
batch's rows (a judge's score kept on the rows that pass).

An entry of ``reads`` may list alternatives separated by ``|`` (``"conversations|messages"``): one of them
must be present.

Example
-------
>>> import numpy as np, pyarrow.compute as pc
>>> class ShortId(Filter):
...     name, reads = "short_id", ("id",)
...     def __init__(self, max_chars: int = 8):
...         super().__init__(max_chars=check_int(self, "max_chars", max_chars, minimum=1))
...     def keep(self, batch):
...         m = pc.utf8_length(batch.column("id")).to_numpy(zero_copy_only=False) <= self.p["max_chars"]
...         return m, np.where(m, None, "id too long")
>>> ShortId(max_chars=4).params()
{'max_chars': 4}
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from datacopilot.errors import MissingDependencyError, OperatorError

KINDS = ("mapper", "filter", "augmenter", "synthesizer", "evaluator", "dedup", "group")


@dataclass
class Outcome:
    """A hook's result with extras: ``value`` is what the hook returns otherwise (a table, or a Filter's mask or
    ``(mask, reasons)``); ``counts`` are counters summed into the operator's record; ``columns`` (Filter only)
    is a table of columns, one row per row of the batch, added to (or replacing columns of) the rows kept."""

    value: Any
    counts: dict = field(default_factory=dict)
    columns: pa.Table | None = None


def _rebuild(cls: type, params: dict) -> "Operator":
    return cls(**params)


class Operator:
    """Base of every operator (see the module docstring). Subclasses call ``super().__init__(**params)`` with
    their validated parameters; ``self.p`` holds them."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()  # (import name, extra)
    uses_root: ClassVar[bool] = False  # reads image files: the runner fills a ``root`` param from the dataset

    def __init__(self, **params: Any):
        for module, extra in self.requires:
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise MissingDependencyError(module, extra) from e
        self.p: dict[str, Any] = dict(params)
        self._ready = False
        self._setup_lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------------------------------
    def setup(self) -> None:
        """Build heavy state (models, tables). Runs once per worker, lazily, before the first batch."""

    def ensure_setup(self) -> None:
        """Run :meth:`setup` once (thread-safe); executors call this before every batch."""
        if self._ready:
            return
        with self._setup_lock:
            if not self._ready:
                self.setup()
                self._ready = True

    def __reduce__(self):
        return _rebuild, (type(self), dict(self.p))

    # -- description --------------------------------------------------------------------------------
    def params(self) -> dict:
        """The parameters this operator was built with (a copy; JSON/YAML-serializable for built-ins)."""
        return dict(self.p)

    def resources(self) -> dict:
        """What one worker of this operator needs on Ray (``num_cpus``, ``num_gpus``, ``concurrency``); the
        executor's options fill in the rest and per-operator ``resources`` override it."""
        return {}

    def replace(self, **changes: Any) -> "Operator":
        """A new operator of the same class with some parameters changed (validated again)."""
        return type(self)(**{**self.p, **changes})

    @property
    def label(self) -> str:
        """How the operator is named in a dataset's history."""
        return self.name or type(self).__name__

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.p.items())
        return f"{type(self).__name__}({args})"

    def error(self, message: str, row: int | None = None) -> OperatorError:
        """An OperatorError naming this operator (for bad parameters or unusable input)."""
        return OperatorError(self.label, row, message)

    def check(self, columns: list[str], schema: str | None = None) -> None:
        """Raise OperatorError naming the operator and the missing columns when ``columns`` lack what it reads."""
        have = set(columns)
        missing = [c for c in self.reads if not any(alt in have for alt in c.split("|"))]
        if missing:
            shown = [" or ".join(repr(a) for a in c.split("|")) for c in missing]
            raise self.error(f"needs column(s) {', '.join(shown)}; the dataset has {sorted(have)}")


class Mapper(Operator):
    """Rows in = rows out, in order; ``map_batch`` returns the batch with columns added or replaced."""

    kind = "mapper"

    def map_batch(self, batch: pa.RecordBatch) -> pa.Table:
        raise NotImplementedError


class Filter(Operator):
    """``keep`` returns a boolean mask, or ``(mask, reasons)`` with a reason string for each dropped row
    (entries of kept rows are ignored; a missing reason counts under the operator's name)."""

    kind = "filter"

    def keep(self, batch: pa.RecordBatch) -> "np.ndarray | tuple[np.ndarray, np.ndarray]":
        raise NotImplementedError


class Augmenter(Operator):
    """``augment`` returns any number of rows (new ones, split ones, merged ones)."""

    kind = "augmenter"

    def augment(self, batch: pa.RecordBatch) -> pa.Table:
        raise NotImplementedError


class Synthesizer(Augmenter):
    """An Augmenter that makes new rows, usually with a model built in ``setup``."""

    kind = "synthesizer"


class Evaluator(Operator):
    """Statistics over batches; rows are not changed. ``merge`` combines the per-batch dicts."""

    kind = "evaluator"

    def evaluate(self, batch: pa.RecordBatch) -> dict:
        raise NotImplementedError

    def merge(self, parts: list[dict]) -> dict:
        raise NotImplementedError


class Deduplicator(Operator):
    """Dataset-wide: the first row of each key (or of each near-duplicate group) is kept.

    Exact operators implement ``keys(batch) -> uint64 array``; near-duplicate ones implement
    ``signatures(batch)`` and ``duplicates(sigs) -> mask of rows to drop`` over all signatures.
    """

    kind = "dedup"
    near: ClassVar[bool] = False
    banded: ClassVar[bool] = False  # near, and its signatures are LSH band keys: decided row by row as keys stream

    @property
    def drop_reason(self) -> str:
        """The reason its dropped rows are counted under."""
        return f"duplicate ({self.label})"

    def keys(self, batch: pa.RecordBatch) -> np.ndarray:
        raise NotImplementedError

    def signatures(self, batch: pa.RecordBatch) -> Any:
        raise NotImplementedError

    def duplicates(self, sigs: Any) -> np.ndarray:
        raise NotImplementedError


class Grouper(Operator):
    """Dataset-wide: rows are arranged across the whole dataset (ordered, and grouped), each group of several rows
    merged into one row, which takes the place of the group's first row.

    ``signatures(batch)`` gives each row a signature (anything with one entry per row: a numpy array, an Arrow
    table); :meth:`arrange` turns the signatures of all rows into the output order. By default a signature is
    ``(key, size)``, an ``(n, 2)`` uint64 array: key 0 means the row stays alone; a group gathers the rows of one
    key in row order while their sizes add up to at most :attr:`capacity` (None: no limit), and a row that would
    pass it starts the key's next group; groups come in order of their first row. ``merge(table, offsets)`` gets
    the rows of several groups, group ``g`` being rows ``offsets[g]:offsets[g + 1]``, each of at least two rows,
    and returns one row per group (or an :class:`Outcome` of it). ``shuffle`` and ``sort`` are groupers whose
    groups are single rows. Executors keep only the signatures in memory while they collect them
    (:mod:`datacopilot.operators.grouping`).
    """

    kind = "group"

    @property
    def capacity(self) -> int | None:
        """The most a group's sizes may add up to (None: no limit)."""
        return None

    def signatures(self, batch: pa.RecordBatch) -> Any:
        raise NotImplementedError

    def arrange(self, parts: list) -> tuple[np.ndarray, np.ndarray]:
        """``(order, offsets)`` from the signatures of all rows, ``parts`` as their batches gave them: the rows
        (indices over all parts) group by group in output order; group ``g`` is ``order[offsets[g]:offsets[g +
        1]]``."""
        from .grouping import group_ids, layout

        sigs = [np.asarray(p, dtype=np.uint64).reshape(-1, 2) for p in parts]
        return layout(group_ids(self, np.concatenate(sigs) if sigs else np.zeros((0, 2), np.uint64)))

    def merge(self, table: pa.Table, offsets: np.ndarray) -> pa.Table:
        raise NotImplementedError


# -- parameter checks: each returns the value, or raises OperatorError naming the operator and the parameter ---
def check_int(op: Operator, name: str, value: Any, minimum: int | None = None, maximum: int | None = None,
              optional: bool = False) -> "int | None":
    """``value`` as an int within bounds (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise op.error(f"`{name}` must be an integer, got {value!r}")
    _bounds(op, name, value, minimum, maximum)
    return int(value)


def check_float(op: Operator, name: str, value: Any, minimum: float | None = None, maximum: float | None = None,
                optional: bool = False) -> "float | None":
    """``value`` as a float within bounds (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or value != value:
        raise op.error(f"`{name}` must be a number, got {value!r}")
    _bounds(op, name, value, minimum, maximum)
    return float(value)


def check_choice(op: Operator, name: str, value: Any, choices: tuple) -> Any:
    """``value`` if it is one of ``choices`` (``1`` is not ``True`` here, nor ``0`` ``False``)."""
    if not any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in choices):
        raise op.error(f"`{name}` must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_order(op: Operator, low: str, high: str) -> None:
    """``p[low] <= p[high]`` when both are set."""
    a, b = op.p.get(low), op.p.get(high)
    if a is not None and b is not None and a > b:
        raise op.error(f"`{low}` ({a!r}) must not exceed `{high}` ({b!r})")


def _bounds(op: Operator, name: str, value, minimum, maximum) -> None:
    if minimum is not None and value < minimum:
        raise op.error(f"`{name}` must be >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise op.error(f"`{name}` must be <= {maximum}, got {value!r}")
