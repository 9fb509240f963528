"""Writes killed with -9 at every step: a fresh write, a write over an older output and a resumed write, for
``write_shards`` and ``Pipeline.write``. After each kill, ``dc.load`` of the output gives exactly the old output,
exactly the new one, or an InputError (only when there was no old output), never anything else; and a resumed
pipeline run gives exactly the rows and the accounting of an uninterrupted one.

Each write runs in a real process forked from a forkserver that has imported datacopilot (so a run costs
milliseconds), with a hook that sends SIGKILL to the process just before its k-th rename or removal
(``tests/io/_kill_jobs.py``): every state the output directory passes through is a kill point.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal

import pytest

import datacopilot as dc
from datacopilot.errors import InputError

from . import _kill_jobs as jobs

MAX_POINTS = 80  # kill points per scenario: every event of these small writes (spread over a longer one)


@pytest.fixture(scope="module")
def ctx():
    c = multiprocessing.get_context("forkserver")
    c.set_forkserver_preload(["tests.io._kill_warm"])
    return c


def killed(ctx, job: dict, k: int) -> int:
    p = ctx.Process(target=jobs.run, args=(job, k))
    p.start()
    p.join(120)
    return p.exitcode


def count_events(job: dict) -> int:
    """The events of an uninterrupted run of ``job`` (which it leaves written)."""
    with jobs.events() as log:
        jobs.write(job)
    return len(log)


def points(n: int) -> list[int]:
    if n <= MAX_POINTS:
        return list(range(1, n + 1))
    step = (n - 1) / (MAX_POINTS - 1)
    return sorted({1 + round(i * step) for i in range(MAX_POINTS)})


def content(out) -> list | None:
    """The rows ``dc.load`` gives for ``out``, or None when it refuses with an InputError."""
    try:
        return dc.load(str(out)).to_list()
    except InputError:
        return None


def ops_report(out) -> list:
    ops = json.loads((out / "report.json").read_text())["ops"]
    return [{k: v for k, v in op.items() if k != "seconds"} for op in ops]


def only_listed(out) -> list[str]:
    """The files a finished output holds: its manifest, report and the files the manifest lists (nothing an
    interrupted write left: no staging, no file of another generation, no temporary file)."""
    m = json.loads((out / "manifest.json").read_text())
    names = {s["file"].split("/")[0] for s in m["shards"] + m["quarantine"]}
    return sorted(names | {"manifest.json", "report.json"})


def report_of_output(out) -> bool:
    """Whether the loadable output ``out`` has the report of that output: the manifest lists ``report.json`` by
    its sha256 and the file matches, of the manifest's generation (True), or the manifest lists none and there is
    no report (a ``write_shards`` output). The one other state a kill can leave, a publish killed after moving its
    report in and before replacing the manifest, returns False: ``verify_shards`` refuses it, and the staged
    manifest (complete) lists that report, so a resume finishes the publish."""
    m = json.loads((out / "manifest.json").read_text())
    if not m.get("report"):
        assert "pipeline" not in m and not (out / "report.json").exists(), "a pipeline output without its report"
        return True
    report = json.loads((out / "report.json").read_text())
    if hashlib.sha256((out / "report.json").read_bytes()).hexdigest() == m["report"]["sha256"]:
        assert report["generation"] == m["generation"] and report["rows"] == m["rows"]
        return True
    with pytest.raises(InputError, match="report.json: checksum mismatch"):
        dc.verify_shards(str(out))
    staged = [json.loads((out / s / "manifest.json").read_text()) for s in os.listdir(out)
              if s.startswith(".staging-") and (out / s / "manifest.json").exists()]
    assert [s["generation"] for s in staged if s.get("complete")] == [report["generation"]]
    return False


def check_kills(ctx, tmp_path, job: dict, prepare, old, new, after=None) -> int:
    """Kill ``job`` at each point in a copy of the output that ``prepare(out)`` leaves; check what loads and
    that a loadable output's report is its own (at most one kill point, inside the publish, leaves another)."""
    probe = tmp_path / "probe"
    prepare(probe)
    n = count_events({**job, "out": str(probe)})
    assert content(probe) == new and report_of_output(probe)
    foreign = []  # the kill points that left a loadable output beside another generation's report
    for k in points(n):
        out = tmp_path / f"k{k}"
        prepare(out)
        code = killed(ctx, {**job, "out": str(out)}, k)
        assert code == -signal.SIGKILL, (k, n, code)
        got = content(out)
        if old is None:
            assert got is None or got == new, f"kill before event {k} of {n}: {len(got)} rows, a mix"
        else:
            assert got == old or got == new, f"kill before event {k} of {n}: {got and len(got)} rows, a mix"
        if got is not None and not report_of_output(out):
            foreign.append(k)
        if after is not None:
            after(out, k)
    assert len(foreign) <= 1 and (not foreign or points(n) == list(range(1, n + 1))), foreign
    return n


