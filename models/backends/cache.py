"""An on-disk response cache, so a rerun or a resumed pipeline never pays for the same model call twice.

Entries are keyed by ``sha256(spec.key(), request.digest())``: the model identity and generation parameters
(:meth:`ModelSpec.key`), the messages, a hash of each image's bytes and the request's seed. They live in one SQLite
file (``responses.sqlite``, WAL journal) in the cache directory: safe across threads (one connection per thread) and
processes (SQLite's file locks; writers wait up to ``timeout`` seconds). Only successful responses are stored; an
error is retried on the next run.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time

from datacopilot.errors import InputError

from .spec import Backend, ModelSpec, Request, Response

DB_NAME = "responses.sqlite"


class ResponseCache:
    """Responses on disk under ``directory`` (created if missing).

    Example::

        >>> cache = ResponseCache("/tmp/dc_cache")                                  # doctest: +SKIP
        >>> key = cache.key(spec, request)                                          # doctest: +SKIP
        >>> cache.put(key, Response("a cat", "stop")); cache.get(key).text          # doctest: +SKIP
        'a cat'
    """

    def __init__(self, directory: str, timeout: float = 60.0):
        directory = os.fspath(directory)
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise InputError(f"cache directory {directory!r} is a file")
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.path = os.path.join(directory, DB_NAME)
        self.timeout = timeout
        self._local = threading.local()
        with self._conn() as db:
            db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
                       "finish_reason TEXT NOT NULL, created REAL NOT NULL)")

    def __getstate__(self):  # picklable: connections are per process and per thread
        return {"directory": self.directory, "timeout": self.timeout}

    def __setstate__(self, state):
        self.__init__(state["directory"], state["timeout"])

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @staticmethod
    def key(spec: ModelSpec | str, request: Request) -> str:
        """The cache key of ``request`` under ``spec`` (a ModelSpec or an already computed ``spec.key()``)."""
        spec_key = spec if isinstance(spec, str) else spec.key()
        return hashlib.sha256(f"{spec_key}:{request.digest()}".encode()).hexdigest()

    def get(self, key: str) -> Response | None:
        """The stored response for ``key`` (with ``cached=True``), or None."""
        row = self._conn().execute("SELECT text, finish_reason FROM responses WHERE key = ?", (key,)).fetchone()
        return Response(row[0], row[1], cached=True) if row else None

    def get_many(self, keys: list[str]) -> dict[str, Response]:
        """``{key: response}`` for the keys that are stored."""
        found: dict[str, Response] = {}
        db = self._conn()
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            part = unique[start:start + 500]
            marks = ",".join("?" * len(part))
            for key, text, reason in db.execute(
                    f"SELECT key, text, finish_reason FROM responses WHERE key IN ({marks})", part):
                found[key] = Response(text, reason, cached=True)
        return found

    def put(self, key: str, response: Response) -> None:
        """Store ``response`` under ``key``; responses with an error are not stored."""
        self.put_many([(key, response)])

    def put_many(self, items: list[tuple[str, Response]]) -> None:
        rows = [(k, r.text, r.finish_reason, time.time()) for k, r in items if r.error is None]
        if not rows:
            return
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM responses").fetchone()[0]


class CachedBackend(Backend):
    """Any backend behind a ResponseCache: hits are answered from disk, misses (each distinct one once) go to the
    backend in one ``generate`` call and are stored.

    Counters: ``calls`` (``generate`` calls made to the wrapped backend), ``sent`` (requests sent to it), ``hits``.

    Example::

        >>> backend = CachedBackend(load_backend(spec), ResponseCache("/tmp/dc_cache"))  # doctest: +SKIP
        >>> backend.generate(requests); backend.generate(requests); backend.calls      # doctest: +SKIP
        1
    """

    def __init__(self, backend: Backend, cache: ResponseCache):
        self.backend, self.cache = backend, cache
        self.spec = backend.spec
        self._spec_key = backend.spec.key()
        self.calls = self.sent = self.hits = 0
        self._lock = threading.Lock()

    def generate(self, requests: list[Request]) -> list[Response]:
        keys = [self.cache.key(self._spec_key, r) for r in requests]
        found = self.cache.get_many(keys)
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        with self._lock:
            self.hits += sum(k in found for k in keys)
        if missing:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            answers = self.backend.generate([requests[first[k]] for k in missing])
            with self._lock:
                self.calls += 1
                self.sent += len(missing)
            self.cache.put_many(list(zip(missing, answers)))
            fresh = dict(zip(missing, answers))
        else:
            fresh = {}
        return [found[k] if k in found else _copy(fresh[k]) for k in keys]

    def close(self) -> None:
        self.backend.close()


def _copy(r: Response) -> Response:
    return Response(r.text, r.finish_reason, error=r.error, cached=False, usage=dict(r.usage))
