"""The openai backend against a scripted HTTP server on 127.0.0.1 (429 then 200, 5xx, malformed JSON, no choices,
slow responses past the timeout, dropped connections, refused connections) and against ``datacopilot serve``'s
ChatServer over a deterministic stand-in backend: retries, parsing, error reporting, no request lost, the API key
never shown."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from datacopilot.models.backends import (
    Backend,
    ModelSpec,
    Request,
    Response,
    load_backend,
)
from datacopilot.models.backends.openai import OpenAIBackend, _retry_after

from datacopilot.errors import ModelError
from datacopilot.serve import ChatServer

KEY = "sk-test-SECRET-0123456789"


class Script:
    """What the scripted server does, keyed by the first word of the last message: ``ok``, ``429`` (once, with
    Retry-After), ``500x2`` (two 500s), ``badjson``, ``nochoices``, ``slow`` (always past the timeout), ``slow1``
    (once), ``drop`` (close without answering, once), ``dropall``, ``leak`` (a 400 echoing the auth header),
    ``barrier`` (waits for 4 requests in flight), ``images`` (describes the image parts)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen: dict[str, list[float]] = {}
        self.bodies: list[dict] = []
        self.auth: set[str] = set()
        self.barrier = threading.Barrier(4, timeout=10)

    def attempt(self, text: str) -> int:
        with self.lock:
            times = self.seen.setdefault(text, [])
            times.append(time.monotonic())
            return len(times)


def scripted_handler(script: Script):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True   # headers and body are separate writes: no 40 ms delayed-ACK stall

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.bodies.append(body)
                script.auth.add(self.headers.get("Authorization", ""))
            last = body["messages"][-1]["content"]
            text = last if isinstance(last, str) else " ".join(p.get("text", "") for p in last)
            word = text.split()[0]
            n = script.attempt(text)
            if word == "429" and n == 1:
                return self.reply(429, b'{"error": "rate limited"}', {"Retry-After": "0.3"})
            if word == "500x2" and n <= 2:
                return self.reply(500 if n == 1 else 503, b"internal error")
            if word == "badjson":
                return self.reply(200, b'{"choices": [{"message": ')
            if word == "nochoices":
                return self.reply(200, json.dumps({"id": "x", "object": "chat.completion"}).encode())
            if word == "slow" or (word == "slow1" and n == 1):
                time.sleep(0.6)
            if word == "dropall" or (word == "drop" and n == 1):
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if word == "leak":
                return self.reply(400, json.dumps({"error": f"bad key {self.headers['Authorization']}"}).encode())
            if word == "barrier":
                script.barrier.wait()
            if word == "images":
                parts = [p for p in last if p["type"] == "image_url"]
                text = " ".join(p["image_url"]["url"].split(",")[0] for p in parts)
            answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"echo: {text}"},
                                   "finish_reason": "length" if word == "long" else "stop"}],
                      "usage": {"completion_tokens": 3}}
            self.reply(200, json.dumps(answer).encode())

        def reply(self, status, data, headers=()):
            self.send_response(status)
            for k, v in dict(headers).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture()
def scripted():
    script = Script()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), scripted_handler(script))
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    script.endpoint = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield script
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def api_key(monkeypatch):
    monkeypatch.setenv("DC_TEST_KEY", KEY)
    return "DC_TEST_KEY"


def backend_for(endpoint, api_key=None, **kw):
    kw.setdefault("max_retries", 3)
    kw.setdefault("timeout", 5.0)
    spec = ModelSpec(backend="openai", endpoint=endpoint, model="tiny", api_key_env=api_key, **kw)
    return OpenAIBackend(spec, backoff=0.01, max_backoff=0.05)


def user(text, images=()):
    return Request([{"role": "user", "content": text}], images=tuple(images))


