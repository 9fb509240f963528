"""Groupers on Ray (``sort``, ``shuffle``, ``merge_same_image``): the distributed stages (datacopilot/executors/
ray_group.py: range- or hash-partitioned, the driver holding per-block counts and references) side by side with
the previous approach (the order decided on the driver from every row's signature, then each output task fetching
every block that holds one of its rows), on one node.

Input: the generated LLaVA-style rows of ``bench/pipeline.py`` (cached jsonl in ``bench/_data``), images shared as
in ``bench/dataset_wide.py`` (about three rows an image, scattered). Each run is
``dc.pipeline(jsonl, schema="MM").apply([share_images, STAGE]).write(out, executor=ray)`` by a fresh driver
process attached to one local Ray instance (``--cpus`` CPUs, started once by this script), so the driver's
resident memory (sampled every 0.05 s, that process alone: the Ray workers are not its children) is what the
stage costs the driver; the previous approach is ``RayOptions(barriers="driver")``. Both outputs' ids are checked
equal.

    python bench/ray_group.py                      # 200,000 rows, all three stages
    python bench/ray_group.py --rows 50000 --stage shuffle
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
from dataset_wide import image_of  # noqa: E402
from engine import log  # noqa: E402
from pipeline import ensure_data  # noqa: E402

STAGES = ("sort", "shuffle", "merge")
WAYS = ("partitioned", "driver")  # RayOptions.barriers


def child(spec: dict) -> dict:
    """One run as the driver of the Ray instance at ``spec["address"]``."""
    import numpy as np
    import pyarrow as pa
    import ray
    from datacopilot.operators import Mapper, create

    import datacopilot as dc
    from datacopilot.executors import get_executor, ray_group

    rows = spec["rows"]

    class ShareImages(Mapper):
        """Row k's image path becomes ``image_of(k)`` (rows without an image keep none)."""

        name, reads, writes = "share_images", ("id", "image"), ("image",)

        def map_batch(self, batch):
            t = pa.Table.from_batches([batch])
            k = np.asarray(t.column("id").to_pylist(), dtype=np.int64)
            paths = pa.array([image_of(int(i), rows) for i in k])
            img = t.column("image").combine_chunks()
            new = pa.StructArray.from_arrays([paths, pa.nulls(len(k), pa.binary())], names=["path", "bytes"],
                                             mask=img.is_null())
            return t.set_column(t.schema.get_field_index("image"), "image", new.cast(img.type))

    op = {"merge": lambda: create("merge_same_image", max_turns=8), "sort": lambda: create("sort", by="image.path"),
          "shuffle": lambda: create("shuffle", seed=0)}[spec["stage"]]()
    ray.init(address=spec["address"], log_to_driver=False)
    ex = get_executor("ray", block_rows=spec["block_rows"], barriers=spec["way"])
    t0 = time.perf_counter()
    report = dc.pipeline(spec["path"], schema="MM").apply([ShareImages(), op]).write(spec["out"], executor=ex)
    return {"seconds": time.perf_counter() - t0, "rows_out": report["rows"], **ray_group.DRIVER}


def sampled(spec: dict, every: float = 0.05) -> dict:
    """One run in a fresh driver process, its resident memory sampled (baseline: once Ray is attached)."""
    import psutil

    shutil.rmtree(spec["out"], ignore_errors=True)
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    got: dict = {}
    reader = threading.Thread(target=lambda: got.update(zip(("out", "err"), proc.communicate())))
    reader.start()
    p, peak = psutil.Process(proc.pid), 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, p.memory_info().rss / 2**20)
        except psutil.Error:
            break
        time.sleep(every)
    reader.join()
    if proc.returncode:
        raise SystemExit(f"{spec['way']} {spec['stage']} failed:\n{got.get('err', '')[-3000:]}")
    res = json.loads(got["out"].strip().splitlines()[-1])
    res["peak_mb"] = peak
    import datacopilot as dc

    ids = dc.load(spec["out"]).to_arrow().column("id").to_pylist()
    res["ids"] = hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()[:16]
    shutil.rmtree(spec["out"], ignore_errors=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--stage", choices=STAGES, action="append", help="one stage (repeatable); default: all")
    ap.add_argument("--block-rows", type=int, default=8192)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--workdir", default=os.path.join(HERE, "_data"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return 0
    import ray

    path = ensure_data(a.workdir, a.rows)
    ctx = ray.init(address="local", num_cpus=a.cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    lines, ok = [], True
    base = {"path": path, "rows": a.rows, "block_rows": a.block_rows, "address": ctx.address_info["address"]}
    try:
        log("warming up (Ray's workers start) ...")
        sampled({**base, "way": "partitioned", "stage": "shuffle", "out": os.path.join(a.workdir, "ray_group_warm")})
        for stage in a.stage or STAGES:
            res = {}
            for way in WAYS:
                log(f"{stage}, {way}: {a.rows:,} rows ...")
                spec = {**base, "way": way, "stage": stage, "out": os.path.join(a.workdir, f"ray_group_{way}")}
                res[way] = r = sampled(spec)
                log(f"   {r['seconds']:.1f} s, {r['rows_out']:,} rows out, driver peak {r['peak_mb']:,.0f} MB, "
                    f"{r['blocks']} blocks, {r['partitions']} partitions, driver fetched {r['fetched_bytes']:,} B")
            d, p = res["partitioned"], res["driver"]
            same = d["ids"] == p["ids"]
            ok &= same
            lines.append(f"{stage:8s} partitioned {d['seconds']:6.1f} s {d['peak_mb']:5,.0f} MB "
                         f"{d['fetched_bytes']:>11,} B fetched | driver-side {p['seconds']:6.1f} s "
                         f"{p['peak_mb']:5,.0f} MB {p['fetched_bytes']:>11,} B fetched | time x{p['seconds'] / d['seconds']:.2f}"
                         f", driver peak x{p['peak_mb'] / d['peak_mb']:.2f}, fetched "
                         f"x{p['fetched_bytes'] / max(d['fetched_bytes'], 1):,.0f} | "
                         f"{'same ids' if same else 'IDS DIFFER'}")
    finally:
        ray.shutdown()
    print(f"\n{a.rows:,} rows, blocks of {a.block_rows:,}, {a.cpus} CPUs (ratios: driver-side / partitioned)")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
