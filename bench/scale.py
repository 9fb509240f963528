"""Scaling on a multi-node Ray cluster: one dedup-heavy plan on N, 2N and 4N rows (1M, 2M, 4M by default), with
the partitioned barriers (``RayOptions(barriers="partitioned")``, the default) next to the driver-side ones they
replace (``barriers="driver"``), and the bytes a shuffle moves between nodes against its block count.

Cluster: tests/_cluster.py's :class:`ClusterSession`, a real ``ray.cluster_utils.Cluster`` (a head of 0 CPUs, where
the driver runs, and ``--workers`` worker nodes of 1 CPU, every task on a worker node) in a loopback-only network
namespace, started afresh for every (size, side): each measurement is its own driver process. Needs ``unshare -n``.

Input: ``bench/_gen.py``'s conversation rows, 4N of them in 16 jsonl files under ``bench/_data/scale_{N}`` (written
once; size kN reads the first 4k files), with duplicates put in: 15% exact copies of one of the previous 4,096
rows (half of them with doubled spaces, equal once ``clean_whitespace`` ran) and 12% near copies (one word of the
first answer changed). Plan: ``clean_whitespace -> dedup_exact -> dedup_near_text(threshold=0.7) -> shuffle``,
blocks of ``--block-rows`` rows; each side is warmed up first (worker processes, imports) on a separate 2,000-row
file.

What is measured, per (size, side):

* *driver peak RSS*: the driver process's resident memory (psutil, every 20 ms) during the run, as an absolute
  peak and as its growth above the start of the run (also per block of the plan's barriers: what the driver
  holds per block, Ray Data's and Ray's own bookkeeping included). The output stays in the object store (a task
  per output block gives its row count; after the measured run, a task per block a digest of its rows' positions
  and ids), so this is what the plan holds on the driver, not its result. Both sides' ids (in order) and rows out are
  checked equal.
* *time per row*: the run's wall time (execute plus the per-block row counts) over the input rows.
* *bytes between nodes*: the sum over all nodes of the raylets' ``ray_object_manager_bytes{Type="Received"}``
  counter (bytes of objects the node's object manager pulled from another node's object store), scraped from each
  node's metrics endpoint before and after the run (``RAY_metrics_report_interval_ms=1000``; read until it stops
  changing). It counts object-store transfers only: results under 100 KiB, which Ray returns inline to their
  owner over RPC, are not in it.

The shuffle part: after the plan, the same driver runs ``shuffle`` alone over the same files and reports the bytes
received between nodes during it, next to its input block count, and the bytes of a run of ``clean_whitespace``
alone (a read and a per-block mapper, no barrier: what reading and scheduling move without a shuffle). A shuffle
that sends each row once to the task of its range moves about (nodes-1)/nodes of the data, so its bytes per block
stay flat as the blocks double; one that sends every block to every output task would grow them with the blocks
(quadratic in total). Ray pulls an object to a node once and keeps the copy while it is in use, so on a few nodes
the driver-side shuffle's node-level bytes are also bounded by (nodes-1) copies of each block; its per-task
fetches (every block into every output task) are not what this counter sees.

    python bench/scale.py                          # 1M, 2M, 4M rows (hours, and memory, on a real machine)
    python bench/scale.py --rows 100000            # 100k, 200k, 400k
    python bench/scale.py --rows 20000 --sizes 1 2 --workers 2
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FILES = 16  # files of the 4N rows; size kN reads the first 4k
WINDOW = 4096  # duplicates copy one of the previous WINDOW rows
EXACT, NEAR = 0.15, 0.12
SIDES = ("partitioned", "driver")


# -- data -------------------------------------------------------------------------------------------------------
def _with_duplicates(n: int, seed: int):
    """``_gen.rows(n)`` with exact and near copies of recent rows put in (deterministic)."""
    import numpy as np

    sys.path.insert(0, HERE)
    from _gen import rows

    rng = np.random.default_rng(seed)
    recent: list = []
    for i, row in enumerate(rows(n, seed=seed)):
        r = rng.random()
        if recent and r < EXACT + NEAR:
            conv = [dict(t) for t in recent[int(rng.integers(0, len(recent)))]]
            if r < EXACT / 2:  # equal once clean_whitespace collapsed the spaces
                conv[0]["value"] = conv[0]["value"].replace(" ", "  ", 3)
            elif r >= EXACT:  # a near copy: one word of the first answer changed
                words = conv[1]["value"].split(" ")
                words[int(rng.integers(0, len(words)))] = "changed"
                conv[1]["value"] = " ".join(words)
            row["conversations"] = conv
        recent.append(row["conversations"])
        if len(recent) > WINDOW:
            recent.pop(int(rng.integers(0, WINDOW)))
        yield row


def ensure_data(n: int) -> tuple[str, list[str], str]:
    """(the directory, its FILES files of ``n // 4`` rows each, a 2,000-row warm-up file), written once."""
    d = os.path.join(HERE, "_data", f"scale_{n}")
    paths = [os.path.join(d, f"part{f:02d}.jsonl") for f in range(FILES)]
    warm = os.path.join(d, "warm.jsonl")
    if not os.path.exists(os.path.join(d, "done")):
        from _gen import write_rows

        os.makedirs(d, exist_ok=True)
        t0 = time.perf_counter()
        per = n // 4
        it = _with_duplicates(per * FILES, seed=20240601)
        for p in paths:
            write_rows(p, (next(it) for _ in range(per)))
        write_rows(warm, _with_duplicates(2000, seed=7))
        open(os.path.join(d, "done"), "w").close()
        print(f"wrote {per * FILES:,} rows in {FILES} files to {d} in {time.perf_counter() - t0:.0f} s", flush=True)
    return d, paths, warm


# -- on the cluster's driver ----------------------------------------------------------------------------------
def received_bytes() -> float:
    """Bytes the object managers of all alive nodes received from other nodes so far (their raylets' counter)."""
    import ray

    total = 0.0
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        for line in text.splitlines():
            if line.startswith("ray_object_manager_bytes{") and 'Type="Received"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def settled_bytes(every: float = 1.5, tries: int = 20) -> float:
    """:func:`received_bytes` once two readings ``every`` seconds apart agree (the counters are reported each
    second)."""
    last = received_bytes()
    for _ in range(tries):
        time.sleep(every)
        now = received_bytes()
        if now == last:
            return now
        last = now
    return last


def count(block) -> int:
    """A Ray task over an output block: its live rows."""
    from datacopilot.executors.ray_stages import split

    return split(block)[0].num_rows


def digest(block, base: int) -> int:
    """A Ray task over an output block whose first row is row ``base`` of the output: the sum (mod 2**64) of a hash
    of each row's (position, id), so the output's digest depends on its rows' order, not on its blocks."""
    from datacopilot.executors.ray_stages import split

    live = split(block)[0]
    ids = live.column("id").to_pylist() if live.num_rows else []
    return sum(int.from_bytes(hashlib.blake2b(f"{base + i}:{v}".encode(), digest_size=8).digest(), "little")
               for i, v in enumerate(ids)) % 2**64


def _plan(threshold: float, shuffle: bool = True) -> list:
    from datacopilot.operators import create

    ops = [create("clean_whitespace"), create("dedup_exact"), create("dedup_near_text", threshold=threshold)]
    return ops + [create("shuffle", seed=0)] if shuffle else ops


def _run(paths: list[str], ops: list, side: str, block_rows: int, sample: bool = False) -> dict:
    """One run: its seconds, output rows, ids digest, drops per operator, bytes between nodes (and with ``sample``
    the driver's peak RSS)."""
    import psutil
    import ray

    from datacopilot.executors import ray_group
    from datacopilot.executors.ray import RayOptions, execute

    me = psutil.Process()
    before = settled_bytes()
    start = me.memory_info().rss
    peak, stop = [start], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.02)

    t = threading.Thread(target=watch, daemon=True)
    if sample:
        t.start()
    t0 = time.perf_counter()
    _, refs, _, _, _ = execute(paths, ops, "raise", schema="MM", batch_size=4096,
                               options=RayOptions(barriers=side, block_rows=block_rows))
    got = ray.get([ray.remote(count).remote(r) for r in refs])  # the output stays in the object store
    secs = time.perf_counter() - t0
    stop.set()
    if sample:
        t.join()
    moved = settled_bytes() - before
    bases = [0]
    for n in got[:-1]:
        bases.append(bases[-1] + n)
    ids = sum(ray.get([ray.remote(digest).remote(r, b) for r, b in zip(refs, bases)])) % 2**64
    del refs
    return {"secs": secs, "rows_out": sum(got), "out_blocks": len(got), "ids": f"{ids:016x}",
            "peak_mb": peak[0] / 2**20, "growth_mb": (peak[0] - start) / 2**20, "moved": moved,
            "blocks": ray_group.DRIVER.get("blocks")}


