"""Engine benchmark: datacopilot (Arrow) against the list-of-dicts way (DataCopilot's), side by side.

Generates LLaVA-style MM rows once (``bench/_gen.py``) into the work directory and reuses them, then measures in
one run, the same work on both sides, results checked equal:

1. load jsonl: ``datacopilot.load(path, schema="MM")`` vs a ``json.loads`` line loop into a list of dicts;
2. filter: one polars expression vs the same Python predicate on a ``ThreadPoolExecutor(8)`` then selecting;
3. map: a Python row function on 2 processes vs 1 worker;
4. write: Arrow / parquet shards vs a ``json.dumps`` jsonl export;
5. resident memory of the loaded dataset vs the list of dicts, each in a fresh subprocess (also a memory-mapped
   reload of the Arrow shards).

Prints a table and writes it to ``bench/RESULTS.md``.

    python bench/engine.py                      # 1,000,000 rows (~850 MB of jsonl)
    python bench/engine.py --rows 20000 --keep  # quick; --keep leaves the written shards in the work dir
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _gen  # noqa: E402

MAX_ANSWER_CHARS = 1000  # the filter keeps rows whose longest answer is shorter than this
TURNS = (2, 8)  # and whose number of turns is in this range


@dataclass
class Row:
    task: str
    dc: float  # seconds, or MB for memory rows
    base: float
    target: float  # the ratio base / dc must reach this
    unit: str = "s"
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.base / self.dc if self.dc > 0 else float("inf")

    @property
    def passed(self) -> bool:
        return self.ratio >= self.target


# -- the per-row Python work (module level, so process workers can import it) -------------------------------
def keep_row(row: dict) -> bool:
    """The filter as a per-item predicate: the same rule as :func:`filter_expr`."""
    conv = row["conversations"]
    if not TURNS[0] <= len(conv) <= TURNS[1]:
        return False
    lens = [len(t["value"]) for t in conv if t["from"] == "gpt"]
    return bool(lens) and min(lens) > 0 and max(lens) < MAX_ANSWER_CHARS


def filter_expr():
    import polars as pl

    conv = pl.col("conversations")
    gpt_len = conv.list.eval(pl.element().filter(pl.element().struct.field("from") == "gpt")
                             .struct.field("value").str.len_chars())
    return (conv.list.len().is_between(*TURNS) & (gpt_len.list.len() > 0) & (gpt_len.list.min() > 0)
            & (gpt_len.list.max() < MAX_ANSWER_CHARS))


def normalize_turns(row: dict) -> dict:
    """Collapse whitespace in every turn and count the words into ``n_words``."""
    conv, words = [], 0
    for t in row["conversations"]:
        parts = t["value"].split()
        words += len(parts)
        conv.append({"from": t["from"], "value": " ".join(parts)})
    return {**row, "conversations": conv, "n_words": words}


# -- helpers --------------------------------------------------------------------------------------------
REPEAT = 1


def timed(fn, repeat: int | None = None):
    """(best seconds of ``repeat`` runs, the last output)."""
    best = float("inf")
    for _ in range(repeat or REPEAT):
        out = None
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def side_by_side(fns: list, repeat: int | None = None, before=None) -> list[tuple[float, object, float]]:
    """(best seconds, last output, CPU seconds of the best run) of each function over ``repeat`` rounds; the
    functions take turns within a round, so a burst of load from elsewhere on the machine falls on both sides
    rather than on one. CPU counts this process and its children (worker processes)."""
    best, outs, cpu = [float("inf")] * len(fns), [None] * len(fns), [0.0] * len(fns)
    for _ in range(repeat or REPEAT):
        for i, fn in enumerate(fns):
            outs[i] = None
            if before is not None:
                before()
            gc.collect()
            c0, t0 = family_cpu(), time.perf_counter()
            outs[i] = fn()
            t, c = time.perf_counter() - t0, family_cpu() - c0
            if t < best[i]:
                best[i], cpu[i] = t, c
    return list(zip(best, outs, cpu))


def family_cpu() -> float:
    """CPU seconds used so far by this process and its live child processes."""
    t = os.times()
    total, me, tick = t.user + t.system, str(os.getpid()), os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # ppid; utime and stime follow
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_data(workdir: str, rows: int) -> str:
    os.makedirs(workdir, exist_ok=True)
    path, meta_path = os.path.join(workdir, f"mm_{rows}.jsonl"), os.path.join(workdir, f"mm_{rows}.json")
    if os.path.exists(path) and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("rows") == rows and meta.get("version") == _gen.VERSION and meta.get("bytes") == os.path.getsize(path):
            log(f"reusing {path} ({meta['bytes'] / 1e6:.0f} MB)")
            return path
    log(f"generating {rows} rows into {path} ...")
    meta = _gen.write_jsonl(path, rows)
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    log(f"generated {meta['bytes'] / 1e6:.0f} MB in {meta['seconds']} s")
    return path


def warm_page_cache(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def json_lines(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def export_jsonl(rows: list[dict], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def thread_filter(rows: list[dict]) -> list[dict]:
    with ThreadPoolExecutor(8) as ex:
        mask = list(ex.map(keep_row, rows))
    return [r for r, k in zip(rows, mask) if k]


def check(cond: bool, what: str) -> None:
    if not cond:
        raise SystemExit(f"benchmark check failed: {what}")
    log(f"check ok: {what}")


# -- memory, each side in a fresh interpreter -----------------------------------------------------------
def _status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) / 1024  # MB (kB / 1024)
    return out


def _load(kind: str, path: str):
    import datacopilot

    if kind == "list":
        return json_lines(path)
    return datacopilot.load(path, schema="MM" if kind == "dc" else None)


def measure_memory(kind: str, path: str, warm: str) -> dict:
    """RSS after loading minus RSS before, in this (fresh) process. A small file of the same kind is loaded and
    dropped first, so the libraries (and whatever they import lazily) are in memory before."""
    import pyarrow as pa

    _load(kind, warm)
    gc.collect()
    before = _status()
    obj = _load(kind, path)
    n = len(obj)
    gc.collect()
    after = _status()
    res = {k: after[k] - before[k] for k in after}
    res.update(rows=n, arrow_allocated_mb=pa.total_allocated_bytes() / 2**20)
    pa.default_memory_pool().release_unused()  # a diagnostic for the report, not the measured figure
    res["VmRSS_released"] = _status()["VmRSS"] - before["VmRSS"]
    return res


def memory_in_subprocess(kind: str, path: str, warm: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure-memory", kind, path, warm], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the run --------------------------------------------------------------------------------------------
def run(rows: int, workdir: str, keep: bool) -> list[Row]:
    import datacopilot as dc

    path = ensure_data(workdir, rows)
    out_dir = os.path.join(workdir, "out")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    results: list[Row] = []
    mb = os.path.getsize(path) / 1e6

    # warm-up on a small file: imports, polars / Arrow thread pools, for both sides
    small = os.path.join(out_dir, "warm.jsonl")
    _gen.write_jsonl(small, 2000)
    w = dc.load(small, schema="MM")
    w.filter(filter_expr())
    thread_filter(json_lines(small))
    w.map(normalize_turns, num_workers=2, mode="process")
    w.write_shards(os.path.join(out_dir, "warm_arrow"), format="arrow")
    w.write_shards(os.path.join(out_dir, "warm_pq"), format="parquet")

    # 1. load
    warm_page_cache(path)
    log("1. load jsonl ...")
    t_dc, ds = timed(lambda: dc.load(path, schema="MM"))
    t_py, items = timed(lambda: json_lines(path))
    check(len(ds) == len(items) == rows, f"both loads have {rows} rows")
    check(ds[rows // 2] == _gen_row_as_stored(items[rows // 2]), "a middle row is the same on both sides")
    results.append(Row("load jsonl -> dataset", t_dc, t_py, 5, note=f"{mb:.0f} MB, {rows:,} rows"))

    # 2. filter
    log("2. filter ...")
    t_dc, kept_ds = timed(lambda: ds.filter(filter_expr()))
    t_py, kept = timed(lambda: thread_filter(items))
    check(len(kept_ds) == len(kept), f"both filters keep {len(kept):,} of {rows:,} rows")
    check(kept_ds.to_arrow().column("id").to_pylist() == [r["id"] for r in kept], "the same rows are kept")
    results.append(Row("filter (turns, answer lengths)", t_dc, t_py, 50,
                       note=f"polars expr vs predicate on ThreadPoolExecutor(8); kept {len(kept):,}"))
    del kept_ds, kept

    # 3. map
    log("3. map, 1 worker and 2 processes, taking turns ...")
    (t1, m1, c1), (t2, m2, c2) = side_by_side(
        [lambda: ds.map(normalize_turns, num_workers=1, progress=False),
         lambda: ds.map(normalize_turns, num_workers=2, mode="process", progress=False)])
    check(m1.to_arrow().equals(m2.to_arrow()), "map outputs are equal")
    check(m1.to_arrow().column("n_words").to_pylist()[:100] ==
          [normalize_turns(r)["n_words"] for r in items[:100]], "n_words matches the plain function")
    results.append(Row("map (whitespace + word count)", t2, t1, 1.6,
                       note=f"ds.map, 2 processes vs 1 worker; CPU {c2:.1f} s (parent + workers) vs {c1:.1f} s"))
    del m1, m2

    # 4. write
    log("4. write ...")
    arrow_dir, pq_dir, js = (os.path.join(out_dir, n) for n in ("arrow", "parquet", "export.jsonl"))
    # os.sync() before each run, untimed: no run pays for writing back the previous run's files
    (t_arrow, man_a, _), (t_pq, man_p, c_pq), (t_js, _, c_js) = side_by_side(
        [lambda: ds.write_shards(arrow_dir, format="arrow"), lambda: ds.write_shards(pq_dir, format="parquet"),
         lambda: export_jsonl(items, js)], before=os.sync)
    os.sync()
    with open(js, "rb") as f:
        n_lines = sum(1 for _ in f)
    check(man_a["rows"] == man_p["rows"] == n_lines == rows, "all three outputs hold every row")
    back = dc.load(arrow_dir)
    others = [c for c in ds.columns if c != "image"]
    check(back.to_arrow().select(others).equals(ds.to_arrow().select(others)), "arrow shards read back equal")
    check(_image_files(back, 2000) == _image_files(ds, 2000), "image paths (rebased to the shard dir) resolve the same")
    del back
    size = lambda d: sum(s["bytes"] for s in (man_a if d == arrow_dir else man_p)["shards"]) / 1e6  # noqa: E731
    note_js = f"jsonl {os.path.getsize(js) / 1e6:.0f} MB"
    results.append(Row("write arrow shards", t_arrow, t_js, 5, note=f"{size(arrow_dir):.0f} MB vs {note_js}"))
    results.append(Row("write parquet shards", t_pq, t_js, 5, note=f"{size(pq_dir):.0f} MB (snappy) vs {note_js}; "
                       f"CPU {c_pq:.1f} s (2 threads) vs {c_js:.1f} s"))

    # 5. memory, in fresh processes
    del ds, items
    gc.collect()
    log("5. memory (fresh subprocesses) ...")
    m_dc = memory_in_subprocess("dc", path, small)
    m_py = memory_in_subprocess("list", path, small)
    m_mm = memory_in_subprocess("mmap", arrow_dir, os.path.join(out_dir, "warm_arrow"))
    check(m_dc["rows"] == m_py["rows"] == m_mm["rows"] == rows, "every memory run loaded every row")
    results.append(Row("memory: loaded dataset", m_dc["VmRSS"], m_py["VmRSS"], 3, "MB",
                       note=f"RSS growth; Arrow allocated {m_dc['arrow_allocated_mb']:.0f} MB; "
                       f"{m_dc['VmRSS_released']:.0f} MB after release_unused()"))
    results.append(Row("memory: mmap reload of shards", m_mm["VmRSS"], m_py["VmRSS"], 3, "MB",
                       note=f"of which anonymous {m_mm['RssAnon']:.0f} MB, file-backed {m_mm['RssFile']:.0f} MB"))
    if not keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    return results


def _image_files(ds, n: int) -> list:
    """The first ``n`` image paths resolved against the dataset's root."""
    paths = ds.to_arrow().column("image").slice(0, n).to_pylist()
    return [None if p is None else os.path.normpath(os.path.join(ds.root, p["path"])) for p in paths]


