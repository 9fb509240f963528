"""``datacopilot serve``: an OpenAI-compatible HTTP server over a backend (the ``paddle`` backend by default), so a
local Paddle model can be served to a cluster and the ``openai`` backend can be tested against a real server.

Routes: ``POST /v1/chat/completions`` (non-streaming; ``n`` = 1), ``GET /v1/models``, ``GET /health``.

The HTTP side (:mod:`datacopilot.http_front`) holds a fixed number of threads whatever the number of
connections, drops a client that stalls mid-request after ``limits.read_timeout`` seconds (408), caps the open
connections (503 over ``limits.max_connections``) and answers any malformed request with a 4xx and a JSON error
body; a worker parses a chat request and hands it to the batcher without waiting for the model.

Requests arriving together are batched: one batcher thread takes the first waiting request, gathers more for up to
``max_wait`` seconds (at most ``batch_size``), groups them by their generation parameters (``max_tokens``,
``temperature``, ``top_p``, ``stop``) and calls ``backend.generate`` once per group. A request the backend cannot
run (a bad image, a prompt too long) gets HTTP 400 with the reason; a failing backend gets HTTP 500 for the
requests of that batch.

Example::

    >>> server = ChatServer(backend, port=0).start()          # doctest: +SKIP
    >>> server.url                                             # doctest: +SKIP
    'http://127.0.0.1:40213/v1'
    >>> server.close()                                         # doctest: +SKIP
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import json
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future

from datacopilot.errors import DataCopilotError, InputError
from datacopilot.http_front import HttpFront, HttpRequest, Reply, ServeLimits

log = logging.getLogger("datacopilot.serve")


class ChatServer:
    """Serve ``backend`` (any :class:`~datacopilot.models.backends.Backend` with a ``spec``) on ``host:port``.

    ``model_name`` is what ``/v1/models`` lists (any name is accepted in requests). ``port=0`` picks a free port.
    ``limits`` (a :class:`ServeLimits`) bounds timeouts, threads, connections and sizes. Counters: ``requests``
    served and ``batches`` sent to the backend; ``connections`` is the number open now.
    """

    def __init__(self, backend, host: str = "127.0.0.1", port: int = 8000, model_name: str = "datacopilot",
                 batch_size: int | None = None, max_wait: float = 0.01, limits: ServeLimits | None = None):
        self.backend, self.model_name = backend, model_name
        self.batch_size = int(batch_size or getattr(backend.spec, "batch_size", 16))
        self.max_wait = float(max_wait)
        self.limits = limits or ServeLimits()
        self.requests = 0
        self.batches = 0
        self._count_lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._variants: dict = {}
        self._stopping = threading.Event()
        self._front = HttpFront(host, port, self.limits, self._handle)
        self._batcher_thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self._front.address}/v1"

    @property
    def connections(self) -> int:
        return self._front.open

    def start(self) -> ChatServer:
        """Start the batcher and the HTTP side in background threads; returns self."""
        if self._batcher_thread is None and not self._stopping.is_set():
            self._batcher_thread = threading.Thread(target=self._batcher, name="serve-batcher", daemon=True)
            self._batcher_thread.start()
            self._front.start()
        return self

    def close(self) -> None:
        """Stop accepting connections and requests, finish the batch running, answer the queued requests with 503,
        write the answers (for up to a few seconds), close every connection and stop the threads."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._front.stop_accepting()                  # the port is free once this returns
        if self._batcher_thread is not None:
            self._queue.put(None)
            self._batcher_thread.join()
        self._front.stop_workers()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[2].set_exception(_HTTPError(503, "the server is shutting down"))
        self._front.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- requests -------------------------------------------------------------------------------------
    def _handle(self, req: HttpRequest, reply: Reply) -> None:
        """Runs on a worker: answer ``req`` now, or hand it to the batcher with ``reply`` as its continuation."""
        route = req.path.rstrip("/")
        method = "POST" if route == "/v1/chat/completions" else "GET"
        if route not in ("/v1/chat/completions", "/v1/models", "/health"):
            return reply.error(404, f"no route {req.method} {req.path[:200]}")
        if req.method != method:
            return reply.error(405, f"{route} takes {method}, got {req.method}", headers=(f"Allow: {method}",))
        if route == "/v1/models":
            return reply(200, {"object": "list", "data": [{"id": self.model_name, "object": "model",
                                                           "owned_by": "datacopilot"}]})
        if route == "/health":
            return reply(200, {"status": "ok"})
        try:
            try:
                body = json.loads(req.body)
            except ValueError as e:
                raise _HTTPError(400, f"the body is not JSON: {e}") from e
            request, params = parse_chat(body)
        except _HTTPError as e:
            return reply.error(e.status, e.message)
        except DataCopilotError as e:
            return reply.error(400, str(e))
        self.submit(request, params).add_done_callback(lambda fut: self._answer(fut, body, reply))

    def _answer(self, fut: Future, body: dict, reply: Reply) -> None:
        try:
            resp = fut.result()
        except _HTTPError as e:
            return reply.error(e.status, e.message)
        except Exception as e:  # noqa: BLE001 - the client gets the error, the server keeps running
            return reply.error(500, f"the backend failed: {type(e).__name__}: {e}")
        if resp.error is not None:
            return reply.error(400, resp.error)
        with self._count_lock:
            self.requests += 1
        reply(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or self.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": resp.text},
                         "finish_reason": resp.finish_reason}],
            "usage": resp.usage or {}})

    # -- batching -------------------------------------------------------------------------------------
    def submit(self, request, params: tuple) -> Future:
        fut: Future = Future()
        if self._stopping.is_set():
            fut.set_exception(_HTTPError(503, "the server is shutting down"))
        else:
            self._queue.put((request, params, fut))
        return fut

    def _batcher(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items, deadline = [first], time.monotonic() + self.max_wait
            while len(items) < self.batch_size:
                left = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=max(left, 0)) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                items.append(item)
            groups: dict = {}
            for item in items:
                groups.setdefault(item[1], []).append(item)
            for params, group in groups.items():
                self._run(params, group)

    def _run(self, params: tuple, group: list) -> None:
        self.batches += 1
        try:
            responses = self._variant(params).generate([g[0] for g in group])
        except Exception as e:  # the batch's clients get the error, the server keeps running
            log.exception("backend failed on a batch of %d", len(group))
            for _, _, fut in group:
                fut.set_exception(_HTTPError(500, f"the backend failed: {type(e).__name__}: {e}"))
            return
        for (_, _, fut), resp in zip(group, responses):
            fut.set_result(resp)

    def _variant(self, params: tuple):
        """The backend with the request's generation parameters (a shallow copy sharing the model)."""
        max_tokens, temperature, top_p, stop = params
        spec = self.backend.spec
        changes = {"max_new_tokens": max_tokens or spec.max_new_tokens,
                   "temperature": spec.temperature if temperature is None else temperature,
                   "top_p": spec.top_p if top_p is None else top_p,
                   "stop": spec.stop if stop is None else stop}
        if all(getattr(spec, k) == v for k, v in changes.items()):
            return self.backend
        if params not in self._variants:
            if len(self._variants) > 64:
                self._variants.clear()
            variant = copy.copy(self.backend)
            variant.spec = dataclasses.replace(spec, **changes)
            self._variants[params] = variant
        return self._variants[params]


