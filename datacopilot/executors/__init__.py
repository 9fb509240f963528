"""Executors run pipelines: ``local`` (record batches streamed over threads or processes) and ``ray``
(Ray Data). See :mod:`datacopilot.executors.base` for the interface; executors only schedule the engine's runtime.

>>> from datacopilot.executors import get_executor
>>> get_executor("local").name
'local'
"""

from __future__ import annotations

from typing import Any

from datacopilot.errors import DataCopilotError

from .base import EXECUTORS, ExecResult, Executor

__all__ = ["Executor", "ExecResult", "get_executor", "EXECUTORS"]


def get_executor(executor: str | Executor = "local", **options: Any) -> Executor:
    """An executor by name (``"local"`` or ``"ray"``) built with ``options``; an Executor is returned as is.

    >>> get_executor("local").name
    'local'
    """
    if isinstance(executor, Executor):
        if options:
            raise DataCopilotError(f"options {sorted(options)} cannot be given with an executor instance")
        return executor
    if executor == "local":
        from .local import LocalExecutor

        return LocalExecutor(**options)
    if executor == "ray":
        try:
            from .ray_executor import RayExecutor
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.ray_executor":
                raise
            raise DataCopilotError("the ray executor is not available in this installation") from None
        return RayExecutor(**options)
    raise DataCopilotError(f"`executor` must be one of {EXECUTORS} or an Executor, got {executor!r}")
