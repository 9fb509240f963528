"""The ``openai`` backend: any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, PaddleNLP, hosted
servers, or ``datacopilot serve``), over the standard library's ``http.client``.

- Each request is one ``POST {endpoint}/chat/completions`` with ``model``, ``messages``, ``max_tokens``,
  ``temperature``, ``top_p``, ``seed`` and ``stop``. ``<image>`` placeholders in a message's content become
  ``image_url`` content parts carrying the image as a base64 data URL (images without a placeholder go first in the
  first user message).
- Up to ``spec.concurrency`` requests are in flight at once (a thread pool; one keep-alive connection per thread;
  a kept-alive connection the server has closed is noticed before it is used and replaced).
- One deadline per HTTP request: ``spec.timeout`` seconds cover the connect, the send and the whole response
  (status line, headers and body); every socket read waits only for the time left, so a server that trickles its
  answer cannot hold a request longer than the timeout.
- 429 (``Retry-After`` honoured), 5xx, timeouts and dropped or refused connections are retried with exponential
  backoff and jitter; a request costs at most ``spec.max_retries + 1`` HTTP calls in all.
- A circuit breaker (:class:`Breaker`): after ``spec.breaker_after`` connection failures in a row (refused, timed
  out, dropped; an HTTP error from a live server is not one), the requests left fail at once with the endpoint's
  error, without being sent; one probe request at a time goes through after a cooldown (doubling, up to
  ``max_backoff``), and a success closes the breaker.
- A request that still fails, is refused (4xx), or gets a body that is not JSON or has no ``choices`` gets a
  ``Response`` with ``finish_reason="error"`` and the reason; :meth:`OpenAIBackend.generate` never raises for a
  request: the caller accounts for each row (an unreachable endpoint's error says "unreachable").
- The API key is read from ``os.environ[spec.api_key_env]`` and sent as a Bearer header. Every error text and log
  line is passed through :func:`redact` before it is cut or stored (the key, any 8 characters of it in a row, and
  Bearer / Authorization / api-key values), the key is removed from generated text, and a ``user:password@`` in
  the endpoint is shown as ``***@``.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import os
import random
import re
import select
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime

from datacopilot.errors import InputError, ModelError

from .spec import Backend, ModelSpec, Request, Response

log = logging.getLogger("datacopilot.models.openai")

_RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
_DROPPED = (http.client.HTTPException, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_CONNECTION_FAILURES = frozenset({"connect", "timeout", "dropped"})
FRAGMENT = 8              # this many characters of the key in a row are redacted wherever they appear
_SCAN_BYTES = 64 << 10    # how much of an error body is decoded and redacted before a snippet is cut from it
_SEND_PIECE = 16 << 10    # bytes sent per socket write (one TLS record), each under the request's deadline
_SECRET_FIELDS = [
    (re.compile(r"(?i)\b(bearer)(\s+)[^\s\"',;}\]]+"), r"\1\2***"),
    (re.compile(r"(?i)((?:authorization|proxy-authorization|x-api-key|api[-_]?key|access[-_]?token)[\"']?\s*[:=]\s*"
                r"[\"']?)(?!bearer\b|\*\*\*)[^\s\"',;}\]]+"), r"\1***"),
]


def redact(text: str, secret: str | None = None) -> str:
    """``text`` with ``secret`` removed: every run of ``FRAGMENT`` (8) or more characters of it (so a key cut in
    half by someone else is still removed) and, whatever the secret, the values after ``Bearer`` and after
    Authorization / api-key / access-token fields, each replaced by ``***``. Redact first, then cut.

    >>> redact('{"error": "bad key Bearer sk-abcdefgh12345678"}', "sk-abcdefgh12345678")
    '{"error": "bad key Bearer ***"}'
    >>> redact("echo: abcdefgh1234 and 5678", "sk-abcdefgh12345678")
    'echo: *** and 5678'
    """
    if secret:
        text = _without_fragments(text, secret)
    for pattern, repl in _SECRET_FIELDS:
        text = pattern.sub(repl, text)
    return text


def _without_fragments(text: str, secret: str) -> str:
    """``text`` without any run of ``FRAGMENT`` or more characters of ``secret`` (all of it when it is shorter)."""
    n = min(FRAGMENT, len(secret))
    grams = {secret[i:i + n] for i in range(len(secret) - n + 1)}
    if not any(g in text for g in grams):
        return text
    spans, i = [], 0
    while i <= len(text) - n:
        if text[i:i + n] in grams:
            end = i + n
            while end < len(text) and text[end - n + 1:end + 1] in grams:
                end += 1
            if spans and spans[-1][1] >= i:
                spans[-1][1] = end
            else:
                spans.append([i, end])
            i = end
        else:
            i += 1
    out, last = [], 0
    for a, b in spans:
        out.append(text[last:a])
        out.append("***")
        last = b
    out.append(text[last:])
    return "".join(out)


class Breaker:
    """A circuit breaker over one endpoint, shared by the threads of a backend.

    Closed, every request may be sent. ``threshold`` connection failures in a row (any thread; a response from the
    server, whatever its status, ends the run) open it: requests then fail at once (:meth:`admit` gives None),
    except that once ``cooldown`` seconds have passed since it opened (or since the last probe failed; the cooldown
    doubles after each failed probe, up to ``max_cooldown``) one request is let through as a probe, and the
    requests that come meanwhile wait for its outcome (it has its own deadline). Any response closes the breaker.
    ``threshold=0``: it never opens. ``opened`` counts the times it opened; ``reason`` is the last connection error.
    """

    def __init__(self, threshold: int, cooldown: float = 1.0, max_cooldown: float = 30.0):
        self.threshold = int(threshold)
        self.cooldown, self.max_cooldown = float(cooldown), max(float(cooldown), float(max_cooldown))
        self.opened = 0
        self.reason = ""
        self._run = 0
        self._cond = threading.Condition()
        self._open = threading.Event()
        self._probe_at = 0.0
        self._probing = False
        self._wait = self.cooldown

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    @property
    def current_cooldown(self) -> float:
        """The wait before the next probe: ``cooldown``, doubled by each failed probe (up to ``max_cooldown``)."""
        return self._wait

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when closed or due)."""
        return max(0.0, self._probe_at - time.monotonic()) if self._open.is_set() else 0.0

    def admit(self) -> str | None:
        """``"send"`` (closed), ``"probe"`` (open, and this request is the probe let through) or None (open: fail
        the request now, unsent). Every ticket given goes back through :meth:`record`."""
        if not self._open.is_set():
            return "send"
        with self._cond:
            while self._probing:
                self._cond.wait()
            if not self._open.is_set():
                return "send"
            if time.monotonic() < self._probe_at:
                return None
            self._probing = True
            return "probe"

    def record(self, ticket: str, connection_failure: bool | None, reason: str = "") -> None:
        """The outcome of a request sent with ``ticket`` (from :meth:`admit`): a connection failure or not (None:
        no outcome, the request broke before it was sent)."""
        if self.threshold <= 0:
            return
        with self._cond:
            if ticket == "probe":
                self._probing = False
                self._cond.notify_all()
            if connection_failure is None:
                return
            if not connection_failure:
                self._run = 0
                if self._open.is_set():
                    self._open.clear()
                    self._wait = self.cooldown
                    log.warning("circuit breaker closed: the endpoint answers again")
                return
            self._run += 1
            self.reason = reason
            if ticket == "probe":
                self._wait = min(self.max_cooldown, self._wait * 2)
                self._probe_at = time.monotonic() + self._wait
            elif not self._open.is_set() and self._run >= self.threshold:
                self.opened += 1
                self._probe_at = time.monotonic() + self._wait
                self._open.set()
                log.warning("circuit breaker open after %d connection failures in a row (%s): the requests left "
                            "fail at once; a probe in %.1fs", self._run, reason, self._wait)

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the breaker opens meanwhile (or is open already)."""
        if seconds > 0:
            self._open.wait(seconds)

    def refusal(self, url: str) -> str:
        """The error of a request failed at once: the endpoint and its last connection error."""
        return (f"endpoint {url} is unreachable: {self.reason} (circuit breaker open after {self.threshold} "
                f"connection failures in a row; the request was not sent)")


class _DeadlineReader(io.RawIOBase):
    """A response's socket reads under the request's deadline: each read waits only for the time left (a
    TimeoutError once it has passed). Owns the socket's file object (closed with it)."""

    def __init__(self, raw, sock, deadline: float):
        self._raw, self._sock, self._deadline = raw, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's deadline passed")
        self._sock.settimeout(left)
        return self._raw.readinto(b)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock, deadline: float, *args, **kwargs):
        super().__init__(sock, *args, **kwargs)
        raw = self.fp.detach()            # the socket's file object, unbuffered: its reads go through the deadline
        self.fp = io.BufferedReader(_DeadlineReader(raw, sock, deadline))


