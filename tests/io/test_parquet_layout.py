"""Parquet files are written in row groups of about ROW_GROUP_BYTES, and read back row for row."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

import datacopilot
from datacopilot import MMDataset
from datacopilot.io import parquet as pqio


def _ds(n):
    return MMDataset.from_rows([{"id": f"{i:05d}", "image": f"images/{i}.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "word " * (i % 50)}]}
        for i in range(n)], "MM")


def test_rows_per_group_follow_the_row_size():
    small = pa.table({"x": pa.array(range(5_000), pa.int64())})
    wide = pa.table({"x": pa.array(["y" * 1000] * 5_000)})
    assert pqio.row_group_rows(small, target=8_000) == 1_000
    assert pqio.row_group_rows(wide, target=100_000) == pqio.MIN_ROW_GROUP_ROWS
    assert pqio.row_group_rows(small.slice(0, 0)) == pqio.MIN_ROW_GROUP_ROWS


def test_a_file_is_written_in_several_row_groups_and_reads_back(tmp_path, monkeypatch):
    ds = _ds(3_000)
    monkeypatch.setattr(pqio, "ROW_GROUP_BYTES", ds.to_arrow().nbytes // 5)
    path = str(tmp_path / "a.parquet")
    ds.write(path)
    groups = pq.ParquetFile(path).metadata.num_row_groups
    assert 4 <= groups <= 7
    back = datacopilot.load(path, schema="MM")
    assert back.to_arrow().equals(ds.to_arrow())


def test_row_group_size_given_wins(tmp_path):
    path = str(tmp_path / "b.parquet")
    _ds(1_000).write(path, row_group_size=300)
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [300, 300, 300, 100]
