"""Run a batch task over a table's record batches, in order, on threads or processes.

The task is any picklable-by-cloudpickle callable ``task(table, offset) -> result``; lambdas and
closures work in process mode because the task travels as cloudpickle bytes. Results come back in input
order; at most ``2 * num_workers`` batches are in flight, so memory stays bounded.

In process mode the batches travel through shared memory when ``/dev/shm`` has room (set ``DATACOPILOT_SHM=0``
to turn it off): the parent writes each slice as an Arrow IPC stream into a reusable memory-mapped slot, and a
worker writes the buffers of its result into a file that the parent maps without copying. Nothing is copied
through a pipe, and neither side touches fresh memory per batch; on a small VM the page faults of fresh buffers
cost more than the copies themselves. Without shared memory, slices go as IPC bytes and results are pickled.

Worker processes end with their driver, even one killed with -9 (a parent-death signal on Linux, and a watchdog
thread in each worker), and the shared memory of a driver that died is removed by the next pool started.

>>> run_batches(table, lambda t, off: t.num_rows, num_workers=2, mode="process")  # doctest: +SKIP
[1024, 1024, 512]
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import mmap
import multiprocessing as mp
import os
import pickle
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import cloudpickle
import pyarrow as pa
import pyarrow.ipc as ipc
from tqdm.auto import tqdm

from .errors import DataCopilotError

MODES = ("thread", "process")
PIECE_ROWS = 1024  # rows per task call when no batch size is given
SHIP_ROWS = 4096  # and rows per trip to a worker process then (the worker runs the task on 1024-row pieces)
SHM_ROOT = "/dev/shm"
SHM_MIN_FREE = 256 << 20  # shared memory is used only while the tmpfs keeps this much room
MAX_MAPPED_RESULTS = 16_384  # live result mappings per process (the kernel allows about 65,000 mappings)
_TASKS: dict[int, Callable] = {}


# -- worker side ----------------------------------------------------------------------------------------
PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_SECONDS = 0.5  # how often a worker's watchdog checks that its driver is alive


def _worker_init(parent: int) -> None:
    """Tie a worker process to its driver (pid ``parent``): on Linux the kernel sends it SIGTERM when the thread
    that started it ends (:func:`_on_spawner` starts every worker from a thread that lives as long as the
    driver), and, on every platform, a watchdog thread ends it once the driver is gone (it is re-parented:
    ``os.getppid()`` changes). So a driver killed with -9 leaves no worker behind."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the driver died before the signal was asked for
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="datacopilot-watchdog", daemon=True).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    os._exit(1)


def _unpickled(payload: bytes) -> Callable:
    """The task of ``payload``, unpickled once per worker and kept while the parent sends the same one."""
    key = hash(payload)
    task = _TASKS.get(key)
    if task is None:
        _TASKS.clear()
        path, blob = pickle.loads(payload)
        sys.path[:] = path  # functions of modules the parent can import (scripts, tests) import here too
        task = _TASKS[key] = cloudpickle.loads(blob)
    return task


def _run(payload: bytes, data: pa.Buffer | tuple[str, int], offset: int, piece: int | None,
         out_dir: str | None) -> Any:
    """Run the task over one shipped slice: IPC bytes, or ``(slot file, size)`` in shared memory.

    With ``piece``, the task runs over ``piece``-row parts of the slice and the result is the list of their
    results. With ``out_dir``, the result's buffers go to a file there (see :func:`_export`).
    """
    task = _unpickled(payload)
    table = ipc.open_stream(_read_slot(*data) if isinstance(data, tuple) else data).read_all()
    if piece:
        out = [task(table.slice(s, piece), offset + s) for s in range(0, table.num_rows, piece)]
    else:
        out = task(table, offset)
    return out if out_dir is None else _export(out, out_dir)


_SLOT_MAPS: dict[str, mmap.mmap] = {}


