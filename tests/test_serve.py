"""``datacopilot serve``: the ChatServer's HTTP API (routes, validation, batching, per-request generation
parameters, shutdown) over a deterministic stand-in backend; the HTTP side over raw sockets on 127.0.0.1
(malformed requests get a 4xx with a JSON body, stalled clients are dropped after the read timeout, hundreds of
stalled connections hold no threads and do not stop a normal request, the connection cap answers 503, keep-alive,
pipelining, 100-continue); then a tiny Paddle LM built in a temporary directory (answers equal the backend's own),
and the CLI command in a subprocess stopped with SIGTERM, with its thread count under stalled connections."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from datacopilot.models.backends import Backend, ModelSpec, Request, Response
from datacopilot.models.backends.openai import OpenAIBackend

from datacopilot.errors import InputError
from datacopilot.serve import ChatServer, ServeLimits, parse_chat


class Recorder(Backend):
    """Answers '<last message reversed>|<max_new_tokens>|<temperature>|<stop>'; ``boom`` raises; records batches.
    ``hold`` (an Event) makes the first batch wait until it is set, so later requests queue up behind it."""

    def __init__(self, spec, hold=None):
        self.spec, self.batches, self.hold = spec, [], hold

    def generate(self, requests):
        if self.hold is not None and not self.batches:
            self.batches.append(len(requests))
            self.hold.wait(10)
        else:
            self.batches.append(len(requests))
        if any(r.messages[-1]["content"] == "boom" for r in requests):
            raise RuntimeError("the model exploded")
        s = self.spec
        return [Response(f"{r.messages[-1]['content'][::-1]}|{s.max_new_tokens}|{s.temperature}|{','.join(s.stop)}",
                         "stop", usage={"prompt_tokens": 1}) for r in requests]


def spec(tmp_path, **kw):
    return ModelSpec(backend="paddle", path=str(tmp_path), **kw)


def post(url, body, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url + "/chat/completions", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def chat(text, **kw):
    return {"model": "m", "messages": [{"role": "user", "content": text}], **kw}


def test_routes_and_openai_shapes(tmp_path):
    with ChatServer(Recorder(spec(tmp_path, max_new_tokens=4)), port=0, model_name="tiny") as server:
        with urllib.request.urlopen(server.url + "/models", timeout=10) as r:
            models = json.loads(r.read())
        assert [m["id"] for m in models["data"]] == ["tiny"] and models["object"] == "list"
        status, doc = post(server.url, chat("abc"))
        assert status == 200 and doc["object"] == "chat.completion" and doc["model"] == "m"
        assert doc["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "cba|4|0.0|"},
                                   "finish_reason": "stop"}]
        assert doc["usage"] == {"prompt_tokens": 1}
        status, doc = post(server.url, chat("abc", max_tokens=9, temperature=0.5, stop=["x", "y"]))
        assert status == 200 and doc["choices"][0]["message"]["content"] == "cba|9|0.5|x,y"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(server.url + "/nothing", timeout=10)
        assert info.value.code == 404


@pytest.mark.parametrize("body, raw, message", [
    (None, b"{nope", "the body is not JSON"),
    (chat("a", stream=True), None, "streaming is not supported"),
    (chat("a", n=2), None, "only n=1"),
    ({"model": "m", "messages": []}, None, "messages: expected a non-empty list"),
    ({"messages": [{"role": "user", "content": 3}]}, None, "messages[0].content: expected a string"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]},
     None, "messages[0].content[0].image_url.url: expected a base64 data URL"),
    (chat("a", max_tokens=0), None, "max_tokens: expected >= 1"),
    (chat("a", top_p=1.5), None, "top_p: expected a number in (0, 1]"),
    (chat("a", stop=[""]), None, "stop: expected a string or a list of non-empty strings"),
])
def test_bad_requests_get_400_naming_the_field(tmp_path, body, raw, message):
    with ChatServer(Recorder(spec(tmp_path)), port=0) as server:
        status, doc = post(server.url, body, raw)
    assert status == 400 and message in doc["error"]["message"]
    assert doc["error"]["type"] == "invalid_request_error"


def test_image_parts_become_placeholders():
    import base64

    url = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
    req, params = parse_chat({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "look "}, {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": " here"}]}], "seed": 5, "stop": "END"})
    assert req.messages == [{"role": "user", "content": "look <image> here"}]
    assert req.images == (b"\x89PNG fake",) and req.seed == 5 and params == (None, None, None, ("END",))


def test_concurrent_requests_are_batched_and_a_failing_batch_is_reported(tmp_path):
    hold = threading.Event()
    model = Recorder(spec(tmp_path), hold=hold)
    with ChatServer(model, port=0, batch_size=8, max_wait=0.05) as server:
        client = OpenAIBackend(ModelSpec(backend="openai", endpoint=server.url, concurrency=8, max_retries=0,
                                         max_new_tokens=model.spec.max_new_tokens), backoff=0.01)
        first, rest = {}, {}
        t1 = threading.Thread(target=lambda: first.setdefault("out", client.generate(
            [Request([{"role": "user", "content": "r0"}])])))
        t1.start()
        while not model.batches:                           # the first request's batch is running, held
            threading.Event().wait(0.01)
        t2 = threading.Thread(target=lambda: rest.setdefault("out", client.generate(
            [Request([{"role": "user", "content": f"r{i}"}]) for i in range(1, 8)])))
        t2.start()
        while server._queue.qsize() < 7:                   # the other 7 queue up behind it
            threading.Event().wait(0.01)
        hold.set()
        t1.join(30)
        t2.join(30)
        out = first["out"] + rest["out"]
        assert [r.text.split("|")[0] for r in out] == [f"{i}r" for i in range(8)]
        assert model.batches == [1, 7] and server.batches == 2
        [bad] = client.generate([Request([{"role": "user", "content": "boom"}])])
        assert bad.finish_reason == "error" and "http 500" in bad.error and "the model exploded" in bad.error
        client.close()


def test_close_answers_nothing_lost_and_frees_the_port(tmp_path):
    server = ChatServer(Recorder(spec(tmp_path)), port=0).start()
    url = server.url
    assert post(url, chat("x"))[0] == 200
    server.close()
    server.close()                                     # idempotent
    fut = server.submit(Request([{"role": "user", "content": "late"}]), (None, None, None, None))
    with pytest.raises(Exception, match="shutting down"):
        fut.result(1)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/models", timeout=5)


# -- the HTTP side over raw sockets ----------------------------------------------------------------------------

def address(server):
    host, port = server.url.split("//")[1].split("/")[0].rsplit(":", 1)
    return host, int(port)


def connect(server):
    return socket.create_connection(address(server), timeout=20)    # a hang guard, not a measure


def read_response(sock):
    """(status, JSON body, headers) of the next response on ``sock``."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, json.loads(resp.read()), resp


