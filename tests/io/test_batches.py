"""Every format's batch reader (``Format.iter_batches``, what a pipeline's Source streams) gives what the whole-file
reader gives: the same rows, types, ids and image bytes, the same invalid rows with the same place and message."""

from __future__ import annotations

import base64
import io
import json
import tarfile

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage

import datacopilot as dc
from datacopilot.errors import InputError, ValidationError
from datacopilot.io import FORMATS, format_of
from datacopilot.io import jsonl as jsonl_io
from datacopilot.io.h5 import iter_h5
from datacopilot.io.wds import iter_wds
from datacopilot.loading import quarantine_table
from datacopilot.source import Source

from tests.io.img2dataset_fixture import Sample, image_bytes, write_shard

N = 130
BAD = {5, 18, 64, 127}  # rows that fail validation: role 'bot' (text formats) or no conversations (binary ones)


def _png(k: int) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (3 + k % 4, 2), (k % 256, 7, 9)).save(buf, "PNG")
    return buf.getvalue()


def _row(k: int) -> dict:
    """Row ``k``: ids alternate between strings and integers; every 3rd has an image with bytes, every 5th an
    image path, the others none; rows in BAD say 'bot'."""
    role = "bot" if k in BAD else "human"
    row = {"id": f"r{k}" if k % 2 else k, "conversations": [{"from": role, "value": f"<image>\nq {k}?"},
                                                           {"from": "gpt", "value": f"a {k} " + "x" * (k % 17)}]}
    if k % 3 == 0:
        row["image"] = {"path": f"img/{k}.png", "bytes": _png(k)}
    elif k % 5 == 0:
        row["image"] = f"img/{k}.png"
    else:
        row["conversations"][0]["value"] = f"q {k}?"
    return row


def _json_row(k: int) -> dict:
    row = _row(k)
    img = row.get("image")
    if isinstance(img, dict):
        row["image"] = {"path": img["path"], "bytes_base64": base64.b64encode(img["bytes"]).decode()}
    return row


def _write_text(path, fmt: str) -> None:
    rows = [_json_row(k) for k in range(N)]
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows, indent=2))
    else:  # h5, DataCopilot's layout
        chunks = [json.dumps(r, separators=(",", ":")).encode() for r in rows]
        with h5py.File(path, "w") as f:
            f.create_dataset("dataset", data=np.frombuffer(b"".join(chunks), np.uint8))
            f.create_dataset("offset", data=np.cumsum([0] + [len(c) for c in chunks[:-1]]).astype(np.uint32))


def _write_tar(path) -> None:
    with tarfile.open(path, "w") as tar:
        for k in range(N):
            row = _row(k)
            members = []
            if isinstance(row.get("image"), dict):
                members.append((f"{k:06d}.png", row["image"]["bytes"]))
                row["image"] = row["image"]["path"]
            members.insert(0, (f"{k:06d}.json", json.dumps(row).encode()))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _write_binary(path, fmt: str, tmp_path) -> None:
    """Valid rows through dc.write's table, then the BAD rows' conversations nulled (storage allows it, MM not)."""
    good = [dict(_row(k), conversations=[{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}])
            if k in BAD else _row(k) for k in range(N)]
    table = dc.MMDataset.from_rows(good, schema="MM").to_arrow()
    col = table.column("conversations")
    mask = pa.array([k in BAD for k in range(N)])
    table = table.set_column(table.column_names.index("conversations"), "conversations",
                             pc.if_else(mask, pa.nulls(N, col.type), col))
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=40)
    else:
        with pa.ipc.new_file(str(path), table.schema) as w:
            w.write_table(table, max_chunksize=50)


FILES = {"jsonl": "d.jsonl", "json": "d.json", "parquet": "d.parquet", "arrow": "d.arrow", "h5": "d.h5",
         "webdataset": "d.tar"}


