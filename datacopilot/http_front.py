"""The HTTP/1.1 side of ``datacopilot serve``, with a fixed number of threads whatever the number of connections.

One I/O thread runs every connection through a selector (accept, read, write, timeouts); a request that has
arrived in full (request line, headers and ``Content-Length`` body) goes to a pool of ``limits.workers`` threads
that call ``handle(request, reply)``; ``reply(status, doc)`` may be called later from any thread (the chat route
calls it from the batcher once the model has answered), so a worker never waits for the model. A request must
arrive within ``limits.read_timeout`` seconds of the server starting to wait for it: a half-sent request gets 408
and its connection is closed, an idle keep-alive connection is closed, a response the client does not read is
dropped. At most ``limits.max_connections`` are open; one more is answered 503. A request that cannot be framed
gets a 4xx with a JSON error body and its connection is closed: 400 (request line, header line, Content-Length),
411 (no length, or Transfer-Encoding), 413 (body over ``max_body``), 417 (Expect), 431 (headers over
``max_header``). Bodies are JSON only: every response is ``application/json``.

Example::

    >>> front = HttpFront("127.0.0.1", 0, ServeLimits(), lambda req, reply: reply(200, {"path": req.path}))
    >>> front.start(); front.address.startswith("127.0.0.1:")
    True
    >>> front.stop_accepting(); front.stop_workers(); front.close()
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import re
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

from datacopilot.errors import InputError

log = logging.getLogger("datacopilot.serve")


@dataclasses.dataclass(frozen=True)
class ServeLimits:
    """What one client, or all of them, may hold of a :class:`ChatServer`.

    - ``read_timeout``: seconds a request may take to arrive in full (headers and body), counted from when the
      server starts waiting for it; past it a half-sent request gets 408 and its connection is closed, an idle
      keep-alive connection is closed, and a response the client does not read is dropped.
    - ``workers``: threads that parse requests (the model runs on the batcher thread, not on these).
    - ``max_connections``: open connections at most; one more is answered 503 and closed.
    - ``max_body`` / ``max_header``: bytes of a request body (413 above) and of its request line and headers
      (431 above).
    - ``max_receiving``: bytes of bodies being received at once over all connections (a request that would go
      over it gets 503), so slow uploads cannot hold ``max_connections`` x ``max_body`` of memory.

    Example::

        >>> ServeLimits(read_timeout=5).workers
        4
    """

    read_timeout: float = 30.0
    workers: int = 4
    max_connections: int = 1024
    max_body: int = 64 << 20
    max_header: int = 64 << 10
    max_receiving: int = 1 << 30

    def __post_init__(self):
        t = self.read_timeout
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise InputError(f"`read_timeout` must be a positive number of seconds, got {t!r}")
        for name in ("workers", "max_connections", "max_body", "max_header", "max_receiving"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"`{name}` must be a positive integer, got {v!r}")


# -- one connection ------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(r"HTTP/1\.[01]")
_REJECTING = 64          # connections over max_connections being told 503 at once; more are closed unanswered
_LINGER = 2.0            # seconds a closing connection keeps reading (and dropping) what the client still sends
_GRACE = 5.0             # seconds close() waits for answers to be written


class _BadRequest(Exception):
    """A request that cannot be read on: answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclasses.dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str            # the request target without its query string
    headers: dict        # lowercase name -> value
    body: bytes
    keep_alive: bool
    length: int = 0      # the declared Content-Length
    expect_continue: bool = False


