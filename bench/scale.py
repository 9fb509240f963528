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
* *time per row*: the run's wall time (execute plus the per-block row counts) over the input rows; and, as the
  wall time is noise on a loaded machine, the *CPU seconds per row* of every process of the cluster (driver, GCS,
  raylets, agents, workers: :class:`TreeCPU`), also *net* of the cluster's idle CPU (its rate over the
  :data:`IDLE` seconds before the run, times the run's wall time: idle processes poll, so the gross figure grows
  with the wall time too).
* *spilled*: the bytes the nodes spilled to disk during the run (the raylets'
  ``ray_spill_manager_objects_bytes{State="Spilled"}``, which only grows during a cluster's life: after less
  before), with the spill and restore requests: object stores are ``--store-mb`` a worker node
  (``--head-store-mb`` the head), so a size past them spills.
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
    python bench/scale.py --report                 # the tables of the last run's saved results (--json)
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
IDLE = 6.0  # seconds the cluster's idle CPU is measured before each run


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
def metrics() -> dict:
    """Sums over all alive nodes of the raylets' counters read here: ``moved``, the bytes their object managers
    received from other nodes (``ray_object_manager_bytes{Type="Received"}``); ``spills`` and ``restores``, the
    spill manager's requests; ``spilled``, the bytes of objects spilled to disk so far (it only grows)."""
    import ray

    got = {"moved": 0.0, "spills": 0.0, "restores": 0.0, "spilled": 0.0}
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        for line in text.splitlines():
            value = line.rsplit(" ", 1)[-1]
            if line.startswith("ray_object_manager_bytes{") and 'Type="Received"' in line:
                got["moved"] += float(value)
            elif line.startswith("ray_spill_manager_request_total{") and 'Type="Spilled"' in line:
                got["spills"] += float(value)
            elif line.startswith("ray_spill_manager_request_total{") and 'Type="Restored"' in line:
                got["restores"] += float(value)
            elif line.startswith("ray_spill_manager_objects_bytes{") and 'State="Spilled"' in line:
                got["spilled"] += float(value)
    return got


def settled() -> dict:
    """:func:`metrics` once two readings 1.5 s apart agree on the bytes moved (the counters are reported each
    second)."""
    last = metrics()
    for _ in range(20):
        time.sleep(1.5)
        now = metrics()
        if now["moved"] == last["moved"]:
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


class TreeCPU:
    """CPU seconds (user + system) spent by this process and every process under it: on the cluster's driver that
    is the whole cluster (the child of tests/_cluster.py started the head's and the worker nodes' processes: GCS,
    raylets, agents, and the raylets' worker processes). A time per row that does not move with the load of a
    shared machine, unlike wall time.

    Each process's own times are read from /proc (psutil) every ``every`` seconds, by (pid, start time), and the
    last reading of each kept; a process that ends between two readings loses at most that interval (Ray's worker
    processes live as long as their node, so little is lost). The sampling thread's own CPU time is taken off the
    driver's. ``children_*`` times (of reaped children) are not used: they would count seen processes twice."""

    def __init__(self):
        import psutil

        self.me = psutil.Process()
        self.base = self._read()
        self.last = dict(self.base)
        self.own = 0.0  # the sampling thread's CPU seconds

    def _read(self) -> dict:
        import psutil

        got = {}
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    got[p.pid, p.create_time()] = (t.user + t.system, p.pid == self.me.pid)
            except psutil.Error:  # ended meanwhile
                continue
        return got

    def sample(self) -> None:
        t0 = time.thread_time()
        self.last.update(self._read())
        self.own += time.thread_time() - t0

    def totals(self) -> tuple[float, float, int]:
        """(CPU seconds of all the processes since the start, of the driver alone, processes seen)."""
        total = driver = 0.0
        for key, (secs, is_me) in self.last.items():
            d = secs - self.base.get(key, (0.0, is_me))[0]
            total += d
            driver += d if is_me else 0.0
        return total - self.own, driver - self.own, len(self.last)


