"""``datacopilot serve``: the ChatServer's HTTP API (routes, validation, batching, per-request generation
parameters, shutdown) over a deterministic stand-in backend, then over a tiny Paddle LM built in a temporary
directory (answers equal the backend's own), and the CLI command in a subprocess stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from datacopilot.models.backends import Backend, ModelSpec, Request, Response
from datacopilot.models.backends.openai import OpenAIBackend

from datacopilot.serve import ChatServer, parse_chat


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
                             "--max-new-tokens", "4", "--name", "tiny"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving tiny at http://127.0.0.1:"), (line, proc.stderr.read() if not line else "")
        url = line.split(" at ")[1].split()[0]
        status, doc = post(url, chat("a red circle"))
        assert status == 200 and doc["choices"][0]["finish_reason"] in ("stop", "length")
        with urllib.request.urlopen(url + "/models", timeout=10) as r:
            assert json.loads(r.read())["data"][0]["id"] == "tiny"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped" in out
