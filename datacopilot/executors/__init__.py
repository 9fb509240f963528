"""Executors run pipelines: ``local`` (record batches streamed over threads or processes) and ``ray``
(Ray Data). See :mod:`datacopilot.executors.base` for the interface.

>>> from datacopilot.executors import get_executor
>>> get_executor("local").name
'local'
"""

from .base import EXECUTORS, ExecResult, Executor, get_executor

__all__ = ["Executor", "ExecResult", "get_executor", "EXECUTORS"]
