"""The response cache: a rerun makes no model calls, other parameters miss, errors are not stored, and the store is
shared safely by threads and processes."""

from __future__ import annotations

import multiprocessing as mp
import pickle
from concurrent.futures import ThreadPoolExecutor

import pytest

from datacopilot.errors import InputError
from datacopilot.models.backends import Backend, ModelSpec, Request, Response
from datacopilot.models.backends.cache import CachedBackend, ResponseCache


class Echo(Backend):
    """A real, deterministic backend: answers with the reversed last message; 'fail' gives an error response."""

    def __init__(self, spec):
        self.spec, self.seen = spec, []

    def generate(self, requests):
        self.seen.append(len(requests))
        return [Response("", "error", error="boom") if r.messages[-1]["content"] == "fail"
                else Response(r.messages[-1]["content"][::-1] + str(len(r.images)), "stop") for r in requests]


SPEC = ModelSpec(backend="openai", endpoint="http://127.0.0.1:9/v1", model="echo")


def req(text, images=()):
    return Request([{"role": "user", "content": text}], images=images)


def test_rerun_is_answered_from_disk(tmp_path):
    reqs = [req("abc"), req("abc", (b"img1",)), req("xyz"), req("abc")]
    first = CachedBackend(Echo(SPEC), ResponseCache(tmp_path))
    out1 = first.generate(reqs)
    assert [r.text for r in out1] == ["cba0", "cba1", "zyx0", "cba0"]
    assert not any(r.cached for r in out1)
    assert first.backend.seen == [3] and first.sent == 3           # the duplicate request is sent once
    again = CachedBackend(Echo(SPEC), ResponseCache(tmp_path))      # a new process would build exactly this
    out2 = again.generate(reqs)
    assert again.backend.seen == [] and again.calls == 0 and again.hits == 4
    assert [r.text for r in out2] == [r.text for r in out1] and all(r.cached for r in out2)


def test_different_params_images_or_seeds_miss(tmp_path):
    cache = ResponseCache(tmp_path)
    CachedBackend(Echo(SPEC), cache).generate([req("abc")])
    for spec in (ModelSpec(**{**SPEC.to_dict(), "max_new_tokens": 5}),
                 ModelSpec(**{**SPEC.to_dict(), "temperature": 0.7, "seed": 1}),
                 ModelSpec(**{**SPEC.to_dict(), "model": "other"})):
        b = CachedBackend(Echo(spec), cache)
        b.generate([req("abc")])
        assert b.calls == 1, spec
    same = CachedBackend(Echo(ModelSpec(**{**SPEC.to_dict(), "batch_size": 2, "concurrency": 3})), cache)
    same.generate([req("abc")])
    assert same.calls == 0                                          # batching does not change outputs
    b = CachedBackend(Echo(SPEC), cache)
    b.generate([req("abc", (b"other image",)), Request(req("abc").messages, seed=3)])
    assert b.sent == 2


def test_errors_are_not_stored(tmp_path):
    b = CachedBackend(Echo(SPEC), ResponseCache(tmp_path))
    out = b.generate([req("fail"), req("ok")])
    assert out[0].error == "boom" and out[1].text == "ko0"
    b.generate([req("fail"), req("ok")])
    assert b.backend.seen == [2, 1]                                 # the failed request is tried again
    assert len(b.cache) == 1


def test_threads_share_one_cache(tmp_path):
    cache = ResponseCache(tmp_path)
    b = CachedBackend(Echo(SPEC), cache)
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: b.generate([req(f"t{i % 20}")])[0].text, range(200)))
    assert outs == [f"t{i % 20}"[::-1] + "0" for i in range(200)]
    assert len(cache) == 20


def _worker(args):
    directory, start = args
    b = CachedBackend(Echo(SPEC), ResponseCache(directory))
    b.generate([req(f"p{i}") for i in range(start, start + 30)])
    return b.sent


def test_processes_share_one_cache(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        sent = pool.map(_worker, [(str(tmp_path), 0), (str(tmp_path), 10), (str(tmp_path), 20)])
    assert all(0 <= s <= 30 for s in sent)
    cache = pickle.loads(pickle.dumps(ResponseCache(tmp_path)))
    assert len(cache) == 50
    assert cache.get(cache.key(SPEC, req("p42"))).text == "24p0"


def test_cache_dir_must_be_a_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        ResponseCache(f)


def test_paddle_rerun_makes_no_model_calls(tmp_path):
    pytest.importorskip("paddle")
    pytest.importorskip("paddlenlp")
    from datacopilot.models.backends import load_backend

    from .test_backends_paddle import PROMPTS, make_lm, user

    path = make_lm(tmp_path / "lm")
    spec = ModelSpec(backend="paddle", path=path, max_new_tokens=6)
    first = load_backend(spec, cache_dir=str(tmp_path / "cache"))
    out1 = first.generate([user(p) for p in PROMPTS])
    assert first.backend.model_calls > 0
    second = load_backend(spec, cache_dir=str(tmp_path / "cache"))
    out2 = second.generate([user(p) for p in PROMPTS])
    assert second.backend.model_calls == 0 and second.calls == 0
    assert [r.text for r in out2] == [r.text for r in out1] and all(r.cached for r in out2)
    longer = load_backend(ModelSpec(backend="paddle", path=path, max_new_tokens=7), cache_dir=str(tmp_path / "cache"))
    longer.generate([user(PROMPTS[0])])
    assert longer.backend.model_calls > 0
