"""A parquet shard streamed by ``ShardSink.add`` (opened once its first rows decide the layout, written a row
group at a time) has the bytes of the same rows written whole (``write_shards``), however the rows arrived."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import datacopilot as dc
from datacopilot import MMDataset
from datacopilot.io.parquet import HEAD_ROWS
from datacopilot.io.sink import ShardSink


def rows(n: int) -> list[dict]:
    return [{"id": f"r{i:05d}", "image": f"img/{i % 40}.png",
             "conversations": [{"from": "human", "value": f"<image>\nq{i}"},
                               {"from": "gpt", "value": "answer " * (i % 300)}]}
            for i in range(n)]


N, MAX = 23_000, 10_000  # shards of 10k, 10k, 3k rows; row groups of a few hundred rows (ROW_GROUP_BYTES below)


@pytest.fixture(autouse=True)
def small_row_groups(monkeypatch):
    monkeypatch.setattr("datacopilot.io.parquet.ROW_GROUP_BYTES", 256 << 10)


@pytest.fixture(scope="module")
def ds():
    return MMDataset.from_rows(rows(N), schema="MM", root="/images")


def streamed(ds, out: str, cuts) -> dict:
    sink = ShardSink(out, "parquet", MAX)
    t, a = ds.to_arrow(), 0
    for size in cuts:
        if a >= N:
            break
        sink.add(t.slice(a, size), ds.schema, ds.root)
        a += size
    if a < N:
        sink.add(t.slice(a), ds.schema, ds.root)
    return sink.publish(ds.schema, ds.root)


def entries(m: dict) -> list:
    return [(s["file"], s["rows"], s["bytes"], s["sha256"]) for s in m["shards"]]


def test_a_streamed_parquet_shard_has_the_bytes_of_the_whole_shard_written_at_once(ds, tmp_path):
    whole = ds.write_shards(str(tmp_path / "whole"), format="parquet", max_rows_per_shard=MAX)
    md = pq.ParquetFile(tmp_path / "whole" / whole["shards"][0]["file"]).metadata
    assert md.num_row_groups > 2 and md.num_rows == MAX  # several row groups: the streamed path is exercised
    splits = {"ones": [1] * 700 + [HEAD_ROWS] * 10, "odd": [7, 4093, 1, 999, 3333, 17] * 40,
              "big": [12_345] * 3, "one": [N]}
    for name, cuts in splits.items():
        m = streamed(ds, str(tmp_path / name), cuts)
        assert entries(m) == entries(whole), name
        assert {k: v for k, v in m.items() if k != "created"} == {k: v for k, v in whole.items() if k != "created"}
        for s in m["shards"]:
            data = (tmp_path / name / s["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]
            assert data == (tmp_path / "whole" / s["file"]).read_bytes()
    assert dc.load(str(tmp_path / "odd")).to_list() == ds.to_list()


def test_a_pipeline_write_streams_the_same_shards(ds, tmp_path):
    whole = ds.write_shards(str(tmp_path / "whole"), format="parquet", max_rows_per_shard=MAX)
    ds.lazy(batch_size=1_777).write(str(tmp_path / "pipe"), format="parquet", max_rows_per_shard=MAX,
                                    progress=False)
    m = json.loads((tmp_path / "pipe" / "manifest.json").read_text())
    assert entries(m) == entries(whole) and m["root"] == whole["root"] == "/images"


def test_rows_whose_types_change_within_a_shard_are_written_whole_as_before(tmp_path):
    from datacopilot.schemas.arrow_build import concat_tables

    first = pa.table({"id": [f"a{i}" for i in range(HEAD_ROWS + 500)], "n": pa.array([None] * (HEAD_ROWS + 500))})
    later = pa.table({"id": ["b0", "b1"], "n": pa.array([1, 2], pa.int64())})
    schema = dc.Schema.infer(concat_tables([first, later]).schema, "ANY")
    sink = ShardSink(str(tmp_path / "o"), "parquet", 100_000)
    sink.add(first, schema, None)
    assert sink.out is not None  # streaming, with a null column
    sink.add(later, schema, None)
    m = sink.publish(schema)
    ref = ShardSink(str(tmp_path / "ref"), "parquet", 100_000)
    ref.write(concat_tables([first, later], schema), schema, None)
    r = ref.publish(schema)
    assert entries(m) == entries(r) and m["rows"] == HEAD_ROWS + 502
    back = pq.read_table(tmp_path / "o" / m["shards"][0]["file"])
    assert back.column("n").type == pa.int64() and back.column("n").to_pylist()[-2:] == [1, 2]
