"""Model backends benchmark: batched vs per-item generation on the tiny LM, and (hook) the openai backend.

1. ``paddle``: the same prompts (seeded, 3 to 60 words) answered by :class:`PaddleBackend` with ``batch_size=16``
   (length-bucketed, left-padded batches over the KV cache) and with ``batch_size=1`` (one request per call, how
   data-juicer's and DataCopilot's model operators loop). Greedy, so both must give the same texts (checked and
   reported). Samples/s and generated tokens/s, best of ``--repeat``, after one warm-up call each; target >= 4x.
2. ``openai``: ``bench_openai(args)`` below calls ``bench/models_openai.py`` when present (concurrency 16 vs
   sequential against ``datacopilot serve`` over the same tiny LM, ``args.model_dir``) and adds its lines.

The tiny LM (a sentencepiece tokenizer trained on the prompts' words and a random-weight PaddleNLP Llama) is built
in a temporary directory. Prints a table and writes it to ``bench/RESULTS_models.md``.

    python bench/models.py                      # 128 prompts, 32 new tokens, batch 16
    python bench/models.py --n 64 --out /tmp/r.md --no-openai
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORDS = ("a red blue green yellow circle square triangle small large the image shows on left right of top bottom "
         "and with next to picture photo describe what is in color shape").split()
TARGET = 4.0


def make_prompts(n: int, seed: int = 0) -> list[str]:
    r = random.Random(seed)
    return [" ".join(r.choice(WORDS) for _ in range(r.randint(3, 60))) for _ in range(n)]


def build_model(directory: str, hidden: int, layers: int) -> str:
    from datacopilot.models.lm import build_tiny_lm
    from datacopilot.models.tokenizer import load_tokenizer, train_tokenizer

    train_tokenizer(make_prompts(500, seed=1), directory, vocab_size=400)
    vocab = len(load_tokenizer(directory))
    return build_tiny_lm(directory, vocab_size=vocab, hidden=hidden, layers=layers, heads=4, max_position=1024,
                         init_std=hidden ** -0.5)


def run(backend, requests, repeat: int) -> tuple[float, list]:
    """Best wall time of ``repeat`` runs of ``backend.generate`` over ``requests`` (one call per batch_size
    chunk, so batch_size=1 means one call per request) and the responses."""
    backend.generate(requests[:backend.spec.batch_size])           # warm-up: kernels, allocator
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = backend.generate(requests)
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_paddle(args) -> list[str]:
    import paddle

    from datacopilot.models.backends import ModelSpec, Request, load_backend

    from paddlenlp.utils.log import logger

    logger.set_level("WARNING")                                      # no per-load INFO lines
    paddle.set_device("cpu")
    requests = [Request([{"role": "user", "content": p}]) for p in make_prompts(args.n)]
    rows, texts = [], {}
    for label, bs in (("per-item (batch_size=1)", 1), (f"batched (batch_size={args.batch_size})", args.batch_size)):
        backend = load_backend(ModelSpec(backend="paddle", path=args.model_dir, max_new_tokens=args.max_new_tokens,
                                         batch_size=bs))
        seconds, out = run(backend, requests, args.repeat)
        tokens = sum(r.usage.get("completion_tokens", 0) for r in out)
        texts[bs] = [r.text for r in out]
        rows.append((label, seconds, len(requests) / seconds, tokens / seconds))
        print(f"{label:28s} {seconds:8.2f} s {len(requests) / seconds:9.1f} samples/s {tokens / seconds:9.0f} tok/s",
              flush=True)
    same = sum(a == b for a, b in zip(texts[1], texts[args.batch_size]))
    ratio = rows[1][2] / rows[0][2]
    lines = [
        f"## paddle backend: batched vs per-item generation (tiny LM, hidden {args.hidden}, {args.layers} layers)", "",
        f"{args.n} prompts of 3-60 words (seeded), greedy, max_new_tokens {args.max_new_tokens}, best of "
        f"{args.repeat} after a warm-up call; KV cache, left padding, length-bucketed batches.", "",
        "| mode | seconds | samples/s | generated tokens/s |", "|---|---:|---:|---:|",
        *[f"| {label} | {s:.2f} | {sps:.1f} | {tps:.0f} |" for label, s, sps, tps in rows], "",
        f"**batched / per-item: {ratio:.1f}x samples/s** (target >= {TARGET:.0f}x: "
        f"{'met' if ratio >= TARGET else 'NOT met'}); identical texts: {same}/{len(requests)}.", "",
    ]
    print(f"ratio {ratio:.2f}x, identical texts {same}/{len(requests)}")
    return lines


def bench_openai(args) -> list[str] | None:
    """Hook for the openai part: ``bench/models_openai.py`` defines ``bench_openai(args) -> list[str]`` (markdown
    lines); ``args.model_dir`` is the tiny LM, ``args.n``, ``args.max_new_tokens`` and ``args.concurrency`` the
    settings. Returns None when that file is absent."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    try:
        from models_openai import bench_openai as impl
    except ImportError as e:
        if getattr(e, "name", None) != "models_openai":
            raise
        return None
    return impl(args)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=128, help="number of prompts")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=16, help="openai part: requests in flight")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-openai", action="store_true", help="skip the openai part")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS_models.md"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        args.model_dir = build_model(os.path.join(tmp, "tiny_lm"), args.hidden, args.layers)
        lines = ["# Model backends benchmark", "",
                 f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
                 f"{platform.python_version()}, CPU. Command: `python bench/models.py"
                 f"{' ' + ' '.join(argv if argv is not None else sys.argv[1:]) if (argv or sys.argv[1:]) else ''}`.",
                 ""]
        lines += bench_paddle(args)
        extra = None if args.no_openai else bench_openai(args)
        if extra:
            lines += extra
        elif not args.no_openai:
            lines += ["## openai backend", "", "(bench/models_openai.py not present: not measured)", ""]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