def _gen_row_as_stored(item: dict) -> dict:
    """A list-of-dicts row in the dataset's stored form (image path -> Image struct, meta column)."""
    out = {"id": item["id"], "image": {"path": item["image"], "bytes": None} if "image" in item else None,
           "conversations": item["conversations"], "meta": None}
    return out


# -- report ---------------------------------------------------------------------------------------------
def fmt(v: float, unit: str) -> str:
    return f"{v:.2f} s" if unit == "s" else f"{v:.0f} MB"


def table(results: list[Row]) -> list[list[str]]:
    out = []
    for r in results:
        tgt = f">= {r.target:g}x" if r.unit == "s" else f"<= 1/{r.target:g}"
        out.append([r.task, fmt(r.dc, r.unit), fmt(r.base, r.unit), f"{r.ratio:.1f}x", tgt,
                    "pass" if r.passed else "FAIL", r.note])
    return out


HEAD = ["task", "datacopilot", "baseline", "ratio", "target", "result", "notes"]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(x) for x in col) for col in zip(HEAD, *rows)]
    for r in [HEAD, ["-" * w for w in widths]] + rows:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths)))


def machine() -> dict:
    import polars
    import pyarrow

    import datacopilot

    with open("/proc/meminfo") as f:
        ram = int(f.readline().split()[1]) / 2**20
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "ram_gb": round(ram, 1), "cpu": cpu,
            "python": platform.python_version(), "pyarrow": pyarrow.__version__, "polars": polars.__version__,
            "datacopilot": datacopilot.__version__, "os": platform.platform()}