def closed(sock) -> bool:
    """The server closed ``sock``: EOF (or a reset) once whatever it still sends is read."""
    try:
        while sock.recv(1 << 16):
            pass
    except ConnectionResetError:
        pass
    return True


def wait_for(condition, what="the condition"):
    for _ in range(3000):                          # a hang guard (30 s), not a measure
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{what} never held")


def refused(server) -> bool:
    try:
        socket.create_connection(address(server), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def head(method="POST", path="/v1/chat/completions", *lines: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *lines, "", ""]).encode("latin-1")


CHAT = json.dumps(chat("abc")).encode()


@pytest.mark.parametrize("data, status, message, keeps", [
    (head("POST", "/v1/chat/completions", "Content-Length: abc"), 400,
     "Content-Length: expected a non-negative integer, got 'abc'", False),
    (head("POST", "/v1/chat/completions", "Content-Length: -5"), 400, "got '-5'", False),
    (head("POST", "/v1/chat/completions", "Content-Length: 1e3"), 400, "got '1e3'", False),
    (head("POST", "/v1/chat/completions", "Content-Length: \u00b2"), 400, "expected a non-negative integer", False),
    (head("POST", "/v1/chat/completions", "Content-Length: 2", "Content-Length: 3"), 400, "given twice", False),
    (head("POST", "/v1/chat/completions", "Content-Length: 99999999999999999999999999"), 413, "over the limit", False),
    (head("POST", "/v1/chat/completions", "Content-Length: 5000") + b"{" * 100, 413,
     "a request body of 5000 bytes is over the limit of 4096", False),
    (head("POST", "/v1/chat/completions", "Transfer-Encoding: chunked") + b"0\r\n\r\n", 411,
     "Transfer-Encoding 'chunked' is not supported", False),
    (head("POST", "/v1/chat/completions", "Transfer-Encoding: chunked", "Content-Length: 0"), 400,
     "both Transfer-Encoding and Content-Length", False),
    (head("POST", "/v1/chat/completions"), 411, "a POST needs a Content-Length header", False),
    (b"HELLO\r\n\r\n", 400, "bad request line 'HELLO'", False),
    (b"GET /health HTTP/2.0\r\n\r\n", 400, "unsupported protocol 'HTTP/2.0'", False),
    (b"GET http://127.0.0.1/health HTTP/1.1\r\n\r\n", 400, "expected a path starting with '/'", False),
    (head("GET", "/health", "no colon here"), 400, "bad header line 'no colon here'", False),
    (head("GET", "/health", " folded: line"), 400, "bad header line", False),
    (head("GET", "/health", "X-Big: " + "x" * 2000), 431, "over 1024 bytes", False),
    (b"GET /health HTTP/1.1\r\n" + b"x" * 2000, 431, "over 1024 bytes", False),     # headers that never end
    (head("POST", "/v1/chat/completions", "Content-Length: 2", "Expect: 200-ok") + b"{}", 417,
     "only 100-continue", False),
    (head("PUT", "/v1/chat/completions", "Content-Length: 0"), 405, "/v1/chat/completions takes POST, got PUT", True),
    (head("POST", "/v1/models", "Content-Length: 0"), 405, "takes GET", True),
    (head("POST", "/v1/chat/completions", "Content-Length: 2") + b"[]", 400, "expected a JSON object, got list", True),
    (head("POST", "/v1/chat/completions", "Content-Length: 3") + b"\xff\xfe{", 400, "the body is not JSON", True),
    (head("POST", "/v1/chat/completions", "Content-Length: 0"), 400, "the body is not JSON", True),
    (head("POST", "/v1/chat/completions", "Content-Length: 13") + b'{"model": "m"}'[:13], 400, "not JSON", True),
    (head("POST", "/v1/chat/completions", "Content-Length: 14") + b'{"model": "m"}', 400,
     "messages: expected a non-empty list, got None", True),
])
def test_each_malformed_request_gets_its_4xx_with_a_json_body(tmp_path, data, status, message, keeps):
    """A request that cannot be framed closes its connection; one that was read in full (a bad method or body)
    keeps it, and the next request on it is answered."""
    limits = ServeLimits(read_timeout=10, max_body=4096, max_header=1024)
    with ChatServer(Recorder(spec(tmp_path)), port=0, limits=limits) as server:
        with connect(server) as s:
            s.sendall(data)
            got, doc, resp = read_response(s)
            assert (got, doc["error"]["code"]) == (status, status) and message in doc["error"]["message"], doc
            assert doc["error"]["type"] == "invalid_request_error"
            assert resp.getheader("Connection") == ("keep-alive" if keeps else "close")
            if keeps:
                s.sendall(head("POST", "/v1/chat/completions", f"Content-Length: {len(CHAT)}") + CHAT)
                assert read_response(s)[0] == 200
            else:
                assert closed(s)
        assert post(server.url, chat("abc"))[0] == 200          # and the server goes on serving


