"""One big jsonl file read on Ray: in parts (``RayOptions.split_bytes``, a task per ~64 MB byte range) vs one task
for the whole file, on a local Ray of 2 CPUs. Prints the time of each, their ratio and checks both give the same
ids in the same order.

Input: the generated LLaVA-style rows of ``bench/_gen.py`` (cached in ``bench/_data/split_{rows}.jsonl``), read with
``schema="MM"`` (validated, invalid rows quarantined: there are none) and no operator: the time is the read's
(``execute`` up to the materialized blocks). The file is read once before the timed runs, so both come from the
page cache; each mode runs ``--repeat`` times and the best is kept.

    python bench/split_read.py                     # 2,000,000 rows (~1.6 GB)
    python bench/split_read.py --rows 200000       # quick
    python bench/split_read.py --split-mb 32 --cpus 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import _gen  # noqa: E402


def ensure(rows: int) -> str:
    path = os.path.join(HERE, "_data", f"split_{rows}.jsonl")
    meta_path = path[:-len(".jsonl")] + ".json"
    want = {"rows": rows, "gen": _gen.VERSION}
    if os.path.exists(path) and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if {k: meta.get(k) for k in want} == want and meta.get("bytes") == os.path.getsize(path):
            return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    print(f"generating {rows} rows into {path} ...", flush=True)
    _gen.write_jsonl(path + ".tmp", rows)
    os.replace(path + ".tmp", path)
    with open(meta_path, "w") as f:
        json.dump({**want, "bytes": os.path.getsize(path)}, f)
    return path


def read_once(ray, path: str, split_bytes: int | None) -> tuple[float, list, int]:
    """(seconds, the ids in order, blocks) of one read of ``path`` on Ray."""
    from datacopilot.executors.ray import RayOptions, execute
    from datacopilot.source import Source

    src = Source.from_paths(path, schema="MM")
    t0 = time.perf_counter()
    got = execute(src, [], "quarantine", batch_size=1024, options=RayOptions(split_bytes=split_bytes))
    seconds = time.perf_counter() - t0
    refs = got[1]
    ids = ray.remote(lambda t: t.column("id").to_pylist())
    out = [i for chunk in ray.get([ids.remote(r) for r in refs]) for i in chunk]
    if src.bad:
        raise SystemExit(f"{len(src.bad)} invalid rows: {src.bad[0][1]}")
    return seconds, out, len(refs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--split-mb", type=int, default=64, help="bytes per part, in MB")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    path = ensure(args.rows)
    size = os.path.getsize(path)
    with open(path, "rb") as f:  # into the page cache, for both modes alike
        while f.read(64 << 20):
            pass
    import ray

    from datacopilot.source import Source

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    split = args.split_mb << 20
    n_parts = len(Source.from_paths(path, schema="MM").parts(path, split, 8192)) or 1
    best: dict = {}
    ids: dict = {}
    for _ in range(args.repeat):
        for name, sb in (("one task per file", None), (f"split ({n_parts} parts)", split)):
            seconds, got, blocks = read_once(ray, path, sb)
            if name in ids and ids[name] != got:
                raise SystemExit(f"{name}: another run gave other ids")
            ids[name] = got
            best[name] = min(best.get(name, seconds), seconds)
            print(f"  {name:<22} {seconds:7.2f} s  {blocks} blocks", flush=True)
    a, b = ids.values()
    if a != b:
        raise SystemExit("the split read gave other ids than the whole-file read")
    (n1, t1), (n2, t2) = best.items()
    print(f"{args.rows:,} rows, {size / 1e6:,.0f} MB of jsonl, {args.cpus} CPUs, parts of {args.split_mb} MB")
    print(f"{n1:<22} {t1:7.2f} s  {args.rows / t1:10,.0f} rows/s")
    print(f"{n2:<22} {t2:7.2f} s  {args.rows / t2:10,.0f} rows/s")
    print(f"speed-up: {t1 / t2:.2f}x  (same {len(a):,} ids in the same order)")
    ray.shutdown()


if __name__ == "__main__":
    main()
