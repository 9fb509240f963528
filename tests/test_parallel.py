"""map / filter over threads and processes: order kept, same result as one worker, errors from workers come
back named, and the skip / quarantine policies account for every row."""

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from datacopilot import MMDataset
from datacopilot.errors import OperatorError

N = 300
MODES = ["thread", "process"]


@pytest.fixture(scope="module")
def ds():
    rows = [{"id": f"r{i:04d}", "conversations": [{"from": "human", "value": "q" * (i % 7)},
                                                  {"from": "gpt", "value": f"a{i}"}]} for i in range(N)]
    return MMDataset.from_rows(rows, schema="MM")


def ids(d):
    return [r["id"] for r in d]


def tag(r):
    return {**r, "id": r["id"] + "-" + str(len(r["conversations"][0]["value"]))}


def keep_some(r):
    n = int(r["id"][1:])
    return (n % 5 != 0, "multiple of 5") if n % 2 else True


@pytest.mark.parametrize("mode", MODES)
def test_map_matches_one_worker(ds, mode):
    one = ds.map(tag, batch_size=32)
    two = ds.map(tag, num_workers=2, mode=mode, batch_size=32)
    assert two.to_list() == one.to_list()
    assert ids(two)[:3] == ["r0000-0", "r0001-1", "r0002-2"]
    assert len(two) == N


@pytest.mark.parametrize("mode", MODES)
def test_filter_matches_one_worker(ds, mode):
    one = ds.filter(keep_some, batch_size=25)
    two = ds.filter(keep_some, num_workers=2, mode=mode, batch_size=25)
    assert ids(two) == ids(one)
    assert ids(two) == [f"r{i:04d}" for i in range(N) if i % 2 == 0 or i % 5 != 0]
    rec = two.history()[-1]
    assert rec.dropped == one.history()[-1].dropped == {"multiple of 5": 30}
    assert rec.rows_in == rec.rows_out + rec.n_dropped


def test_lambda_and_closure_in_process_mode(ds):
    suffix = "-closed"

    def closure(r):
        return {**r, "id": r["id"] + suffix}

    out = ds.map(closure, num_workers=2, mode="process", batch_size=50)
    assert ids(out) == [f"r{i:04d}-closed" for i in range(N)]
    limit = 100
    kept = ds.filter(lambda r: int(r["id"][1:]) < limit, num_workers=2, mode="process", batch_size=50)
    assert ids(kept) == [f"r{i:04d}" for i in range(limit)]


def boom_at_123(r):
    if r["id"] == "r0123":
        raise ValueError("bad value in row r0123")
    return r


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("num_workers", [1, 2])
def test_worker_exception_becomes_operator_error(ds, mode, num_workers):
    with pytest.raises(OperatorError) as ei:
        ds.map(boom_at_123, num_workers=num_workers, mode=mode, batch_size=40)
    e = ei.value
    assert e.op == "map boom_at_123" and e.row == 123
    text = str(e)
    assert text.startswith("map boom_at_123 at row 123 (id 'r0123'): ValueError: bad value in row r0123")
    assert "Traceback (most recent call last)" in text and "boom_at_123" in e.tb
    assert 'raise ValueError("bad value in row r0123")' in text


@pytest.mark.parametrize("mode", MODES)
def test_filter_exception_names_row(ds, mode):
    def pred(r):
        return 1 / (int(r["id"][1:]) - 250) != 0

    with pytest.raises(OperatorError) as ei:
        ds.filter(pred, num_workers=2, mode=mode, batch_size=64)
    assert ei.value.row == 250 and "ZeroDivisionError" in str(ei.value) and "filter pred" in str(ei.value)


def flaky(r):
    n = int(r["id"][1:])
    if n % 50 == 7:
        raise KeyError(f"no key for {n}")
    return None if n % 50 == 8 else r


