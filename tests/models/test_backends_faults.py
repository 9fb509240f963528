"""The openai backend under faults, against real servers on 127.0.0.1: a server trickling its answer (the deadline
covers the whole request), a failing row's calls counted across the batch call and the row-by-row retry (one budget
per row), dead and hung endpoints (the circuit breaker fails the rows left at once, accounted as failed), an
endpoint echoing the Authorization header (no fragment of the key on disk, in exceptions or in logs), and a rerun
after the endpoint is back (only the missing rows are asked, the rest come from the response cache)."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest
from datacopilot.models.backends import ModelSpec, Request, shared_backend
from datacopilot.models.backends.openai import Breaker, OpenAIBackend, redact

import datacopilot as dc
from datacopilot.errors import OperatorError
from datacopilot.operators import create

from ..executors._ray import executor, ray_session  # noqa: F401

KEY = "sk-live-9f8e7d6c5b4a39281706f5e4d3c2b1a0ZYXWVUTSRQ"
MARK = re.compile(r"\b(ok|e500|e400|drop|echo400|echo500|echo200)-(\d+)\b")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 (``port`` 0: any) answering chat completions by the marker in the last
    message (``ok-N``: tags; ``e500-N`` / ``e400-N``: that status; ``drop-N``: closes without answering;
    ``echoSTATUS-N``: that status with the Authorization header in the body, placed so that the key straddles
    character 200 of the body), or by ``mode``: ``"trickle-body"`` / ``"trickle-head"`` send the answer a byte every
    ``gap`` seconds. ``calls`` counts requests per marker (or per mode)."""

    def __init__(self, port: int = 0, mode: str | None = None, gap: float = 0.05):
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()
        self.mode, self.gap = mode, gap
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self.handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"     # one request per connection: stopping the server stops it all

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                last = body["messages"][-1]["content"]
                found = MARK.search(last if isinstance(last, str) else json.dumps(last))
                name = server.mode or (found.group(0) if found else "?")
                with server.lock:
                    server.calls[name] = server.calls.get(name, 0) + 1
                auth = self.headers.get("Authorization", "")
                kind = found.group(1) if found else "ok"
                answer = json.dumps({"choices": [{"message": {"role": "assistant", "content": '["color"]'},
                                                  "finish_reason": "stop"}]}).encode()
                try:
                    if server.mode:
                        return self.trickle(answer)
                    if kind == "drop":
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if kind in ("e500", "e400"):
                        return self.reply(int(kind[1:]), b'{"error": "no"}')
                    if kind.startswith("echo"):
                        said = f"{'x' * 130} invalid credentials: {auth} (check your key)"   # the key at 182..232
                        if kind == "echo200":
                            content = f'["color"] you sent {auth}'
                            doc = {"choices": [{"message": {"content": content}}]}
                            return self.reply(200, json.dumps(doc).encode())
                        return self.reply(int(kind[4:]), json.dumps({"error": {"message": said}}).encode())
                    self.reply(200, answer)
                except OSError:
                    pass

            def reply(self, status, data):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def trickle(self, answer):
                head = f"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(answer)}\r\n\r\n"
                if server.mode == "trickle-body":
                    self.wfile.write(head.encode())
                    data = answer
                else:
                    data = head.encode() + answer
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(server.gap)

        return Handler


def user(text: str) -> Request:
    return Request([{"role": "user", "content": text}])


def rows(names: list[str]) -> dc.MMDataset:
    return dc.MMDataset.from_rows(
        [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"What is {name}?"},
                                           {"from": "gpt", "value": "It is a color."}]}
         for i, name in enumerate(names)], schema="MM")


def tag(endpoint: str, cache_dir: str | None = None, **spec):
    return create("tag", model={"backend": "openai", "endpoint": endpoint, "model": "m", **spec}, cache_dir=cache_dir)


def backend_of(op):
    """The backend the operator's ``setup()`` got (one per spec and cache directory per process); the OpenAI one
    inside a cache."""
    b = shared_backend(op.spec, op.p.get("cache_dir"))
    return getattr(b, "backend", b)


# -- one deadline per request -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["trickle-body", "trickle-head"])
def test_a_trickling_server_is_cut_at_the_deadline(mode):
    with Server(mode=mode, gap=0.05) as server:       # ~100 bytes a byte at a time: about 5 s (head) or 3 s (body)
        b = OpenAIBackend(ModelSpec(backend="openai", endpoint=server.endpoint, timeout=0.5, max_retries=0,
                                    api_key_env=None))
        t0 = time.monotonic()
        [r] = b.generate([user("hello")])
        elapsed = time.monotonic() - t0
    trickle_total = 60 * server.gap                   # fewer bytes than either answer has
    assert r.finish_reason == "error" and "no complete response within 0.5s" in r.error
    assert elapsed < trickle_total                    # a per-read timeout would wait for every byte
    assert server.calls == {mode: 1} and b.attempts == 1


