"""Plan benchmark: five built-in operators from jsonl to parquet, datacopilot (streaming and eager) against the same
plan in polars alone and in HF datasets, side by side in one run.

The plan: clean_whitespace -> filter_turns(2, 8) -> filter_length(assistant, 1..1500 chars) ->
filter_refusals(assistant) -> dedup_exact, over the LLaVA-style rows of ``bench/pipeline.py`` (``bench/_gen.py``
plus injected duplicates, single turns, refusals, empty answers), written as parquet. Sides, taking turns, each in
a fresh subprocess whose peak RSS (its process tree, sampled, and its own ``ru_maxrss``) is its own:

a. datacopilot streaming: ``dc.pipeline(path, schema="MM").apply(ops).write(out, format="parquet",
   num_workers=2)``;
b. datacopilot eager: ``dc.load(path, schema="MM").apply(ops, num_workers=2).write_shards(out,
   format="parquet")``;
c. polars alone: ``pl.scan_ndjson``, the same rules as expressions, dedup as ``unique`` on the normalized text,
   ``sink_parquet``;
d. HF datasets (``num_proc=2``, in ``bench/_data/hf-venv``): ``load_dataset("json")``, ``map`` / ``filter``
   batched with the per-item rules of ``bench/_hf_baseline.py``, the exact keys in one pass, ``to_parquet``.

The datacopilot sides first run the plan once over 20,000 rows, untimed (imports, numba kernels). Every side's
kept ids are checked equal. Targets (issue 11): datacopilot streaming >= 2x polars and >= 4x HF; streaming
within 1.15x of eager time with a peak RSS under 600 MB; eager peak RSS at most 1.3x the Arrow size of the data.

    python bench/plan.py                 # 1,000,000 rows
    python bench/plan.py --rows 200000   # quicker
    python bench/plan.py --repeat 3      # every side three times, taking turns; the best time is kept

This file's top level imports the standard library only: the HF side runs it in the HF virtual environment.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _hf_baseline as logic  # noqa: E402  (standard library only)

WARM_ROWS = 20_000
HF_VENV = os.path.join(HERE, "_data", "hf-venv")
SIDES = ("stream", "eager", "polars", "hf")
LABEL = {"stream": "datacopilot streaming", "eager": "datacopilot eager", "polars": "polars alone",
         "hf": "HF datasets num_proc=2"}
WORKERS = 2


# -- datacopilot --------------------------------------------------------------------------------------------
def operators():
    from datacopilot.operators import create

    return [create("clean_whitespace"),
            create("filter_turns", min_turns=logic.TURNS[0], max_turns=logic.TURNS[1]),
            create("filter_length", role="assistant", unit="chars", min_length=logic.ANSWER_CHARS[0],
                   max_length=logic.ANSWER_CHARS[1]),
            create("filter_refusals", role="assistant"),
            create("dedup_exact")]


def dc_stream(path: str, out: str) -> dict:
    import datacopilot as dc

    report = dc.pipeline(path, schema="MM").apply(operators()).write(
        out, format="parquet", num_workers=WORKERS, progress=False)
    return {"rows_out": report["rows"]}


def dc_eager(path: str, out: str, sizes: dict | None = None) -> dict:
    import datacopilot as dc

    ds = dc.load(path, schema="MM")
    if sizes is not None:
        sizes["arrow_mb"] = ds.to_arrow().nbytes / 2**20
    ds = ds.apply(operators(), num_workers=WORKERS, progress=False)
    ds.write_shards(out, format="parquet")
    return {"rows_out": len(ds)}


def dc_ids(out: str) -> str:
    import pyarrow.parquet as pq

    files = sorted(os.path.join(out, f) for f in os.listdir(out) if f.endswith(".parquet"))
    return logic.ids_digest([i for f in files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()])


# -- polars alone -------------------------------------------------------------------------------------------
def polars_plan(path: str, out: str) -> dict:
    """The plan as one lazy polars query, streamed to one parquet file."""
    import polars as pl

    from datacopilot.operators.conversation_filters import REFUSALS

    role = pl.element().struct.field("from").replace({"human": "user", "gpt": "assistant"})
    value = pl.element().struct.field("value")
    conv = pl.col("conversations")
    ws = (pl.field("value").str.replace_all(r"\r\n?", "\n").str.replace_all(r"[ \t\f\v\x{A0}\x{3000}]+", " ")
          .str.replace_all(r" ?\n ?", "\n").str.replace_all(r"\n{3,}", "\n\n").str.strip_chars())
    answers = conv.list.eval(pl.element().filter(role == "assistant"))
    turns = conv.list.eval(role != "system").list.sum()
    lengths = answers.list.eval(value.fill_null("").str.len_chars())
    refusal = answers.list.eval(value.fill_null("").str.contains("(?i)(?:" + "|".join(REFUSALS) + ")")).list.any()
    key = (conv.list.eval(value.fill_null("")).list.join("\n").str.to_lowercase().str.replace_all(r"\s+", " ")
           .str.strip_chars())
    q = (pl.scan_ndjson(path)
         .with_columns(conv.list.eval(pl.element().struct.with_fields(ws)))
         .filter(turns.is_between(*logic.TURNS).fill_null(False))
         .filter(((lengths.list.min() >= logic.ANSWER_CHARS[0]) & (lengths.list.max() <= logic.ANSWER_CHARS[1]))
                 .fill_null(True))
         .filter(~refusal.fill_null(False))
         .with_columns(key.alias("_key"))
         .unique(subset="_key", keep="first", maintain_order=True)
         .drop("_key"))
    os.makedirs(out, exist_ok=True)
    q.sink_parquet(os.path.join(out, "part-0.parquet"))
    return {"rows_out": pl.scan_parquet(os.path.join(out, "part-0.parquet")).select(pl.len()).collect().item()}


# -- HF datasets (runs in the HF venv: standard library, datasets, and _hf_baseline) --------------------------
def _hf_keep(batch: dict) -> list[bool]:
    rows = [{"conversations": c} for c in batch["conversations"]]
    return [logic.keep_turns(r) and logic.keep_length(r) and logic.keep_refusals(r) for r in rows]


def _hf_key(batch: dict) -> dict:
    return {"_key": [logic.exact_key({"conversations": c}) for c in batch["conversations"]]}


def hf_plan(path: str, out: str) -> dict:
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.load_dataset("json", data_files=path, split="train", cache_dir=os.path.join(out, "cache"))
    ds = ds.map(logic.hf_clean, batched=True, num_proc=WORKERS)
    ds = ds.filter(_hf_keep, batched=True, num_proc=WORKERS)
    ds = ds.map(_hf_key, batched=True, num_proc=WORKERS)
    seen, keep = set(), []
    for i, k in enumerate(ds["_key"]):  # stateful: one process, in row order
        if k not in seen:
            seen.add(k)
            keep.append(i)
    ds = ds.select(keep).remove_columns(["_key"])
    ds.to_parquet(os.path.join(out, "part-0.parquet"))
    return {"rows_out": len(ds), "datasets": datasets.__version__}


# -- one side in this (fresh) process -----------------------------------------------------------------------
def child(side: str, path: str, out: str, warm: str | None = None) -> dict:
    """Run one side, timed; the datacopilot sides first run once over ``warm``, untimed."""
    fn = {"stream": dc_stream, "eager": dc_eager, "polars": polars_plan, "hf": hf_plan}[side]
    if warm:
        shutil.rmtree(out, ignore_errors=True)
        fn(warm, out)
    shutil.rmtree(out, ignore_errors=True)
    sizes: dict = {}
    c0, t0 = _cpu(), time.perf_counter()
    res = fn(path, out, sizes) if side == "eager" else fn(path, out)
    res["seconds"] = time.perf_counter() - t0
    res["cpu_s"] = _cpu() - c0
    res["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res.update(sizes)
    return res


def _cpu() -> float:
    """CPU seconds (user + system) of this process and its waited-for children (HF's num_proc workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def tree_rss(proc) -> int:
    """Resident bytes of a process and its children (0 once it is gone)."""
    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_side(side: str, path: str, out: str, warm: str, every: float = 0.1) -> dict:
    """One side in a subprocess (the HF side with the HF venv's Python), its process tree's RSS sampled."""
    import psutil

    py = os.path.join(HF_VENV, "bin", "python") if side == "hf" else sys.executable
    spec = {"side": side, "path": path, "out": out, "warm": warm if side in ("stream", "eager") else None}
    proc = subprocess.Popen([py, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    got: dict = {}
    reader = threading.Thread(target=lambda: got.update(zip(("out", "err"), proc.communicate())))
    reader.start()
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(every)
    reader.join()
    if proc.returncode:
        raise SystemExit(f"{side} failed:\n{got.get('err', '')[-3000:]}")
    res = json.loads(got["out"].strip().splitlines()[-1])
    res["peak_mb"] = max(res["maxrss_mb"], peak / 2**20)
    res["ids_sha"] = dc_ids(out)
    shutil.rmtree(out, ignore_errors=True)
    return res


# -- the run ------------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(rows: int, workdir: str, repeat: int, sides: tuple) -> dict:
    from pipeline import ensure_data

    warm = ensure_data(workdir, WARM_ROWS)
    path = ensure_data(workdir, rows)
    if "hf" in sides and not os.path.exists(os.path.join(HF_VENV, "bin", "python")):
        log(f"no HF virtual environment at {HF_VENV}: the HF side is left out")
        sides = tuple(s for s in sides if s != "hf")
    with open(path, "rb") as f:  # page cache warm for every side
        while f.read(64 << 20):
            pass
    results: dict = {s: [] for s in sides}
    for r in range(repeat):
        for side in sides:
            res = run_side(side, path, os.path.join(workdir, f"plan_out_{side}"), warm)
            log(f"round {r + 1}, {LABEL[side]}: {res['seconds']:.1f} s, {res['rows_out']:,} rows, "
                f"peak RSS {res['peak_mb']:.0f} MB")
            results[side].append(res)
    return {"path": path, "input_mb": os.path.getsize(path) / 1e6, "rows": rows, "sides": results}


def best(runs: list[dict]) -> dict:
    out = dict(min(runs, key=lambda r: r["seconds"]))
    out["times"] = [round(r["seconds"], 2) for r in runs]
    out["peak_mb"] = max(r["peak_mb"] for r in runs)
    return out


def table(info: dict) -> tuple[list[list[str]], bool]:
    """The report rows and whether every target passed."""
    b = {s: best(r) for s, r in info["sides"].items()}
    rows = [["side", "wall (s)", "CPU (s)", "peak RSS (MB)", "rows out", "ids"]]
    ref = b.get("stream", next(iter(b.values())))["ids_sha"]
    for s, r in b.items():
        rows.append([LABEL[s], f"{r['seconds']:.1f}", f"{r.get('cpu_s', 0):.1f}", f"{r['peak_mb']:.0f}", f"{r['rows_out']:,}",
                     "same" if r["ids_sha"] == ref else f"DIFFER ({r['ids_sha']})"])
    checks = []
    st, eg = b.get("stream"), b.get("eager")
    if st and "polars" in b:
        checks.append(("streaming vs polars alone", b["polars"]["seconds"] / st["seconds"], ">= 2x", 2.0, True))
    if st and "hf" in b:
        checks.append(("streaming vs HF datasets", b["hf"]["seconds"] / st["seconds"], ">= 4x", 4.0, True))
    if eg and "polars" in b:
        checks.append(("eager vs polars alone", b["polars"]["seconds"] / eg["seconds"], ">= 2x", 2.0, True))
    if eg and "hf" in b:
        checks.append(("eager vs HF datasets", b["hf"]["seconds"] / eg["seconds"], ">= 4x", 4.0, True))
    if st and eg:
        checks.append(("streaming time / eager time", st["seconds"] / eg["seconds"], "<= 1.15x", 1.15, False))
    if st:
        checks.append(("streaming peak RSS (MB)", st["peak_mb"], "< 600 MB", 600, False))
    if eg and eg.get("arrow_mb"):
        checks.append((f"eager peak RSS / Arrow size ({eg['arrow_mb']:.0f} MB)", eg["peak_mb"] / eg["arrow_mb"],
                       "<= 1.3x", 1.3, False))
    same = all(r["ids_sha"] == ref for r in b.values())
    rows2 = [["check", "figure", "target", "result"]]
    for name, v, target, t, higher in checks:
        ok = v >= t if higher else v <= t
        fig = f"{v:,.0f} MB" if target.endswith("MB") else f"{v:.2f}x"
        rows2.append([name, fig, target, "pass" if ok else "FAIL"])
    rows2.append(["every side keeps the same rows", "yes" if same else "no", "same ids", "pass" if same else "FAIL"])
    return rows + [[]] + rows2, all(r[-1] == "pass" for r in rows2[1:])


def print_table(rows: list[list[str]]) -> None:
    block: list[list[str]] = []
    for r in rows + [[]]:
        if r:
            block.append(r)
            continue
        widths = [max(len(x[i]) for x in block) for i in range(len(block[0]))]
        print("| " + " | ".join(h.ljust(w) for h, w in zip(block[0], widths)) + " |")
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for x in block[1:]:
            print("| " + " | ".join(c.ljust(w) for c, w in zip(x, widths)) + " |")
        print()
        block = []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=1, help="runs of every side, taking turns (the best is kept)")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"a comma-separated subset of {','.join(SIDES)}")
    ap.add_argument("--workdir", default=os.path.join(HERE, "_data"))
    ap.add_argument("--json", help="also write the measurements to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(**json.loads(a.child))))
        return 0
    sides = tuple(s for s in a.sides.split(",") if s)
    if not set(sides) <= set(SIDES):
        raise SystemExit(f"--sides: each one of {SIDES}, got {a.sides!r}")
    info = run(a.rows, a.workdir, a.repeat, sides)
    print(f"\n{a.rows:,} rows, {info['input_mb']:.0f} MB jsonl, {WORKERS} workers, best of {a.repeat}\n")
    rows, ok = table(info)
    print_table(rows)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(info, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
