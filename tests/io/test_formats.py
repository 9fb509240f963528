"""Readers and writers: lossless round trips (local and memory://), multi-file loading, malformed input and
atomic writes."""

import io
import json
import os
import uuid

import fsspec
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage

import datacopilot as dc
from datacopilot import MMDataset
from datacopilot.errors import InputError
from datacopilot.media import ImagePathWarning

FORMATS = ["jsonl", "json", "parquet", "arrow"]


def png(color) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (4, 3), color).save(buf, format="PNG")
    return buf.getvalue()


def mm_rows(n):
    rows = []
    for i in range(n):
        r = {"id": f"r{i}", "conversations": [{"from": "human", "value": f"<image>\nwhat is {i}? ünïcödé"},
                                             {"from": "gpt", "value": f"answer {i}"}]}
        if i % 3 == 0:
            r["image"] = {"path": f"emb/{i}.png", "bytes": png((i % 255, 10, 20))}
        elif i % 3 == 1:
            r["image"] = f"imgs/{i}.png"
        if i % 2 == 0:
            r["meta"] = {"source": "test", "n": i, "tags": ["a", "b"], "nested": {"x": [1, 2.5, None]}}
        rows.append(r)
    return rows


@pytest.fixture
def ds():
    return MMDataset.from_rows(mm_rows(12), schema="MM")


@pytest.fixture
def msg_ds():
    rows = [{"id": f"m{i}", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": f"q{i}"},
                                        {"role": "assistant", "content": "a"}],
             "images": [{"path": None, "bytes": png((0, i, 0))}, f"p/{i}.jpg"][: i % 3]} for i in range(7)]
    return MMDataset.from_rows(rows, schema="MESSAGES")


@pytest.fixture
def mem():
    base = f"memory://dc-{uuid.uuid4().hex[:8]}"
    yield base
    fs = fsspec.filesystem("memory")
    if fs.exists(base.split("://")[1]):
        fs.rm(base.split("://")[1], recursive=True)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("where", ["local", "memory"])
def test_round_trip_lossless(ds, msg_ds, fmt, where, tmp_path, mem):
    base = str(tmp_path) if where == "local" else mem
    for d in (ds, msg_ds):
        path = f"{base}/sub/{d.schema.name}.{fmt}"
        assert dc.write(d, path) == path
        back = dc.load(path)  # schema detected
        assert back.schema == d.schema
        assert back.to_list() == d.to_list()
        assert back.root == f"{base}/sub" if where == "memory" else os.path.join(base, "sub")
    back = dc.load(f"{base}/sub/MM.{fmt}", schema="MM")
    first = back[0]
    assert first["image"]["bytes"] == png((0, 10, 20))
    assert json.loads(first["meta"]) == {"source": "test", "n": 0, "tags": ["a", "b"], "nested": {"x": [1, 2.5, None]}}
    assert back.image(0).size == (4, 3)


def test_jsonl_file_holds_plain_json(ds, tmp_path):
    path = ds.write(str(tmp_path / "x.jsonl"))
    lines = [json.loads(x) for x in open(path)]
    assert len(lines) == 12
    assert lines[1]["image"] == "imgs/1.png" and "meta" not in lines[1]
    assert lines[0]["meta"]["nested"] == {"x": [1, 2.5, None]}
    assert lines[0]["image"]["path"] == "emb/0.png" and "bytes_base64" in lines[0]["image"]


def test_write_keeps_extra_columns(ds, tmp_path):
    import polars as pl

    d = ds.with_columns(score=pl.col("id").str.slice(1).cast(pl.Float64) / 4)
    for fmt in FORMATS:
        back = dc.load(d.write(str(tmp_path / f"e.{fmt}")))
        assert back["score"] if False else [r["score"] for r in back] == [i / 4 for i in range(12)]


# -- multiple files ---------------------------------------------------------------------------------------
def test_glob_directory_and_list(ds, tmp_path):
    d = tmp_path / "parts"
    ds[:4].write(str(d / "a.jsonl"))
    ds[4:8].write(str(d / "b.parquet"))
    ds[8:].write(str(d / "c.arrow"))
    (d / "notes.txt").write_text("not data")
    (d / ".hidden.jsonl").write_text("{broken")
    whole = dc.load(str(d), schema="MM")
    assert whole.to_list() == ds.to_list()
    assert whole.history()[0].rows_in == 12
    globbed = dc.load(str(d / "*.jsonl"), schema="MM")
    assert [r["id"] for r in globbed] == ["r0", "r1", "r2", "r3"]
    listed = dc.load([str(d / "c.arrow"), str(d / "a.jsonl")], schema="MM")
    assert [r["id"] for r in listed] == ["r8", "r9", "r10", "r11", "r0", "r1", "r2", "r3"]


def test_files_in_different_directories_get_absolute_paths(ds, tmp_path):
    ds[:3].write(str(tmp_path / "x" / "a.jsonl"))
    ds[3:6].write(str(tmp_path / "y" / "b.jsonl"))
    with pytest.warns(ImagePathWarning, match="2 relative image path.*made absolute.*pass root="):
        both = dc.load([str(tmp_path / "x" / "a.jsonl"), str(tmp_path / "y" / "b.jsonl")])
    assert both[1]["image"]["path"] == str(tmp_path / "x" / "imgs/1.png")
    assert both[4]["image"]["path"] == str(tmp_path / "y" / "imgs/4.png")