def write_markdown(path: str, rows: list[list[str]], cmd: str, info: dict, load: tuple, seconds: float) -> None:
    lines = [
        "# Engine benchmark results", "",
        f"Command: `{cmd}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}  ",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gb']} GB RAM, {info['os']}  ",
        f"Versions: Python {info['python']}, pyarrow {info['pyarrow']}, polars {info['polars']}, "
        f"datacopilot {info['datacopilot']}  ",
        f"Load average at start / end: {load[0]:.2f} / {load[1]:.2f}; whole run {seconds / 60:.1f} min", "",
        "Ratio = baseline / datacopilot (time or memory); the baseline is a Python list of dicts handled the way "
        "PaddleMIX DataCopilot does. Each timing is the best of `--repeat` runs (default 2; the two sides of the "
        "map, and the three writes, take turns within each round) after a warm-up on 2,000 rows; the jsonl file is "
        "read once before both loads so both find it in the page cache; every write run starts after an untimed "
        "`os.sync()`, so none pays for writing back an earlier run's files. Memory is the growth of RSS (VmRSS) in "
        "a fresh process per side.", "",
        "| " + " | ".join(HEAD) + " |", "|" + "|".join("---" for _ in HEAD) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "What each task does:", "",
              "1. `datacopilot.load(path, schema=\"MM\")` (parse, validate, Arrow table) vs "
              "`[json.loads(line) for line in file]`.",
              f"2. `ds.filter(expr)`: {TURNS[0]}..{TURNS[1]} turns, every gpt answer non-empty and shorter than "
              f"{MAX_ANSWER_CHARS} characters, vs the same Python predicate through "
              "`ThreadPoolExecutor(8).map` then selecting the rows; kept ids checked equal.",
              "3. `ds.map(normalize_turns)` (collapse whitespace of every turn, count words into a new column) with "
              "`num_workers=2, mode=\"process\"` vs `num_workers=1`; outputs checked equal.",
              "4. `ds.write_shards(dir, format=\"arrow\" | \"parquet\")` (100,000 rows per shard, with sha256 manifest) "
              "vs `f.write(json.dumps(row) + \"\\n\")` over the list; row counts checked, Arrow shards read back equal.",
              "5. RSS growth after `datacopilot.load(jsonl)`, after the json.loads list, and after "
              "`datacopilot.load(arrow_shard_dir)` (memory-mapped; file-backed pages count in RSS).", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workdir", default=os.path.join(HERE, "_data"))
    ap.add_argument("--keep", action="store_true", help="keep the written shards and export in WORKDIR/out")
    ap.add_argument("--repeat", type=int, default=2, help="runs per timing, best kept")
    ap.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"), help=argparse.SUPPRESS)
    ap.add_argument("--measure-memory", nargs=3, metavar=("KIND", "PATH", "WARM"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.measure_memory:
        print(json.dumps(measure_memory(*a.measure_memory)))
        return 0
    global REPEAT
    REPEAT = a.repeat
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    results = run(a.rows, a.workdir, a.keep)
    rows = table(results)
    print()
    print_table(rows)
    cmd = "python bench/engine.py" + (f" --rows {a.rows}" if a.rows != 1_000_000 else "") \
        + (f" --repeat {a.repeat}" if a.repeat != 2 else "")
    write_markdown(a.results, rows, cmd, machine(), (load0, os.getloadavg()[0]), time.perf_counter() - t0)
    print(f"\nwritten {a.results}")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