def test_a_client_that_stalls_mid_request_gets_408_and_is_dropped(tmp_path):
    with ChatServer(Recorder(spec(tmp_path)), port=0, limits=ServeLimits(read_timeout=0.3)) as server:
        half_body, half_head, idle = connect(server), connect(server), connect(server)
        half_body.sendall(head("POST", "/v1/chat/completions", f"Content-Length: {len(CHAT)}") + CHAT[:10])
        half_head.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Le")
        for s in (half_body, half_head):
            status, doc, resp = read_response(s)
            assert status == 408 and "did not arrive in full within 0.3 s" in doc["error"]["message"]
            assert resp.getheader("Connection") == "close" and closed(s)
        assert idle.recv(10) == b""                # an idle connection is closed without an answer
        for s in (half_body, half_head, idle):
            s.close()
        assert post(server.url, chat("abc"))[0] == 200


def test_300_stalled_connections_hold_no_threads_and_a_normal_request_is_answered(tmp_path):
    before = threading.active_count()
    limits = ServeLimits(read_timeout=120, workers=3)
    with ChatServer(Recorder(spec(tmp_path)), port=0, limits=limits) as server:
        stalled = [connect(server) for _ in range(300)]
        for i, s in enumerate(stalled):
            s.sendall(head("POST", "/v1/chat/completions", f"Content-Length: {len(CHAT)}") + CHAT[:i % 20]
                      if i % 2 else b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"[:i % 40])
        status, doc = post(server.url, chat("abc"))  # accepted after the 300 (one listen queue, in order)
        assert status == 200 and doc["choices"][0]["message"]["content"].startswith("cba|")
        assert server.connections >= 300
        threads = threading.active_count() - before
        assert threads <= limits.workers + 2, [t.name for t in threading.enumerate()]   # + I/O + batcher
        keep = http.client.HTTPConnection(*address(server), timeout=20)  # keep-alive: two requests, one connection
        for text in ("one", "two"):
            keep.request("POST", "/v1/chat/completions", body=json.dumps(chat(text)))
            resp = keep.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["choices"][0]["message"]["content"][:3] in (
                "eno", "owt")
        keep.close()
    for s in stalled:                              # close() closed them all
        assert closed(s)
        s.close()
    assert threading.active_count() <= before


def test_over_max_connections_a_client_gets_503_and_a_freed_slot_is_reused(tmp_path):
    with ChatServer(Recorder(spec(tmp_path)), port=0, limits=ServeLimits(max_connections=3)) as server:
        held = [connect(server) for _ in range(3)]
        for s in held:
            s.sendall(b"GET /he")
        with connect(server) as extra:
            status, doc, resp = read_response(extra)
            assert status == 503 and "connections open" in doc["error"]["message"] and closed(extra)
        held.pop().close()
        wait_for(lambda: server.connections == 2)  # the server sees the close
        assert post(server.url, chat("abc"))[0] == 200
        for s in held:
            s.close()


def test_bodies_being_received_are_capped_over_all_connections(tmp_path):
    limits = ServeLimits(max_receiving=len(CHAT) + 10)
    with ChatServer(Recorder(spec(tmp_path)), port=0, limits=limits) as server:
        with connect(server) as slow, connect(server) as other:
            slow.sendall(head("POST", "/v1/chat/completions", f"Content-Length: {len(CHAT)}") + CHAT[:5])
            wait_for(lambda: server._front.receiving == len(CHAT))
            other.sendall(head("POST", "/v1/chat/completions", f"Content-Length: {len(CHAT)}") + CHAT)
            status, doc, _ = read_response(other)
            assert status == 503 and f"receiving {len(CHAT)} bytes of bodies" in doc["error"]["message"]
            slow.sendall(CHAT[5:])
            assert read_response(slow)[0] == 200
        assert server._front.receiving == 0 and post(server.url, chat("abc"))[0] == 200


def test_close_answers_the_running_and_the_queued_requests(tmp_path):
    hold = threading.Event()
    model = Recorder(spec(tmp_path), hold=hold)
    server = ChatServer(model, port=0, max_wait=0.0).start()
    answers: list = []
    clients = [threading.Thread(target=lambda i=i: answers.append(post(server.url, chat(f"r{i}")))) for i in range(4)]
    clients[0].start()
    wait_for(lambda: model.batches, "the first batch")                 # running, held
    for t in clients[1:]:
        t.start()
    wait_for(lambda: server._queue.qsize() == 3, "3 queued requests")
    closing = threading.Thread(target=server.close)
    closing.start()
    wait_for(lambda: refused(server), "the port closed")              # the answers are still to come
    hold.set()
    closing.join(30)
    for t in clients:
        t.join(30)
    assert not closing.is_alive()
    assert sorted(doc["choices"][0]["message"]["content"][:2] for _, doc in answers) == ["0r", "1r", "2r", "3r"]


def test_mangled_requests_never_break_the_server(tmp_path):
    """Seeded random cuts, flips and insertions into valid requests: each gets a well-formed JSON answer or a close,
    no connection or reserved byte is leaked, and the server goes on serving."""
    r = random.Random(13)
    valid = [head("POST", "/v1/chat/completions", f"Content-Length: {len(CHAT)}") + CHAT, head("GET", "/health"),
             head("POST", "/v1/chat/completions", f"Content-Length: {len(CHAT)}", "Connection: close") + CHAT]
    with ChatServer(Recorder(spec(tmp_path)), port=0, limits=ServeLimits(read_timeout=5)) as server:
        seen = set()
        for _ in range(150):
            data = bytearray(r.choice(valid) * r.randint(1, 2))
            for _ in range(r.randint(1, 3)):
                i = r.randrange(len(data))
                kind = r.randrange(3)
                if kind == 0:
                    data[i] = r.choice(b"\r\n :-0a\x00\xff")
                elif kind == 1:
                    data[i:i] = r.choice([b"\r\n", b":", b"9", b" "])
                else:
                    del data[i:]
            with connect(server) as s:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)         # nothing more is coming: a half request is closed at once
                while True:
                    try:
                        status, doc, _ = read_response(s)
                    except (http.client.RemoteDisconnected, ConnectionResetError):
                        break
                    assert status == 200 or (400 <= status < 500 and doc["error"]["code"] == status), doc
                    seen.add(status)
        assert {200, 400} <= seen, seen
        wait_for(lambda: server.connections == 0, "every connection closed")
        assert server._front.receiving == 0 and post(server.url, chat("abc"))[0] == 200


