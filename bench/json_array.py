"""JSON array benchmark: ``dc.load("x.json")`` (one array of objects, as LLaVA ships its data) next to polars
``read_json`` and HF ``load_dataset("json")``, on the rows of ``bench/formats.py``.

Three files of the same ``--rows`` LLaVA-style MM rows (``formats.make_rows``, fixed seed):

- ``written``: datacopilot's own writer (``ds.write("x.json")``: one element a line);
- ``indent``: ``json.dump(rows, f, indent=4)``, the layout of LLaVA's ``llava_v1_5_mix665k.json``;
- ``indent-int-ids``: the same with one id in 7 an int, as mix665k mixes them (15% there).

datacopilot loads with ``dc.load(path, schema="MM")`` and validates every row; the baselines do no validation.
HF datasets runs in its own virtual environment (``bench/_data/hf-venv``) as ``bench/formats.py`` runs it; it is
left out when that environment is missing. Every figure is the best of ``--repeat`` runs, the sides taking turns
in a rotating order. Target: datacopilot loads at >= 1x the fastest baseline.

    python bench/json_array.py                 # 100,000 rows, best of 3
    python bench/json_array.py --quick         # 2,000 rows, once: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from engine import log, machine  # noqa: E402
from formats import HF, INT_ID_EVERY, clock, make_rows, measure, rate  # noqa: E402

FILES = ("written", "indent", "indent-int-ids")


def write_files(work: str, n: int) -> dict[str, str]:
    import datacopilot as dc

    rows = make_rows(n)
    paths = {name: os.path.join(work, f"{name}.json") for name in FILES}
    dc.MMDataset.from_rows(rows, "MM").write(paths["written"])
    with open(paths["indent"], "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=4, ensure_ascii=False)
    with open(paths["indent-int-ids"], "w", encoding="utf-8") as f:
        json.dump([{**r, "id": k} if k % INT_ID_EVERY == 0 else r for k, r in enumerate(rows)], f, indent=4,
                  ensure_ascii=False)
    return paths


def run(n: int, repeat: int, work: str) -> dict:
    import polars as pl

    import datacopilot as dc

    paths = write_files(work, n)
    hf = HF(work)
    best = {name: {} for name in FILES}
    try:
        sides = {}
        for name, p in paths.items():
            sides[name] = {"datacopilot": clock(lambda p=p: dc.load(p, schema="MM"), n),
                           "polars read_json": clock(lambda p=p: pl.read_json(p), n)}
            if hf.proc is not None:
                sides[name]["HF load_dataset('json')"] = hf.timed({"op": "load", "fmt": "json", "path": p}, n)
        for r in range(repeat):
            log(f"repeat {r + 1}/{repeat}")
            for name in FILES:
                measure(sides[name], best[name], r)
                log(f"  {name}: " + ", ".join(f"{k} {v:.3f}s" for k, v in best[name].items() if v))
    finally:
        hf.close()
    sizes = {name: os.path.getsize(p) / 1e6 for name, p in paths.items()}
    return {"best": best, "sizes": sizes, "datasets": hf.version}


def report(n: int, out: dict) -> bool:
    head = "| file | MB | datacopilot rows/s | baselines rows/s (baseline time / datacopilot time) | >= 1x fastest |"
    lines, ok = [head, "|---|---|---|---|---|"], True
    for name, sides in out["best"].items():
        dcs = sides.get("datacopilot")
        base = {k: v for k, v in sides.items() if k != "datacopilot"}
        shown = "; ".join(f"{k} {rate(n, v) if v else 'fails'}" + (f" ({v / dcs:.2f}x)" if v and dcs else "")
                          for k, v in base.items())
        rivals = [v for v in base.values() if v]
        verdict = "-"
        if rivals and dcs:
            fastest = min(rivals)
            verdict = f"{fastest / dcs:.2f}x " + ("pass" if dcs <= fastest else "FAIL")
            ok &= dcs <= fastest
        lines.append(f"| {name} | {out['sizes'][name]:.0f} | {rate(n, dcs)} | {shown} | {verdict} |")
    m = machine()
    print(f"\n{n:,} rows, {m['nproc']} CPUs ({m['cpu']}), pyarrow {m['pyarrow']}, polars {m['polars']}, "
          f"datasets {out['datasets']}; datacopilot validates every row (MM):\n\n" + "\n".join(lines) + "\n")
    log("all targets pass" if ok else "some targets FAIL")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2,000 rows, once: a smoke run")
    ap.add_argument("--workdir", default=None, help="where the files go (default: a temporary directory)")
    a = ap.parse_args(argv)
    n, repeat = (2_000, 1) if a.quick else (a.rows, a.repeat)
    work = a.workdir or tempfile.mkdtemp(prefix="dc-json-array-")
    os.makedirs(work, exist_ok=True)
    try:
        report(n, run(n, repeat, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