def _run(paths: list[str], ops: list, side: str, block_rows: int, sample: bool = False) -> dict:
    """One run: its seconds, the CPU seconds of the cluster's processes and of the driver, output rows, ids digest,
    bytes between nodes (and with ``sample`` the driver's peak RSS)."""
    import psutil
    import ray

    from datacopilot.executors import ray_group
    from datacopilot.executors.ray import RayOptions, execute

    me = psutil.Process()
    idle, t_idle = TreeCPU(), time.perf_counter()  # the cluster's CPU when it runs nothing: per second
    before = settled()
    time.sleep(max(0.0, IDLE - (time.perf_counter() - t_idle)))
    idle.sample()
    idle_rate = idle.totals()[0] / (time.perf_counter() - t_idle)
    start = me.memory_info().rss
    peak, stop = [start], threading.Event()
    cpu = TreeCPU()

    def watch():  # the driver's RSS every 20 ms (with ``sample``), the cluster's CPU times every second
        n = 0
        while not stop.is_set():
            if sample:
                t0 = time.thread_time()
                peak[0] = max(peak[0], me.memory_info().rss)
                cpu.own += time.thread_time() - t0
            if n % 50 == 0:
                cpu.sample()
            n += 1
            time.sleep(0.02)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    t0 = time.perf_counter()
    _, refs, _, _, _ = execute(paths, ops, "raise", schema="MM", batch_size=4096,
                               options=RayOptions(barriers=side, block_rows=block_rows))
    got = ray.get([ray.remote(count).remote(r) for r in refs])  # the output stays in the object store
    secs = time.perf_counter() - t0
    stop.set()
    t.join()
    cpu.sample()
    cpu_s, driver_cpu, procs = cpu.totals()
    after = settled()
    moved = after["moved"] - before["moved"]
    bases = [0]
    for n in got[:-1]:
        bases.append(bases[-1] + n)
    ids = sum(ray.get([ray.remote(digest).remote(r, b) for r, b in zip(refs, bases)])) % 2**64
    del refs
    return {"secs": secs, "rows_out": sum(got), "out_blocks": len(got), "ids": f"{ids:016x}",
            "peak_mb": peak[0] / 2**20, "growth_mb": (peak[0] - start) / 2**20, "moved": moved,
            "cpu": cpu_s, "driver_cpu": driver_cpu, "procs": procs, "idle_cpu_per_s": idle_rate,
            "net_cpu": cpu_s - idle_rate * secs, "spills": after["spills"] - before["spills"],
            "restores": after["restores"] - before["restores"], "spilled": after["spilled"] - before["spilled"],
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
    with ClusterSession(workers=a.workers, timeout=a.timeout, store_mb=a.store_mb,
                        head_store_mb=a.head_store_mb) as c:
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
    ap.add_argument("--store-mb", type=int, default=3584,
                    help="each worker node's object store in MiB (default 3584; Ray's default is 30%% of the "
                         "machine's memory per node)")
    ap.add_argument("--head-store-mb", type=int, default=512,
                    help="the head's object store in MiB (default 512: it runs no task; 7.5 GiB in all with 2 "
                         "workers)")
    ap.add_argument("--json", default=os.path.join(HERE, "_data", "scale_results.json"),
                    help="results written here after each (size, side), so a run cut short keeps what finished")
    ap.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES,
                    help="which barriers to run (default both; the rows are checked equal when both run)")
    ap.add_argument("--report", action="store_true", help="print the tables of --json's results, run nothing")
    a = ap.parse_args(argv)
    if a.report:
        with open(a.json) as f:
            saved = json.load(f)
        return report({(r["rows"], r["side"]): r["res"] for r in saved["runs"]}, saved["args"])
    sys.path.insert(0, ROOT)
    from tests._cluster import can_isolate

    if not can_isolate():
        raise SystemExit("needs a loopback-only network namespace (unshare -n, ip) for the local cluster")
    _, paths, warm = ensure_data(a.rows)
    res: dict = {}
    args = {"rows": a.rows, "workers": a.workers, "block_rows": a.block_rows, "threshold": a.threshold,
            "store_mb": a.store_mb, "head_store_mb": a.head_store_mb}
    for k in sorted(a.sizes):
        rows = a.rows * k
        for side in a.sides:
            print(f"{time.strftime('%H:%M:%S')} {rows:,} rows, {side} barriers ...", file=sys.stderr, flush=True)
            res[rows, side] = side_run(paths[:4 * k], warm, side, a)
            g = res[rows, side]["plan"]
            print(f"  plan {g['secs']:.0f} s, cluster CPU {g['cpu']:.0f} s (net of idle {g['net_cpu']:.0f} s, "
                  f"driver {g['driver_cpu']:.0f} s), driver peak {g['peak_mb']:.0f} MB, spilled "
                  f"{g['spilled'] / 2**20:.0f} MB", file=sys.stderr, flush=True)
            with open(a.json, "w") as f:  # after each side: a run cut short keeps what finished
                json.dump({"args": args, "runs": [{"rows": r, "side": sd, "res": v} for (r, sd), v in res.items()]},
                          f, indent=1)
        if len(a.sides) < 2:
            continue
        p, d = res[rows, "partitioned"], res[rows, "driver"]
        for part in ("plan", "shuffle", "mapper"):
            if p[part]["ids"] != d[part]["ids"] or p[part]["rows_out"] != d[part]["rows_out"]:
                raise SystemExit(f"{rows:,} rows, {part}: the sides disagree: {p[part]} vs {d[part]}")
    return report(res, args)


