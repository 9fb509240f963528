"""The operator protocol: an :class:`Operator` is a small picklable description (its class and parameters) with one
hook, and :meth:`Operator.process` is the one call the runtime makes: the hook over a batch, retried row by row when
it raises, so only the rows that fail are failed. The kinds and their hooks are in :mod:`.kinds`.

Example
-------
>>> import numpy as np, pyarrow as pa, pyarrow.compute as pc
>>> from datacopilot.engine.kinds import Filter
>>> class ShortId(Filter):
...     name, reads = "short_id", ("id",)
...     def __init__(self, max_chars: int = 8):
...         super().__init__(max_chars=check_int(self, "max_chars", max_chars, minimum=1))
...     def keep(self, batch):
...         m = pc.utf8_length(batch.column("id")).to_numpy(zero_copy_only=False) <= self.p["max_chars"]
...         return m, np.where(m, None, "id too long")
>>> out = ShortId(max_chars=4).process(pa.table({"id": ["a", "abcdef"]}), "raise")
>>> out.table.column("id").to_pylist(), dict(out.dropped)
(['a'], {'id too long': 1})
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from datacopilot.errors import HookError, MissingDependencyError, OperatorError

from .step import Failure, Outcome, StepOut, as_batch  # noqa: F401 (Outcome: re-exported)

KINDS = ("mapper", "filter", "augmenter", "synthesizer", "evaluator", "dedup", "group")


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

    # -- the one call the runtime makes -------------------------------------------------------------------
    def process(self, table: pa.Table, policy: str = "raise") -> StepOut:
        """This operator over one batch: its hook over the whole batch; when that raises, over each row alone, so
        only the rows that fail are failed (``policy="raise"`` stops at the first). Never raises for a row; a hook
        that breaks its kind's contract raises :class:`~datacopilot.errors.HookError`."""
        try:
            self.ensure_setup()
            return self.step(as_batch(table))
        except HookError:  # the operator is broken, not a row: retrying row by row could hide it
            raise
        except Exception:  # an operator may raise anything: find the rows that fail
            pass
        parts, failures = [], []
        for i in range(table.num_rows):
            try:
                parts.append(self.step(as_batch(table.slice(i, 1))))
            except HookError:
                raise
            except Exception as e:
                failures.append(Failure.of(i, e))
                if policy == "raise":
                    break
        out = StepOut.combine(parts, table.schema.empty_table())
        out.failures = failures
        return out

    def step(self, batch: pa.RecordBatch) -> StepOut:
        """The hook over one batch as a StepOut (each kind's base implements it; it may raise)."""
        raise NotImplementedError(f"{self.label}: an operator of kind {self.kind!r} cannot run over batches")


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
