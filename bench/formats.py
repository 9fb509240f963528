"""Format benchmark: load and write rates of every format, datacopilot next to polars, pyarrow and HF datasets.

The rows: ``--rows`` LLaVA-style MM rows built here with a fixed seed (``{"id": "0000123", "image":
"images/012/0000123.jpg", "conversations": [...]}``, 2-6 turns human/gpt, ``<image>`` at the start of the first
turn, answers lognormal in words). Images are paths only; only webdataset, whose writer stores the image bytes,
gets tiny embedded PNGs (8 distinct 4x4 images).

Per format, datacopilot writes the file (timed, ``ds.write(path)``) and every side reads that same file;
datacopilot loads with ``dc.load(path, schema="MM")``. The baselines:

- jsonl: ``pyarrow.json.read_json``, ``pl.read_ndjson``, HF ``load_dataset("json")``; writes ``pl.write_ndjson``,
  HF ``to_json``. Also the same rows with one id in 7 an int, as LLaVA-1.5's mix665k mixes them (written by
  ``json.dumps``, loads only);
- json (one array): ``pl.read_json``, HF ``load_dataset("json")``; writes ``pl.write_json``, HF
  ``to_json(lines=False)``;
- h5 (DataCopilot's layout): ``h5py`` + one ``json.loads`` per row, as DataCopilot's ``from_h5``;
- parquet: ``pl.read_parquet``, HF ``Dataset.from_parquet``; writes ``pl.write_parquet``, HF ``to_parquet``;
- Arrow IPC: ``pl.read_ipc``; writes ``pl.write_ipc``;
- webdataset: HF ``load_dataset("webdataset")``;
- HF ``save_to_disk``: datacopilot ``dc.load(d)`` (the directory, memory-mapped) (and ``ds.to_hf().save_to_disk``)
  vs HF ``load_from_disk`` (and ``save_to_disk``);
- a polars DataFrame: ``dc.load(df)`` / ``ds.to_polars()`` vs HF ``Dataset.from_polars`` / ``to_polars``.

polars writes the frame it reads from the jsonl (it cannot write the all-null binary ``image.bytes`` as JSON).

datacopilot's loads validate every row (MM schema); the baselines do no validation. HF datasets runs in its own
virtual environment (``bench/_data/hf-venv``, as ``bench/pipeline.py``), as a server process timing one request
at a time (``bench/_hf_formats.py``), each load with an empty cache directory. Every figure is the best of
``--repeat`` runs (a run over 3 s is not repeated); datacopilot and the baselines take turns, in a rotating
order. Targets: every format loads at >= 1x the fastest baseline that reads it, and jsonl at >= 0.8x
``pyarrow.json.read_json`` on the same file.

    python bench/formats.py                    # 100,000 rows, best of 3; writes bench/RESULTS_formats.md
    python bench/formats.py --quick            # 2,000 rows, once: a smoke run (no results file)
    python bench/formats.py --profile jsonl    # cProfile of datacopilot loading one format, top lines
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from engine import log, machine  # noqa: E402

SEED = 20250110
HF_VENV = os.path.join(HERE, "_data", "hf-venv")
HF_INSTALL = f"python -m venv {HF_VENV} && {HF_VENV}/bin/pip install 'datasets<3' pyarrow datasketch polars pillow"
INT_ID_EVERY = 7  # jsonl-int-ids: every 7th id an int, as LLaVA-1.5's mix665k mixes them (15% there)
FORMATS = ("jsonl", "jsonl-int-ids", "json", "h5", "parquet", "arrow", "webdataset", "hf", "polars")
FILE = {"jsonl": "rows.jsonl", "jsonl-int-ids": "rows_int_ids.jsonl", "json": "rows.json", "h5": "rows.h5",
        "parquet": "rows.parquet", "arrow": "rows.arrow", "webdataset": "rows.tar", "hf": "rows_hf",
        "polars": "rows_polars.arrow"}
LABEL = {"jsonl-int-ids": f"jsonl, 1 id in {INT_ID_EVERY} an int (mix665k)", "arrow": "Arrow IPC",
         "hf": "HF save_to_disk", "polars": "polars DataFrame"}
JSONL_VS_PYARROW = 0.8  # the jsonl target against pyarrow.json.read_json
SLOW = 3.0  # seconds: a run longer than this is not repeated


# -- the rows ---------------------------------------------------------------------------------------------
QUESTIONS = ("What is shown in the image?", "Describe the scene in detail.", "What color is the {w}?",
             "How many {w}s can you see?", "Why is the {w} next to the {v}?", "Where was this picture taken?",
             "What is the {w} doing?", "Is there a {w} in the picture?", "What does the sign say about the {w}?")
SYLLABLES = "ka ri to ne sa mi lo de an el is or un ve ta ro ma li po su ge ha ni te bo ra se fi".split()


def make_rows(n: int, seed: int = SEED) -> list[dict]:
    """``n`` LLaVA-style MM rows, the same for the same seed.

    >>> make_rows(2)[0]["conversations"][0]["value"].startswith("<image>\\n")
    True
    """
    rng = np.random.default_rng(seed)
    vocab = sorted({"".join(rng.choice(SYLLABLES, k)) for k in rng.integers(1, 4, 6000)})
    vocab += ["café", "Zürich", "东京"]
    p = 1.0 / np.arange(1, len(vocab) + 1)
    words = np.array(vocab, dtype=object)[rng.choice(len(vocab), 3_000_000, p=p / p.sum())]
    pairs = rng.integers(1, 4, n)  # 1-3 exchanges: 2-6 turns
    total = int(pairs.sum())
    lengths = np.clip(np.round(rng.lognormal(np.log(40), 0.7, total)), 1, 600).astype(np.int64)
    starts = rng.integers(0, len(words) - 600, total)
    q = rng.integers(0, len(QUESTIONS), total)
    fill = rng.integers(0, len(vocab) - 3, (total, 2))
    out, j = [], 0
    for k in range(n):
        conv = []
        for t in range(int(pairs[k])):
            question = QUESTIONS[q[j]].format(w=vocab[fill[j, 0]], v=vocab[fill[j, 1]])
            answer = " ".join(words[starts[j]:starts[j] + lengths[j]])
            conv.append({"from": "human", "value": ("<image>\n" if t == 0 else "") + question})
            conv.append({"from": "gpt", "value": answer[:1].upper() + answer[1:] + "."})
            j += 1
        out.append({"id": f"{k:07d}", "image": f"images/{k % 1000:03d}/{k:07d}.jpg", "conversations": conv})
    return out


def tiny_pngs(count: int = 8) -> list[bytes]:
    from PIL import Image

    out = []
    for i in range(count):
        buf = io.BytesIO()
        Image.new("RGB", (4, 4), (30 * i, 255 - 30 * i, 128)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


# -- the sides ----------------------------------------------------------------------------------------------
class HF:
    """The HF datasets server in its own virtual environment (None figures when the venv is missing)."""

    def __init__(self, tmp: str):
        py = os.path.join(HF_VENV, "bin", "python")
        self.tmp, self.proc, self.version = tmp, None, None
        if not os.path.exists(py):
            log(f"no HF virtual environment at {HF_VENV}, HF datasets left out: {HF_INSTALL}")
            return
        self.proc = subprocess.Popen([py, os.path.join(HERE, "_hf_formats.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.version = self.ask({"op": "version"}).get("datasets")

    def ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps({**req, "tmp": self.tmp}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def timed(self, req: dict, rows: int):
        """A function for :func:`measure`: runs in the server, returns its own seconds."""
        def run():
            out = self.ask(req)
            if "error" in out:
                raise RuntimeError(out["error"])
            if out["rows"] is not None and out["rows"] != rows:
                raise RuntimeError(f"read {out['rows']} rows, expected {rows}")
            return out["seconds"]
        return run

    def close(self):
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def clock(fn, rows: int | None = None):
    """A function for :func:`measure`: times ``fn`` here, checks the number of rows it returns."""
    def run():
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        if rows is not None and len(out) != rows:
            raise RuntimeError(f"read {len(out)} rows, expected {rows}")
        del out
        return seconds
    return run


def h5_datacopilot_way(path: str) -> list[dict]:
    """PaddleMIX DataCopilot's ``from_h5``: h5py arrays, one ``json.loads`` per row, a list of dicts."""
    import h5py

    with h5py.File(path, "r") as f:
        data, offsets = f["dataset"][()].tobytes(), f["offset"][()].tolist()
    ends = offsets[1:] + [len(data)]
    return [json.loads(data[s:e]) for s, e in zip(offsets, ends)]


