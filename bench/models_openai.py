"""openai backend benchmark: ``concurrency`` requests in flight vs sequential (concurrency 1), same prompts.

1. Against a local endpoint with a fixed per-request latency (``--delay``, default 50 ms; a stand-in for a remote
   server whose time goes to the network and a busy GPU): what bounded concurrency buys. Target >= 4x.
2. Against ``datacopilot serve`` (ChatServer over the paddle backend, batch 16) on the tiny LM: concurrent requests
   are batched by the server, so the speed-up is the batched generation's, minus HTTP overhead. Greedy, so both
   modes must return the same texts (checked and reported).

``bench_openai(args)`` is called by ``bench/models.py`` (``args.model_dir`` = its tiny LM, ``args.n``,
``args.max_new_tokens``, ``args.concurrency``) and returns markdown lines. Run alone, it builds a tiny LM in a
temporary directory, prints the lines and writes them to ``bench/RESULTS_models_openai.md``:

    python bench/models_openai.py                 # 128 prompts, 32 new tokens, concurrency 16
    python bench/models_openai.py --n 64 --delay 0.1 --out /tmp/r.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
WORDS = ["a", "red", "blue", "green", "circle", "square", "triangle", "small", "large", "the", "image", "shows",
         "on", "left", "right", "of", "above", "below", "next", "to", "picture", "photo", "object", "color",
         "shape"]


def prompts(n: int, seed: int = 0) -> list[str]:
    r = random.Random(seed)
    return [" ".join(r.choice(WORDS) for _ in range(r.randint(3, 60))) for _ in range(n)]


def latency_server(delay: float) -> ThreadingHTTPServer:
    """A chat-completions endpoint that answers every request after ``delay`` seconds (started in a thread)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True   # headers and body are separate writes: no 40 ms delayed-ACK stall

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(delay)
            words = body["messages"][-1]["content"].split()[: body.get("max_tokens", 16)]
            data = json.dumps({"choices": [{"index": 0, "finish_reason": "length",
                                            "message": {"role": "assistant", "content": " ".join(words)}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128    # the default backlog of 5 drops SYNs of 16 clients connecting at once

    httpd = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def timed(endpoint: str, reqs, concurrency: int, max_new_tokens: int):
    """(seconds, responses) for one pass of ``reqs`` through an OpenAIBackend, after a one-request warm-up."""
    from datacopilot.models.backends import ModelSpec
    from datacopilot.models.backends.openai import OpenAIBackend

    client = OpenAIBackend(ModelSpec(backend="openai", endpoint=endpoint, model="tiny", concurrency=concurrency,
                                     max_new_tokens=max_new_tokens, max_retries=2, timeout=300))
    try:
        client.generate(reqs[:1])
        t0 = time.perf_counter()
        out = client.generate(reqs)
        return time.perf_counter() - t0, out
    finally:
        client.close()


def compare(title: str, endpoint: str, reqs, args) -> list[str]:
    seq_s, seq = timed(endpoint, reqs, 1, args.max_new_tokens)
    con_s, con = timed(endpoint, reqs, args.concurrency, args.max_new_tokens)
    errors = sum(r.error is not None for r in seq + con)
    same = sum(a.text == b.text for a, b in zip(seq, con))
    n = len(reqs)
    ratio = seq_s / con_s
    return [f"### {title}", "",
            "| mode | seconds | requests/s |", "|---|---:|---:|",
            f"| sequential (concurrency 1) | {seq_s:.2f} | {n / seq_s:.1f} |",
            f"| concurrency {args.concurrency} | {con_s:.2f} | {n / con_s:.1f} |", "",
            (f"**concurrency {args.concurrency} / sequential: {ratio:.1f}x requests/s** (target >= 4x: "
            f"{'met' if ratio >= 4 else 'not met'}); identical texts: {same}/{n}; errors: {errors}."), ""]


def bench_openai(args) -> list[str]:
    """The openai part of bench/models.py: markdown lines (see the module docstring)."""
    from datacopilot.models.backends import ModelSpec, Request, load_backend

    from datacopilot.serve import ChatServer

    delay = getattr(args, "delay", 0.05)
    reqs = [Request([{"role": "user", "content": p}]) for p in prompts(args.n)]
    lines = ["## openai backend: concurrency vs sequential", "",
             (f"{args.n} chat requests of 3-60 words (seeded), max_tokens {args.max_new_tokens}, over HTTP on "
             f"127.0.0.1 (stdlib http.client, one keep-alive connection per worker thread)."), ""]
    httpd = latency_server(delay)
    try:
        lines += compare(f"endpoint with {delay * 1000:.0f} ms latency per request",
                         f"http://127.0.0.1:{httpd.server_address[1]}/v1", reqs, args)
    finally:
        httpd.shutdown()
        httpd.server_close()
    backend = load_backend(ModelSpec(backend="paddle", path=args.model_dir, batch_size=16,
                                     max_new_tokens=args.max_new_tokens))
    with ChatServer(backend, port=0, batch_size=16, max_wait=0.01) as server:
        lines += compare("`datacopilot serve` on the tiny LM (paddle backend, server batch 16, greedy)",
                         server.url, reqs, args)
        lines.append(f"The server ran {server.batches} batches for {server.requests} requests over both modes.")
    return lines


def build_model(directory: str, hidden: int = 128, layers: int = 2) -> str:
    from datacopilot.models.lm import build_tiny_lm
    from datacopilot.models.tokenizer import load_tokenizer, train_tokenizer

    train_tokenizer(prompts(500, seed=1), directory, vocab_size=400)
    return build_tiny_lm(directory, vocab_size=len(load_tokenizer(directory)), hidden=hidden, layers=layers,
                         heads=4, max_position=1024, seed=0, init_std=hidden ** -0.5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=128, help="number of requests")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--delay", type=float, default=0.05, help="latency of the stand-in endpoint, seconds")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS_models_openai.md"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        args.model_dir = build_model(os.path.join(tmp, "tiny_lm"))
        cmd = " ".join(argv if argv is not None else sys.argv[1:])
        lines = ["# openai backend benchmark", "",
                 (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
                 f"{platform.python_version()}, CPU. "
                  f"Command: `python bench/models_openai.py{' ' + cmd if cmd else ''}`."),
                 ""] + bench_openai(args)
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