@pytest.fixture(params=sorted(FILES))
def written(request, tmp_path):
    fmt = request.param
    path = tmp_path / FILES[fmt]
    if fmt in ("jsonl", "json", "h5"):
        _write_text(path, fmt)
    elif fmt == "webdataset":
        _write_tar(path)
    else:
        _write_binary(path, fmt, tmp_path)
    return fmt, str(path)


def _stream(path: str, schema, batch_size: int, invalid: str = "quarantine"):
    src = Source.from_paths(path, schema=schema)
    tables = list(src.batches(src.units()[0], batch_size, invalid))
    return tables, src.bad


def _entries(bad) -> list[tuple]:
    return sorted((b["_source"], b["_error"], b["_row"]) for b in quarantine_table(bad).to_pylist())


def test_every_format_has_a_batch_reader():
    import importlib

    for f in FORMATS.values():
        assert callable(getattr(importlib.import_module(f"datacopilot.io.{f.module}"), f.batches)), f.name


@pytest.mark.parametrize("schema", ["MM", None])
def test_streamed_batches_equal_the_whole_file_read(written, schema, monkeypatch):
    fmt, path = written
    monkeypatch.setattr(jsonl_io, "BLOCK_BYTES", 2048)  # jsonl: many blocks, lines cut across reads
    whole = dc.load(path, schema=schema, invalid="quarantine")
    tables, bad = _stream(path, schema, 16)
    assert all(0 < t.num_rows <= 16 for t in tables)
    streamed = pa.concat_tables(tables)  # no type promotion: every batch has the whole read's types
    eager = whole.to_arrow()
    assert streamed.schema == eager.schema
    assert streamed.to_pylist() == eager.to_pylist()  # ids with their types, image paths and bytes
    ids = streamed.column("id").to_pylist()
    assert ids[:3] == [0, "r1", 2] and len(ids) == N - len(BAD)
    assert sum(r["image"] is not None and r["image"]["bytes"] is not None for r in streamed.to_pylist()) == \
        sum(1 for k in range(N) if k % 3 == 0 and k not in BAD)
    assert len(bad) == len(BAD) and _entries(bad) == sorted(
        (q["_source"], q["_error"], q["_row"]) for q in whole.quarantine.to_arrow().to_pylist())


def test_batch_readers_stream_more_than_one_batch_each_bounded(written, monkeypatch):
    fmt, path = written
    monkeypatch.setattr(jsonl_io, "BLOCK_BYTES", 2048)
    pieces = list(format_of(path).iter_batches(path, dc.schemas.MM, 16, "quarantine"))
    rows = sum(p.table.num_rows for p in pieces)
    assert rows == N - len(BAD) and sum(len(p.bad) for p in pieces) == len(BAD)
    assert len(pieces) > 1
    sizes = [p.table.num_rows + len(p.bad) for p in pieces]
    if fmt in ("parquet", "arrow", "h5"):  # rows read a batch at a time
        assert max(sizes) <= 16
    elif fmt == "webdataset":  # the first batch holds the 50 samples the caption-tar check looks at
        assert sizes[0] == 50 and max(sizes[1:]) <= 16
    elif fmt == "jsonl":  # blocks cut by bytes (BLOCK_BYTES), each holding a few lines
        assert max(sizes) < N / 2
    else:  # json: read whole, handed out in batches; the invalid rows come with the first
        assert len(pieces[0].bad) == len(BAD) and max(p.table.num_rows for p in pieces) <= 16


def test_invalid_rows_raise_naming_the_same_first_row(written):
    fmt, path = written
    with pytest.raises(ValidationError) as eager:
        dc.load(path, schema="MM")
    with pytest.raises(ValidationError) as streamed:
        _stream(path, "MM", 16, "raise")
    first = str(eager.value).splitlines()[1]  # the file's first invalid row, its place, field and what it holds
    assert first.startswith(path) and str(streamed.value).splitlines()[1] == first


