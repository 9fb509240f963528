"""Peak memory of a pipeline's source streaming one file (``Source.batches``, each format's batch reader) next to
``dc.load`` of the same file, for every format.

Writes ``--rows`` MM rows (two turns of about 250 characters each, an image path) as jsonl, json, parquet, Arrow
IPC, h5 and a webdataset tar (``KEY.json`` members only) into a temporary directory, then reads each file in a
fresh interpreter, once streamed in batches of ``--batch-size`` rows and once loaded whole, and prints the rows
read, the seconds and the process's peak resident memory (``VmHWM``; the interpreter with datacopilot
imported is part of it). The rows are checked equal between the two reads.

    python bench/stream_memory.py                 # 400,000 rows (files of about 250 MB; a few minutes)
    python bench/stream_memory.py --rows 50000 --formats jsonl,h5
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

FILES = {"jsonl": "d.jsonl", "json": "d.json", "parquet": "d.parquet", "arrow": "d.arrow", "h5": "d.h5",
         "webdataset": "d.tar"}

READ = """
import hashlib, resource, sys, time
import datacopilot as dc
from datacopilot.source import Source
how, path, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
digest, n = hashlib.sha256(), 0
if how == "load":
    tables = [dc.load(path, schema="MM").to_arrow()]
else:
    src = Source.from_paths(path, schema="MM")
    tables = src.batches(src.units()[0], batch_size)
for t in tables:
    n += t.num_rows
    for v in t.column("id").to_pylist():
        digest.update(v.encode() + b"|")
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")]  # ru_maxrss survives exec: not it
peak = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(n, digest.hexdigest()[:12], round(time.perf_counter() - t0, 2), round(peak))
"""


def write_files(d: str, rows: int, formats: list[str]) -> dict[str, str]:
    import datacopilot as dc

    jsonl = os.path.join(d, FILES["jsonl"])
    with open(jsonl, "w") as f:
        for k in range(rows):
            f.write(json.dumps({"id": f"r{k}", "image": f"img/{k}.png", "conversations": [
                {"from": "human", "value": f"<image>\nquestion {k} " + "q" * 200},
                {"from": "gpt", "value": f"answer {k} " + "a" * 240}]}) + "\n")
    ds = dc.load(jsonl, schema="MM")
    out = {}
    for fmt in formats:
        path = os.path.join(d, FILES[fmt])
        if fmt == "webdataset":  # the writer would embed the images; the rows name paths that do not exist
            with tarfile.open(path, "w") as tar, open(jsonl, "rb") as f:
                for k, line in enumerate(f):
                    info = tarfile.TarInfo(f"{k:07d}.json")
                    info.size = len(line)
                    tar.addfile(info, io.BytesIO(line))
        elif fmt != "jsonl":
            dc.write(ds, path)
        out[fmt] = path
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--formats", default=",".join(FILES))
    args = ap.parse_args()
    formats = args.formats.split(",")
    with tempfile.TemporaryDirectory() as d:
        paths = write_files(d, args.rows, formats)
        print(f"{args.rows} rows, batches of {args.batch_size}")
        print(f"{'format':<11} {'MB':>6}  {'stream s':>8} {'peak MB':>8}  {'load s':>7} {'peak MB':>8}")
        for fmt, path in paths.items():
            got = {}
            for how in ("stream", "load"):
                res = subprocess.run([sys.executable, "-c", READ, how, path, str(args.batch_size)],
                                     capture_output=True, text=True)
                if res.returncode:
                    sys.exit(f"{fmt} ({how}) failed:\n{res.stderr}")
                got[how] = res.stdout.split()
            assert got["stream"][:2] == got["load"][:2], f"{fmt}: streamed rows differ from the load: {got}"
            size = os.path.getsize(path) / 1e6
            print(f"{fmt:<11} {size:>6.0f}  {got['stream'][2]:>8} {got['stream'][3]:>8}  {got['load'][2]:>7} "
                  f"{got['load'][3]:>8}")


if __name__ == "__main__":
    main()
