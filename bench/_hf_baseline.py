"""The pipeline benchmark's logic written per item in plain Python, and its HF datasets baseline.

The per-item functions below are the same rules as the datacopilot operators used by ``bench/pipeline.py``
(clean_whitespace -> filter_turns -> filter_length -> filter_repetition -> filter_refusals -> dedup_exact ->
dedup_near_text), written the way a user of a list of dicts or of HF datasets writes them. They need only the
standard library and ``datasketch``, so this file runs in the separate HF virtual environment as well:

    bench/_data/hf-venv/bin/python bench/_hf_baseline.py DATA.jsonl OUT_DIR [--num-proc 2]

prints one JSON line: ``{"seconds", "rows_out", "ids_sha", "stages": {...}}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time

# -- the parameters of the pipeline (bench/pipeline.py builds the same operators from these) --------------------
TURNS = (2, 8)  # filter_turns(min_turns, max_turns)
ANSWER_CHARS = (1, 1500)  # filter_length(role="assistant", unit="chars", min_length, max_length)
REP = {"char_n": 10, "max_char_ratio": 0.5, "word_n": 3, "max_word_ratio": 0.5}  # filter_repetition(role="assistant")
NEAR = {"threshold": 0.8, "num_perm": 128, "ngram": 5}  # dedup_near_text(unit="word")
LSH = (9, 13)  # bands, rows: datacopilot.kernels.minhash.lsh_params(0.8, 128)
SHARD_ROWS = 100_000
REFUSALS = (  # datacopilot.operators.conversation_filters.REFUSALS, matched case-insensitively
    r"as an ai( language)? model",
    r"as a language model",
    r"i('| a)m (sorry|afraid),? but i (can(no|')t|cannot|am unable|'m unable)",
    r"i (cannot|can't|am unable to|'m unable to) (help|assist|provide|comply|fulfill)",
    r"i('m| am) not able to (help|assist|provide|see|view)",
    r"(i don't|i do not) have (the ability|access) to",
)
_REFUSAL = re.compile("|".join(f"(?:{p})" for p in REFUSALS), re.IGNORECASE)
_CRLF, _SPACES, _NL_SP, _NLS = (re.compile(p) for p in (r"\r\n?", r"[ \t\f\v\xa0\u3000]+", r" ?\n ?", r"\n{3,}"))
_WS = re.compile(r"[ \t\n\r\f\v]+")


def clean_text(s: str) -> str:
    s = _CRLF.sub("\n", s)
    s = _SPACES.sub(" ", s)
    s = _NL_SP.sub("\n", s)
    return _NLS.sub("\n\n", s).strip()


def clean_row(row: dict) -> dict:
    return {**row, "conversations": [{"from": t["from"], "value": clean_text(t["value"])}
                                     for t in row["conversations"]]}


def answers(row: dict) -> list[str]:
    return [t["value"] for t in row["conversations"] if t["from"] == "gpt"]


def keep_turns(row: dict) -> bool:
    return TURNS[0] <= len(row["conversations"]) <= TURNS[1]


def keep_length(row: dict) -> bool:
    return all(ANSWER_CHARS[0] <= len(a) <= ANSWER_CHARS[1] for a in answers(row))


def _repeated(tokens, n: int) -> float:
    total = len(tokens) - n + 1
    if total <= 1:
        return 0.0
    grams = {tokens[i:i + n] for i in range(total)} if isinstance(tokens, str) else \
        {tuple(tokens[i:i + n]) for i in range(total)}
    return 1.0 - len(grams) / total


def keep_repetition(row: dict) -> bool:
    text = "\n".join(answers(row))
    if _repeated(text, REP["char_n"]) > REP["max_char_ratio"]:
        return False
    return _repeated(text.split(), REP["word_n"]) <= REP["max_word_ratio"]


def keep_refusals(row: dict) -> bool:
    return not any(_REFUSAL.search(a) for a in answers(row))


FILTERS = (keep_turns, keep_length, keep_repetition, keep_refusals)


def norm_text(row: dict) -> str:
    """The row's turns joined by newlines, lowercased, whitespace runs collapsed (what dedup compares)."""
    return _WS.sub(" ", "\n".join(t["value"] for t in row["conversations"]).lower()).strip()


