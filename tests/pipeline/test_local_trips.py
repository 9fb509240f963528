"""The local executor with several workers: trips of several batches per worker call, the input read ahead on a
thread of its own, shards written while the stream runs on; the output, the accounting and the quarantine are
those of one worker."""

import json
import os
import threading

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from datacopilot.operators import create

import datacopilot as dc
import datacopilot.executors.local as local
from datacopilot.errors import OperatorError

from ._ops import FailOn, Twice
from .conftest import row, write_jsonl
from .test_streaming import Sizes


@pytest.fixture
def noisy(tmp_path):
    """Four jsonl files of 60 rows, one with a broken line."""
    d = tmp_path / "in"
    d.mkdir()
    paths = [write_jsonl(d / f"part{u}.jsonl", [row(u * 60 + i) for i in range(60)]) for u in range(4)]
    lines = open(paths[1]).read().splitlines()
    lines[7] = '{"id": "broken", "conversations": [oops'
    with open(paths[1], "w") as f:
        f.write("\n".join(lines) + "\n")
    return paths


def chain():
    return [create("clean_whitespace"), FailOn(bad=("r3", "r100", "r201")), create("filter_turns", min_turns=2),
            Twice(), create("dedup_exact"), create("filter_length", role="assistant", min_length=1)]


def written(out: str) -> tuple[list, dict, list]:
    """The rows of a written output, its report (timings aside) and its quarantined rows."""
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    ops = [{k: v for k, v in op.items() if k != "seconds"} for op in report["ops"]]
    q = sorted(os.path.join(out, "quarantine", n) for n in os.listdir(os.path.join(out, "quarantine"))
               if n.endswith(".arrow")) if os.path.isdir(os.path.join(out, "quarantine")) else []
    quarantined = [r for p in q for r in ipc.open_file(p).read_all().to_pylist()]
    rows = dc.load(out).to_arrow().to_pylist()
    return rows, {**report, "ops": ops, "output": None, "generation": None}, quarantined


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_write_on_two_workers_equals_one(noisy, tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(local, "TRIP_ROWS", 12)  # trips of 3 batches of 4 rows
    monkeypatch.setattr(local, "AHEAD", 2)
    outs = []
    for workers in (1, 2):
        out = str(tmp_path / f"out{workers}")
        dc.pipeline(noisy, schema="MM", on_error="quarantine", batch_size=4).apply(chain()).write(
            out, format=fmt, num_workers=workers, max_rows_per_shard=50, progress=False)
        outs.append(written(out))
    (rows1, rep1, q1), (rows2, rep2, q2) = outs
    assert rows1 == rows2 and len(rows1) >= 30
    assert rep1 == rep2 and rep1["invalid_input_rows"] == 1
    assert q1 == q2 and len(q1) == 4  # three failed rows and the broken line


def test_collect_on_two_workers_equals_one_and_batches_stay_bounded(noisy, monkeypatch):
    monkeypatch.setattr(local, "TRIP_ROWS", 40)
    Sizes.seen = []
    ops = [*chain(), Sizes()]
    one = dc.pipeline(noisy, schema="MM", on_error="quarantine", batch_size=8).apply(ops).collect()
    Sizes.seen = []
    two = dc.pipeline(noisy, schema="MM", on_error="quarantine", batch_size=8).apply(ops).collect(num_workers=2)
    assert max(Sizes.seen) <= 8  # the operators see batch_size rows at a time, not a trip
    from tests._same import assert_same_run

    assert_same_run(one, two)


def test_an_error_on_two_workers_names_the_row_one_worker_names(noisy, tmp_path, monkeypatch):
    monkeypatch.setattr(local, "TRIP_ROWS", 16)
    got = []
    for workers in (1, 2):
        p = dc.pipeline(noisy[2:], schema="MM", batch_size=4).apply(chain())
        with pytest.raises(OperatorError) as e:
            p.write(str(tmp_path / f"out{workers}"), num_workers=workers, progress=False)
        got.append(str(e.value))
    assert got[0] == got[1] and "r201" in got[0]
    assert not any(t.name == "datacopilot-ahead" for t in threading.enumerate())


def test_a_failing_sink_stops_the_stream(noisy, tmp_path, monkeypatch):
    """An error while writing a shard is raised, and no thread reading ahead is left running."""
    from datacopilot.io import sink

    monkeypatch.setattr(local, "TRIP_ROWS", 8)

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(sink.ShardSink, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        dc.pipeline(noisy, schema="MM", batch_size=4).apply(create("clean_whitespace")).write(
            str(tmp_path / "out"), num_workers=2, max_rows_per_shard=10, progress=False)
    assert not any(t.name == "datacopilot-ahead" for t in threading.enumerate())


def test_ahead_gives_every_item_in_order_and_raises_in_place():
    def items():
        yield from range(5)
        raise ValueError("at 5")

    got = []
    with pytest.raises(ValueError, match="at 5"):
        for x in local.ahead(items(), 2):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]
    assert list(local.ahead(iter([pa.table({"x": [1]})]), 1))[0].num_rows == 1
