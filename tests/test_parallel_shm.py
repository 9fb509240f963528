"""Process mode's shared-memory transport: the same results with and without it, nothing left behind in the
pool's directory, slots that grow, results that stay valid and writable, and the 1024-row pieces of the
default batch size."""

import os
import threading

import numpy as np
import pyarrow as pa
import pytest

from datacopilot import MMDataset, parallel
from datacopilot.errors import OperatorError
from datacopilot.parallel import run_batches

N = 5000  # more than one 4096-row trip, not a multiple of the 1024-row piece


def _shm_room() -> int:
    try:
        st = os.statvfs(parallel.SHM_ROOT)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


needs_shm = pytest.mark.skipif(_shm_room() < parallel.SHM_MIN_FREE, reason="no shared memory on this machine")


@pytest.fixture(scope="module")
def ds():
    rows = [{"id": f"r{i:05d}", "conversations": [{"from": "human", "value": "w " * (i % 9)},
                                                  {"from": "gpt", "value": f"a{i}"}]} for i in range(N)]
    return MMDataset.from_rows(rows, schema="MM")


def shout(r):
    return {**r, "id": r["id"].upper(), "n": len(r["conversations"][0]["value"].split())}


def pool_dir():
    with parallel._process_pool(2) as pool:
        return pool.dir


def leftovers():
    d = pool_dir()
    return [] if d is None else sorted(f for f in os.listdir(d) if not f.startswith("in-"))


@pytest.fixture
def no_shm(monkeypatch):
    """A pool started without shared memory (DATACOPILOT_SHM=0), replaced by a normal one afterwards."""
    parallel.shutdown_pools()
    monkeypatch.setenv("DATACOPILOT_SHM", "0")
    yield
    parallel.shutdown_pools()


@needs_shm
def test_default_pool_uses_shared_memory():
    d = pool_dir()
    assert d is not None and d.startswith(os.path.join(parallel.SHM_ROOT, "datacopilot-"))


def test_map_and_filter_same_as_one_worker(ds):
    one = ds.map(shout)
    two = ds.map(shout, num_workers=2, mode="process")
    assert two.to_arrow().equals(one.to_arrow())
    assert two[4999]["id"] == "R04999" and two[4999]["n"] == 4999 % 9
    keep = ds.filter(lambda r: int(r["id"][1:]) % 3 == 0, num_workers=2, mode="process")
    assert [r["id"] for r in keep][:3] == ["r00000", "r00003", "r00006"] and len(keep) == (N + 2) // 3
    assert leftovers() == []


def test_without_shared_memory_same_results(ds, no_shm):
    assert pool_dir() is None
    one = ds.map(shout)
    two = ds.map(shout, num_workers=2, mode="process")
    assert two.to_arrow().equals(one.to_arrow())
    kept = ds.filter(lambda r: r["id"].endswith("7"), num_workers=2, mode="process", batch_size=300)
    assert len(kept) == N // 10


def test_default_batches_are_1024_row_pieces(ds):
    sizes = run_batches(ds.to_arrow(), lambda t, off: (off, t.num_rows), num_workers=2, mode="process")
    assert sizes == [(o, min(1024, N - o)) for o in range(0, N, 1024)]
    explicit = run_batches(ds.to_arrow(), lambda t, off: t.num_rows, num_workers=2, mode="process",
                           batch_size=3000)
    assert explicit == [3000, 2000]


def test_error_in_a_later_piece_names_its_row_and_leaves_nothing(ds):
    def boom(r):
        if r["id"] == "r02100":
            raise ValueError("bad row")
        return r

    with pytest.raises(OperatorError) as ei:
        ds.map(boom, num_workers=2, mode="process")
    assert ei.value.row == 2100 and "bad row" in str(ei.value)
    assert leftovers() == []


def test_slices_larger_than_a_slot_grow_it():
    big = pa.table({"blob": [b"x" * 700_000 for _ in range(8)], "i": list(range(8))})  # 5.6 MB
    sums = run_batches(big, lambda t, off: sum(len(b) for b in t.column("blob").to_pylist()), num_workers=2,
                       mode="process", batch_size=2)
    assert sums == [1_400_000] * 4
    bigger = run_batches(big, lambda t, off: t.column("i").to_pylist(), num_workers=2, mode="process",
                         batch_size=4)
    assert bigger == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_results_outlive_the_run_and_are_writable():
    t = pa.table({"x": np.arange(10_000)})
    masks = run_batches(t, lambda tb, off: np.asarray(tb.column("x")) % 2 == 0, num_workers=2, mode="process",
                        batch_size=2500)
    tables = run_batches(t, lambda tb, off: tb.append_column("y", pa.array(np.asarray(tb.column("x")) * 2)),
                         num_workers=2, mode="process", batch_size=2500)
    parallel.shutdown_pools()  # the pool's directory is gone; the results must not depend on it
    mask = np.concatenate(masks)
    assert mask.sum() == 5000
    masks[0][:] = True  # a private mapping: writable, and the change stays here
    assert masks[0].all()
    out = pa.concat_tables(tables)
    assert out.column("y").to_pylist()[-3:] == [19994, 19996, 19998]


def test_runs_from_two_threads_at_once(ds):
    out = {}

    def run(name, fn):
        out[name] = ds.map(fn, num_workers=2, mode="process", batch_size=700)

    threads = [threading.Thread(target=run, args=("shout", shout)),
               threading.Thread(target=run, args=("same", lambda r: r))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert out["shout"].to_arrow().equals(ds.map(shout).to_arrow())
    assert out["same"].to_arrow().equals(ds.to_arrow())


def test_export_falls_back_to_the_pipe_when_the_file_cannot_be_written(tmp_path):
    result = {"t": pa.table({"a": [1, 2]})}
    assert parallel._export(result, str(tmp_path / "missing-dir")) is result
    shipped = parallel._export(result, str(tmp_path))
    assert isinstance(shipped, parallel._Shipped) and os.path.exists(shipped.path)
    back = parallel._imported(shipped)
    assert back["t"].equals(result["t"]) and not os.path.exists(shipped.path)


@needs_shm
def test_directories_of_dead_processes_are_removed():
    stale = os.path.join(parallel.SHM_ROOT, "datacopilot-999999999-test")
    os.makedirs(stale, exist_ok=True)
    d = parallel._shm_dir()
    try:
        assert d is not None and not os.path.exists(stale)
    finally:
        os.rmdir(d)


@needs_shm
def test_a_forked_child_leaves_the_parents_pool_alone(ds):
    d = pool_dir()
    pid = os.fork()
    if pid == 0:  # the child: what its exit would run (atexit), then leave without pytest's handlers
        code = 3
        try:
            code = 0 if not parallel._POOLS else 3
            parallel.shutdown_pools()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pool_dir() == d and os.path.isdir(d)
    assert ds.map(shout, num_workers=2, mode="process").to_arrow().equals(ds.map(shout).to_arrow())