@pytest.mark.parametrize("mode", MODES)
def test_skip_and_quarantine_accounting(ds, mode):
    bad = [i for i in range(N) if i % 50 == 7]
    skipped = ds.map(flaky, num_workers=2, mode=mode, batch_size=30, on_error="skip")
    rec = skipped.history()[-1]
    assert rec.failed == len(bad) and rec.dropped == {"map returned None": 6}
    assert rec.rows_in == rec.rows_out + rec.n_dropped + rec.failed
    assert skipped.quarantine is None
    assert ids(skipped) == [f"r{i:04d}" for i in range(N) if i % 50 not in (7, 8)]

    q = ds.map(flaky, num_workers=2, mode=mode, batch_size=30, on_error="quarantine")
    assert ids(q) == ids(skipped)
    assert len(q.quarantine) == len(bad)
    qrows = q.quarantine.to_list()
    assert [r["id"] for r in qrows] == [f"r{i:04d}" for i in bad]
    assert all(r["_error"].startswith("KeyError: ") for r in qrows)
    assert qrows[0]["_error"] == "KeyError: 'no key for 7'" and qrows[0]["_op"] == "map flaky"

    f = q.filter(lambda r: r["id"] != "r0011" or 1 / 0, on_error="quarantine", num_workers=2, mode=mode)
    assert len(f.quarantine) == len(bad) + 1 and f.quarantine[-1]["id"] == "r0011"
    assert "ZeroDivisionError" in f.quarantine[-1]["_error"]
    frec = f.history()[-1]
    assert frec.failed == 1 and frec.rows_in == frec.rows_out + frec.n_dropped + frec.failed


def add_len(batch: pa.RecordBatch):
    lens = pc.list_value_length(batch.column("conversations"))
    return batch.append_column("n_turns", lens) if hasattr(batch, "append_column") else \
        pa.Table.from_batches([batch]).append_column("n_turns", lens)


@pytest.mark.parametrize("mode", MODES)
def test_batched_map_and_filter(ds, mode):
    seen = []

    def mark(batch):
        assert isinstance(batch, pa.RecordBatch)
        seen.append(batch.num_rows)
        return add_len(batch)

    one = ds.map(mark, batched=True, batch_size=64)
    assert sorted(seen) == [44, 64, 64, 64, 64]
    two = ds.map(add_len, batched=True, num_workers=2, mode=mode, batch_size=64)
    assert two.to_list() == one.to_list() and two[0]["n_turns"] == 2 and two.schema.name == "MM"

    def even(batch):
        nums = pc.cast(pc.utf8_slice_codeunits(batch.column("id"), 1), pa.int64())
        return pc.equal(pc.bit_wise_and(nums, 1), 0)

    kept = ds.filter(even, batched=True, num_workers=2, mode=mode, batch_size=64)
    assert ids(kept) == [f"r{i:04d}" for i in range(0, N, 2)]
    rec = kept.history()[-1]
    assert rec.rows_out == N // 2 and rec.n_dropped == N // 2


@pytest.mark.parametrize("mode", MODES)
def test_a_batched_function_that_raises_fails_only_the_rows_it_fails_on(ds, mode):
    """The batch is tried again row by row, as an operator's is: the other rows of the batch go on."""
    def bad(batch):
        if "r0100" in batch.column("id").to_pylist():
            raise RuntimeError("batch broke")
        return batch

    out = ds.map(bad, batched=True, batch_size=50, on_error="quarantine", num_workers=2, mode=mode)
    assert len(out) == N - 1 and ids(out) == [f"r{i:04d}" for i in range(N) if i != 100]
    assert [r["id"] for r in out.quarantine] == ["r0100"] and "batch broke" in out.quarantine[0]["_error"]
    rec = out.history()[-1]
    assert rec.failed == 1 and rec.rows_in == rec.rows_out + rec.failed
    with pytest.raises(OperatorError) as ei:
        ds.map(bad, batched=True, batch_size=50)
    assert ei.value.row == 100 and ei.value.row_id == "r0100" and "batch broke" in str(ei.value)

    def picky(batch):
        if "r0007" in batch.column("id").to_pylist():
            raise ValueError("cannot judge r0007")
        return pc.not_equal(batch.column("id"), "r0008")

    kept = ds.filter(picky, batched=True, batch_size=64, on_error="skip", num_workers=2, mode=mode)
    assert ids(kept) == [f"r{i:04d}" for i in range(N) if i not in (7, 8)]
    frec = kept.history()[-1]
    assert (frec.failed, frec.dropped) == (1, {"filter picky": 1})
