"""The kill matrix for the Ray write path: ``Pipeline.write(executor="ray")`` run in a child process with its own
real local Ray (``ray.init(num_cpus=2, include_dashboard=False)``), the driver killed with -9 on a fresh write, on
a write over an older output and on resumed writes. After each kill, ``dc.load`` gives the old output, the new
one, or an InputError (only with no old output), and the resumes give exactly the rows and the accounting of an
uninterrupted local run, also when a killed local run's progress is resumed on Ray.

The Ray tasks write the shards into the staging directory; the driver's events (the renames and removals
``tests/io/_kill_jobs.py`` counts) are then: 1 the report staged, 2 the staged manifest saved, 3..5 the three
staged shards moved in, 6 the report moved in, 7 the manifest replaced (the publish), 8.. the older output's files
and the staging directory removed. A resumed run first removes the staging directory of a run that recorded
nothing (one event), or finishes the publish of one that did (its files already moved in are no events). After
each kill a loadable output's report is its own, except just before the manifest's replacement, where the new
report is refused by ``verify_shards`` until a resume finishes the publish.

Each child starts a new process group and keeps Ray's files in its own temporary directory; after the child
ends, its group and every process naming that directory are killed and the directory removed, so no Ray process
of a killed driver outlives the test. The children are few (each starts a Ray) and run two or three at a time.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import tempfile
import time

import pytest

import datacopilot as dc
from datacopilot.errors import InputError

from . import _kill_jobs as jobs
from .test_kill_matrix import content, only_listed, ops_report, report_of_output

pytest.importorskip("ray")


def ray_pids(temp_dir: str) -> list[int]:
    """The processes whose command line names ``temp_dir``: the Ray a child started there."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if temp_dir.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


class Child:
    """A spawned Ray driver running ``steps`` (the last killed before its event ``kill_at``)."""

    def __init__(self, steps: list[dict], kill_at: int | None = None):
        self.temp_dir = tempfile.mkdtemp(prefix="dcray-", dir="/tmp")  # short: Ray's socket paths must fit
        self.proc = multiprocessing.get_context("spawn").Process(target=jobs.run_ray,
                                                                 args=(self.temp_dir, steps, kill_at))
        self.proc.start()

    def finish(self) -> int:
        """Wait for the child, kill what is left of its Ray (its process group, then every process naming its
        temporary directory), remove that directory; returns the child's exit code."""
        p = self.proc
        p.join(300)
        if p.exitcode is None:
            p.kill()
            p.join()
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + 60
        while (left := ray_pids(self.temp_dir)) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        assert not ray_pids(self.temp_dir), "a Ray process of the child outlived it"
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return p.exitcode


def run_all(*children: tuple) -> list[int]:
    started = [Child(*c) for c in children]
    return [c.finish() for c in started]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray-inputs")
    return jobs.write_inputs(str(d / "new"), 4, 15), jobs.write_inputs(str(d / "old"), 2, 15, "old")


def tagged(out, generation: int) -> list[str]:
    return sorted(f for f in os.listdir(out) if f.startswith(f"part-g{generation:04d}-"))


def test_ray_write_killed_while_staged_publishing_and_published_then_resumed(tmp_path, inputs):
    whole = tmp_path / "whole"
    jobs.write({"kind": "pipeline", "files": inputs[0], "max_rows": 5, "out": str(whole)})  # the local run
    new, report = content(whole), ops_report(whole)
    old_job = {"kind": "pipeline", "files": inputs[1], "max_rows": 5}
    jobs.write({**old_job, "out": str(tmp_path / "old")})
    old = content(tmp_path / "old")
    assert new and old and old != new
    assert len(dc.load(str(whole)).to_list()) == 12 and len(os.listdir(whole)) == 5  # three shards
    fresh, mid, published, partial = (tmp_path / n for n in ("fresh", "over-mid", "over-published", "partial"))
    for out in (mid, published):
        jobs.write({**old_job, "out": str(out)})
    job = {"kind": "ray", "files": inputs[0], "max_rows": 5}
    again = {**job, "resume": True}

    # a fresh write killed once its Ray tasks staged the shards, before anything was recorded; writes over an
    # older output killed with one new shard moved in, and just after the publish
    codes = run_all(([{**job, "out": str(fresh)}], 1), ([{**job, "out": str(mid)}], 4),
                    ([{**job, "out": str(published)}], 8))
    assert codes == [-signal.SIGKILL] * 3
    assert content(fresh) is None and os.listdir(fresh) == [".staging-g0001"]
    assert len(tagged(fresh / ".staging-g0001", 1)) == 3  # the Ray tasks wrote them into staging
    assert content(mid) == old and len(tagged(mid, 2)) == 1
    assert content(published) == new and len(tagged(published, 1)) == 3  # the old files not yet removed
    assert report_of_output(mid) and report_of_output(published)

    # resumed writes killed: the fresh one (run again on Ray) with one shard moved in, the one over the old
    # output just before its publish, its report moved in
    codes = run_all(([{**again, "out": str(fresh)}], 5), ([{**again, "out": str(mid)}], 5))
    assert codes == [-signal.SIGKILL] * 2
    assert content(fresh) is None and len(tagged(fresh, 2)) == 1
    assert content(mid) == old and len(tagged(mid, 2)) == 3
    assert not report_of_output(mid)  # the one state with another generation's report: verify refuses it

    # a local run killed once two of its four inputs are staged (its segments and dedup state in staging)
    local = {"kind": "pipeline", "files": inputs[0], "max_rows": 5}
    with jobs.events() as log:
        jobs.write({**local, "out": str(tmp_path / "counted")})
    saves = [i for i, e in enumerate(log) if e[0] == "mv" and e[2].endswith(".staging-g0001/manifest.json")]
    p = multiprocessing.get_context("fork").Process(target=jobs.run, args=({**local, "out": str(partial)},
                                                                            saves[1] + 2))
    p.start()
    p.join(120)
    assert p.exitcode == -signal.SIGKILL and content(partial) is None
    assert len(dc.load(str(partial), partial=True)) > 0

    # then all resumed to the end on Ray, in one child (the local run's progress written again as one segment)
    outs = (fresh, mid, published, partial)
    assert run_all(([{**again, "out": str(out)} for out in outs],)) == [0]
    for out in outs:
        assert content(out) == new and ops_report(out) == report
        dc.verify_shards(str(out))
        assert report_of_output(out) and sorted(os.listdir(out)) == only_listed(out), out
    with pytest.raises(InputError):
        dc.load(str(tmp_path / "missing"))
