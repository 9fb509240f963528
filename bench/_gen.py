"""Synthetic LLaVA-style MM rows for the benchmarks: deterministic, fast, realistic text lengths.

Each row: ``{"id", "image": "images/0000123.jpg", "conversations": [{"from": "human", "value": "<image>\\n..."},
{"from": "gpt", "value": "..."}, ...]}`` with 1-4 human/gpt exchanges; about 8% of rows are text-only (no
``image`` key and no ``<image>`` token). Questions are 10-26 words; answers are lognormal in words (median
~40, long tail up to 1,200), with an occasional paragraph break or doubled space, as found in real data.

Text is cut from one long pseudo-word stream (Zipf-distributed vocabulary, a few non-ASCII words), so a
million rows take well under a minute to write.

>>> write_jsonl("/tmp/mm.jsonl", 1000)  # doctest: +SKIP
{'rows': 1000, 'bytes': 798734, ...}
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

VERSION = 1  # bump when the generated data changes, so cached files are regenerated
SEED = 20240601
PAIRS_P = (0.55, 0.27, 0.12, 0.06)  # 1, 2, 3, 4 exchanges
TEXT_ONLY = 0.08
ANSWER_MEDIAN_WORDS, ANSWER_SIGMA, ANSWER_MAX = 40, 0.7, 1200
QUESTION_WORDS = (10, 26)
_SYLLABLES = ("ka ri to ne sa mi lo de an el is or un ve ta ro ma li po su ge ha ni te bo ra se fi ".split()
              + ["the", "and", "of", "in", "to", "is", "on", "with", "a"])
_EXTRA = ["café", "naïve", "Zürich", "东京", "façade", "résumé", "über", "piñata"]
_STARTS = ["What", "How", "Why", "Where", "Which", "Describe", "Can you explain", "Is there", "What color is",
           "How many", "Who"]


def _vocabulary(rng: np.random.Generator, size: int = 4000) -> list[str]:
    words = set()
    while len(words) < size:
        k = int(rng.choice((1, 2, 3), p=(0.3, 0.55, 0.15)))
        words.add("".join(rng.choice(_SYLLABLES, k)))
    return sorted(words) + _EXTRA


def _stream(rng: np.random.Generator, vocab: list[str], n_words: int, breaks: bool) -> tuple[str, np.ndarray]:
    """One long text of ``n_words`` words and the offset where each word starts (plus the end)."""
    ranks = np.arange(1, len(vocab) + 1)
    p = 1.0 / ranks
    p /= p.sum()
    idx = rng.choice(len(vocab), n_words, p=p)
    u = rng.random(n_words)
    seps = np.full(n_words, " ", dtype=object)
    seps[u < 0.08] = ". "
    seps[(u >= 0.08) & (u < 0.12)] = ", "
    if breaks:
        seps[u > 0.996] = ".\n\n"
        seps[(u > 0.990) & (u <= 0.996)] = "  "
    tokens = [vocab[i] + s for i, s in zip(idx.tolist(), seps.tolist())]
    offsets = np.zeros(n_words + 1, dtype=np.int64)
    np.cumsum([len(t) for t in tokens], out=offsets[1:])
    return "".join(tokens), offsets


class _Texts:
    def __init__(self, rng: np.random.Generator, vocab: list[str], n_words: int, breaks: bool):
        self.text, self.off = _stream(rng, vocab, n_words, breaks)
        self.n = len(self.off) - 1
        self.rng = rng

    def cut(self, starts: np.ndarray, lengths: np.ndarray) -> list[str]:
        t, off = self.text, self.off
        return [t[off[s]:off[s + k]].strip(" ,.\n") for s, k in zip(starts.tolist(), lengths.tolist())]

    def starts(self, lengths: np.ndarray) -> np.ndarray:
        return (self.rng.random(len(lengths)) * (self.n - lengths)).astype(np.int64)


def rows(n: int, seed: int = SEED, chunk: int = 50_000):
    """Yield ``n`` rows (dicts), deterministically for a given seed."""
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng)
    answers = _Texts(rng, vocab, 4_000_000, breaks=True)
    questions = _Texts(rng, vocab, 1_000_000, breaks=False)
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        pairs = rng.choice(np.arange(1, 5), m, p=PAIRS_P)
        total = int(pairs.sum())
        alen = np.clip(np.round(rng.lognormal(np.log(ANSWER_MEDIAN_WORDS), ANSWER_SIGMA, total)), 1, ANSWER_MAX)
        alen = alen.astype(np.int64)
        qlen = rng.integers(QUESTION_WORDS[0], QUESTION_WORDS[1] + 1, total)
        atext = answers.cut(answers.starts(alen), alen)
        qtext = questions.cut(questions.starts(qlen), qlen)
        qstart = rng.integers(0, len(_STARTS), total).tolist()
        has_image = (rng.random(m) >= TEXT_ONLY).tolist()
        j = 0
        for i in range(m):
            conv = []
            for t in range(int(pairs[i])):
                q = f"{_STARTS[qstart[j]]} {qtext[j]}?"
                if t == 0 and has_image[i]:
                    q = "<image>\n" + q
                conv.append({"from": "human", "value": q})
                conv.append({"from": "gpt", "value": atext[j][:1].upper() + atext[j][1:] + "."})
                j += 1
            k = lo + i
            row = {"id": f"{k:07d}"}
            if has_image[i]:
                row["image"] = f"images/{k:07d}.jpg"
            row["conversations"] = conv
            yield row


def write_rows(path: str, rows) -> None:
    """Write the dicts ``rows`` to ``path`` as jsonl, atomically (a temporary file renamed over it)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        buf = []
        for row in rows:
            buf.append(json.dumps(row, ensure_ascii=False))
            if len(buf) >= 10_000:
                f.write("\n".join(buf) + "\n")
                buf = []
        if buf:
            f.write("\n".join(buf) + "\n")
    os.replace(tmp, path)


def write_jsonl(path: str, n: int, seed: int = SEED) -> dict:
    """Write ``n`` rows to ``path`` (atomically) and return ``{"rows", "bytes", "seconds", "version", "seed"}``."""
    t0 = time.perf_counter()
    write_rows(path, rows(n, seed))
    return {"rows": n, "bytes": os.path.getsize(path), "seconds": round(time.perf_counter() - t0, 1),
            "version": VERSION, "seed": seed}


if __name__ == "__main__":
    import sys

    out = write_jsonl(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
    print(out)