def test_pipelined_requests_and_100_continue(tmp_path):
    with ChatServer(Recorder(spec(tmp_path)), port=0) as server:
        with connect(server) as s:
            one = head("POST", "/v1/chat/completions", f"Content-Length: {len(CHAT)}") + CHAT
            s.sendall(one + b"\r\n" + head("GET", "/health") + one)
            answers = [read_response(s)[:2] for _ in range(3)]
            assert [a[0] for a in answers] == [200, 200, 200] and answers[1][1] == {"status": "ok"}
            assert answers[2][1]["choices"][0]["message"]["content"].startswith("cba|")
            s.sendall(head("POST", "/v1/chat/completions", f"Content-Length: {len(CHAT)}", "Expect: 100-continue"))
            assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
            s.sendall(CHAT)
            assert read_response(s)[0] == 200


@pytest.mark.parametrize("kw, message", [({"read_timeout": 0}, "`read_timeout` must be a positive number"),
                                         ({"workers": 0}, "`workers` must be a positive integer"),
                                         ({"max_body": 1.5}, "`max_body` must be a positive integer")])
def test_limits_are_checked(kw, message):
    with pytest.raises(InputError, match=message):
        ServeLimits(**kw)


# -- a real tiny paddle model ----------------------------------------------------------------------------------