def clear(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def plan(work: str, n: int, ds, ds_img, hf: HF) -> tuple[dict, dict]:
    """{format: {side: fn}} for loads and for writes; a side's fn returns its seconds. Datacopilot's writes
    come first in each repeat, so every load reads a file written in the same repeat."""
    import polars as pl
    import pyarrow.json as pajson

    import datacopilot as dc

    p = {f: os.path.join(work, name) for f, name in FILE.items()}
    out = os.path.join(work, "out")
    os.makedirs(out, exist_ok=True)
    df = ds.to_polars()

    def dc_write(fmt, src):
        def go():
            clear(p[fmt])
            return src.write(p[fmt])
        return go

    def save_hf():
        clear(p["hf"])
        ds.to_hf().save_to_disk(p["hf"])

    frames = {}

    def polars_write(method, name):  # polars writes the frame it reads from the jsonl (no binary column to JSON)
        target = os.path.join(out, name)

        def go():
            if "src" not in frames:
                frames["src"] = pl.read_ndjson(p["jsonl"])
            return getattr(frames["src"], method)(target)
        return clock(go)

    def wrap(fn):  # a write returns nothing: count no rows
        return clock(lambda: fn() or ())

    loads = {
        "jsonl": {"datacopilot": clock(lambda: dc.load(p["jsonl"], schema="MM"), n),
                  "pyarrow.json.read_json": clock(lambda: pajson.read_json(p["jsonl"]), n),
                  "polars read_ndjson": clock(lambda: pl.read_ndjson(p["jsonl"]), n)},
        "jsonl-int-ids": {"datacopilot": clock(lambda: dc.load(p["jsonl-int-ids"], schema="MM"), n),
                          "pyarrow.json.read_json": clock(lambda: pajson.read_json(p["jsonl-int-ids"]), n),
                          "polars read_ndjson": clock(lambda: pl.read_ndjson(p["jsonl-int-ids"]), n)},
        "json": {"datacopilot": clock(lambda: dc.load(p["json"], schema="MM"), n),
                 "polars read_json": clock(lambda: pl.read_json(p["json"]), n)},
        "h5": {"datacopilot": clock(lambda: dc.load(p["h5"], schema="MM"), n),
               "h5py + json.loads (DataCopilot)": clock(lambda: h5_datacopilot_way(p["h5"]), n)},
        "parquet": {"datacopilot": clock(lambda: dc.load(p["parquet"], schema="MM"), n),
                    "polars read_parquet": clock(lambda: pl.read_parquet(p["parquet"]), n)},
        "arrow": {"datacopilot": clock(lambda: dc.load(p["arrow"], schema="MM"), n),
                  "polars read_ipc": clock(lambda: pl.read_ipc(p["arrow"]), n)},
        "webdataset": {"datacopilot": clock(lambda: dc.load(p["webdataset"], schema="MM"), n)},
        "hf": {"datacopilot": clock(lambda: dc.load(p["hf"], schema="MM"), n)},
        "polars": {"datacopilot": clock(lambda: dc.load(df, schema="MM"), n)},
    }
    writes = {
        "jsonl": {"datacopilot": wrap(dc_write("jsonl", ds)), "polars write_ndjson": polars_write(
            "write_ndjson", "pl.jsonl")},
        "json": {"datacopilot": wrap(dc_write("json", ds)), "polars write_json": polars_write("write_json", "pl.json")},
        "jsonl-int-ids": {},  # the file is written by the bench (json.dumps), as people have it
        "h5": {"datacopilot": wrap(dc_write("h5", ds))},
        "parquet": {"datacopilot": wrap(dc_write("parquet", ds)),
                    "polars write_parquet": polars_write("write_parquet", "pl.parquet")},
        "arrow": {"datacopilot": wrap(dc_write("arrow", ds)),
                  "polars write_ipc": polars_write("write_ipc", "pl.arrow")},
        "webdataset": {"datacopilot": wrap(dc_write("webdataset", ds_img))},
        "hf": {"datacopilot": wrap(save_hf)},
        "polars": {"datacopilot": clock(lambda: ds.to_polars(), n)},
    }
    if hf.proc is not None:
        src = p["parquet"]
        for fmt, name in (("jsonl", "load_dataset('json')"), ("jsonl-int-ids", "load_dataset('json')"),
                          ("json", "load_dataset('json')"), ("parquet", "from_parquet"),
                          ("webdataset", "load_dataset('webdataset')"), ("hf", "load_from_disk"),
                          ("polars", "from_polars")):
            loads[fmt]["HF " + name] = hf.timed({"op": "load", "fmt": fmt, "path": p[fmt]}, n)
        for fmt, name in (("jsonl", "to_json"), ("json", "to_json(lines=False)"), ("parquet", "to_parquet"),
                          ("hf", "save_to_disk"), ("polars", "to_polars")):
            target = os.path.join(out, f"hf.{fmt}")
            writes[fmt]["HF " + name] = hf.timed({"op": "write", "fmt": fmt, "src": src, "path": target}, n)
    return loads, writes


def measure(sides: dict, best: dict, turn: int) -> None:
    """Run every side once, in an order rotated by ``turn``; keep each side's best seconds in ``best``. A side
    that took more than :data:`SLOW` seconds (or failed) is not run again: one run is figure enough."""
    names = list(sides)
    k = turn % max(len(names), 1)
    for name in names[k:] + names[:k]:
        if turn and (name in best and (best[name] is None or best[name] > SLOW)):
            continue
        try:
            s = sides[name]()
        except (Exception, BaseException) as e:  # a side that cannot read the file (polars panics): reported
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            log(f"  {name}: failed: {str(e)[:300]}")
            best.setdefault(name, None)
            continue
        if best.get(name) is None or s < best[name]:
            best[name] = s


def run(n: int, repeat: int, work: str, formats: tuple[str, ...]) -> tuple[dict, dict, dict]:
    import polars as pl

    import datacopilot as dc

    import datasets

    datasets.disable_progress_bars()
    os.makedirs(work, exist_ok=True)
    log(f"building {n:,} rows (seed {SEED}) ...")
    rows = make_rows(n)
    src = os.path.join(work, "source.jsonl")
    with open(src, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with open(os.path.join(work, FILE["jsonl-int-ids"]), "w", encoding="utf-8") as f:
        f.writelines(json.dumps({**r, "id": k} if k % INT_ID_EVERY == 0 else r, ensure_ascii=False) + "\n"
                     for k, r in enumerate(rows))
    pngs = tiny_pngs()
    ds = dc.load(src, schema="MM")
    ds_img = dc.MMDataset.from_rows([{**r, "image": {"path": r["image"], "bytes": pngs[i % len(pngs)]}}
                                     for i, r in enumerate(rows)], "MM")
    del rows
    info = {"rows": n, "jsonl_mb": os.path.getsize(src) / 1e6, "repeat": repeat}
    hf = HF(work)
    info["datasets"] = hf.version
    try:
        loads, writes = plan(work, n, ds, ds_img, hf)
        pl.from_arrow(ds.to_arrow()).write_ipc(os.path.join(work, FILE["polars"]))  # what HF's from_polars reads
        writes["parquet"]["datacopilot"]()  # HF's writes start from the parquet file
        load_best, write_best = {f: {} for f in formats}, {f: {} for f in formats}
        for r in range(repeat):
            log(f"repeat {r + 1}/{repeat}")
            for fmt in formats:
                measure(writes[fmt], write_best[fmt], r)
                measure(loads[fmt], load_best[fmt], r)
                log(f"  {fmt}: load " + ", ".join(f"{k} {v:.3f}s" for k, v in load_best[fmt].items() if v))
    finally:
        hf.close()
    info["sizes_mb"] = {f: _size(os.path.join(work, FILE[f])) / 1e6 for f in formats if f != "polars"}
    return load_best, write_best, info


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, x)) for d, _, files in os.walk(path) for x in files)
    return os.path.getsize(path) if os.path.exists(path) else 0