def test_memory_glob_and_directory(ds, mem):
    ds[:5].write(f"{mem}/d/a.jsonl")
    ds[5:].write(f"{mem}/d/b.jsonl")
    assert dc.load(f"{mem}/d/*.jsonl").to_list() == ds.to_list()
    assert dc.load(f"{mem}/d").to_list() == ds.to_list()


# -- malformed input --------------------------------------------------------------------------------------
def test_broken_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "b.jsonl"
    good = json.dumps({"id": "1", "conversations": [{"from": "human", "value": "x"}]})
    path.write_text("\n".join([good] * 6 + ['{"id": "7", "conversations": [}'] + [good] * 3) + "\n")
    for schema in (None, "MM"):
        with pytest.raises(InputError) as ei:
            dc.load(str(path), schema=schema)
        assert f"{path}:7: invalid JSON" in str(ei.value)
        assert f"{path}:1" not in str(ei.value)


def test_broken_json_file(tmp_path):
    path = tmp_path / "b.json"
    path.write_text('[\n{"id": "1", "caption": "a"},\n{"id": "2", "caption": }\n]')
    with pytest.raises(InputError) as ei:
        dc.load(str(path))
    assert str(ei.value).startswith(f"{path}:3: invalid JSON")


@pytest.mark.parametrize("fmt", ["arrow", "parquet"])
def test_truncated_file_names_it(ds, fmt, tmp_path):
    path = ds.write(str(tmp_path / f"t.{fmt}"))
    data = open(path, "rb").read()
    for cut in (len(data) // 2, len(data) - 7, 5):
        with open(path, "wb") as f:
            f.write(data[:cut])
        with pytest.raises(InputError) as ei:
            dc.load(path)
        assert path in str(ei.value)


def test_missing_file(tmp_path, mem):
    for p in (str(tmp_path / "nope.jsonl"), f"{mem}/nope.parquet", str(tmp_path / "*.arrow"), str(tmp_path / "x")):
        with pytest.raises(InputError) as ei:
            dc.load(p)
        assert p in str(ei.value)
    with pytest.raises(InputError):
        dc.load(str(tmp_path / "data.csv"))


# -- atomic writes ----------------------------------------------------------------------------------------
def _leftovers(directory):
    return sorted(os.listdir(directory))


def big_ds(n=9000):
    return MMDataset.from_rows([{"id": str(i), "conversations": [{"from": "human", "value": "x" * 50}]}
                                for i in range(n)], schema="MM")


def test_atomic_jsonl_failure_mid_write(tmp_path, monkeypatch):
    from datacopilot.io import json_write

    real, calls = json_write.compile_rows, []

    def failing(schema, arrow_schema):
        rows = real(schema, arrow_schema)

        def convert(batch):
            calls.append(1)
            if len(calls) == 2:  # after the first 4096 lines reached the file
                raise RuntimeError("disk on fire")
            return rows(batch)

        return convert

    monkeypatch.setattr(json_write, "compile_rows", failing)
    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError, match="disk on fire"):
        big_ds().write(str(target))
    assert len(calls) == 2
    assert _leftovers(tmp_path) == []


def test_atomic_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.parquet"
    small = big_ds(5)
    small.write(str(target))
    before = target.read_bytes()
    real = pq.ParquetWriter.write_table

    def failing(self, table, *a, **kw):
        real(self, table.slice(0, 10), *a, **kw)
        raise OSError("device full")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", failing)
    with pytest.raises(OSError, match="device full"):
        big_ds().write(str(target))
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == ["out.parquet"]


@pytest.mark.parametrize("where", ["local", "memory"])
def test_atomic_ipc_failure_mid_write(tmp_path, mem, monkeypatch, where):
    real = ipc.RecordBatchFileWriter.write_batch
    n = []

    def failing(self, batch, *a, **kw):
        n.append(1)
        if len(n) == 2:
            raise OSError("connection lost")
        return real(self, batch, *a, **kw)

    monkeypatch.setattr(ipc.RecordBatchFileWriter, "write_batch", failing)
    monkeypatch.setattr(ipc.RecordBatchFileWriter, "write_table",
                        lambda self, t, max_chunksize=None: [self.write_batch(b) for b in t.to_batches(1000)])
    base = str(tmp_path) if where == "local" else mem
    with pytest.raises(OSError, match="connection lost"):
        big_ds().write(f"{base}/out.arrow")
    assert len(n) == 2
    fs, p = fsspec.core.url_to_fs(base)
    assert fs.ls(p) == [] if where == "local" else not fs.exists(p) or fs.ls(p) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_meta_text_that_is_not_json_round_trips(fmt, tmp_path):
    rows = [{"id": "1", "conversations": [{"from": "human", "value": "x"}], "meta": "plain text note"},
            {"id": "2", "conversations": [], "meta": {"k": [1, 2]}}]
    d = MMDataset.from_rows(rows, schema="MM")
    assert dc.load(d.write(str(tmp_path / f"m.{fmt}")), schema="MM").to_list() == d.to_list()


def test_empty_path_list():
    with pytest.raises(InputError, match="no paths given"):
        dc.load([])