def _parse_head(raw: bytes, max_body: int) -> HttpRequest:
    """The request line and headers (``raw``, without the blank line) -> a request with an empty body; raises
    _BadRequest (400, 411, 413, 417) naming what is wrong."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise _BadRequest(400, f"bad request line {lines[0][:100]!r}: expected 'METHOD /path HTTP/1.1'")
    method, target, version = parts
    if not _VERSION.fullmatch(version):
        raise _BadRequest(400, f"unsupported protocol {version[:20]!r}: expected HTTP/1.1 or HTTP/1.0")
    if not target.startswith("/"):
        raise _BadRequest(400, f"bad request target {target[:100]!r}: expected a path starting with '/'")
    headers: dict = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise _BadRequest(400, f"bad header line {line[:100]!r}: expected 'Name: value'")
        name, value = name.lower(), value.strip(" \t")
        if name == "content-length" and headers.get(name, value) != value:
            raise _BadRequest(400, f"Content-Length given twice: {headers[name][:40]!r} and {value[:40]!r}")
        headers[name] = f"{headers[name]}, {value}" if name in headers and name != "content-length" else value
    declared = headers.get("content-length")
    if "transfer-encoding" in headers:
        if declared is not None:
            raise _BadRequest(400, "both Transfer-Encoding and Content-Length given: send one Content-Length")
        raise _BadRequest(411, f"Transfer-Encoding {headers['transfer-encoding'][:40]!r} is not supported: send the "
                              "body with a Content-Length header")
    if declared is None:
        if method == "POST":
            raise _BadRequest(411, "a POST needs a Content-Length header")
        length = 0
    elif not (declared.isascii() and declared.isdigit()):
        raise _BadRequest(400, f"Content-Length: expected a non-negative integer, got {declared[:40]!r}")
    else:
        length = int(declared) if len(declared) <= 18 else max_body + 1
    if length > max_body:
        raise _BadRequest(413, f"a request body of {declared[:40]} bytes is over the limit of {max_body}")
    expect = headers.get("expect")
    if expect is not None and expect.lower() != "100-continue":
        raise _BadRequest(417, f"Expect: only 100-continue is supported, got {expect[:40]!r}")
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
    return HttpRequest(method, target.split("?", 1)[0], headers, b"", keep_alive, length, expect is not None)


def _response(status: int, doc: dict, close: bool, headers=()) -> bytes:
    body = json.dumps(doc).encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", "Connection: close" if close else "Connection: keep-alive", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _error_doc(status: int, message: str) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "code": status}}


class Reply:
    """The one answer to one request: call it (from any thread) with a status and a JSON document."""

    def __init__(self, front: HttpFront, conn: _Conn, keep_alive: bool):
        self._front, self._conn, self._keep_alive = front, conn, keep_alive
        self._lock = threading.Lock()
        self.sent = False

    def __call__(self, status: int, doc: dict, headers=()) -> None:
        with self._lock:
            if self.sent:
                return
            self.sent = True
        close = not self._keep_alive
        try:
            data = _response(status, doc, close, headers)
        except (TypeError, ValueError) as e:        # a document json cannot write
            log.exception("cannot encode a %d response", status)
            status, close = 500, True
            data = _response(500, _error_doc(500, f"cannot encode the response: {e}"), close)
        self._front.post(self._conn, data, close)

    def error(self, status: int, message: str, headers=()) -> None:
        self(status, _error_doc(status, message), headers)


class _Conn:
    """One connection's state; touched only by the I/O thread."""

    __slots__ = ("sock", "inbuf", "scanned", "head", "reserved", "outbuf", "sent", "close_after", "busy", "lingering",
                 "deadline", "events", "rejected", "closed")

    def __init__(self, sock: socket.socket, deadline: float, rejected: bool = False):
        self.sock, self.deadline, self.rejected = sock, deadline, rejected
        self.inbuf = bytearray()
        self.scanned = 0               # bytes of inbuf searched for the end of the headers
        self.head: HttpRequest | None = None
        self.reserved = 0              # body bytes counted in the front's ``receiving``
        self.outbuf, self.sent, self.close_after = b"", 0, False
        self.busy = self.lingering = self.closed = False
        self.events = 0