class _HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def parse_chat(body: dict):
    """An OpenAI chat-completions body -> (Request, params); raises _HTTPError(400) naming the bad field.

    Content may be a string or a list of ``text`` / ``image_url`` parts; images must be base64 data URLs (the
    server never fetches URLs) and become ``<image>`` placeholders in the text.
    """
    from datacopilot.models.backends import Request

    if not isinstance(body, dict):
        raise _HTTPError(400, f"expected a JSON object, got {type(body).__name__}")
    if body.get("stream"):
        raise _HTTPError(400, "stream: streaming is not supported, send stream=false")
    if body.get("n", 1) != 1:
        raise _HTTPError(400, f"n: only n=1 is supported, got {body.get('n')!r}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _HTTPError(400, f"messages: expected a non-empty list, got {messages!r}"[:300])
    out, images = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _HTTPError(400, f"messages[{i}]: expected {{'role': str, 'content': ...}}, got {m!r}"[:300])
        content = m.get("content")
        if isinstance(content, list):
            text = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    text.append(part["text"])
                elif kind == "image_url":
                    images.append(_data_url((part.get("image_url") or {}).get("url"), f"messages[{i}].content[{j}]"))
                    text.append("<image>")
                else:
                    raise _HTTPError(400, f"messages[{i}].content[{j}]: expected a text or image_url part, "
                                          f"got {part!r}"[:300])
            content = "".join(text)
        elif not isinstance(content, str):
            raise _HTTPError(400, f"messages[{i}].content: expected a string or a list of parts, got {content!r}")
        out.append({"role": m["role"], "content": content})
    params = (_number(body, "max_tokens", int, 1), _number(body, "temperature", float, 0.0),
              _number(body, "top_p", float, 0.0), _stops(body.get("stop")))
    if params[2] is not None and params[2] > 1:
        raise _HTTPError(400, f"top_p: expected a number in (0, 1], got {params[2]!r}")
    if params[2] == 0:
        raise _HTTPError(400, "top_p: expected a number in (0, 1], got 0")
    seed = _number(body, "seed", int, None)
    try:
        return Request(out, images=tuple(images), seed=seed), params
    except InputError as e:
        raise _HTTPError(400, str(e)) from e


def _data_url(url, where: str) -> bytes:
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        shown = url[:60] if isinstance(url, str) else url
        raise _HTTPError(400, f"{where}.image_url.url: expected a base64 data URL, got {shown!r}")
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError) as e:
        raise _HTTPError(400, f"{where}.image_url.url: bad base64: {e}") from e