class _Deadlined:
    """A connection whose next request is sent, and its response read, under ``deadline`` (a
    ``time.monotonic()`` value)."""

    deadline = float("inf")

    def response_class(self, sock, *args, **kwargs):  # http.client calls self.response_class(sock, method=...)
        return _DeadlineResponse(sock, self.deadline, *args, **kwargs)

    def send(self, data):
        """Send in pieces of one TLS record at most, each under the time left (a TLS socket's ``sendall`` would
        give every record the whole timeout)."""
        if self.sock is None or not isinstance(data, (bytes, bytearray, memoryview)):
            return super().send(data)
        with memoryview(data) as view, view.cast("B") as octets:
            for start in range(0, len(octets), _SEND_PIECE):
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the request's deadline passed")
                self.sock.settimeout(left)
                self.sock.sendall(octets[start:start + _SEND_PIECE])


class _HTTPConnection(_Deadlined, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Deadlined, http.client.HTTPSConnection):
    pass


class OpenAIBackend(Backend):
    """Chat completions over HTTP with bounded concurrency, per-request deadlines, retries and a circuit breaker.

    ``backoff`` is the first retry delay in seconds (doubled each retry, with jitter, capped at ``max_backoff``);
    the breaker's first cooldown is ``2 * backoff``. Counters: ``attempts`` (HTTP requests sent), ``retries``
    (backed-off retries), ``refused`` (requests failed at once by the open breaker); ``breaker`` is the
    :class:`Breaker`.

    Example::

        >>> spec = ModelSpec(backend="openai", endpoint="http://127.0.0.1:8000/v1", model="tiny")  # doctest: +SKIP
        >>> OpenAIBackend(spec).generate([Request([{"role": "user", "content": "hi"}])])[0].text  # doctest: +SKIP
    """

    def __init__(self, spec: ModelSpec, backoff: float = 0.5, max_backoff: float = 30.0):
        spec.check()
        if spec.backend != "openai":
            raise ModelError(f"OpenAIBackend: expected a spec with backend 'openai', got {spec.backend!r}")
        self.spec = spec
        self.endpoint = spec.endpoint.rstrip("/")
        url = urllib.parse.urlsplit(self.endpoint)
        if not url.hostname:
            raise ModelError(f"ModelSpec.endpoint: no host in {spec.endpoint!r}")
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname, url.port
        self._path = (url.path or "").rstrip("/") + "/chat/completions"
        shown = url._replace(netloc="***@" + url.netloc.rpartition("@")[2]) if "@" in url.netloc else url
        self._shown = urllib.parse.urlunsplit(shown) + "/chat/completions"   # messages never show user:password@
        self._key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.breaker = Breaker(spec.breaker_after, cooldown=2 * self.backoff, max_cooldown=self.max_backoff)
        self.attempts = 0
        self.retries = 0
        self.refused = 0
        self._count_lock = threading.Lock()
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # -- public ---------------------------------------------------------------------------------------
    def generate(self, requests: list[Request]) -> list[Response]:
        """Send ``requests`` (at most ``spec.concurrency`` at once) and return their responses in order; a request
        that cannot be answered gets an error response (never an exception)."""
        if not requests:
            return []
        if len(requests) == 1 or self.spec.concurrency == 1:
            return [self._safe_one(r) for r in requests]
        pool = self._executor()
        return list(pool.map(self._safe_one, requests))

    def close(self) -> None:
        """Stop the worker threads (their connections close with them)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        self._drop_connection()

    def __getstate__(self):
        raise TypeError("OpenAIBackend holds threads and connections: pickle its ModelSpec and call "
                        "load_backend() on the worker instead")

    # -- one request ----------------------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.spec.concurrency, thread_name_prefix="openai")
            return self._pool

    def _safe_one(self, req: Request) -> Response:
        try:
            return self._one(req)
        except Exception as e:  # noqa: BLE001 - a bug or an odd failure costs one row, not the batch
            return Response("", "error", error=self._redact(f"{type(e).__name__}: {e}"))

    def _one(self, req: Request) -> Response:
        try:
            body = json.dumps(self.payload(req)).encode()
        except InputError as e:
            return Response("", "error", error=str(e))
        last, reached, tries = "", False, self.spec.max_retries + 1
        for attempt in range(tries):
            ticket = self.breaker.admit()
            if ticket is None:
                with self._count_lock:
                    self.refused += 1
                return Response("", "error", error=self._redact(self.breaker.refusal(self._url())))
            if attempt:
                with self._count_lock:
                    self.retries += 1
            try:
                outcome = self._send(body)
            except BaseException:
                self.breaker.record(ticket, None)      # no outcome: a probe's turn ends
                raise
            kind = outcome[0]
            self.breaker.record(ticket, kind in _CONNECTION_FAILURES, str(outcome[1]))
            if kind == "ok":
                return self._parse(outcome[1], outcome[2])
            if kind == "fail":                     # 4xx other than 408/409/429: retrying would not help
                return Response("", "error", error=outcome[1])
            reached = reached or kind not in ("connect",)
            last = outcome[1]
            if attempt < self.spec.max_retries:
                delay = self._delay(attempt, outcome[2] if kind == "retry" else None)
                log.warning("%s: %s; retry %d/%d in %.2fs", self._url(), last, attempt + 1,
                            self.spec.max_retries, delay)
                self.breaker.sleep(delay)
        if not reached:
            return Response("", "error", error=f"endpoint {self._url()} is unreachable after {tries} attempt(s): "
                                               f"{last}")
        return Response("", "error", error=f"{self._url()}: failed after {tries} attempt(s): {last}")

    def payload(self, req: Request) -> dict:
        """The JSON body sent for ``req`` (images as base64 data URLs in ``image_url`` content parts)."""
        spec = self.spec
        body = {"model": spec.model or "default", "messages": _messages(req), "max_tokens": spec.max_new_tokens,
                "temperature": float(spec.temperature), "top_p": float(spec.top_p)}
        seed = req.seed if req.seed is not None else spec.seed
        if seed is not None:
            body["seed"] = int(seed)
        if spec.stop:
            body["stop"] = list(spec.stop)
        return body

    def _send(self, body: bytes) -> tuple:
        """One HTTP call under one deadline: ("ok", status, data) | ("retry", message, retry_after)
        | ("fail", message) | ("timeout"/"dropped"/"connect", message, None); messages are redacted."""
        timeout = self.spec.timeout
        deadline = time.monotonic() + timeout
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        conn = self._connection()
        with self._count_lock:
            self.attempts += 1
        if conn.sock is None:
            conn.timeout = max(1e-3, deadline - time.monotonic())
            try:
                conn.connect()
            except TimeoutError:
                self._drop_connection()
                return ("connect", f"connect timed out after {timeout}s", None)
            except OSError as e:
                self._drop_connection()
                return ("connect", self._redact(f"cannot connect: {e}"), None)
        conn.deadline = deadline
        try:
            conn.request("POST", self._path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except TimeoutError:
            self._drop_connection()
            return ("timeout", f"no complete response within {timeout}s", None)
        except _DROPPED + (OSError,) as e:
            self._drop_connection()
            return ("dropped", self._redact(f"connection dropped ({type(e).__name__}: {e})"), None)
        if resp.getheader("Connection", "").lower() == "close":
            self._drop_connection()
        if 200 <= resp.status < 300:
            return ("ok", resp.status, data)
        message = f"http {resp.status}: {self._snippet(data)}"
        if resp.status in _RETRY_STATUS:
            return ("retry", message, _retry_after(resp.getheader("Retry-After")))
        return ("fail", f"{self._url()}: {message}")

    def _parse(self, status: int, data: bytes) -> Response:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return Response("", "error", error=f"{self._url()}: http {status}: the body is not JSON: "
                                               f"{self._snippet(data)}")
        choices = doc.get("choices") if isinstance(doc, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return Response("", "error", error=f"{self._url()}: http {status}: no choices in the response: "
                                               f"{self._snippet(data)}")
        message = choices[0].get("message")
        text = message.get("content") if isinstance(message, dict) else None
        if not isinstance(text, str):
            got = self._redact(repr(text))[:200]
            return Response("", "error", error=f"{self._url()}: http {status}: choices[0].message.content: "
                                               f"expected a string, got {got}")
        reason = "length" if choices[0].get("finish_reason") == "length" else "stop"
        for stop in self.spec.stop:                # servers cut at stop strings; make sure
            if stop in text:
                text, reason = text[:text.index(stop)], "stop"
        if self._key:                              # an endpoint echoing the key does not put it in the data
            text = _without_fragments(text, self._key)
        usage = doc.get("usage") if isinstance(doc.get("usage"), dict) else {}
        return Response(text, reason, usage=usage)

    # -- helpers --------------------------------------------------------------------------------------
    def _connection(self):
        """This thread's connection: kept alive from its last request unless the server has closed it since."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            self._drop_connection()
            conn = None
        if conn is None:
            cls = _HTTPSConnection if self._https else _HTTPConnection
            conn = cls(self._host, self._port, timeout=self.spec.timeout)
            self._local.conn = conn
        return conn

    def _drop_connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.max_backoff, self.backoff * (2 ** attempt)) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, max(self.max_backoff, 60.0)))
        return delay

    def _url(self) -> str:
        return self._shown

    def _redact(self, text: str) -> str:
        return redact(text, self._key)

    def _snippet(self, data: bytes, limit: int = 200) -> str:
        """The start of a body for an error message: decoded, redacted, then cut to ``limit`` characters."""
        text = self._redact(data[:_SCAN_BYTES].decode("utf-8", "replace")).strip()
        return repr(text[:limit] + ("..." if len(text) > limit or len(data) > _SCAN_BYTES else ""))