def exact_key(row: dict) -> int:
    """A 63-bit key of the normalized text (BLAKE2b: the same in every process, unlike ``hash``)."""
    digest = hashlib.blake2b(norm_text(row).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def minhash_values(row: dict):
    """datasketch MinHash over the row's word 5-gram shingles (the whole text when shorter): its hash values."""
    from datasketch import MinHash

    words = norm_text(row).split()
    n = NEAR["ngram"]
    shingles = [" ".join(words[i:i + n]).encode() for i in range(max(len(words) - n + 1, 1))] if words else []
    m = MinHash(num_perm=NEAR["num_perm"])
    m.update_batch(shingles)
    return m.hashvalues


class NearDedup:
    """MinHash-LSH over rows in order: a row is dropped when it shares a band with an earlier row (datasketch's
    candidate rule, no Jaccard check, as datacopilot's dedup_near_text); every row is inserted, so near-duplicate
    chains join."""

    def __init__(self):
        from datasketch import MinHashLSH

        self.lsh = MinHashLSH(num_perm=NEAR["num_perm"], params=LSH)

    def is_dup(self, key: int, hashvalues) -> bool:
        from datasketch import MinHash

        m = MinHash(num_perm=NEAR["num_perm"], hashvalues=hashvalues, scheme="affine32")
        dup = bool(self.lsh.query(m))
        self.lsh.insert(key, m)
        return dup


def ids_digest(ids) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


# -- HF datasets ---------------------------------------------------------------------------------------------
def _batch_rows(batch: dict):
    keys = list(batch)
    return [dict(zip(keys, vals)) for vals in zip(*(batch[k] for k in keys))]


def hf_clean(batch: dict) -> dict:
    return {"conversations": [[{"from": t["from"], "value": clean_text(t["value"])} for t in conv]
                              for conv in batch["conversations"]]}


def hf_keep(batch: dict) -> list[bool]:
    rows = [{"conversations": c} for c in batch["conversations"]]
    return [all(f(r) for f in FILTERS) for r in rows]


def hf_keys(batch: dict) -> dict:
    rows = [{"conversations": c} for c in batch["conversations"]]
    return {"_key": [exact_key(r) for r in rows],
            "_mh": [minhash_values(r).tolist() for r in rows]}


def run_hf(path: str, out_dir: str, num_proc: int) -> dict:
    import datasets
    import numpy as np

    datasets.disable_progress_bars()
    cache = os.path.join(out_dir, "cache")
    t0 = time.perf_counter()
    stages = {}
    ds = datasets.load_dataset("json", data_files=path, split="train", cache_dir=cache)
    stages["load"] = time.perf_counter() - t0
    ds = ds.map(hf_clean, batched=True, num_proc=num_proc)
    ds = ds.filter(hf_keep, batched=True, num_proc=num_proc)
    ds = ds.map(hf_keys, batched=True, num_proc=num_proc)
    stages["clean+filter+signatures"] = time.perf_counter() - t0 - stages["load"]
    t1 = time.perf_counter()
    seen, near, keep = set(), NearDedup(), []
    i = 0
    for batch in ds.select_columns(["_key", "_mh"]).with_format("numpy").iter(batch_size=10_000):
        for k, mh in zip(batch["_key"].tolist(), batch["_mh"]):  # stateful: one process, in row order
            if k not in seen:
                seen.add(k)
                if not near.is_dup(i, np.asarray(mh, np.uint64)):
                    keep.append(i)
            i += 1
    ds = ds.select(keep).remove_columns(["_key", "_mh"])
    stages["dedup"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    ds.save_to_disk(os.path.join(out_dir, "shards"), num_shards=max(1, -(-len(ds) // SHARD_ROWS)))
    stages["write"] = time.perf_counter() - t2
    return {"seconds": time.perf_counter() - t0, "rows_out": len(ds), "ids_sha": ids_digest(ds["id"]),
            "stages": {k: round(v, 2) for k, v in stages.items()}, "datasets": datasets.__version__}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("out_dir")
    ap.add_argument("--num-proc", type=int, default=2)
    a = ap.parse_args()
    sys.setrecursionlimit(10000)
    print(json.dumps(run_hf(a.path, a.out_dir, a.num_proc)))
