"""Run a batch task over a table's record batches, in order, on threads or processes.

The task is any picklable-by-cloudpickle callable ``task(table, offset) -> result``; lambdas and
closures work in process mode because the task travels as cloudpickle bytes. Results come back in input
order; at most ``2 * num_workers`` batches are in flight, so memory stays bounded.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing as mp
import pickle
import sys
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator

import cloudpickle
import pyarrow as pa
import pyarrow.ipc as ipc
from tqdm.auto import tqdm

from .errors import DataCopilotError

MODES = ("thread", "process")
_TASKS: dict[int, Callable] = {}


def _run_pickled(payload: bytes, data: pa.Buffer, offset: int) -> Any:
    key = hash(payload)
    task = _TASKS.get(key)
    if task is None:
        _TASKS.clear()
        path, blob = pickle.loads(payload)
        sys.path[:] = path  # functions of modules the parent can import (scripts, tests) import here too
        task = _TASKS[key] = cloudpickle.loads(blob)
    return task(ipc.open_stream(data).read_all(), offset)


def to_ipc(table: pa.Table) -> pa.Buffer:
    """The rows of ``table`` alone as an Arrow IPC stream. Pickling a slice would ship the whole buffers it
    points into (a 1,000-row slice of a 1 GB table pickles to megabytes); IPC writes only the slice."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def check_workers(num_workers: int, mode: str) -> None:
    if not isinstance(num_workers, int) or num_workers < 1:
        raise DataCopilotError(f"`num_workers` must be a positive integer, got {num_workers!r}")
    if mode not in MODES:
        raise DataCopilotError(f"`mode` must be one of {MODES}, got {mode!r}")


def show_progress(progress: bool | None, rows: int) -> bool:
    return bool(progress) if progress is not None else rows >= 50_000


def slices(table: pa.Table, batch_size: int) -> Iterator[tuple[int, pa.Table]]:
    for start in range(0, table.num_rows, batch_size):
        yield start, table.slice(start, batch_size)


def run_batches(
    table: pa.Table,
    task: Callable[[pa.Table, int], Any],
    *,
    num_workers: int = 1,
    mode: str = "thread",
    batch_size: int | None = None,
    desc: str = "map",
    progress: bool | None = None,
    stop: Callable[[Any], bool] | None = None,
) -> list:
    """Apply ``task`` to every slice of ``table`` and return the results in order.

    ``stop(result)`` returning True ends the run early (used by the ``raise`` error policy).
    """
    check_workers(num_workers, mode)
    if batch_size is None:
        batch_size = 4096 if mode == "process" and num_workers > 1 else 1024
    if batch_size < 1:
        raise DataCopilotError(f"`batch_size` must be positive, got {batch_size!r}")
    bar = tqdm(total=table.num_rows, desc=desc, unit="rows", disable=not show_progress(progress, table.num_rows),
               leave=False)
    results: list = []

    def take(result, n):
        results.append(result)
        bar.update(n)
        return stop is not None and stop(result)

    try:
        if num_workers == 1:
            for offset, part in slices(table, batch_size):
                if take(task(part, offset), part.num_rows):
                    break
            return results
        with _executor(num_workers, mode) as ex:
            if mode == "process":
                payload = pickle.dumps((list(sys.path), cloudpickle.dumps(task)))
                submit = lambda part, off: ex.submit(_run_pickled, payload, to_ipc(part), off)  # noqa: E731
            else:
                submit = lambda part, off: ex.submit(task, part, off)  # noqa: E731
            pending: deque = deque()
            for offset, part in slices(table, batch_size):
                pending.append((submit(part, offset), part.num_rows))
                if len(pending) >= 2 * num_workers:
                    fut, n = pending.popleft()
                    if take(fut.result(), n):
                        break
            else:
                while pending:
                    fut, n = pending.popleft()
                    if take(fut.result(), n):
                        break
            for fut, _ in pending:
                fut.cancel()
        return results
    finally:
        bar.close()


@contextlib.contextmanager
def _executor(num_workers: int, mode: str) -> Iterator[Executor]:
    if mode == "thread":
        with ThreadPoolExecutor(max_workers=num_workers) as ex:
            yield ex
        return
    ex = _process_pool(num_workers)
    try:
        yield ex
    except BrokenProcessPool as e:
        _POOLS.pop(num_workers, None)
        ex.shutdown(wait=False, cancel_futures=True)
        raise DataCopilotError(f"a worker process died (killed, out of memory, or os._exit in the function); "
                               f"nothing was returned: {e}") from e


_POOLS: dict[int, ProcessPoolExecutor] = {}


def _process_pool(num_workers: int) -> ProcessPoolExecutor:
    """A warm pool of ``num_workers`` processes, kept for the next call (starting workers costs about half a
    second; a pipeline of several maps pays it once). :func:`shutdown_pools` ends them; so does exit."""
    ex = _POOLS.get(num_workers)
    if ex is not None:
        return ex
    # spawn, not fork: forking a process that runs Arrow / polars thread pools can deadlock the child
    ex = ProcessPoolExecutor(max_workers=num_workers, mp_context=mp.get_context("spawn"))
    with _main_hidden():  # start every worker now, while the children cannot see the main module
        for fut in [ex.submit(_ready) for _ in range(num_workers)]:
            fut.result()
    if not _POOLS:
        atexit.register(shutdown_pools)
    _POOLS[num_workers] = ex
    return ex


def shutdown_pools() -> None:
    """Stop the worker processes kept by process-mode ``map`` / ``filter``."""
    while _POOLS:
        _, ex = _POOLS.popitem()
        ex.shutdown(wait=True, cancel_futures=True)


def _ready() -> bool:
    return True


@contextlib.contextmanager
def _main_hidden():
    """Start spawn children without re-running the user's main module.

    The task travels as cloudpickle bytes (functions of ``__main__`` by value), so the children never need
    ``__main__``; re-running it would execute an unguarded script again in every worker, and fails for code
    read from stdin or a notebook.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    missing = object()
    saved = {k: main.__dict__.get(k, missing) for k in ("__file__", "__spec__")}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is missing:
                main.__dict__.pop(k, None)
            else:
                main.__dict__[k] = v