def _number(body: dict, name: str, kind, low):
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise _HTTPError(400, f"{name}: expected a{'n integer' if kind is int else ' number'}, got {v!r}")
    if low is not None and v < low:
        raise _HTTPError(400, f"{name}: expected >= {low}, got {v!r}")
    return kind(v)


def _stops(stop):
    if stop is None:
        return None
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise _HTTPError(400, f"stop: expected a string or a list of non-empty strings, got {stop!r}")
    return tuple(stop)


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, batch_size: int = 16,
          max_new_tokens: int = 64, name: str | None = None, echo=print, limits: ServeLimits | None = None) -> None:
    """Load the paddle model in ``model_dir`` and serve it until SIGINT or SIGTERM (then shut down cleanly);
    ``limits`` as in :class:`ChatServer`.

    Example::

        >>> serve("/tmp/tiny_lm", port=8000)   # doctest: +SKIP
    """
    import os
    import signal

    from datacopilot.models.backends import ModelSpec, load_backend

    spec = ModelSpec(backend="paddle", path=model_dir, batch_size=batch_size, max_new_tokens=max_new_tokens)
    backend = load_backend(spec)
    server = ChatServer(backend, host=host, port=port, batch_size=batch_size, limits=limits,
                        model_name=name or os.path.basename(os.path.normpath(model_dir)))
    done = threading.Event()
    previous = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    server.start()
    echo(f"serving {server.model_name} at {server.url} (ctrl-c to stop)")
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.close()
        backend.close()
        for s, h in previous.items():
            signal.signal(s, h)
        echo("stopped")


def register_serve(main) -> None:
    """Add the ``serve`` command to the ``datacopilot`` CLI group ``main``."""
    import click

    @main.command("serve")
    @click.option("--model", "model", required=True, type=click.Path(exists=True, file_okay=False),
                  help="A local paddle model directory (an LM or the TinyVLM, with its tokenizer).")
    @click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
    @click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
    @click.option("--batch-size", "batch_size", default=16, show_default=True, type=click.IntRange(min=1),
                  help="Most requests generated together.")
    @click.option("--max-new-tokens", "max_new_tokens", default=64, show_default=True, type=click.IntRange(min=1),
                  help="Default when a request has no max_tokens.")
    @click.option("--name", default=None, help="Model name listed by /v1/models (default: the directory name).")
    @click.option("--read-timeout", "read_timeout", default=ServeLimits.read_timeout, show_default=True,
                  type=click.FloatRange(min=0, min_open=True),
                  help="Seconds a request may take to arrive in full; a stalled client is then dropped.")
    @click.option("--max-connections", "max_connections", default=ServeLimits.max_connections, show_default=True,
                  type=click.IntRange(min=1), help="Open connections at most; one more is answered 503.")
    def serve_command(model, port, host, batch_size, max_new_tokens, name, read_timeout, max_connections):
        """Serve a local paddle model as an OpenAI-compatible API: POST /v1/chat/completions, GET /v1/models.

        Concurrent requests are batched; a fixed number of threads serves any number of connections. Stops
        cleanly on ctrl-c or SIGTERM.
        """
        serve(model, host=host, port=port, batch_size=batch_size, max_new_tokens=max_new_tokens, name=name,
              echo=lambda m: click.echo(m),
              limits=ServeLimits(read_timeout=read_timeout, max_connections=max_connections))