def _read_slot(path: str, size: int) -> pa.Buffer:
    """The first ``size`` bytes of a slot file, through a mapping kept for the next batch in the same slot."""
    m = _SLOT_MAPS.get(path)
    if m is None or len(m) < size:  # new, or grown by the parent since
        if len(_SLOT_MAPS) > 64:  # forget slots of pools and runs that are gone
            for p in [p for p in _SLOT_MAPS if not os.path.exists(p)]:
                del _SLOT_MAPS[p]
        with open(path, "rb") as f:
            m = _SLOT_MAPS[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return pa.py_buffer(m).slice(0, size)


@dataclass
class _Shipped:
    """A result whose buffers wait in a shared-memory file: the pickle without them, and where each one is."""
    pickled: bytes
    path: str
    spans: list[tuple[int, int]]
    size: int


_SEQ = itertools.count()
_ALIGN = 64  # Arrow's buffer alignment


def _export(result: Any, out_dir: str) -> Any:
    """Pickle ``result`` with its Arrow / numpy buffers out of band, written one after another into a new file
    in ``out_dir``. Returns a :class:`_Shipped`, or ``result`` itself if the file cannot be written (no room)."""
    buffers: list[pickle.PickleBuffer] = []
    pickled = pickle.dumps(result, protocol=5, buffer_callback=buffers.append)
    if not buffers or not _room(out_dir, sum(b.raw().nbytes + _ALIGN for b in buffers)):
        return result
    path = os.path.join(out_dir, f"out-{os.getpid()}-{next(_SEQ)}")
    spans, pos = [], 0
    try:
        with open(path, "xb") as f:
            for b in buffers:
                view = b.raw()
                pad = -pos % _ALIGN
                f.write(b"\0" * pad)
                spans.append((pos + pad, view.nbytes))
                f.write(view)
                pos += pad + view.nbytes
    except OSError:  # the tmpfs is full, or gone: send the result through the pipe instead
        with contextlib.suppress(OSError):
            os.unlink(path)
        return result
    return _Shipped(pickled, path, spans, pos)


def _room(directory: str, size: int) -> bool:
    """Whether ``size`` more bytes leave the tmpfs at least SHM_MIN_FREE free (results stay there while the
    parent holds them; never fill it up for other programs)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize - size >= SHM_MIN_FREE


# -- parent side: results and slots ---------------------------------------------------------------------
_mapped = [0]  # live result mappings in this process


def _unmapped() -> None:
    _mapped[0] -= 1


def _imported(out: Any) -> Any:
    """The result a worker sent: as is, or rebuilt around a private (copy-on-write) mapping of its file, which
    is unlinked at once; the buffers stay valid while anything refers to them."""
    if not isinstance(out, _Shipped):
        return out
    try:
        with open(out.path, "rb") as f:
            if out.size and _mapped[0] < MAX_MAPPED_RESULTS:
                data = mmap.mmap(f.fileno(), out.size, access=mmap.ACCESS_COPY)
                _mapped[0] += 1
                weakref.finalize(data, _unmapped)
            else:
                data = bytearray(out.size)
                f.readinto(data)
    finally:
        os.unlink(out.path)
    view = memoryview(data)
    return pickle.loads(out.pickled, buffers=[view[a:a + n] for a, n in out.spans])


def _discard(out: Any) -> None:
    if isinstance(out, _Shipped):
        with contextlib.suppress(OSError):
            os.unlink(out.path)


def _write_ipc(sink, table: pa.Table) -> None:
    with ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)


def to_ipc(table: pa.Table) -> pa.Buffer:
    """The rows of ``table`` alone as an Arrow IPC stream. Pickling a slice would ship the whole buffers it
    points into (a 1,000-row slice of a 1 GB table pickles to megabytes); IPC writes only the slice."""
    sink = pa.BufferOutputStream()
    _write_ipc(sink, table)
    return sink.getvalue()


class _Slots:
    """Shared-memory files the parent writes slices into, one per batch in flight, mapped once and reused (a
    slot grows when a slice does not fit, and never shrinks, so a worker's mapping stays valid)."""

    def __init__(self, directory: str, n: int):
        prefix = os.path.join(directory, f"in-{uuid.uuid4().hex[:8]}")
        self.paths = [f"{prefix}-{i}" for i in range(n)]
        self.maps: list[mmap.mmap | None] = [None] * n

    def put(self, i: int, table: pa.Table) -> tuple[str, int]:
        sizer = pa.MockOutputStream()
        _write_ipc(sizer, table)
        size = sizer.size()
        m = self.maps[i]
        if m is None or len(m) < size:
            cap = max(1 << 20, size + size // 4)
            if not _room(os.path.dirname(self.paths[i]), cap):
                raise OSError(f"{SHM_ROOT} is nearly full")
            with open(self.paths[i], "a+b") as f:
                # reserve the pages now: a full tmpfs is an OSError here, not a SIGBUS when the mapping is written
                os.posix_fallocate(f.fileno(), 0, cap)
                m = self.maps[i] = mmap.mmap(f.fileno(), cap)
        _write_ipc(pa.FixedSizeBufferWriter(pa.py_buffer(m)), table)
        return self.paths[i], size


# -- the loop -------------------------------------------------------------------------------------------
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

    ``batch_size`` rows go to each call (default 1024). In process mode without a ``batch_size``, 4096 rows
    travel to a worker at a time and the worker calls ``task`` on each 1024 of them: fewer trips, and the
    same batches as on one worker (larger batches of Python rows run slower: they leave the CPU caches).
    ``stop(result)`` returning True ends the run early (used by the ``raise`` error policy).
    """
    check_workers(num_workers, mode)
    piece = None
    if batch_size is None:
        batch_size = PIECE_ROWS
        if mode == "process" and num_workers > 1:
            batch_size, piece = SHIP_ROWS, PIECE_ROWS
    if batch_size < 1:
        raise DataCopilotError(f"`batch_size` must be positive, got {batch_size!r}")
    bar = tqdm(total=table.num_rows, desc=desc, unit="rows", disable=not show_progress(progress, table.num_rows),
               leave=False)
    results: list = []

    def take(out, n: int) -> bool:
        """Keep the result (or the results of the pieces) of an ``n``-row slice; True to stop."""
        for i, result in enumerate(out if piece else [out]):
            results.append(result)
            bar.update(min(piece, n - i * piece) if piece else n)
            if stop is not None and stop(result):
                return True
        return False

    try:
        if num_workers == 1:
            for offset, part in slices(table, batch_size):
                if take(task(part, offset), part.num_rows):
                    break
        elif mode == "thread":
            with ThreadPoolExecutor(max_workers=num_workers) as ex:
                _pump(table, batch_size, 2 * num_workers, lambda k, part, off: ex.submit(task, part, off),
                      lambda out: out, take)
        else:
            payload = pickle.dumps((list(sys.path), cloudpickle.dumps(task)))
            with _process_pool(num_workers) as pool, pool.slots(2 * num_workers) as slots:
                def submit(k, part, off):
                    data = None
                    if slots is not None:
                        with contextlib.suppress(OSError):  # shared memory full: this slice goes by pipe
                            data = slots.put(k % len(slots.paths), part)
                    return pool.ex.submit(_run, payload, data or to_ipc(part), off, piece, pool.dir)

                _pump(table, batch_size, 2 * num_workers, submit, _imported, take)
        return results
    finally:
        bar.close()


def map_ordered(items: Iterator, task: Callable[[pa.Table, int], Any], *, num_workers: int = 1,
                mode: str = "thread", passed: Callable[[Any], bool] | None = None) -> Iterator:
    """``task(table, offset)`` for each table of ``items`` (``offset``: rows given before it), results yielded in
    input order with at most ``2 * num_workers`` tables in flight, on threads or warm processes (shared-memory
    slots, as :func:`run_batches`). Items for which ``passed(item)`` is true (markers) are yielded in their place,
    unchanged. Stopped early, it cancels or waits for what is pending, so no worker still reads a slot."""
    check_workers(num_workers, mode)
    passed = passed or (lambda item: False)
    offsets = itertools.count()
    seen = [0]

    def offset(t: pa.Table) -> int:
        off = seen[0]
        seen[0] += t.num_rows
        return off

    if num_workers == 1:
        for item in items:
            yield item if passed(item) else task(item, offset(item))
        return
    with contextlib.ExitStack() as stack:
        if mode == "process":
            pool = stack.enter_context(_process_pool(num_workers))
            slots = stack.enter_context(pool.slots(2 * num_workers + 1))
            payload = pickle.dumps((list(sys.path), cloudpickle.dumps(task)))

            def submit(t: pa.Table):
                data = None
                if slots is not None:
                    with contextlib.suppress(OSError):  # shared memory full: this table goes by pipe
                        data = slots.put(next(offsets) % len(slots.paths), t)
                return pool.ex.submit(_run, payload, data or to_ipc(t), offset(t), None, pool.dir)
            receive = _imported
        else:
            ex = stack.enter_context(ThreadPoolExecutor(max_workers=num_workers))
            submit = lambda t: ex.submit(task, t, offset(t))  # noqa: E731
            receive = lambda out: out  # noqa: E731
        pending: deque = deque()
        try:
            for item in items:
                pending.append((True, item) if passed(item) else (False, submit(item)))
                while len(pending) > 2 * num_workers or (pending and pending[0][0]):
                    marker, x = pending.popleft()
                    yield x if marker else receive(x.result())
            while pending:
                marker, x = pending.popleft()
                yield x if marker else receive(x.result())
        finally:
            running = [x for marker, x in pending if not marker and not x.cancel()]
            wait_futures(running)
            for fut in running:
                if not fut.cancelled() and fut.exception() is None:
                    _discard(fut.result())


def _pump(table: pa.Table, batch_size: int, in_flight: int, submit, receive, take) -> None:
    """Submit slices with at most ``in_flight`` pending and hand their results to ``take`` in order, until it
    says stop. Whatever is still pending at the end (after a stop or an error) is cancelled, or waited for
    and dropped, so no worker still reads a slot when the next run writes it."""
    pending: deque = deque()
    try:
        for k, (offset, part) in enumerate(slices(table, batch_size)):
            pending.append((submit(k, part, offset), part.num_rows))
            if len(pending) >= in_flight:
                fut, n = pending.popleft()
                if take(receive(fut.result()), n):
                    return
        while pending:
            fut, n = pending.popleft()
            if take(receive(fut.result()), n):
                return
    finally:
        running = [fut for fut, _ in pending if not fut.cancel()]
        wait_futures(running)
        for fut in running:
            if not fut.cancelled() and fut.exception() is None:
                _discard(fut.result())


# -- process pools --------------------------------------------------------------------------------------
class _Pool:
    """A warm process pool, its shared-memory directory (None without shared memory) and spare slot sets."""

    def __init__(self, num_workers: int):
        # spawn, not fork: forking a process that runs Arrow / polars thread pools can deadlock the child
        self.ex = ProcessPoolExecutor(max_workers=num_workers, mp_context=mp.get_context("spawn"),
                                      initializer=_worker_init, initargs=(os.getpid(),))
        self.dir = _shm_dir()
        self._spare: list[_Slots] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def slots(self, n: int) -> Iterator[_Slots | None]:
        """A set of ``n`` slots for one run (runs in several threads at once each get their own)."""
        if self.dir is None:
            yield None
            return
        with self._lock:
            s = next((s for s in self._spare if len(s.paths) == n), None)
            if s is not None:
                self._spare.remove(s)
        s = s or _Slots(self.dir, n)
        try:
            yield s
        finally:
            with self._lock:
                self._spare.append(s)

    def close(self, wait: bool) -> None:
        self.ex.shutdown(wait=wait, cancel_futures=True)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def _shm_dir() -> str | None:
    """A new private directory in shared memory, or None when there is none, it is small, or it is turned off.
    Directories left by processes that died without cleaning up are removed first."""
    if os.environ.get("DATACOPILOT_SHM", "1") == "0" or not os.path.isdir(SHM_ROOT):
        return None
    try:
        st = os.statvfs(SHM_ROOT)
        if st.f_bavail * st.f_frsize < SHM_MIN_FREE:
            return None
        for name in os.listdir(SHM_ROOT):
            pid = name.split("-")[1] if name.startswith("datacopilot-") else ""
            if pid.isdigit() and not pid_alive(pid):
                shutil.rmtree(os.path.join(SHM_ROOT, name), ignore_errors=True)
        return tempfile.mkdtemp(prefix=f"datacopilot-{os.getpid()}-", dir=SHM_ROOT)
    except OSError:
        return None


def pid_alive(pid: str | int) -> bool:
    """Whether the process ``pid`` (a number, or its text) exists on this machine (another user's counts)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


_SPAWNER: list = []  # [(thread, its queue)]: the thread every worker process is started from
_SPAWN_LOCK = threading.Lock()


def _on_spawner(fn: Callable[[], Any]) -> Any:
    """``fn()`` run on one thread kept for the life of the process, where worker processes are started: the
    kernel's parent-death signal (:func:`_worker_init`) follows the thread that started a worker, and a thread
    of a run (the local executor reads ahead on threads that end with the run) would take its warm workers
    with it."""
    with _SPAWN_LOCK:
        if not _SPAWNER or not _SPAWNER[0][0].is_alive():
            jobs: queue.Queue = queue.Queue()
            thread = threading.Thread(target=_spawn_loop, args=(jobs,), name="datacopilot-spawner", daemon=True)
            thread.start()
            _SPAWNER[:] = [(thread, jobs)]
        thread, jobs = _SPAWNER[0]
    if threading.current_thread() is thread:
        return fn()
    fut: Future = Future()
    jobs.put((fn, fut))
    return fut.result()


def _spawn_loop(jobs: queue.Queue) -> None:
    while True:
        fn, fut = jobs.get()
        try:
            fut.set_result(fn())
        except BaseException as e:  # noqa: BLE001 - raised again in the caller
            fut.set_exception(e)


def _start_pool(num_workers: int) -> _Pool:
    """A new pool with all ``num_workers`` processes started now (on the caller's thread: see
    :func:`_on_spawner`). Each first call waits until every worker holds one, so none returns before the
    last process is up and no later call, from another thread, starts one."""
    pool = _Pool(num_workers)
    meeting = tempfile.mkdtemp(prefix="ready-", dir=pool.dir)  # in the pool's shared memory, swept with it
    try:
        with _main_hidden():  # start every worker now, while the children cannot see the main module
            for fut in [pool.ex.submit(_ready, meeting, num_workers) for _ in range(num_workers)]:
                fut.result()
    except BaseException:
        pool.close(wait=False)
        raise
    finally:
        shutil.rmtree(meeting, ignore_errors=True)
    return pool


_POOLS: dict[int, _Pool] = {}
# a forked child (a library's fork, a user's os.fork) starts with no pools: it must not stop its parent's
# workers, nor remove their shared memory, when it exits
os.register_at_fork(after_in_child=lambda: (_POOLS.clear(), _SPAWNER.clear()))


@contextlib.contextmanager
def _process_pool(num_workers: int) -> Iterator[_Pool]:
    """The warm pool of ``num_workers`` processes, kept for the next call (starting workers costs about half a
    second; a pipeline of several maps pays it once). :func:`shutdown_pools` ends them; so does exit. A pool
    whose worker died is replaced at the next call."""
    pool = _POOLS.get(num_workers)
    if pool is None:
        pool = _on_spawner(lambda: _start_pool(num_workers))
        if not _POOLS:
            atexit.register(shutdown_pools)
        _POOLS[num_workers] = pool
    try:
        yield pool
    except BrokenProcessPool as e:
        _POOLS.pop(num_workers, None)
        pool.close(wait=False)
        raise DataCopilotError(f"a worker process died (killed, out of memory, or os._exit in the function); "
                               f"nothing was returned: {e}") from e


def shutdown_pools() -> None:
    """Stop the worker processes kept by process-mode ``map`` / ``filter`` and free their shared memory."""
    while _POOLS:
        _, pool = _POOLS.popitem()
        pool.close(wait=True)


def _ready(meeting: str, n: int, timeout: float = 120.0) -> bool:
    """A worker's first call: say it is up (a file named by its pid in ``meeting``) and wait until ``n`` are."""
    with open(os.path.join(meeting, str(os.getpid())), "w"):
        pass
    deadline = time.monotonic() + timeout
    while len(os.listdir(meeting)) < n and time.monotonic() < deadline:
        time.sleep(0.01)
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
