"""The HF datasets side of ``bench/formats.py``: a small server that times one load or write per request.

Runs in the HF virtual environment (``bench/_data/hf-venv``, see ``bench/pipeline.py``), so it needs only the
standard library, ``datasets`` and ``polars``:

    bench/_data/hf-venv/bin/python bench/_hf_formats.py

reads one JSON request a line on stdin, ``{"op": "load", "fmt": "jsonl", "path": ...}`` or ``{"op": "write",
"fmt": "parquet", "src": PARQUET, "path": OUT}``, and answers one JSON line ``{"seconds", "rows"}`` (or
``{"error"}``) on stdout. ``{"op": "version"}`` answers ``{"datasets": "2.21.0"}``. Each load gets an empty cache
directory, so no load finds the previous one's Arrow cache; the dataset a write starts from is read before the
clock starts.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time


def _load(fmt: str, path: str, cache: str):
    import datasets

    if fmt in ("jsonl", "jsonl-int-ids", "json"):
        return datasets.load_dataset("json", data_files=path, split="train", cache_dir=cache)
    if fmt == "parquet":
        return datasets.Dataset.from_parquet(path, cache_dir=cache)
    if fmt == "webdataset":
        return datasets.load_dataset("webdataset", data_files=path, split="train", cache_dir=cache)
    if fmt == "hf":
        return datasets.load_from_disk(path)
    if fmt == "polars":  # an in-memory polars DataFrame: read before the clock starts
        raise ValueError("polars is timed by _from_polars")
    raise ValueError(f"no HF loader for {fmt!r}")


def _from_polars(path: str) -> tuple[float, int]:
    import datasets
    import polars as pl

    df = pl.read_ipc(path)
    t0 = time.perf_counter()
    ds = datasets.Dataset.from_polars(df)
    return time.perf_counter() - t0, len(ds)


def _write(fmt: str, src: str, path: str) -> float:
    import datasets

    ds = datasets.Dataset.from_parquet(src, cache_dir=os.path.join(os.path.dirname(path), "hf-write-cache"))
    t0 = time.perf_counter()
    if fmt == "jsonl":
        ds.to_json(path, lines=True)
    elif fmt == "json":
        ds.to_json(path, lines=False)
    elif fmt == "parquet":
        ds.to_parquet(path)
    elif fmt == "hf":
        ds.save_to_disk(path)
    elif fmt == "polars":
        ds.to_polars()
    else:
        raise ValueError(f"no HF writer for {fmt!r}")
    return time.perf_counter() - t0


def handle(req: dict) -> dict:
    import datasets

    datasets.disable_progress_bars()
    if req["op"] == "version":
        return {"datasets": datasets.__version__}
    if req["op"] == "write":
        return {"seconds": _write(req["fmt"], req["src"], req["path"]), "rows": None}
    if req["fmt"] == "polars":
        seconds, rows = _from_polars(req["path"])
        return {"seconds": seconds, "rows": rows}
    cache = tempfile.mkdtemp(prefix="hf-formats-cache-", dir=req.get("tmp"))
    try:
        t0 = time.perf_counter()
        ds = _load(req["fmt"], req["path"], cache)
        rows = len(ds)
        return {"seconds": time.perf_counter() - t0, "rows": rows}
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main() -> int:
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            out = handle(json.loads(line))
        except Exception as e:  # the bench reports it and goes on without this figure
            out = {"error": f"{type(e).__name__}: {e}"[:2000]}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
