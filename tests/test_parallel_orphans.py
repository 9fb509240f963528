"""A driver killed with -9 leaves nothing behind: its process-mode workers end with it (a parent-death signal, and a
watchdog), and the spill directory of its dataset-wide stage, which no exit handler could remove, is swept by the
next run; a run that ends removes its own."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from datacopilot.executors.spill import PREFIX, Spill, sweep

ROOT = str(pathlib.Path(__file__).resolve().parents[1])
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

SCRIPT = """
import sys
import datacopilot as dc
from datacopilot.operators import create
from tests.pipeline._ops import HangAt
files, out, hang = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
ops = [HangAt(id=hang), create("filter_turns", min_turns=2), create("shuffle", seed=1)]
dc.pipeline(files, schema="MM", batch_size=16).apply(ops).write(out, num_workers=2, mode="process")
"""


def _rows(u: int) -> str:
    return "".join(json.dumps({"id": f"r{u * 50 + i}", "conversations": [
        {"from": "human", "value": f"q {i}"}, {"from": "gpt", "value": f"a {u} {i}"}]}) + "\n" for i in range(50))


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry))
    return out


def _running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie waiting for its new parent has)."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _poll(check, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


@linux
def test_kill_9_of_a_driver_leaves_no_worker_and_its_spill_is_swept_by_the_next_run(tmp_path):
    (tmp_path / "in").mkdir()
    files = []
    for u in range(3):
        (tmp_path / "in" / f"p{u}.jsonl").write_text(_rows(u))
        files.append(str(tmp_path / "in" / f"p{u}.jsonl"))
    tmp, mark = tmp_path / "tmp", tmp_path / "hung"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
           "TMPDIR": str(tmp), "DC_HANG_MARK": str(mark)}
    args = [sys.executable, "-c", SCRIPT, ",".join(files), str(tmp_path / "out")]
    driver = subprocess.Popen(args + ["r120"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _poll(lambda: mark.exists() or driver.poll() is not None, 120), "the run never reached r120"
        assert driver.poll() is None, driver.stderr.read().decode()
        hung = int(mark.read_text())
        workers = _children(driver.pid)
        assert hung in workers and len(workers) >= 2  # both workers (and multiprocessing's resource tracker)
        spills = [p for p in os.listdir(tmp) if p.startswith(f"{PREFIX}{driver.pid}-shuffle-")]
        assert len(spills) == 1  # the shuffle holds its rows there while it waits for the hung worker
    finally:
        driver.kill()
        driver.wait()
        driver.stdout.close()
        driver.stderr.close()
    assert driver.returncode == -signal.SIGKILL
    try:
        assert _poll(lambda: not any(_running(p) for p in workers)), [p for p in workers if _running(p)]
    finally:  # a failed check leaves no process of this test behind either
        for p in workers:
            if _running(p):
                os.kill(p, signal.SIGKILL)
    assert spills[0] in os.listdir(tmp)  # nobody could remove it at exit
    shm = [n for n in os.listdir("/dev/shm") if n.startswith(f"datacopilot-{driver.pid}-")] \
        if os.path.isdir("/dev/shm") else []
    done = subprocess.run(args + ["none"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert [p for p in os.listdir(tmp) if p.startswith(PREFIX)] == []  # the stale one swept, its own removed
    assert not set(shm) & set(os.listdir("/dev/shm") if shm else [])  # and the driver's shared memory
    assert len(os.listdir(tmp_path / "out")) >= 2


def test_sweep_removes_only_spills_of_dead_processes(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    pid = int(dead.stdout)  # exited: not alive (a pid reused since would only keep its spill)
    stale = tmp_path / f"{PREFIX}{pid}-neardup-abc"
    stale.mkdir()
    (stale / "rows.arrow").write_bytes(b"x")
    old = time.time() - 3600  # no lock file: only one older than a minute is taken as abandoned (not being made)
    os.utime(stale, (old, old))
    young = tmp_path / f"{PREFIX}{pid}-sort-young"  # no lock file yet, just made: kept
    young.mkdir()
    mine = tmp_path / f"{PREFIX}{os.getpid()}-sort-abc"  # this process's
    mine.mkdir()
    other = tmp_path / "dc-spill-notapid-x"  # not a spill name: left alone
    other.mkdir()
    unrelated = tmp_path / "datacopilot-1-x"
    unrelated.mkdir()
    assert sweep(str(tmp_path)) == [str(stale)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name, unrelated.name, young.name])


def test_a_live_spill_is_locked_kept_by_a_sweep_and_removed_at_close(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    spill = Spill("sort-")
    try:
        assert os.path.dirname(spill.dir) == str(tmp_path)
        assert os.path.basename(spill.dir).startswith(f"{PREFIX}{os.getpid()}-sort-")
        # a sweeper that cannot see this pid (another PID namespace sharing TMPDIR) still finds the lock held
        renamed = tmp_path / f"{PREFIX}999999999-sort-x"
        os.rename(spill.dir, renamed)
        assert sweep(str(tmp_path)) == [] and renamed.exists()
        os.rename(renamed, spill.dir)
    finally:
        spill.close()
    assert not os.path.exists(spill.dir)


MAPPER = """
import sys
import datacopilot as dc
from tests.pipeline._ops import HangAt
files, out, hang = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
dc.pipeline(files, schema="MM", batch_size=16).apply([HangAt(id=hang)]).write(out)
"""

LIVE = """
import sys, time
from datacopilot.executors.spill import Spill
spill = Spill("sort-")
print(spill.dir, flush=True)
time.sleep(600)
"""


@linux
def test_the_spill_of_a_driver_killed_with_9_is_swept_when_the_next_run_starts_a_live_one_is_kept(tmp_path):
    """The next run has no dataset-wide stage (it makes no spill) and hangs at its first batch: the dead driver's
    spill is already gone then; a live process's spill (locked) and a spill named for a live pid (no lock) stay."""
    (tmp_path / "in").mkdir()
    files = []
    for u in range(3):
        (tmp_path / "in" / f"p{u}.jsonl").write_text(_rows(u))
        files.append(str(tmp_path / "in" / f"p{u}.jsonl"))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
           "TMPDIR": str(tmp)}
    procs = []

    def start(args, mark=None, **kw):
        p = subprocess.Popen([sys.executable, "-c", *args], env={**env, "DC_HANG_MARK": str(mark or "")},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
        procs.append(p)
        return p

    try:
        live = start([LIVE], text=True)
        live_dir = os.path.basename(live.stdout.readline().strip())
        assert live_dir.startswith(f"{PREFIX}{live.pid}-sort-"), live.stderr.read()
        named = tmp / f"{PREFIX}{live.pid}-neardup-nolock"  # a live pid's, without a lock file, made long ago
        named.mkdir()
        old = time.time() - 3600
        os.utime(named, (old, old))

        first_mark = tmp_path / "hung1"
        driver = start([SCRIPT.replace('num_workers=2, mode="process"', "num_workers=1"), ",".join(files),
                        str(tmp_path / "out1"), "r120"], first_mark)
        assert _poll(lambda: first_mark.exists() or driver.poll() is not None, 120), "the run never reached r120"
        assert driver.poll() is None, driver.stderr.read().decode()
        dead = [p for p in os.listdir(tmp) if p.startswith(f"{PREFIX}{driver.pid}-shuffle-")]
        assert len(dead) == 1  # the shuffle holds its rows there while the run hangs
        driver.kill()
        driver.wait()
        assert dead[0] in os.listdir(tmp)  # killed with -9: nobody removed it

        second_mark = tmp_path / "hung2"
        nxt = start([MAPPER, ",".join(files), str(tmp_path / "out2"), "r3"], second_mark)
        assert _poll(lambda: second_mark.exists() or nxt.poll() is not None, 120), "the next run never started"
        assert nxt.poll() is None, nxt.stderr.read().decode()
        left = sorted(p for p in os.listdir(tmp) if p.startswith(PREFIX))
        assert dead[0] not in left  # swept at the start: this run has no stage that spills
        assert left == sorted([live_dir, named.name])  # the live process's, locked or not, untouched
        assert live.poll() is None
    finally:
        for p in procs:
            p.kill()
            p.wait()
            p.stdout.close()
            p.stderr.close()
