"""Dataset-wide pipeline stages (``merge_same_image``, ``sort``, ``shuffle``): time and peak memory of each,
streaming, side by side with the same stage written the plain Python way (every row loaded as a dict).

Input: the generated LLaVA-style rows of ``bench/pipeline.py`` (cached jsonl in ``bench/_data``), with the images
shared: row ``k``'s image becomes ``images/{(k * 2654435761) % (rows // 3):07d}.jpg`` (about three rows an image,
scattered over the whole file; text-only rows keep no image). Each side writes its result to disk in its own way
(datacopilot Arrow shards, its default; Python one jsonl file) and the output ids are checked equal. Each run is a
fresh subprocess whose resident memory (with its children) is sampled every 0.1 s (the output ids are read
afterwards, by the parent).

* merge: ``merge_same_image(max_turns=8)`` vs a dict from image to its open group;
* sort: ``sort(by="image.path")`` vs ``list.sort`` on the path (stable, rows without an image last);
* shuffle: ``shuffle(seed=0)`` vs ``rows[numpy.random.default_rng(0).permutation(n)]``.

datacopilot runs ``dc.pipeline(jsonl, schema="MM").apply([share_images, STAGE]).write(out)`` on the local
executor: the stage spills the rows to a memory-mapped Arrow file and keeps only what it must (16 bytes a row for
the merge, the key column for the sort, nothing until the permutation for the shuffle).

    python bench/dataset_wide.py                    # 1,000,000 rows (~0.84 GB of jsonl), all three stages
    python bench/dataset_wide.py --rows 100000      # quick
    python bench/dataset_wide.py --only-dc --rows 4800000 --stage merge   # ~4 GB (the Python way needs ~15 GB)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from engine import log  # noqa: E402
from pipeline import ensure_data, tree_rss  # noqa: E402

MAX_TURNS = 8
STAGES = ("merge", "sort", "shuffle")
IMAGE = "<image>"


def image_of(k: int, rows: int) -> str:
    return f"images/{(k * 2654435761) % max(rows // 3, 1):07d}.jpg"


# -- datacopilot ------------------------------------------------------------------------------------------
def dc_way(stage: str, path: str, out: str, rows: int) -> dict:
    import numpy as np
    import pyarrow as pa
    from datacopilot.operators import Mapper, create

    import datacopilot as dc

    class ShareImages(Mapper):
        """Row k's image path becomes :func:`image_of` (rows without an image keep none)."""

        name, reads, writes = "share_images", ("id", "image"), ("image",)

        def map_batch(self, batch):
            t = pa.Table.from_batches([batch])
            k = np.asarray(t.column("id").to_pylist(), dtype=np.int64)
            paths = pa.array([image_of(int(i), rows) for i in k])
            img = t.column("image").combine_chunks()
            new = pa.StructArray.from_arrays([paths, pa.nulls(len(k), pa.binary())], names=["path", "bytes"],
                                             mask=img.is_null())
            return t.set_column(t.schema.get_field_index("image"), "image", new.cast(img.type))

    op = {"merge": lambda: create("merge_same_image", max_turns=MAX_TURNS),
          "sort": lambda: create("sort", by="image.path"), "shuffle": lambda: create("shuffle", seed=0)}[stage]()
    t0 = time.perf_counter()
    report = dc.pipeline(path, schema="MM").apply([ShareImages(), op]).write(out, progress=False)
    return {"seconds": time.perf_counter() - t0, "rows_out": report["rows"]}  # ids: read by the parent


# -- the plain Python way ---------------------------------------------------------------------------------
def python_way(stage: str, path: str, out: str, rows: int) -> dict:
    t0 = time.perf_counter()
    with open(path, encoding="utf-8") as f:
        data = [json.loads(line) for line in f]
    for r in data:
        if r.get("image"):
            r["image"] = image_of(int(r["id"]), rows)
    if stage == "merge":
        data = _merged(data)
    elif stage == "sort":
        data.sort(key=lambda r: (r.get("image") is None, r.get("image") or ""))
    else:
        import numpy as np

        data = [data[i] for i in np.random.default_rng(0).permutation(len(data))]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "part-00000.jsonl"), "w", encoding="utf-8") as f:
        for r in data:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return {"seconds": time.perf_counter() - t0, "rows_out": len(data), "ids": _digest([r["id"] for r in data])}