def measure(cluster, paths: list[str], warm: str, side: str, block_rows: int, threshold: float) -> dict:
    """A call on the cluster (tests/_cluster.py): the plan warmed up, then measured; then shuffle alone and
    clean_whitespace alone over the same files, for their bytes between nodes."""
    from datacopilot.executors.ray import RayOptions, run_ops_on_ray
    from datacopilot.operators import create

    run_ops_on_ray([warm], _plan(threshold), schema="MM", batch_size=4096,
                   options=RayOptions(barriers=side, block_rows=block_rows))
    plan = _run(paths, _plan(threshold), side, block_rows, sample=True)
    shuffle = _run(paths, [create("shuffle", seed=0)], side, block_rows)
    mapper = _run(paths, [create("clean_whitespace")], side, block_rows)
    return {"plan": plan, "shuffle": shuffle, "mapper": mapper,
            "nodes": sum(1 for n in cluster.list_all_nodes())}


# -- the script ---------------------------------------------------------------------------------------------
def side_run(paths, warm, side: str, a) -> dict:
    sys.path.insert(0, ROOT)
    from tests._cluster import ClusterSession

    os.environ["RAY_metrics_report_interval_ms"] = "1000"  # the raylets' counters reported each second
    with ClusterSession(workers=a.workers, timeout=a.timeout) as c:
        if c.off_loopback:
            raise SystemExit(f"Ray listens off loopback: {c.off_loopback}")
        return c.call("bench.scale:measure", paths, warm, side, a.block_rows, a.threshold)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="N: the smallest size (default 1,000,000)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4], choices=[1, 2, 4],
                    help="multiples of N to run (default 1 2 4)")
    ap.add_argument("--workers", type=int, default=2, help="worker nodes of 1 CPU (the head has 0)")
    ap.add_argument("--block-rows", type=int, default=8192)
    ap.add_argument("--threshold", type=float, default=0.7, help="dedup_near_text's threshold")
    ap.add_argument("--timeout", type=float, default=7200, help="seconds a side may take")
    a = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    from tests._cluster import can_isolate

    if not can_isolate():
        raise SystemExit("needs a loopback-only network namespace (unshare -n, ip) for the local cluster")
    _, paths, warm = ensure_data(a.rows)
    res: dict = {}
    for k in sorted(a.sizes):
        rows = a.rows * k
        for side in SIDES:
            print(f"{rows:,} rows, {side} barriers ...", file=sys.stderr, flush=True)
            res[rows, side] = side_run(paths[:4 * k], warm, side, a)
        p, d = res[rows, "partitioned"], res[rows, "driver"]
        for part in ("plan", "shuffle", "mapper"):
            if p[part]["ids"] != d[part]["ids"] or p[part]["rows_out"] != d[part]["rows_out"]:
                raise SystemExit(f"{rows:,} rows, {part}: the sides disagree: {p[part]} vs {d[part]}")
    sizes = sorted({r for r, _ in res})
    nodes = next(iter(res.values()))["nodes"]
    print(f"\nplan: clean_whitespace -> dedup_exact -> dedup_near_text({a.threshold}) -> shuffle; {a.workers} "
          f"worker nodes of 1 CPU + a 0-CPU head ({nodes} nodes), blocks of {a.block_rows:,} rows; rows out equal "
          f"on both sides (ids in order)")
    print(f"{'rows':>10} {'barriers':>12} {'seconds':>8} {'us/row':>7} {'driver peak MB':>15} {'growth MB':>10} "
          f"{'KB/block':>9} {'rows out':>9} {'moved MB':>9}")
    for rows in sizes:
        for side in SIDES:
            g = res[rows, side]["plan"]
            print(f"{rows:>10,} {side:>12} {g['secs']:>8.1f} {g['secs'] / rows * 1e6:>7.1f} {g['peak_mb']:>15.0f} "
                  f"{g['growth_mb']:>10.1f} {g['growth_mb'] * 1024 / (g['blocks'] or 1):>9.0f} {g['rows_out']:>9,} "
                  f"{g['moved'] / 2**20:>9.1f}")
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        print(f"\n{'':>10} {'barriers':>12} {'peak ' + f'{hi // lo}x rows':>14} {'growth':>8} "
              f"{'us/row per doubling':>20}")
        for side in SIDES:
            g = [res[r, side]["plan"] for r in sizes]
            per = [b["secs"] / r2 / (a_["secs"] / r1) for a_, b, r1, r2 in zip(g, g[1:], sizes, sizes[1:])]
            print(f"{'':>10} {side:>12} {g[-1]['peak_mb'] / g[0]['peak_mb']:>13.2f}x "
                  f"{g[-1]['growth_mb'] / max(g[0]['growth_mb'], 1e-9):>7.2f}x "
                  f"{' '.join(f'{x:.2f}x' for x in per):>20}")
    print(f"\nbytes received between nodes (sum of the raylets' object manager counters) by shuffle alone, and by "
          f"clean_whitespace alone (read + mapper, no barrier)")
    print(f"{'rows':>10} {'blocks':>7} {'barriers':>12} {'shuffle MB':>11} {'MB/block':>9} {'mapper MB':>10} "
          f"{'shuffle - mapper MB/block':>26}")
    for rows in sizes:
        for side in SIDES:
            s, m = res[rows, side]["shuffle"], res[rows, side]["mapper"]
            b = s["blocks"] or 1
            print(f"{rows:>10,} {b:>7} {side:>12} {s['moved'] / 2**20:>11.1f} {s['moved'] / b / 2**20:>9.2f} "
                  f"{m['moved'] / 2**20:>10.1f} {(s['moved'] - m['moved']) / b / 2**20:>26.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