# -- the report -------------------------------------------------------------------------------------------
def rate(n: int, s: float | None) -> str:
    return "-" if not s else f"{n / s / 1e3:,.0f}k"


def load_table(n: int, best: dict) -> tuple[list[list[str]], bool]:
    """Markdown rows: format, datacopilot rows/s, each baseline's rows/s and ratio, the target, pass/fail."""
    out, all_pass = [], True
    for fmt, sides in best.items():
        dcs = sides.get("datacopilot")
        base = {k: v for k, v in sides.items() if k != "datacopilot"}
        shown = "; ".join(f"{k} {rate(n, v) if v else 'fails'}" + (f" ({v / dcs:.2f}x)" if v and dcs else "")
                          for k, v in base.items()) or "none reads it"
        rivals = {k: v for k, v in base.items() if v and not k.startswith("pyarrow")}
        verdict = []
        if rivals and dcs:
            fastest = min(rivals.values())
            verdict.append(f">= 1x fastest: {fastest / dcs:.2f}x " + ("pass" if dcs <= fastest else "FAIL"))
            all_pass &= dcs <= fastest
        pa_s = base.get("pyarrow.json.read_json")
        if pa_s and dcs:
            ok = pa_s / dcs >= JSONL_VS_PYARROW
            verdict.append(f">= {JSONL_VS_PYARROW}x pyarrow: {pa_s / dcs:.2f}x " + ("pass" if ok else "FAIL"))
            all_pass &= ok
        out.append([LABEL.get(fmt, fmt), rate(n, dcs), shown, "; ".join(verdict) or "no baseline"])
    return out, all_pass


