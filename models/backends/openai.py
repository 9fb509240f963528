"""The ``openai`` backend: any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, PaddleNLP, hosted
servers, or ``datacopilot serve``), over the standard library's ``http.client``.

- Each request is one ``POST {endpoint}/chat/completions`` with ``model``, ``messages``, ``max_tokens``,
  ``temperature``, ``top_p``, ``seed`` and ``stop``. ``<image>`` placeholders in a message's content become
  ``image_url`` content parts carrying the image as a base64 data URL (images without a placeholder go first in the
  first user message).
- Up to ``spec.concurrency`` requests are in flight at once (a thread pool; one keep-alive connection per thread).
- 429 (``Retry-After`` honoured), 5xx, timeouts and dropped or refused connections are retried up to
  ``spec.max_retries`` times with exponential backoff and jitter.
- A request that still fails, is refused (4xx), or gets a body that is not JSON or has no ``choices`` gets a
  ``Response`` with ``finish_reason="error"`` and the reason: the caller accounts for the row. When the endpoint
  cannot be reached at all after the retries, :meth:`OpenAIBackend.generate` raises ``ModelError`` naming it.
- The API key is read from ``os.environ[spec.api_key_env]`` and sent as a Bearer header; it is removed from every
  error message and log line.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime

from datacopilot.errors import InputError, ModelError

from .spec import Backend, ModelSpec, Request, Response

log = logging.getLogger("datacopilot.models.openai")

_RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
_DROPPED = (http.client.RemoteDisconnected, http.client.IncompleteRead, http.client.BadStatusLine,
            ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class _Unreachable(Exception):
    """Raised inside a worker thread when no connection could be made on any attempt."""


class OpenAIBackend(Backend):
    """Chat completions over HTTP with bounded concurrency and retries.

    ``backoff`` is the first retry delay in seconds (doubled each retry, with jitter, capped at ``max_backoff``).
    Counters: ``attempts`` (HTTP requests sent), ``retries`` (backed-off retries; a kept-alive connection found
    closed by the server is resent at once, counted in ``attempts`` only).

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
        self._key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.attempts = 0
        self.retries = 0
        self._count_lock = threading.Lock()
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # -- public ---------------------------------------------------------------------------------------
    def generate(self, requests: list[Request]) -> list[Response]:
        """Send ``requests`` (at most ``spec.concurrency`` at once) and return their responses in order."""
        if not requests:
            return []
        if len(requests) == 1 or self.spec.concurrency == 1:
            results = [self._safe_one(r) for r in requests]
        else:
            pool = self._executor()
            futures = [pool.submit(self._safe_one, r) for r in requests]
            results = []
            for k, fut in enumerate(futures):
                res = fut.result()
                if isinstance(res, _Unreachable):      # stop: cancel what has not started, wait for the rest
                    for rest in futures[k + 1:]:
                        rest.cancel()
                    for rest in futures[k + 1:]:
                        if not rest.cancelled():
                            rest.exception()
                    raise ModelError(self._redact(str(res)))
                results.append(res)
        for res in results:
            if isinstance(res, _Unreachable):
                raise ModelError(self._redact(str(res)))
        return results

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

    def _safe_one(self, req: Request):
        try:
            return self._one(req)
        except _Unreachable as e:
            return e
        except Exception as e:  # noqa: BLE001 - a bug or an odd failure costs one row, not the batch
            return Response("", "error", error=self._redact(f"{type(e).__name__}: {e}"))

    def _one(self, req: Request) -> Response:
        try:
            body = json.dumps(self.payload(req)).encode()
        except InputError as e:
            return Response("", "error", error=str(e))
        last, reached = "", False
        for attempt in range(self.spec.max_retries + 1):
            if attempt:
                with self._count_lock:
                    self.retries += 1
            outcome = self._send(body)
            kind = outcome[0]
            if kind == "ok":
                return self._parse(outcome[1], outcome[2])
            if kind == "fail":                     # 4xx other than 408/409/429: retrying would not help
                return Response("", "error", error=self._redact(outcome[1]))
            reached = reached or kind != "connect"
            last = outcome[1]
            if attempt < self.spec.max_retries:
                delay = self._delay(attempt, outcome[2] if kind == "retry" else None)
                log.warning("%s: %s; retry %d/%d in %.2fs", self._url(), self._redact(last), attempt + 1,
                            self.spec.max_retries, delay)
                time.sleep(delay)
        tries = self.spec.max_retries + 1
        if not reached:
            raise _Unreachable(f"endpoint {self._url()} is unreachable after {tries} attempt(s): {last}")
        return Response("", "error", error=self._redact(f"{self._url()}: failed after {tries} attempt(s): {last}"))

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
        """One HTTP attempt: ("ok", status, data) | ("retry", message, retry_after) | ("fail", message)
        | ("timeout"/"dropped"/"connect", message, None)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        for fresh_retry in (True, False):
            conn, reused = self._connection()
            with self._count_lock:
                self.attempts += 1
            if conn.sock is None:
                try:
                    conn.connect()
                except TimeoutError:
                    self._drop_connection()
                    return ("connect", f"connect timed out after {self.spec.timeout}s", None)
                except OSError as e:
                    self._drop_connection()
                    return ("connect", f"cannot connect: {e}", None)
            try:
                conn.request("POST", self._path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except TimeoutError:
                self._drop_connection()
                return ("timeout", f"no response within {self.spec.timeout}s", None)
            except _DROPPED + (OSError,) as e:
                self._drop_connection()
                if reused and fresh_retry:         # a kept-alive connection the server had closed: resend once
                    continue
                return ("dropped", f"connection dropped ({type(e).__name__}: {e})", None)
            if resp.getheader("Connection", "").lower() == "close":
                self._drop_connection()
            if 200 <= resp.status < 300:
                return ("ok", resp.status, data)
            message = f"http {resp.status}: {_snippet(data)}"
            if resp.status in _RETRY_STATUS:
                return ("retry", message, _retry_after(resp.getheader("Retry-After")))
            return ("fail", f"{self._url()}: {message}")
        return ("dropped", "connection dropped", None)  # pragma: no cover

    def _parse(self, status: int, data: bytes) -> Response:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return Response("", "error", error=self._redact(
                f"{self._url()}: http {status}: the body is not JSON: {_snippet(data)}"))
        choices = doc.get("choices") if isinstance(doc, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return Response("", "error", error=self._redact(
                f"{self._url()}: http {status}: no choices in the response: {_snippet(data)}"))
        message = choices[0].get("message")
        text = message.get("content") if isinstance(message, dict) else None
        if not isinstance(text, str):
            return Response("", "error", error=self._redact(
                f"{self._url()}: http {status}: choices[0].message.content: expected a string, got {text!r}"))
        reason = "length" if choices[0].get("finish_reason") == "length" else "stop"
        for stop in self.spec.stop:                # servers cut at stop strings; make sure
            if stop in text:
                text, reason = text[:text.index(stop)], "stop"
        usage = doc.get("usage") if isinstance(doc.get("usage"), dict) else {}
        return Response(text, reason, usage=usage)

    # -- helpers --------------------------------------------------------------------------------------
    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.spec.timeout)
        self._local.conn = conn
        return conn, False

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
        return self.endpoint + "/chat/completions"

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


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


def _snippet(data: bytes, limit: int = 200) -> str:
    text = data.decode("utf-8", "replace").strip()
    return repr(text[:limit] + ("..." if len(text) > limit else ""))
