"""The fast load paths give back what the slow ones did: a save_to_disk directory read memory-mapped by
dc.load (same rows, same id types, same bytes as through HF datasets), parquet the same, and validation on
these paths still names the file, row and field of a bad row."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import datacopilot as dc
from datacopilot.dataset import MMDataset
from datacopilot.io.hf_disk import hf_disk_table, is_hf_disk

datasets = pytest.importorskip("datasets")

TURNS = [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "yo"}]


def _rows(n=2500):
    out = []
    for i in range(n):
        r = {"id": i if i % 7 == 0 else f"{i:07d}", "image": f"images/{i}.jpg", "conversations": TURNS}
        if i % 5 == 0:
            r["image"] = {"path": f"images/{i}.jpg", "bytes": bytes([i % 256]) * 3}
        out.append(r)
    return out


def test_a_save_to_disk_directory_loads_memory_mapped_with_rows_ids_and_bytes_unchanged(tmp_path):
    ds = MMDataset.from_rows(_rows(), "MM")
    d = str(tmp_path / "hf")
    ds.to_hf().save_to_disk(d)
    assert is_hf_disk(d) and not is_hf_disk(str(tmp_path))
    for schema in ("MM", None):
        out = dc.load(d, schema=schema)
        assert out.schema.name == "MM"
        assert out.to_list() == ds.to_list()
        assert out.to_list() == dc.load(datasets.load_from_disk(d), schema=schema).to_list()
    ids = [r["id"] for r in dc.load(d).to_list()[:8]]
    assert ids[0] == 0 and ids[7] == 7 and ids[1] == "0000001"


def test_a_save_to_disk_directory_of_several_files_keeps_their_order(tmp_path):
    ds = MMDataset.from_rows(_rows(3000), "MM")
    d = str(tmp_path / "hf")
    ds.to_hf().save_to_disk(d, num_shards=3)
    assert len([f for f in os.listdir(d) if f.endswith(".arrow")]) == 3
    assert dc.load(d, schema="MM").to_list() == ds.to_list()


def test_the_save_to_disk_table_points_into_the_mapped_files(tmp_path):
    d = str(tmp_path / "hf")
    MMDataset.from_rows(_rows(500), "MM").to_hf().save_to_disk(d)
    before = pa.total_allocated_bytes()
    table = hf_disk_table(d)
    assert table.num_rows == 500
    assert pa.total_allocated_bytes() - before < table.nbytes / 2  # the data is not copied onto the heap


def test_a_bad_row_in_a_save_to_disk_directory_is_named_with_the_directory_row_and_field(tmp_path):
    rows = [{"id": str(i), "conversations": TURNS} for i in range(30)]
    rows[17] = {"id": "17", "conversations": [{"from": "bot", "value": "x"}]}
    d = str(tmp_path / "hf")
    datasets.Dataset.from_list(rows).save_to_disk(d)
    with pytest.raises(dc.errors.ValidationError) as e:
        dc.load(d, schema="MM")
    msg = str(e.value)
    assert d in msg and "row 17" in msg and "conversations[0].from" in msg
    q = dc.load(d, schema="MM", invalid="quarantine")
    assert len(q) == 29 and len(q.quarantine) == 1


def test_a_truncated_arrow_file_in_a_save_to_disk_directory_is_an_input_error(tmp_path):
    d = str(tmp_path / "hf")
    MMDataset.from_rows(_rows(200), "MM").to_hf().save_to_disk(d)
    f = os.path.join(d, "data-00000-of-00001.arrow")
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
    with pytest.raises(dc.errors.InputError, match="data-00000-of-00001.arrow"):
        dc.load(d, schema="MM")


def test_parquet_loads_the_same_rows_and_types_and_names_bad_rows(tmp_path):
    ds = MMDataset.from_rows(_rows(), "MM")
    p = str(tmp_path / "rows.parquet")
    ds.write(p)
    assert dc.load(p, schema="MM").to_list() == ds.to_list()
    bad = pa.table({"id": ["a", "b"], "conversations": [TURNS, [{"from": "bot", "value": "x"}]]})
    pq.write_table(bad, str(tmp_path / "bad.parquet"))
    with pytest.raises(dc.errors.ValidationError) as e:
        dc.load(str(tmp_path / "bad.parquet"), schema="MM")
    assert "bad.parquet" in str(e.value) and "row 1" in str(e.value) and "from" in str(e.value)


def test_an_empty_image_past_the_first_chunk_is_named_with_its_row(tmp_path):
    """HF writes 1,000-row batches: the screen runs over the chunks whole and still points at the right row."""
    rows = [{"id": str(i), "image": {"path": f"{i}.jpg", "bytes": None}, "conversations": TURNS}
            for i in range(2500)]
    rows[1733]["image"] = {"path": None, "bytes": None}
    rows[2101]["conversations"] = [{"from": "human", "value": None}]
    d = str(tmp_path / "hf")
    datasets.Dataset.from_list(rows).save_to_disk(d)
    from datacopilot.io.hf_disk import hf_disk_table

    assert hf_disk_table(d).column("id").num_chunks > 1
    q = dc.load(d, schema="MM", invalid="quarantine")
    assert len(q) == 2498
    where = q.quarantine.to_arrow().column("_source").to_pylist()
    assert where == [f"{d}: row 1733", f"{d}: row 2101"]
    errors = q.quarantine.to_arrow().column("_error").to_pylist()
    assert "image" in errors[0] and "conversations[0].value" in errors[1]