def test_h5_offsets_are_checked_slice_by_slice_with_the_whole_file_messages(tmp_path):
    row = json.dumps({"id": "a", "conversations": [{"from": "human", "value": "q"}]}).encode()
    for offsets, message in [([0, 20, 999, 60, 5], "row 2: offset 999 is out of range"),
                             ([0, 20, 40, 30, 60], "row 3: offsets are not increasing: 40 then 30"),
                             ([5, 20, 40], "row 0: offset must be 0")]:
        path = str(tmp_path / "off.h5")
        with h5py.File(path, "w") as f:
            f.create_dataset("dataset", data=np.frombuffer(row * len(offsets), np.uint8))
            f.create_dataset("offset", data=np.asarray(offsets, np.uint32))
        with pytest.raises(InputError) as whole:
            dc.load(path)
        with pytest.raises(InputError) as streamed:
            list(iter_h5(path, None, 1))  # one row a slice: the bad offset is in another slice than row 0
        assert message in str(whole.value) and str(streamed.value) == str(whole.value)


def test_a_streamed_tar_refuses_a_sample_whose_members_are_apart(tmp_path):
    path = str(tmp_path / "apart.tar")
    row = json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in [("000001.json", row), ("000002.json", row), ("000001.png", _png(1))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert len(dc.load(path)) == 2  # the whole-file reader gathers the members wherever they are
    with pytest.raises(InputError, match=r"apart\.tar: key '000001': member '000001\.png' comes after"):
        list(iter_wds(path, None, 1))


def test_img2dataset_tar_streams_as_caption_rows(tmp_path):
    samples = [Sample(f"http://x/{i}.jpg", caption=f"cap {i}", image=image_bytes((i, 9, 9))) for i in range(70)]
    samples[3].image = None  # a failed download: no members
    write_shard(str(tmp_path), 0, samples)
    path = str(tmp_path / "00000.tar")
    whole = dc.load(path)
    tables, bad = _stream(path, None, 8)
    assert len(tables) > 1 and not bad
    assert pa.concat_tables(tables).to_pylist() == whole.to_arrow().to_pylist() and len(whole) == 69


@pytest.mark.parametrize("fmt", ["jsonl", "json", "h5", "webdataset"])
def test_ids_of_one_type_per_batch_concatenate_to_the_whole_reads_types(tmp_path, fmt, monkeypatch):
    """Integer ids in the first rows, strings after: a batch's id column is the type its rows need (int64,
    string or the variant), so batches concatenate as loads do (arrow_build.concat_tables) to the whole read."""
    from datacopilot.schemas.arrow_build import concat_tables

    monkeypatch.setattr(jsonl_io, "BLOCK_BYTES", 2048)
    monkeypatch.setattr("tests.io.test_batches._row", lambda k, row=_row: dict(row(k), id=k if k < 40 else f"r{k}"))
    path = tmp_path / FILES[fmt]
    _write_tar(path) if fmt == "webdataset" else _write_text(path, fmt)
    whole = dc.load(str(path), schema="MM", invalid="quarantine")
    tables, bad = _stream(str(path), "MM", 16)
    if fmt != "json":  # json is read whole: every batch a slice of one table
        assert len({str(t.schema.field("id").type) for t in tables}) > 1
    streamed = concat_tables(tables, dc.schemas.MM)
    assert streamed.schema == whole.to_arrow().schema and streamed.to_pylist() == whole.to_arrow().to_pylist()
    assert len(bad) == len(BAD)


def test_urls_stream_through_fsspec_as_local_files_do(written):
    """A URL (fsspec's memory filesystem here) is read through a file object, in the ranges each reader asks
    for (h5py's reads included), and gives the rows and invalid rows the local file gives."""
    import fsspec

    fmt, path = written
    url = f"memory://batches/{FILES[fmt]}"
    with open(path, "rb") as src, fsspec.open(url, "wb") as dst:
        dst.write(src.read())
    local, bad = _stream(path, "MM", 16)
    remote, remote_bad = _stream(url, "MM", 16)
    assert len(remote) > 1 and pa.concat_tables(remote).to_pylist() == pa.concat_tables(local).to_pylist()
    assert [(w.replace(url, path), m.replace(url, path)) for w, m, _ in remote_bad] == [(w, m) for w, m, _ in bad]