def write_table(n: int, best: dict) -> list[list[str]]:
    out = []
    for fmt, sides in best.items():
        if not sides:
            continue
        dcs = sides.get("datacopilot")
        base = "; ".join(f"{k} {rate(n, v)}" + (f" ({v / dcs:.2f}x)" if v and dcs else "")
                         for k, v in sides.items() if k != "datacopilot")
        out.append([LABEL.get(fmt, fmt), rate(n, dcs), base or "none writes it"])
    return out


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


LOAD_HEAD = ["format", "datacopilot rows/s", "baselines rows/s (ratio baseline time / datacopilot time)", "target"]
WRITE_HEAD = ["format", "datacopilot rows/s", "baselines rows/s (ratio)"]


def report(n: int, loads: dict, writes: dict, info: dict, command: str, results: str | None) -> bool:
    lt, ok = load_table(n, loads)
    text = (f"Loads ({n:,} rows; a ratio above 1 means datacopilot is faster; datacopilot validates every row):\n\n"
            + markdown(LOAD_HEAD, lt) + f"\n\nWrites:\n\n" + markdown(WRITE_HEAD, write_table(n, writes)))
    print("\n" + text + "\n")
    log("all load targets pass" if ok else "some load targets FAIL")
    if results:
        m = machine()
        commit = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip() or "?"
        with open(results, "w", encoding="utf-8") as f:
            f.write(f"# Format benchmark\n\n`{command}` at commit {commit} on {time.strftime('%Y-%m-%d %H:%M')}, "
                    f"{m['nproc']} CPUs "
                    f"({m['cpu']}), python {m['python']}, pyarrow {m['pyarrow']}, polars {m['polars']}, "
                    f"datasets {info.get('datasets')} (own venv), best of {info['repeat']} (runs over {SLOW:g} s: "
                    f"one); "
                    f"{info['jsonl_mb']:.0f} MB of jsonl; file sizes (MB): "
                    + ", ".join(f"{k} {v:.0f}" for k, v in info["sizes_mb"].items()) + ".\n\n" + text + "\n")
        log(f"wrote {results}")
    return ok