def png(color=(255, 0, 0)):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def test_payload_and_parsing(scripted, api_key):
    b = backend_for(scripted.endpoint, api_key, max_new_tokens=7, temperature=0.5, top_p=0.9, seed=3,
                    stop=("END",))
    [r] = b.generate([user("ok hello")])
    assert (r.text, r.finish_reason, r.error, r.usage) == ("echo: ok hello", "stop", None, {"completion_tokens": 3})
    body = scripted.bodies[0]
    assert body == {"model": "tiny", "messages": [{"role": "user", "content": "ok hello"}], "max_tokens": 7,
                    "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": ["END"]}
    assert scripted.auth == {f"Bearer {KEY}"}
    [long] = b.generate([Request([{"role": "user", "content": "long x"}], seed=9)])
    assert long.finish_reason == "length" and scripted.bodies[-1]["seed"] == 9
    # the client cuts at stop strings even when a server does not
    [cut] = b.generate([user("ok before END after")])
    assert cut.text == "echo: ok before " and cut.finish_reason == "stop"


def test_images_as_data_urls(scripted):
    b = backend_for(scripted.endpoint)
    red, jpeg = png(), b"\xff\xd8\xff\xe0 not really a jpeg"
    [r] = b.generate([user("images <image> left <image> right", images=(red, jpeg))])
    assert r.text == "echo: data:image/png;base64 data:image/jpeg;base64"
    parts = scripted.bodies[0]["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text"]
    assert base64.b64decode(parts[1]["image_url"]["url"].split(",", 1)[1]) == red
    # an image without a placeholder goes first in the user message
    [r2] = b.generate([user("images describe", images=(red,))])
    first = scripted.bodies[-1]["messages"][0]["content"]
    assert first[0]["type"] == "image_url" and first[1] == {"type": "text", "text": "images describe"}
    assert r2.text == "echo: data:image/png;base64"
    # more placeholders than images: an error for that request, nothing sent
    sent = len(scripted.bodies)
    [bad] = b.generate([user("images <image> <image>", images=(red,))])
    assert bad.finish_reason == "error" and "2 <image> placeholder(s) but 1 image(s)" in bad.error
    assert len(scripted.bodies) == sent


def test_retries_429_5xx_timeouts_and_drops(scripted):
    b = backend_for(scripted.endpoint, timeout=0.3, max_retries=3)
    texts = ["429 a", "500x2 b", "slow1 c", "drop d"]
    out = b.generate([user(t) for t in texts])
    assert [r.text for r in out] == [f"echo: {t}" for t in texts]
    assert all(r.error is None for r in out)
    assert [len(scripted.seen[t]) for t in texts] == [2, 3, 2, 2]
    first, second = scripted.seen["429 a"]
    assert second - first >= 0.3                      # Retry-After (0.3s) honoured over the 0.01s backoff
    assert b.retries >= 4 and b.attempts == sum(len(v) for v in scripted.seen.values()) == 9


def test_failures_are_errors_for_their_request_only(scripted):
    b = backend_for(scripted.endpoint, timeout=0.3, max_retries=1)
    texts = ["ok 1", "badjson 2", "nochoices 3", "slow 4", "dropall 5", "ok 6"]
    out = b.generate([user(t) for t in texts])
    assert len(out) == len(texts)
    assert [r.error is None for r in out] == [True, False, False, False, False, True]
    assert all(r.finish_reason == "error" and r.text == "" for r in out[1:5])
    assert "not JSON" in out[1].error and "/v1/chat/completions" in out[1].error
    assert "no choices" in out[2].error
    assert "no complete response within 0.3s" in out[3].error and "2 attempt(s)" in out[3].error
    assert "connection dropped" in out[4].error
    assert len(scripted.seen["badjson 2"]) == 1           # a malformed body is not retried
    assert len(scripted.seen["slow 4"]) == 2              # a timeout is retried max_retries times


def test_no_request_lost_under_concurrency(scripted):
    b = backend_for(scripted.endpoint, concurrency=8, timeout=0.3, max_retries=2)
    kinds = ["ok", "429", "500x2", "badjson", "drop", "nochoices", "slow1", "ok"]
    texts = [f"{kinds[i % len(kinds)]} row{i}" for i in range(48)]
    out = b.generate([user(t) for t in texts])
    assert len(out) == 48 and all(isinstance(r, Response) for r in out)
    for t, r in zip(texts, out):                          # order kept; each row answered or failed with a reason
        if t.split()[0] in ("badjson", "nochoices"):
            assert r.finish_reason == "error" and r.error
        else:
            assert r.text == f"echo: {t}" and r.error is None