WORDS = ["a", "red", "blue", "green", "circle", "square", "triangle", "small", "large", "the", "image", "shows",
         "on", "left", "right", "of"]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    pytest.importorskip("paddle")
    pytest.importorskip("paddlenlp")
    from datacopilot.models.lm import build_tiny_lm
    from datacopilot.models.tokenizer import load_tokenizer, train_tokenizer

    d = str(tmp_path_factory.mktemp("serve_lm"))
    r = random.Random(0)
    train_tokenizer([" ".join(r.choice(WORDS) for _ in range(r.randint(3, 12))) for _ in range(300)], d,
                    vocab_size=400)
    return build_tiny_lm(d, vocab_size=len(load_tokenizer(d)), hidden=64, layers=2, heads=4, max_position=256,
                         seed=0, init_std=0.125)


def test_openai_backend_against_served_paddle_model(lm_dir):
    from datacopilot.models.backends import load_backend

    prompts = [" ".join(WORDS[i:i + 1 + i % 7]) for i in range(10)]
    reqs = [Request([{"role": "user", "content": p}]) for p in prompts]
    direct = load_backend(ModelSpec(backend="paddle", path=lm_dir, max_new_tokens=8)).generate(reqs)
    served = load_backend(ModelSpec(backend="paddle", path=lm_dir, max_new_tokens=32, batch_size=16))
    with ChatServer(served, port=0, max_wait=0.05) as server:
        client = load_backend(ModelSpec(backend="openai", endpoint=server.url, model="tiny", max_new_tokens=8,
                                        concurrency=4, max_retries=0))
        out = client.generate(reqs)
        client.close()
    assert [r.error for r in out] == [None] * len(reqs)
    assert [(r.text, r.finish_reason) for r in out] == [(r.text, r.finish_reason) for r in direct]
    assert len({r.text for r in out}) > 1
    assert server.batches < len(reqs)                  # concurrent requests shared batches


def test_serve_command_in_a_subprocess(lm_dir):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "datacopilot", "serve", "--model", lm_dir, "--port", "0",
                             "--max-new-tokens", "4", "--name", "tiny", "--read-timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving tiny at http://127.0.0.1:"), (line, proc.stderr.read() if not line else "")
        url = line.split(" at ")[1].split()[0]
        status, doc = post(url, chat("a red circle"))
        assert status == 200 and doc["choices"][0]["finish_reason"] in ("stop", "length")
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
        host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
        stalled = [socket.create_connection((host, int(port)), timeout=20) for _ in range(300)]
        for s in stalled:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 40\r\n\r\n{")
        with urllib.request.urlopen(url + "/models", timeout=10) as r:   # accepted after the 300
            assert json.loads(r.read())["data"][0]["id"] == "tiny"
        grown = len(os.listdir(f"/proc/{proc.pid}/task")) - threads
        assert grown <= ServeLimits().workers, grown                     # the process's threads, not per client
    finally:
        proc.send_signal(signal.SIGTERM)                                 # with the 300 still stalled
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    for s in stalled:
        assert closed(s)
        s.close()
    assert "stopped" in out