class HttpFront:
    """The HTTP side: one I/O thread runs every connection through a selector (accept, read, write, timeouts) and
    ``handle(request, reply)`` runs on a pool of ``limits.workers`` threads once a request has arrived in full."""

    def __init__(self, host: str, port: int, limits: ServeLimits, handle):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener: socket.socket | None = socket.create_server((host, port), family=family, backlog=128)
        self._listener.setblocking(False)
        name = self._listener.getsockname()
        self.address = f"[{name[0]}]:{name[1]}" if family == socket.AF_INET6 else f"{name[0]}:{name[1]}"
        self.limits, self._handle = limits, handle
        self.open = 0                  # connections being served (not the ones told 503)
        self._rejecting = 0
        self.receiving = 0             # bytes of the bodies being received (declared), over all connections
        self._conns: set = set()
        self._replies: collections.deque = collections.deque()
        self._pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="serve-worker")
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._accept_paused_until = 0.0
        self._state = "run"            # -> "stopping" (no new connections or requests) -> "final" (write, exit)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="serve-io", daemon=True)
        self._thread.start()

    def post(self, conn: _Conn, data: bytes, close: bool) -> None:
        """Queue a response for ``conn`` (any thread) and wake the I/O thread."""
        self._replies.append((conn, data, close))
        self._wake()

    def stop_accepting(self) -> None:
        """Close the listening socket and every connection not waiting for an answer; returns when done."""
        self._state = "stopping"
        if self._thread is None:
            self._stop_listening()
            return
        self._wake()
        self._stopped.wait()

    def stop_workers(self) -> None:
        self._pool.shutdown(wait=True)

    def close(self) -> None:
        """Write the answers queued (for up to a few seconds), then close every connection and the selector."""
        self._state = "final"
        if self._thread is not None:
            self._wake()
            self._thread.join()
        else:
            self._teardown()

    # -- the I/O thread ---------------------------------------------------------------------------------------
    def _loop(self) -> None:
        grace = None
        try:
            while True:
                for key, mask in self._sel.select(self._timeout()):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    elif not key.data.closed:
                        self._event(key.data, mask)
                while self._replies:
                    conn, data, close = self._replies.popleft()
                    if not conn.closed:
                        self._send(conn, data, close)
                now = time.monotonic()
                self._expire(now)
                if self._accept_paused_until and now >= self._accept_paused_until and self._listener is not None:
                    self._accept_paused_until = 0.0
                    self._sel.register(self._listener, selectors.EVENT_READ, "accept")
                if self._state != "run" and not self._stopped.is_set():
                    self._stop_listening()
                if self._state == "final":
                    grace = grace or now + _GRACE
                    if now >= grace or not any(c.busy for c in self._conns):
                        return
        except Exception:  # noqa: BLE001 - logged; the connections are closed below
            log.exception("the serve I/O loop failed")
        finally:
            self._stopped.set()
            self._teardown()

    def _event(self, conn: _Conn, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ:
                self._read(conn)
            if mask & selectors.EVENT_WRITE and not conn.closed:
                self._flush(conn)
        except Exception:  # noqa: BLE001 - one connection's fault closes that connection, not the server
            log.exception("serve: a connection failed")
            self._close(conn)

    def _timeout(self) -> float:
        now, soonest = time.monotonic(), 1.0
        for conn in self._conns:
            if conn.deadline is not None:
                soonest = min(soonest, conn.deadline - now)
        if self._accept_paused_until:
            soonest = min(soonest, self._accept_paused_until - now)
        return max(soonest, 0.0)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:                       # out of file descriptors: try again in a moment
                log.warning("serve: cannot accept a connection: %s", e)
                self._sel.unregister(self._listener)
                self._accept_paused_until = time.monotonic() + 0.1
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = time.monotonic() + self.limits.read_timeout
            if self.open < self.limits.max_connections:
                conn = _Conn(sock, deadline)
                self.open += 1
                self._conns.add(conn)
                self._watch(conn, selectors.EVENT_READ)
            elif self._rejecting < _REJECTING:
                conn = _Conn(sock, deadline, rejected=True)
                self._rejecting += 1
                self._conns.add(conn)
                self._send(conn, _response(503, _error_doc(503, f"the server has {self.open} connections open, "
                                                                "its limit: try again later"), True), True)
            else:
                sock.close()

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._close(conn)
        if not data:                                   # the client closed; a half request is dropped
            return self._close(conn)
        if conn.lingering:
            return
        conn.inbuf += data
        self._parse(conn)

    def _parse(self, conn: _Conn) -> None:
        """Take the next request out of ``conn.inbuf`` when it is all there and hand it to a worker."""
        if conn.head is None:
            while conn.inbuf[:2] == b"\r\n":           # blank lines between requests are allowed
                del conn.inbuf[:2]
            end = conn.inbuf.find(b"\r\n\r\n", max(conn.scanned - 3, 0))
            if end < 0 or end > self.limits.max_header:
                conn.scanned = len(conn.inbuf)
                if len(conn.inbuf) > self.limits.max_header:
                    self._fail(conn, 431, f"the request line and headers are over {self.limits.max_header} bytes")
                return
            try:
                conn.head = _parse_head(bytes(conn.inbuf[:end]), self.limits.max_body)
            except _BadRequest as e:
                return self._fail(conn, e.status, e.message)
            if self.receiving + conn.head.length > self.limits.max_receiving:
                return self._fail(conn, 503, f"the server is receiving {self.receiving} bytes of bodies, its limit "
                                             f"is {self.limits.max_receiving}: try again later")
            conn.reserved = conn.head.length
            self.receiving += conn.reserved
            del conn.inbuf[:end + 4]
            conn.scanned = 0
            if conn.head.expect_continue and len(conn.inbuf) < conn.head.length:
                try:
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                except OSError:
                    pass
        head = conn.head
        if len(conn.inbuf) < head.length:
            return
        req = dataclasses.replace(head, body=bytes(conn.inbuf[:head.length]))
        del conn.inbuf[:head.length]
        self._release(conn)
        conn.head, conn.busy, conn.deadline = None, True, None
        self._watch(conn, 0)
        reply = Reply(self, conn, req.keep_alive and req.method != "HEAD" and self._state == "run")
        try:
            self._pool.submit(self._run_handler, req, reply)
        except RuntimeError:                           # the pool is shut down: the server is closing
            reply.error(503, "the server is shutting down")

    def _run_handler(self, req: HttpRequest, reply: Reply) -> None:
        try:
            self._handle(req, reply)
        except Exception as e:  # noqa: BLE001 - the client gets a 500, the server keeps running
            log.exception("serve: the handler failed on %s %s", req.method, req.path)
            reply.error(500, f"the server failed: {type(e).__name__}: {e}")

    def _fail(self, conn: _Conn, status: int, message: str) -> None:
        """Answer a request that cannot be read on with ``status`` and close the connection."""
        conn.inbuf.clear()
        conn.head = None
        self._release(conn)
        self._send(conn, _response(status, _error_doc(status, message), True), True)

    def _send(self, conn: _Conn, data: bytes, close: bool) -> None:
        conn.busy, conn.outbuf, conn.sent, conn.close_after = True, data, 0, close
        conn.deadline = time.monotonic() + self.limits.read_timeout
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            conn.sent += conn.sock.send(memoryview(conn.outbuf)[conn.sent:])
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return self._close(conn)
        if conn.sent < len(conn.outbuf):
            return self._watch(conn, selectors.EVENT_WRITE)
        conn.outbuf, conn.busy = b"", False
        if conn.close_after or self._state != "run":
            return self._linger(conn)
        conn.deadline = time.monotonic() + self.limits.read_timeout
        self._watch(conn, selectors.EVENT_READ)
        if conn.inbuf:                                 # a pipelined request already here
            self._parse(conn)

    def _linger(self, conn: _Conn) -> None:
        """Half-close, then read and drop what the client still sends for a moment, so that closing does not
        reset the connection before the client has read the answer."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return self._close(conn)
        conn.lingering, conn.inbuf, conn.head = True, bytearray(), None
        self._release(conn)
        conn.deadline = time.monotonic() + min(_LINGER, self.limits.read_timeout)
        self._watch(conn, selectors.EVENT_READ)

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns if c.deadline is not None and now >= c.deadline]:
            if conn.lingering or conn.outbuf or not (conn.inbuf or conn.head):
                self._close(conn)                      # done, not reading its answer, or idle
            else:
                self._fail(conn, 408, f"the request did not arrive in full within {self.limits.read_timeout:g} s")

    def _watch(self, conn: _Conn, events: int) -> None:
        if events == conn.events:
            return
        if not conn.events:
            self._sel.register(conn.sock, events, conn)
        elif not events:
            self._sel.unregister(conn.sock)
        else:
            self._sel.modify(conn.sock, events, conn)
        conn.events = events

    def _release(self, conn: _Conn) -> None:
        self.receiving -= conn.reserved
        conn.reserved = 0

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        self._release(conn)
        if conn.events:
            self._sel.unregister(conn.sock)
            conn.events = 0
        conn.sock.close()
        conn.closed = True
        self._conns.discard(conn)
        if conn.rejected:
            self._rejecting -= 1
        else:
            self.open -= 1

    def _stop_listening(self) -> None:
        if self._listener is not None:
            if not self._accept_paused_until:
                self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None
            self._accept_paused_until = 0.0
        for conn in list(self._conns):
            if not conn.busy:
                self._close(conn)
        self._stopped.set()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:                                # the pipe is full (a wake-up is pending) or closed
            pass

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _teardown(self) -> None:
        for conn in list(self._conns):
            self._close(conn)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()
