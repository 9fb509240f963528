"""A large Arrow IPC file is memory-mapped on load: resident memory grows by far less than the file."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa

from datacopilot import MMDataset

ROW_BYTES = 1 << 20  # one MiB of image bytes per row
ROWS = 200

CHILD = textwrap.dedent("""
    import json, sys

    def rss():
        try:
            import psutil
            return psutil.Process().memory_info().rss
        except ImportError:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    import datacopilot as dc  # imported before measuring: the libraries' own memory is not the data's
    import pyarrow, polars
    dc.load(sys.argv[2])  # warm up: lazy imports and thread pools of a first load are not the data's memory
    before = rss()
    ds = dc.load(sys.argv[1])
    after_load = rss()
    n = len(ds)
    row = ds[123]
    last = ds[-1]
    after_rows = rss()
    print(json.dumps({"before": before, "after_load": after_load, "after_rows": after_rows, "len": n,
                      "schema": ds.schema.name, "id": row["id"], "caption": row["caption"],
                      "first_byte": row["image"]["bytes"][0], "size": len(row["image"]["bytes"]),
                      "last_id": last["id"]}))
""")


def test_large_ipc_file_is_memory_mapped(tmp_path):
    payload = np.arange(ROWS * ROW_BYTES, dtype=np.uint64).astype(np.uint8)  # row i's bytes start with (i<<20)%256
    offsets = pa.array(np.arange(ROWS + 1, dtype=np.int32) * ROW_BYTES)
    images = pa.StructArray.from_arrays(
        [pa.array([f"img/{i}.png" for i in range(ROWS)]),
         pa.BinaryArray.from_buffers(pa.binary(), ROWS, [None, offsets.buffers()[1], pa.py_buffer(payload)])],
        names=["path", "bytes"])
    table = pa.table({"id": [f"r{i}" for i in range(ROWS)], "image": images,
                      "caption": [f"caption {i}" for i in range(ROWS)]})
    payload = images = None
    path = str(tmp_path / "big.arrow")
    MMDataset(table, schema="CAPTION").write(path)
    table = None
    size = os.path.getsize(path)
    assert size > 200e6

    small = MMDataset(pa.table({"id": ["a"], "caption": ["c"]}), schema="CAPTION").write(str(tmp_path / "s.arrow"))
    out = subprocess.run([sys.executable, "-c", CHILD, path, small], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["len"] == ROWS and res["schema"] == "CAPTION"
    assert res["id"] == "r123" and res["caption"] == "caption 123" and res["last_id"] == f"r{ROWS - 1}"
    assert res["size"] == ROW_BYTES and res["first_byte"] == (123 * ROW_BYTES) % 256
    grew = res["after_load"] - res["before"]
    assert grew < 0.4 * size, f"resident memory grew by {grew / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"
    grew_rows = res["after_rows"] - res["before"]
    assert grew_rows < 0.4 * size, f"reading two rows grew resident memory by {grew_rows / 1e6:.0f} MB"
