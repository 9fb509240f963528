"""Streaming sources: files are read unit by unit in bounded batches, giving the rows a full load gives."""

import json
from typing import ClassVar

import pyarrow as pa
import pytest
from datacopilot.operators import Mapper, create

import datacopilot as dc
import datacopilot.io.jsonl as pio
from datacopilot.errors import DataCopilotError
from datacopilot.executors import get_executor

from .conftest import row, write_jsonl


class Sizes(Mapper):
    """Records the size of every batch it sees (thread mode only)."""

    name, reads, writes = "test_sizes", ("id",), ()
    seen: ClassVar[list] = []

    def map_batch(self, batch):
        Sizes.seen.append(batch.num_rows)
        return batch


def test_jsonl_in_small_blocks_equals_load(files, monkeypatch):
    monkeypatch.setattr(pio, "BLOCK_BYTES", 700)  # a few lines per block, lines cut across reads
    out = dc.pipeline(files, schema="MM", batch_size=5).collect()
    assert out.to_arrow().equals(dc.load(files, schema="MM").to_arrow())


def test_batches_are_bounded(files):
    Sizes.seen = []
    out = dc.pipeline(files, schema="MM", batch_size=16).apply(Sizes()).collect()
    assert len(out) == 240 and max(Sizes.seen) <= 16 and sum(Sizes.seen) == 240


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_parquet_and_arrow_batch_by_batch(tmp_path, fmt):
    ds = dc.MMDataset.from_rows([row(k) for k in range(90)], schema="MM")
    path = str(tmp_path / f"d.{fmt}")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(ds.to_arrow(), path, row_group_size=20)  # several row groups, read one by one
    else:
        ds.write(path)
    ops = [create("filter_turns", min_turns=2), create("dedup_exact")]
    out = dc.pipeline(path, schema="MM", batch_size=7).apply(ops).collect()
    assert out.to_arrow().equals(ds.apply(ops).to_arrow())


def test_broken_line_quarantined_with_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr(pio, "BLOCK_BYTES", 300)
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [row(k) for k in range(20)])
    lines = path.read_text().splitlines()
    lines[12] = '{"id": "r12", "conversations": [oops'
    path.write_text("\n".join(lines) + "\n")
    out = dc.pipeline(str(path), schema="MM", on_error="quarantine").collect()
    assert len(out) == 19 and "r12" not in out.to_arrow().column("id").to_pylist()
    q = out.quarantine.to_arrow().to_pylist()
    assert len(q) == 1 and "bad.jsonl:13" in str(q[0])
    with pytest.raises(DataCopilotError, match="bad.jsonl:13"):
        dc.pipeline(str(path), schema="MM").collect()


def test_pipelines_are_lazy(files):
    p = dc.pipeline(files[0], schema="MM").apply(create("filter_turns", min_turns=2))
    write_jsonl(files[0], [row(1), row(2)])  # changed after the plan was built: the run reads it then
    assert len(p.collect()) == 2


def test_stream_yields_before_reading_everything(files):
    from datacopilot.executors.local import Run

    plan = dc.pipeline(files, schema="MM", batch_size=10).apply(create("clean_whitespace"))
    run = Run(plan, plan.prepared_ops())
    stream = get_executor("local").stream(plan, run)
    first = next(stream)
    assert isinstance(first, pa.Table) and first.num_rows == 10
    assert run.acc.ops[0].rows_in == 10  # one batch through, the other 23 not read yet


def test_a_write_keeps_ids_whose_type_changes_between_batches(tmp_path, monkeypatch):
    # the first block's ids are all integers (int64), a later block mixes strings and integers
    monkeypatch.setattr(pio, "BLOCK_BYTES", 512)
    rows = [{"id": i, "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
            for i in range(40)]
    rows += [{"id": f"s{i}" if i % 2 else i, "conversations": rows[0]["conversations"]} for i in range(40, 80)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = dc.pipeline(str(path), schema="MM", batch_size=8).write(str(tmp_path / "out"))
    assert report["rows"] == 80
    got = dc.load(str(tmp_path / "out")).to_arrow().column("id").to_pylist()
    assert got == [r["id"] for r in rows]  # every id kept with its type