def profile(fmt: str, n: int, work: str, top: int = 30) -> None:
    """cProfile of one datacopilot load of ``fmt`` (after one untimed warm load), top lines by own time."""
    import datacopilot as dc

    os.makedirs(work, exist_ok=True)
    rows = make_rows(n)
    if fmt == "webdataset":
        pngs = tiny_pngs()
        rows = [{**r, "image": {"path": r["image"], "bytes": pngs[i % len(pngs)]}} for i, r in enumerate(rows)]
    ds = dc.MMDataset.from_rows(rows, "MM")
    path = os.path.join(work, FILE[fmt])
    clear(path)
    if fmt == "jsonl-int-ids":
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({**r, "id": k} if k % INT_ID_EVERY == 0 else r, ensure_ascii=False) + "\n"
                         for k, r in enumerate(rows))
    elif fmt == "hf":
        ds.to_hf().save_to_disk(path)
    elif fmt == "polars":
        path = ds.to_polars()
    else:
        ds.write(path)

    def load():
        return dc.load(path, schema="MM")

    load()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(load)
    log(f"datacopilot load {fmt}, {n:,} rows: {time.perf_counter() - t0:.3f} s under cProfile")
    for key in ("tottime", "cumulative"):
        pstats.Stats(prof).strip_dirs().sort_stats(key).print_stats(top)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2,000 rows, once, no results file: a smoke run")
    ap.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, of {', '.join(FORMATS)}")
    ap.add_argument("--workdir", default=os.path.join(HERE, "_data", "formats"))
    ap.add_argument("--results", default=os.path.join(HERE, "RESULTS_formats.md"))
    ap.add_argument("--profile", metavar="FORMAT", help="profile datacopilot loading this format instead")
    a = ap.parse_args(argv)
    formats = tuple(x for x in a.formats.split(",") if x)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        ap.error(f"unknown formats {unknown}; known: {', '.join(FORMATS)}")
    n, repeat = (2_000, 1) if a.quick else (a.rows, a.repeat)
    if a.profile:
        profile(a.profile, n, a.workdir)
        return 0
    command = "python bench/formats.py" + " ".join([""] + (argv if argv is not None else sys.argv[1:]))
    try:
        loads, writes, info = run(n, repeat, a.workdir, formats)
        report(n, loads, writes, info, command.strip(), None if a.quick else a.results)
    finally:
        shutil.rmtree(a.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
