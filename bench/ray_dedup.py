"""Deduplicators on Ray: the partitioned barrier (keys hash-partitioned across tasks, the driver holding
references only; ``RayOptions(barriers="partitioned")``, the default) side by side with the driver-side decision
it replaces (``barriers="driver"``: every block's keys sent to the driver and decided there against the keys seen
so far), on one node.

Input: ``--rows`` generated conversation rows (a third exact duplicates after normalization, a fifth near
duplicates: one word changed), as jsonl in 8 files under ``bench/_data/ray_dedup_{rows}`` (read by the workers,
so the driver never holds the rows). Plan: ``dedup_exact`` then ``dedup_near_text(threshold=0.7)``. Each run is
a fresh subprocess with its own local Ray of ``--cpus`` CPUs, warmed up by a run over the first file (worker
processes, imports, compiled kernels); then the driver's resident memory is sampled every 20 ms during the
measured run and its peak above the start is printed with the run time, and the CPU seconds of the driver and
every process of its Ray (raylet, GCS, workers; ``bench/scale.py``'s ``TreeCPU``), also net of their idle CPU
rate measured for :data:`IDLE` seconds before the run (a figure the machine's load moves far less than the time).
The output stays in the object store (a task per block gives its row count, a digest of its ids and its
accounting), so the figure is what the plan holds on the driver, not its result; the ids and drops of both are
checked equal.

    python bench/ray_dedup.py                          # 200,000 and 400,000 rows
    python bench/ray_dedup.py --rows 100000 --cpus 2   # quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FILES = 8
IDLE = 6.0  # seconds this Ray's idle CPU is measured before the run


def ensure_data(rows: int) -> str:
    import numpy as np

    d = os.path.join(HERE, "_data", f"ray_dedup_{rows}")
    done = os.path.join(d, "done")
    if os.path.exists(done):
        return d
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    words = [f"w{k}" for k in range(5000)]
    per = -(-rows // FILES)
    i = 0
    for f in range(FILES):
        with open(os.path.join(d, f"part{f}.jsonl"), "w") as out:
            for _ in range(min(per, rows - i)):
                r = rng.random()
                src = int(rng.integers(0, max(1, i))) if i else 0
                t = [words[int(x)] for x in np.random.default_rng(src if r < 0.55 else i).integers(0, 5000, 20)]
                if 0.35 <= r < 0.55:
                    t[int(rng.integers(0, 20))] = "changed"  # a near duplicate of row src
                q = " ".join(t).upper() if r < 0.1 else " ".join(t)  # an exact duplicate once normalized
                conv = [{"from": "human", "value": q}, {"from": "gpt", "value": "ok"}]
                out.write(json.dumps({"id": i, "conversations": conv}) + "\n")
                i += 1
    open(done, "w").close()
    return d


def summary(block):
    """A Ray task over an output block: (its live rows, a digest of their ids, its event rows)."""
    from datacopilot.executors.ray_stages import split

    live, ev = split(block)
    ids = live.column("id").to_numpy().astype("int64") if live.num_rows else b""
    return live.num_rows, hashlib.sha1(bytes(ids)).hexdigest(), ev


def child(mode: str, d: str, cpus: int) -> None:
    import psutil
    import ray

    sys.path.insert(0, ROOT)
    import pyarrow as pa

    from datacopilot.executors.ray import RayOptions, account, execute, run_ops_on_ray
    from datacopilot.operators import create

    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    sys.path.insert(0, HERE)
    from scale import TreeCPU
    me = psutil.Process()
    start = me.memory_info().rss
    peak, stop = [start], threading.Event()

    def sample():
        n = 0
        while not stop.is_set():
            t0 = time.thread_time()
            peak[0] = max(peak[0], me.memory_info().rss)
            if n % 50 == 0:
                cpu.sample()
            cpu.own += time.thread_time() - t0
            n += 1
            time.sleep(0.02)

    paths = sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".jsonl"))
    ops = [create("dedup_exact"), create("dedup_near_text", threshold=0.7)]
    # warm up (worker processes, imports, compiled kernels) on the first file, not measured
    run_ops_on_ray(paths[:1], ops, schema="MM", batch_size=4096, options=RayOptions(barriers=mode, block_rows=8192))
    idle, t_idle = TreeCPU(), time.perf_counter()  # this Ray's processes when they run nothing: CPU per second
    time.sleep(IDLE)
    idle.sample()
    idle_rate = idle.totals()[0] / (time.perf_counter() - t_idle)
    cpu = TreeCPU()
    start = peak[0] = me.memory_info().rss
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    ray_, refs, ops_run, _, _ = execute(paths, ops, "raise", schema="MM", batch_size=4096,
                                        options=RayOptions(barriers=mode, block_rows=8192))
    got = ray.get([ray.remote(summary).remote(r) for r in refs])  # the output stays in the object store
    secs = time.perf_counter() - t0
    stop.set()
    t.join()
    cpu.sample()
    cpu_s = cpu.totals()[0]
    n = sum(g[0] for g in got)
    records, _ = account(pa.concat_tables([g[2] for g in got]), n, ops_run, "raise")
    print(json.dumps({"secs": secs, "cpu": cpu_s, "net_cpu": cpu_s - idle_rate * secs,
                      "peak_mb": (peak[0] - start) / 1e6, "rows_out": n,
                      "ids_hash": hashlib.sha1("".join(g[1] for g in got).encode()).hexdigest(),
                      "dropped": [sum(r.dropped.values()) for r in records]}))
    ray.shutdown()


def run(mode: str, d: str, cpus: int) -> dict:
    for attempt in range(3):  # a loaded machine can make Ray's node start time out (30 s): start again
        out = subprocess.run([sys.executable, __file__, "--child", mode, d, str(cpus)], capture_output=True,
                             text=True, env={**os.environ, "RAY_ADDRESS": ""})
        if not out.returncode:
            return json.loads(out.stdout.strip().splitlines()[-1])
        if "timed out during startup" not in out.stderr:
            break
    raise SystemExit(f"{mode} run failed:\n{out.stderr[-4000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[200_000, 400_000])
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], a.child[1], int(a.child[2]))
    print(f"{'rows':>9} {'barrier':>12} {'seconds':>8} {'us/row':>7} {'CPU s':>7} {'net CPU s':>9} "
          f"{'CPU us/row':>10} {'driver peak MB':>15} {'rows out':>9}")
    for rows in a.rows:
        d = ensure_data(rows)
        got = {m: run(m, d, a.cpus) for m in ("partitioned", "driver")}
        if got["partitioned"]["ids_hash"] != got["driver"]["ids_hash"] or \
                got["partitioned"]["dropped"] != got["driver"]["dropped"]:
            raise SystemExit(f"the two barriers disagree: {got}")
        for m, g in got.items():
            print(f"{rows:>9} {m:>12} {g['secs']:>8.1f} {g['secs'] / rows * 1e6:>7.1f} {g['cpu']:>7.1f} "
                  f"{g['net_cpu']:>9.1f} {g['net_cpu'] / rows * 1e6:>10.1f} {g['peak_mb']:>15.1f} "
                  f"{g['rows_out']:>9}")
        p, dr = got["partitioned"], got["driver"]
        print(f"{rows:>9} {'ratio p/d':>12} {p['secs'] / dr['secs']:>8.2f} {'':>7} {p['cpu'] / dr['cpu']:>7.2f} "
              f"{p['net_cpu'] / dr['net_cpu']:>9.2f} {'':>10} {p['peak_mb'] / max(dr['peak_mb'], 1e-9):>15.2f}   "
              f"dropped {p['dropped']}", flush=True)


if __name__ == "__main__":
    main()