def _merged(data: list[dict]) -> list[dict]:
    groups, open_at = [], {}
    for r in data:
        n = sum(t["from"] == "human" for t in r["conversations"])  # exchanges: a question and its answers
        g = open_at.get(r.get("image")) if r.get("image") and n else None
        if g is not None and groups[g][1] + n <= MAX_TURNS:
            groups[g][0].append(r)
            groups[g][1] += n
            continue
        groups.append([[r], n])
        if r.get("image") and n:
            open_at[r["image"]] = len(groups) - 1
    out = []
    for members, _ in groups:
        first = dict(members[0])
        conv = list(first["conversations"])
        for m in members[1:]:
            conv += [{**t, "value": t["value"].replace(IMAGE + "\n", "").replace(IMAGE, "")}
                     for t in m["conversations"]]
        first["conversations"] = conv
        first["id"] = "+".join(m["id"] for m in members)
        out.append(first)
    return out


def _digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


# -- runs ---------------------------------------------------------------------------------------------------
def sampled(way: str, stage: str, path: str, out: str, rows: int, every: float = 0.1) -> dict:
    """One way in a fresh subprocess, its process tree's resident memory sampled."""
    import psutil

    shutil.rmtree(out, ignore_errors=True)
    spec = {"way": way, "stage": stage, "path": path, "out": out, "rows": rows}
    child = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    got: dict = {}
    reader = threading.Thread(target=lambda: got.update(zip(("out", "err"), child.communicate())))
    reader.start()
    proc, peak = psutil.Process(child.pid), 0.0
    while child.poll() is None:
        peak = max(peak, tree_rss(proc) / 2**20)
        time.sleep(every)
    reader.join()
    if child.returncode:
        raise SystemExit(f"{way} {stage} run failed:\n{got.get('err', '')[-3000:]}")
    res = json.loads(got["out"].strip().splitlines()[-1])
    res["peak_mb"] = peak
    if "ids" not in res:  # read here, after the run, so that loading them is not in the run's memory
        import datacopilot as dc

        res["ids"] = _digest(dc.load(out).to_arrow().column("id").to_pylist())
    shutil.rmtree(out, ignore_errors=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--stage", choices=STAGES, action="append", help="one stage (repeatable); default: all")
    ap.add_argument("--workdir", default=os.path.join(HERE, "_data"))
    ap.add_argument("--only-dc", action="store_true", help="skip the Python way (large inputs)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        spec = json.loads(a.child)
        fn = dc_way if spec["way"] == "datacopilot" else python_way
        print(json.dumps(fn(spec["stage"], spec["path"], spec["out"], spec["rows"])))
        return 0
    path = ensure_data(a.workdir, a.rows)
    mb = os.path.getsize(path) / 2**20
    lines, ok = [], True
    for stage in a.stage or STAGES:
        res = {}
        for way in ("datacopilot",) + (() if a.only_dc else ("python",)):
            log(f"{stage}, {way}: {a.rows:,} rows ({mb:,.0f} MB of jsonl) ...")
            res[way] = r = sampled(way, stage, path, os.path.join(a.workdir, f"wide_out_{way}"), a.rows)
            log(f"   {r['seconds']:.1f} s, {a.rows:,} -> {r['rows_out']:,} rows, peak RSS {r['peak_mb']:,.0f} MB")
        d, p = res["datacopilot"], res.get("python")
        line = f"{stage:8s} {d['seconds']:7.1f} s {d['peak_mb']:7,.0f} MB ({d['peak_mb'] / mb:.2f} x input)"
        if p:
            same = p["ids"] == d["ids"]
            ok &= same
            line += (f" | python {p['seconds']:7.1f} s {p['peak_mb']:7,.0f} MB | time {p['seconds'] / d['seconds']:.1f}x"
                     f", memory 1/{p['peak_mb'] / d['peak_mb']:.1f} | {'same ids' if same else 'IDS DIFFER'}")
        lines.append(line)
    print(f"\ninput {mb:,.0f} MB jsonl, {a.rows:,} rows")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