def shards_old(out) -> None:
    jobs.write({"kind": "shards", "out": str(out), "n": 23, "tag": "old", "max_rows": 4})


@pytest.mark.parametrize("over_old", [False, True], ids=["fresh", "over-old"])
def test_write_shards_killed_anywhere_leaves_old_or_new(ctx, tmp_path, over_old):
    job = {"kind": "shards", "n": 37, "max_rows": 6, "format": "jsonl"}
    new = dc.MMDataset.from_rows(jobs.rows(37), schema="MM").to_list()
    old = dc.MMDataset.from_rows(jobs.rows(23, "old"), schema="MM").to_list() if over_old else None
    prepare = shards_old if over_old else (lambda out: None)
    n = check_kills(ctx, tmp_path, job, prepare, old, new)
    assert n >= 8  # seven shards and the manifest, at least: the matrix covers the write


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    return jobs.write_inputs(str(d / "new"), 4, 15), jobs.write_inputs(str(d / "old"), 2, 15, "old")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, inputs):
    out = tmp_path_factory.mktemp("whole") / "out"
    jobs.write({"kind": "pipeline", "out": str(out), "files": inputs[0], "max_rows": 5})
    return content(out), ops_report(out)


@pytest.mark.parametrize("over_old", [False, True], ids=["fresh", "over-old"])
def test_pipeline_write_killed_anywhere_then_resumed(ctx, tmp_path, inputs, uninterrupted, over_old):
    new, report = uninterrupted
    job = {"kind": "pipeline", "files": inputs[0], "max_rows": 5}
    old_job = {"kind": "pipeline", "files": inputs[1], "max_rows": 5}
    old = None
    if over_old:
        jobs.write({**old_job, "out": str(tmp_path / "old")})
        old = content(tmp_path / "old")
        assert old and old != new

    def prepare(out):
        if over_old:
            jobs.write({**old_job, "out": str(out)})

    def resumed(out, k):
        staged = [s for s in os.listdir(out) if s.startswith(".staging-") and (out / s / "manifest.json").exists()]
        if over_old and not staged and content(out) == old:  # killed before this run recorded any progress
            with pytest.raises(InputError, match="cannot resume: it was written by another plan .*source .*: removed"):
                jobs.write({**job, "out": str(out), "resume": True})
            assert content(out) == old
            jobs.write({**job, "out": str(out)})
        else:
            jobs.write({**job, "out": str(out), "resume": True})
        assert content(out) == new, f"resumed after a kill before event {k}"
        assert ops_report(out) == report
        dc.verify_shards(str(out))
        assert report_of_output(out), f"resumed after a kill before event {k}"
        # nothing an interrupted write left: no temporary file of the report or the manifest, no staging
        assert sorted(os.listdir(out)) == only_listed(out), f"resumed after a kill before event {k}"

    n = check_kills(ctx, tmp_path, job, prepare, old, new, after=resumed)
    assert n >= 10


def test_a_resumed_write_killed_anywhere_still_resumes(ctx, tmp_path, inputs, uninterrupted):
    """A run over an old output killed once its second input is staged, then resumed and killed again at every
    step of the resumed run: what loads is the old output or the new one, and a last resume gives the
    uninterrupted run's rows and accounting."""
    new, report = uninterrupted
    job = {"kind": "pipeline", "files": inputs[0], "max_rows": 5}
    first = tmp_path / "first"
    jobs.write({"kind": "pipeline", "files": inputs[1], "max_rows": 5, "out": str(first)})
    old = content(first)
    shutil.copytree(first, tmp_path / "counted")
    with jobs.events() as log:
        jobs.write({**job, "out": str(tmp_path / "counted")})
    saves = [i for i, e in enumerate(log) if e[0] == "mv" and e[2].endswith(".staging-g0002/manifest.json")]
    assert killed(ctx, {**job, "out": str(first)}, saves[1] + 2) == -signal.SIGKILL  # after the 2nd save
    staged = json.loads((first / ".staging-g0002" / "manifest.json").read_text())
    assert staged["pipeline"]["done"] == inputs[0][:2] and content(first) == old
    assert len(dc.load(str(first), partial=True)) == staged["rows"]

    def prepare(out):
        shutil.copytree(first, out)

    def resumed(out, k):
        jobs.write({**job, "out": str(out), "resume": True})
        assert content(out) == new and ops_report(out) == report, f"resumed after a kill before event {k}"
        assert report_of_output(out) and sorted(os.listdir(out)) == only_listed(out), k

    n = check_kills(ctx, tmp_path, {**job, "resume": True}, prepare, old, new, after=resumed)
    assert n < len(log)  # the resumed run did not redo the finished inputs