def test_a_server_that_never_reads_is_cut_at_the_deadline_while_sending():
    hung = socket.socket()                             # listens, never accepts: the body fills the socket buffers
    hung.bind(("127.0.0.1", 0))
    hung.listen(1)
    try:
        b = OpenAIBackend(ModelSpec(backend="openai", endpoint=f"http://127.0.0.1:{hung.getsockname()[1]}/v1",
                                    timeout=0.5, max_retries=0, api_key_env=None))
        image = b"\x89PNG" + os.urandom(24 << 20)    # more than the kernel buffers on both ends take
        t0 = time.monotonic()
        [r] = b.generate([Request([{"role": "user", "content": "<image>"}], images=(image,))])
        elapsed = time.monotonic() - t0
    finally:
        hung.close()
    assert r.finish_reason == "error" and "no complete response within 0.5s" in r.error
    assert elapsed < 10 and b.attempts == 1            # a loose guard: it did not wait forever on the send


def test_a_trickle_within_the_deadline_is_answered():
    with Server(mode="trickle-body", gap=0.002) as server:
        b = OpenAIBackend(ModelSpec(backend="openai", endpoint=server.endpoint, timeout=10, api_key_env=None))
        [r] = b.generate([user("hello")])
    assert r.error is None and r.text == '["color"]'


# -- one retry budget per row -------------------------------------------------------------------------------------
def test_a_failing_row_costs_at_most_max_retries_plus_one_calls(executor):
    names = ["ok-0", "e500-1", "ok-2", "e400-3", "drop-4", "ok-5", "e500-6"]
    with Server() as server:                           # counts the calls wherever the backend runs (a Ray actor)
        op = tag(server.endpoint, max_retries=2, breaker_after=0)
        out = dc.pipeline(rows(names), on_error="quarantine").apply(op).collect(executor=executor)
    rec = out.history()[-1]
    assert rec.failed == 4 and len(out.quarantine) == 4
    assert sorted(out.quarantine.to_arrow().column("id").to_pylist()) == ["r1", "r3", "r4", "r6"]
    assert server.calls == {"ok-0": 1, "e500-1": 3, "ok-2": 1, "e400-3": 1, "drop-4": 3, "ok-5": 1, "e500-6": 3}
    assert [r["tags"] for r in out] == [["color"]] * 3


# -- the circuit breaker --------------------------------------------------------------------------------------------
def test_a_dead_endpoint_fails_forty_rows_fast():
    port = free_port()                                 # nothing listens there
    op = tag(f"http://127.0.0.1:{port}/v1")            # the defaults: max_retries 5, concurrency 16, breaker after 5
    t0 = time.monotonic()
    out = dc.pipeline(rows([f"ok-{i}" for i in range(40)]), on_error="quarantine").apply(op).collect()
    elapsed = time.monotonic() - t0
    rec, b = out.history()[-1], backend_of(op)
    assert rec.failed == 40 and len(out) == 0 and len(out.quarantine) == 40
    errors = out.quarantine.to_arrow().column("_error").to_pylist()
    assert all("unreachable" in e and "Connection refused" in e for e in errors)
    assert sum("circuit breaker open" in e for e in errors) >= 40 - op.spec.concurrency
    assert b.attempts < 2 * op.spec.concurrency and b.breaker.opened == 1   # not 40 rows x 6 attempts
    assert elapsed < 10                                # a loose guard: the "well under 10 s" (was 51 s)


def test_a_hung_endpoint_opens_the_breaker_on_timeouts():
    hung = socket.socket()                             # listens, never accepts: connects, then no answer ever
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    try:
        b = OpenAIBackend(ModelSpec(backend="openai", endpoint=f"http://127.0.0.1:{hung.getsockname()[1]}/v1",
                                    timeout=0.3, max_retries=3, concurrency=4, breaker_after=4, api_key_env=None),
                          backoff=0.01)
        out = b.generate([user(f"ok-{i}") for i in range(40)])
    finally:
        hung.close()
    assert all(r.finish_reason == "error" for r in out)
    assert "no complete response within 0.3s" in out[0].error
    assert b.attempts < 40 // 2 and b.refused >= 40 - 4 and b.breaker.opened == 1


def test_the_breaker_opens_probes_after_its_cooldown_and_closes_on_an_answer():
    br = Breaker(2, cooldown=0.2, max_cooldown=0.5)
    assert br.admit() == "send"
    br.record("send", True, "cannot connect: refused")
    br.record("send", False)                           # an answer ends the run
    br.record("send", True, "cannot connect: refused")
    assert not br.is_open and br.admit() == "send"
    br.record("send", True, "cannot connect: refused")
    assert br.is_open and br.opened == 1 and br.admit() is None
    assert "unreachable: cannot connect: refused" in br.refusal("http://h/v1/chat/completions")
    time.sleep(br.retry_in())
    assert br.admit() == "probe"
    waited = []                                        # a request during the probe waits for its outcome
    t = threading.Thread(target=lambda: waited.append(br.admit()))
    t.start()
    time.sleep(0.05)
    assert t.is_alive() and not waited
    br.record("probe", True, "cannot connect: still refused")
    t.join(5)
    assert waited == [None] and br.is_open and br.current_cooldown == 0.4   # a failed probe doubles the cooldown
    assert br.admit() is None
    time.sleep(br.retry_in())
    assert br.admit() == "probe"
    br.record("probe", False)
    assert not br.is_open and br.admit() == "send" and br.opened == 1 and br.current_cooldown == 0.2
    never = Breaker(0)
    for _ in range(10):
        never.record("send", True, "refused")
    assert not never.is_open and never.admit() == "send"


