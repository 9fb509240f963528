"""Imported by the kill matrix's forkserver only: one write of each kind, so the modules a write imports on
first use are loaded once in the server and every forked write starts warm."""

import shutil
import tempfile

from . import _kill_jobs as jobs

_d = tempfile.mkdtemp(prefix="dc-kill-warm-")
try:
    jobs.write({"kind": "shards", "out": f"{_d}/s", "n": 7, "max_rows": 3, "format": "jsonl"})
    jobs.write({"kind": "shards", "out": f"{_d}/a", "n": 7, "max_rows": 3})
    files = jobs.write_inputs(f"{_d}/in", 2, 5)  # written once: a resume of files rewritten since is refused
    jobs.write({"kind": "pipeline", "out": f"{_d}/p", "files": files, "max_rows": 3})
    jobs.write({"kind": "pipeline", "out": f"{_d}/p", "files": files, "max_rows": 3,
                "resume": True})
finally:
    shutil.rmtree(_d, ignore_errors=True)
