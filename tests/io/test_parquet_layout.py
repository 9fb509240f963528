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


def test_files_are_lz4_by_default_and_read_back_by_arrow_and_polars(tmp_path):
    import polars as pl

    ds = _ds(500)
    path = str(tmp_path / "c.parquet")
    ds.write(path)
    meta = pq.ParquetFile(path).metadata
    codecs = {meta.row_group(g).column(c).compression for g in range(meta.num_row_groups)
              for c in range(meta.num_columns)}
    assert codecs == {"LZ4"}  # Arrow's name for parquet's LZ4_RAW codec (the Hadoop framing is LZ4_HADOOP)
    assert pq.read_table(path).column("id").to_pylist() == [f"{i:05d}" for i in range(500)]
    assert pl.read_parquet(path)["conversations"].to_list() == ds.to_arrow().column("conversations").to_pylist()
    snappy = str(tmp_path / "d.parquet")
    ds.write(snappy, compression="snappy")
    assert pq.ParquetFile(snappy).metadata.row_group(0).column(0).compression == "SNAPPY"
    assert datacopilot.load(snappy, schema="MM").to_arrow().equals(ds.to_arrow())