def test_after_the_breaker_opens_a_rerun_asks_only_the_missing_rows(tmp_path):
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/v1"
    cache = str(tmp_path / "cache")
    names = [f"ok-{i}" for i in range(40)]
    op = tag(endpoint, cache_dir=cache)
    with Server(port) as first:                        # the first half is answered and cached
        half = dc.pipeline(rows(names[:20]), on_error="quarantine").apply(op).collect()
    assert len(half) == 20 and sum(first.calls.values()) == 20

    down = dc.pipeline(rows(names), on_error="quarantine").apply(op).collect()   # the endpoint is gone
    rec, b = down.history()[-1], backend_of(op)
    assert rec.failed == 20 and len(down) == 20 and b.breaker.is_open
    assert sorted(down.quarantine.to_arrow().column("id").to_pylist()) == sorted(f"r{i}" for i in range(20, 40))
    assert b.attempts - 20 < 2 * op.spec.concurrency   # the cached half asked nothing, the rest failed fast

    with Server(port) as back:                         # back on the same address: only the missing rows are asked
        time.sleep(b.breaker.retry_in())               # the breaker lets a probe through after its cooldown
        again = dc.pipeline(rows(names), on_error="quarantine").apply(op).collect()
    assert again.history()[-1].failed == 0 and len(again) == 40 and again.quarantine is None
    assert back.calls == {f"ok-{i}": 1 for i in range(20, 40)}
    assert not b.breaker.is_open


# -- secrets ----------------------------------------------------------------------------------------------------
def fragments(secret: str, n: int = 8) -> list[str]:
    return [secret[i:i + n] for i in range(len(secret) - n + 1)]


def leaked(text: str) -> list[str]:
    return [f for f in fragments(KEY) if f in text]


def test_an_echoing_endpoint_leaves_no_fragment_of_the_key_anywhere(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("DC_FAULTS_KEY", KEY)
    names = ["ok-0", "echo400-1", "echo500-2", "echo200-3", "ok-4"]
    out_dir = tmp_path / "out"
    with Server() as server:
        op = tag(server.endpoint, api_key_env="DC_FAULTS_KEY", max_retries=1)
        report = dc.pipeline(rows(names), on_error="quarantine").apply(op).write(str(out_dir))
        calls = dict(server.calls)
        with pytest.raises(OperatorError) as info:
            dc.pipeline(rows(names), on_error="raise").apply(op).collect()
    assert report["quarantined"] == 2
    assert calls["echo500-2"] == 2                     # retried once, so a retry was logged too
    seen = []
    for root, _, files in os.walk(out_dir):            # every byte on disk under the output directory
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                data = f.read()
            seen.append(path)
            assert not leaked(data.decode("latin-1")), path
    quarantined = [p for p in seen if os.sep + "quarantine" + os.sep in p]
    assert quarantined
    for path in quarantined:                           # and decoded, in case a file is compressed
        table = pa.ipc.open_file(path).read_all() if path.endswith(".arrow") else None
        if table is not None:
            text = json.dumps(table.to_pylist(), default=str)
            assert "***" in text and not leaked(text)
    raised = f"{info.value}\n{info.value.tb or ''}\n{info.value!r}"
    assert "invalid credentials" in raised and not leaked(raised)
    assert "retry" in caplog.text and not leaked(caplog.text)


def test_redact_removes_the_key_its_fragments_and_auth_values_before_anything_is_cut():
    half = KEY[:len(KEY) // 2]
    assert redact(f"bad key {KEY}!", KEY) == "bad key ***!"
    assert redact(f"got '{half}' then '{KEY[-9:]}'", KEY) == "got '***' then '***'"
    assert redact(f"{KEY[:7]} is only 7 characters of it", KEY) == f"{KEY[:7]} is only 7 characters of it"
    assert redact('{"Authorization": "Bearer abc.def/ghi=="}') == '{"Authorization": "Bearer ***"}'
    assert (redact("x-api-key: k123, api_key='zz', access_token=t0k")
            == "x-api-key: ***, api_key='***', access_token=***")
    assert redact("short key abcd here", "abcd") == "short key *** here"
    assert redact("nothing secret", KEY) == "nothing secret"


def test_a_password_in_the_endpoint_is_not_shown():
    port = free_port()
    b = OpenAIBackend(ModelSpec(backend="openai", endpoint=f"http://bob:pw-0123456789@127.0.0.1:{port}/v1",
                                max_retries=0, api_key_env=None))
    [r] = b.generate([user("ok-0")])
    assert f"endpoint http://***@127.0.0.1:{port}/v1/chat/completions is unreachable" in r.error
    assert "pw-0123456789" not in r.error and "bob" not in r.error
