"""Shards hashed as they are written (no second read), the fallback for writers that seek, and the parquet
writer's choice of dictionary-encoded columns."""

import hashlib
import io
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datacopilot import MMDataset
from datacopilot.io._fs import Hashing, atomic_open, hashed_writes
from datacopilot.io.parquet import dictionary_columns, write_parquet


@pytest.fixture(scope="module")
def ds():
    rows = [{"id": f"r{i:04d}", "image": f"i/{i}.png",
             "conversations": [{"from": "human", "value": "q" * (i % 13) + str(i)}, {"from": "gpt", "value": f"a{i}"}]}
            for i in range(600)]
    return MMDataset.from_rows(rows, schema="MM")


def test_hashing_counts_and_hashes_sequential_writes():
    h = Hashing(io.BytesIO())
    for chunk in (b"abc", memoryview(b"defg"), bytearray(b"h")):
        h.write(chunk)
    assert h.sequential and h.size == 8 and h.sha256.hexdigest() == hashlib.sha256(b"abcdefgh").hexdigest()
    assert h.tell() == 8
    h.seek(8)  # staying at the end is still sequential
    assert h.sequential
    h.seek(2)
    assert not h.sequential
    assert not hasattr(h, "__fspath__")  # a writer must not go around the wrapper to the path


def test_hashed_writes_sees_only_its_own_thread(tmp_path):
    other_done = threading.Event()

    def other():
        with atomic_open(str(tmp_path / "other.bin")) as f:
            f.write(b"not mine")
        other_done.set()

    with hashed_writes() as files:
        with atomic_open(str(tmp_path / "mine.bin")) as f:
            f.write(b"mine")
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert other_done.is_set() and len(files) == 1
    assert files[0].sha256.hexdigest() == hashlib.sha256(b"mine").hexdigest()
    with atomic_open(str(tmp_path / "after.bin")) as f:
        assert not isinstance(f, Hashing)


@pytest.mark.parametrize("fmt", ["arrow", "parquet", "jsonl", "h5", "webdataset"])
def test_manifest_checksums_match_the_files(ds, tmp_path, fmt):
    # text-only rows: a webdataset shard would embed the (missing) images
    ds = MMDataset.from_rows([{k: v for k, v in r.items() if k != "image"} for r in ds.to_list()], schema="MM")
    man = ds.write_shards(str(tmp_path / "out"), format=fmt, max_rows_per_shard=250)
    assert [s["rows"] for s in man["shards"]] == [250, 250, 100]
    for s in man["shards"]:
        data = (tmp_path / "out" / s["file"]).read_bytes()
        assert s["bytes"] == len(data) and s["sha256"] == hashlib.sha256(data).hexdigest()


def test_dictionary_only_where_values_repeat(ds, tmp_path):
    table = ds.to_arrow()
    assert dictionary_columns(table) == ["image.bytes", "conversations.list.element.from", "meta"]
    write_parquet(ds, str(tmp_path / "a.parquet"))
    meta = pq.ParquetFile(str(tmp_path / "a.parquet")).metadata
    rg = meta.row_group(0)
    has_dict = {rg.column(i).path_in_schema: rg.column(i).has_dictionary_page for i in range(rg.num_columns)}
    assert has_dict["conversations.list.element.from"] and not has_dict["conversations.list.element.value"]
    assert not has_dict["id"] and not has_dict["image.path"]
    write_parquet(ds, str(tmp_path / "b.parquet"), use_dictionary=True)
    rg = pq.ParquetFile(str(tmp_path / "b.parquet")).metadata.row_group(0)
    assert all(rg.column(i).has_dictionary_page for i in range(rg.num_columns)
               if rg.column(i).path_in_schema not in ("image.bytes", "meta"))  # all-null columns have no pages
    assert pq.read_table(str(tmp_path / "a.parquet")).equals(pq.read_table(str(tmp_path / "b.parquet")))


def test_dictionary_columns_of_nested_and_odd_types():
    t = pa.table({
        "tags": pa.array([["a", "b"], ["a"], None, ["b", "a"]] * 5, pa.large_list(pa.string())),
        "pt": pa.array([{"x": i, "k": "same"} for i in range(20)]),
        "m": pa.array([[("k", 1)]] * 20, pa.map_(pa.string(), pa.int64())),
        "none": pa.nulls(20),
        "uniq": pa.array([f"u{i}" for i in range(20)]),
    })
    assert dictionary_columns(t) == ["tags.list.element", "pt.k", "none"]
    assert dictionary_columns(t.slice(0, 0)) == ["tags.list.element", "pt.x", "pt.k", "none", "uniq"]