def _closed_by_peer(sock) -> bool:
    """Whether an idle kept-alive socket is readable: the server closed it (or sent what nobody asked for)."""
    try:
        if hasattr(select, "poll"):            # select() refuses descriptors past FD_SETSIZE
            poller = select.poll()
            poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _messages(req: Request) -> list[dict]:
    """OpenAI messages: ``<image>`` placeholders become image_url parts, in order; images left over (no
    placeholder) go first in the first user message."""
    images = list(req.images)
    placeholders = sum(m["content"].count("<image>") for m in req.messages)
    if placeholders > len(images):
        raise InputError(f"request has {placeholders} <image> placeholder(s) but {len(images)} image(s)")
    extra, images = images[:len(images) - placeholders], images[len(images) - placeholders:]
    out, it = [], iter(images)
    for m in req.messages:
        content = m["content"]
        lead = extra if extra and m["role"] == "user" else []
        if "<image>" not in content and not lead:
            out.append({"role": m["role"], "content": content})
            continue
        parts = [_image_part(b) for b in lead]
        extra = [] if lead else extra
        for k, piece in enumerate(content.split("<image>")):
            if k:
                parts.append(_image_part(next(it)))
            if piece:
                parts.append({"type": "text", "text": piece})
        out.append({"role": m["role"], "content": parts})
    if extra:
        raise InputError(f"request has {len(extra)} image(s) without a placeholder and no user message")
    return out


def _image_part(data: bytes) -> dict:
    url = f"data:{_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url}}


def _mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None