def test_concurrency_puts_requests_in_flight_together(scripted):
    # the server's barrier releases only when 4 requests are in flight at once; sequential calls would time out
    b = backend_for(scripted.endpoint, concurrency=4, max_retries=0, timeout=20)
    out = b.generate([user(f"barrier {i}") for i in range(8)])
    assert [r.text for r in out] == [f"echo: barrier {i}" for i in range(8)]
    b.close()


def test_api_key_never_in_errors_or_logs(scripted, api_key, caplog):
    caplog.set_level(logging.DEBUG)
    b = backend_for(scripted.endpoint, api_key, max_retries=2)
    [leak, retried] = b.generate([user("leak x"), user("500x2 y")])
    assert leak.finish_reason == "error" and "http 400" in leak.error and "***" in leak.error
    assert KEY not in leak.error
    assert retried.error is None and "retry" in caplog.text.lower()
    port = free_port()
    dead = backend_for(f"http://127.0.0.1:{port}/v1", api_key, max_retries=1)
    [down] = dead.generate([user("ok")])
    assert down.finish_reason == "error" and "unreachable" in down.error
    assert KEY not in down.error and KEY not in caplog.text
    assert KEY not in repr(dead.spec)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_endpoint_is_an_error_naming_it():
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/v1"
    b = backend_for(endpoint, max_retries=2, concurrency=1, breaker_after=0)   # no breaker: each row retries
    out = b.generate([user(f"ok {i}") for i in range(3)])
    assert [r.error for r in out] == [f"endpoint http://127.0.0.1:{port}/v1/chat/completions is unreachable after "
                                      f"3 attempt(s): cannot connect: [Errno 111] Connection refused"] * 3
    assert b.attempts == 9 and b.refused == 0


def test_retry_after_parsing():
    assert _retry_after("2") == 2.0 and _retry_after("0.5") == 0.5 and _retry_after(None) is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0      # a date in the past: no wait
    assert _retry_after("soon") is None


def test_load_backend_and_spec_checks():
    with pytest.raises(ModelError, match="endpoint"):
        load_backend(ModelSpec(backend="openai", endpoint=None))
    b = load_backend(ModelSpec(backend="openai", endpoint="http://127.0.0.1:9/v1/"))
    assert isinstance(b, OpenAIBackend) and b.endpoint == "http://127.0.0.1:9/v1"
    with pytest.raises(TypeError, match="pickle its ModelSpec"):
        import pickle

        pickle.dumps(b)


class EchoBackend(Backend):
    """A deterministic stand-in model: answers the last message upper-cased, with the image count and the
    max_new_tokens it was given; ``fail`` gives a per-request error; records batch sizes."""

    def __init__(self, spec):
        self.spec, self.sizes = spec, []

    def generate(self, requests):
        self.sizes.append(len(requests))
        out = []
        for r in requests:
            text = r.messages[-1]["content"]
            if text.startswith("fail"):
                out.append(Response("", "error", error="cannot run this one"))
            else:
                out.append(Response(f"{text.upper()} [{len(r.images)} img, {self.spec.max_new_tokens}]", "length"))
        return out


def test_against_chat_server(tmp_path):
    spec = ModelSpec(backend="paddle", path=str(tmp_path), max_new_tokens=9)
    model = EchoBackend(spec)
    with ChatServer(model, port=0, batch_size=16, max_wait=0.05) as server:
        client = backend_for(server.url, concurrency=8, max_new_tokens=5, max_retries=0)
        texts = [f"row {i}" for i in range(20)] + ["fail me"]
        reqs = [user(t) for t in texts] + [user("pic <image>", images=(png(),))]
        out = client.generate(reqs)
        assert [r.text for r in out[:20]] == [f"ROW {i} [0 img, 5]" for i in range(20)]
        assert out[20].finish_reason == "error" and "http 400" in out[20].error and "cannot run" in out[20].error
        assert out[21].text == "PIC <IMAGE> [1 img, 5]" and out[21].finish_reason == "length"
        assert sum(model.sizes) == 22 and server.requests == 21
        client.close()