def _or_dash(value, scale: float, fmt: str) -> str:
    """``value * scale`` formatted, or "-" for a figure a results file of an older version lacks."""
    return "-" if value is None else format(value * scale, fmt)


def report(res: dict, a: dict) -> int:
    """Print the tables of ``res`` ({(rows, side): :func:`measure`'s result}) for the run's arguments ``a``."""
    sizes = sorted({r for r, _ in res})
    sides = [sd for sd in SIDES if any(k[1] == sd for k in res)]
    nodes = next(iter(res.values()))["nodes"]
    print(f"\nplan: clean_whitespace -> dedup_exact -> dedup_near_text({a['threshold']}) -> shuffle; {a['workers']} "
          f"worker nodes of 1 CPU + a 0-CPU head ({nodes} nodes), object stores of {a['store_mb']} MiB a worker "
          f"and {a.get('head_store_mb') or a['store_mb']} MiB the head, blocks of {a['block_rows']:,} rows; rows "
          f"out equal on both sides (ids in order). CPU: user + system seconds of every process of the cluster "
          f"(driver, GCS, raylets, workers); net: less the cluster's idle CPU rate (measured before the run) "
          f"times the run's wall time; spilled: bytes spilled to disk during the run")
    print(f"{'rows':>10} {'barriers':>12} {'seconds':>8} {'us/row':>7} {'CPU s':>7} {'CPU us/row':>10} "
          f"{'net us/row':>10} {'driver CPU s':>12} {'driver peak MB':>15} {'growth MB':>10} {'KB/block':>9} "
          f"{'rows out':>9} {'moved MB':>9} {'spilled MB':>10}")
    for rows in sizes:
        for side in sides:
            if (rows, side) not in res:
                continue
            g = res[rows, side]["plan"]
            print(f"{rows:>10,} {side:>12} {g['secs']:>8.1f} {g['secs'] / rows * 1e6:>7.1f} {g['cpu']:>7.0f} "
                  f"{g['cpu'] / rows * 1e6:>10.1f} {_or_dash(g.get('net_cpu'), 1e6 / rows, '.1f'):>10} "
                  f"{g['driver_cpu']:>12.1f} {g['peak_mb']:>15.0f} {g['growth_mb']:>10.1f} "
                  f"{g['growth_mb'] * 1024 / (g['blocks'] or 1):>9.0f} {g['rows_out']:>9,} "
                  f"{g['moved'] / 2**20:>9.1f} {_or_dash(g.get('spilled'), 2**-20, '.0f'):>10}")
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        print(f"\n{'':>10} {'barriers':>12} {'peak ' + f'{hi // lo}x rows':>14} {'growth':>8} "
              f"{'wall us/row per doubling':>25} {'CPU us/row per doubling':>24} {'net CPU per doubling':>21}")
        for side in sides:
            have = [r for r in sizes if (r, side) in res]
            g = [res[r, side]["plan"] for r in have]

            def per(key):
                return " ".join("-" if key not in a_ or key not in b else f"{b[key] / r2 / (a_[key] / r1):.2f}x"
                                for a_, b, r1, r2 in zip(g, g[1:], have, have[1:]))

            print(f"{'':>10} {side:>12} {g[-1]['peak_mb'] / g[0]['peak_mb']:>13.2f}x "  # over the sizes it has
                  f"{g[-1]['growth_mb'] / max(g[0]['growth_mb'], 1e-9):>7.2f}x {per('secs'):>25} {per('cpu'):>24} "
                  f"{per('net_cpu'):>21}")
    print(f"\nbytes received between nodes (sum of the raylets' object manager counters) by shuffle alone, and by "
          f"clean_whitespace alone (read + mapper, no barrier)")
    print(f"{'rows':>10} {'blocks':>7} {'barriers':>12} {'shuffle MB':>11} {'MB/block':>9} {'mapper MB':>10} "
          f"{'shuffle - mapper MB/block':>26}")
    for rows in sizes:
        for side in sides:
            if (rows, side) not in res:
                continue
            s, m = res[rows, side]["shuffle"], res[rows, side]["mapper"]
            b = s["blocks"] or 1
            print(f"{rows:>10,} {b:>7} {side:>12} {s['moved'] / 2**20:>11.1f} {s['moved'] / b / 2**20:>9.2f} "
                  f"{m['moved'] / 2**20:>10.1f} {(s['moved'] - m['moved']) / b / 2**20:>26.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
