"""DataCopilot's h5 layout: round trips, files as DataCopilot writes them, files DataCopilot can read, errors."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

import datacopilot
from datacopilot import MMDataset
from datacopilot.errors import InputError, ValidationError
from datacopilot.io.h5 import read_h5, write_h5, write_h5_parts


def _turns(q, a):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


ROWS = [
    {"id": "a", "image": "imgs/1.jpg", "conversations": _turns("<image>\nwhat is this?", "a cat"),
     "meta": {"source": "coco", "score": [1, 2.5]}},
    {"id": "b", "conversations": _turns("大家好", "你好，世界 🌍 — ünïcode")},
    {"id": "c", "conversations": _turns("text only", "no image here")},
]


def _ds():
    return MMDataset.from_rows(ROWS, schema="MM")


def _datacopilot_file(path, rows):
    """A file built the way DataCopilot's export_h5 builds it: oversized resizable datasets, start offsets,
    compact ASCII-escaped JSON, then shrunk to size."""
    max_size = 4096
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("dataset", (max_size,), maxshape=(None,), dtype="uint8")
        off = f.create_dataset("offset", (max_size,), maxshape=(None,), dtype="uint32")
        pos = 0
        for i, r in enumerate(rows):
            b = np.frombuffer(json.dumps(r, separators=(",", ":")).encode(), dtype=np.uint8)
            ds[pos:pos + len(b)] = b
            off[i] = pos
            pos += len(b)
        ds.resize((pos,))
        off.resize((len(rows),))


def _datacopilot_read(path):
    """Rows read the way DataCopilot's from_h5 reads them."""
    out = []
    with h5py.File(path, "r") as f:
        n = f["offset"].shape[0]
        for i in range(n):
            st = f["offset"][i]
            end = f["dataset"].shape[0] if i == n - 1 else f["offset"][i + 1]
            out.append(json.loads(f["dataset"][st:end].tobytes().decode()))
    return out


@pytest.mark.parametrize("where", ["local", "memory"])
def test_round_trip(tmp_path, where):
    path = str(tmp_path / "data.h5") if where == "local" else "memory://h5rt/data.h5"
    ds = _ds()
    datacopilot.write(ds, path)
    back = datacopilot.load(path)
    assert back.schema.name == "MM"
    assert back.to_list() == ds.to_list()
    assert back[1]["conversations"][1]["value"] == "你好，世界 🌍 — ünïcode"
    assert back[1]["image"] is None
    assert json.loads(back[0]["meta"]) == {"source": "coco", "score": [1, 2.5]}


def test_layout_is_what_datacopilot_reads(tmp_path):
    path = str(tmp_path / "out.h5")
    write_h5(_ds(), path)
    with h5py.File(path, "r") as f:
        assert f["dataset"].dtype == np.uint8 and f["offset"].dtype == np.uint32
        assert f["offset"][0] == 0 and f["offset"].shape == (3,)
    rows = _datacopilot_read(path)
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["image"] == "imgs/1.jpg"  # images as path strings, like DataCopilot's MM rows
    assert rows[0]["meta"] == {"source": "coco", "score": [1, 2.5]}
    assert "image" not in rows[1]  # optional fields left out, not null
    assert rows[1]["conversations"][1]["value"] == ROWS[1]["conversations"][1]["value"]


def test_reads_files_datacopilot_wrote(tmp_path):
    d = tmp_path / "export"
    d.mkdir()
    _datacopilot_file(str(d / "train-part-00000_0000.h5"), ROWS[:2])
    _datacopilot_file(str(d / "train-part-00000_0001.h5"), ROWS[2:])
    _datacopilot_file(str(d / "train-part-00001_0000.h5"), [])
    ds = datacopilot.load(str(d))
    assert ds.schema.name == "MM"
    assert [r["id"] for r in ds] == ["a", "b", "c"]
    assert ds[0]["image"] == {"path": "imgs/1.jpg", "bytes": None}
    assert ds[1]["conversations"][1]["value"] == ROWS[1]["conversations"][1]["value"]
    assert ds.root == str(d)


def test_write_parts_uses_datacopilot_names_and_loads_back(tmp_path):
    rows = [{"id": str(i), "conversations": _turns(f"q{i}", "a" * (i * 40))} for i in range(7)]
    ds = MMDataset.from_rows(rows, schema="MM")
    size = len(json.dumps(ds.to_list()[3], separators=(",", ":")))
    paths = write_h5_parts(ds, str(tmp_path / "parts"), part="val", rows_per_file=3, max_bytes=2 * size)
    names = [os.path.basename(p) for p in paths]
    assert names[0] == "val-part-00000_0000.h5"
    assert any(n.endswith("_0001.h5") for n in names)  # a chunk spilled over the byte cap
    assert {n.split("-part-")[1][:5] for n in names} == {"00000", "00001", "00002"}
    assert sum(len(_datacopilot_read(p)) for p in paths) == 7
    back = datacopilot.load(str(tmp_path / "parts"))
    assert [r["id"] for r in back] == [str(i) for i in range(7)]


def test_embedded_image_bytes_survive(tmp_path):
    ds = MMDataset.from_rows([{"image": {"path": "x.png", "bytes": b"\x89PNG fake"},
                               "conversations": _turns("<image>", "ok")}], schema="MM")
    write_h5(ds, str(tmp_path / "e.h5"))
    assert datacopilot.load(str(tmp_path / "e.h5"))[0]["image"] == {"path": "x.png", "bytes": b"\x89PNG fake"}


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "cut.h5"
    write_h5(_ds(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.h5"):
        datacopilot.load(str(path))


def test_not_datacopilot_layout(tmp_path):
    path = str(tmp_path / "other.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros(3))
    with pytest.raises(InputError, match=r"other\.h5: not a DataCopilot h5 file: no 'dataset' or 'offset'"):
        read_h5(path, None)


def _raw_file(path, chunks, offsets=None):
    data = b"".join(chunks)
    if offsets is None:
        offsets = np.cumsum([0] + [len(c) for c in chunks[:-1]])
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset", data=np.frombuffer(data, np.uint8))
        f.create_dataset("offset", data=np.asarray(offsets, np.uint32))


def test_broken_json_names_file_and_row(tmp_path):
    good = json.dumps(ROWS[2]).encode()
    path = str(tmp_path / "broken.h5")
    _raw_file(path, [good, b'{"id": "x", "conv', good])
    with pytest.raises(InputError, match=r"broken\.h5: row 1: invalid JSON"):
        datacopilot.load(path)
    ds = datacopilot.load(path, invalid="quarantine")
    assert len(ds) == 2 and len(ds.quarantine) == 1
    assert ds.quarantine[0]["_source"].endswith("broken.h5: row 1")


@pytest.mark.parametrize("offsets,message", [
    ([0, 999], r"row 1: offset 999 is out of range"),
    ([0, 30, 10], r"row 2: offsets are not increasing"),
    ([5, 30], r"row 0: offset must be 0"),
])
def test_bad_offsets(tmp_path, offsets, message):
    path = str(tmp_path / "off.h5")
    _raw_file(path, [json.dumps(ROWS[2]).encode()] * len(offsets), offsets)
    with pytest.raises(InputError, match=r"off\.h5: " + message):
        read_h5(path, None)


def test_invalid_rows_raise_or_go_to_quarantine(tmp_path):
    rows = [ROWS[2], {"id": "bad", "conversations": [{"from": "bot", "value": "hi"}]}, ROWS[1]]
    path = str(tmp_path / "mixed.h5")
    _raw_file(path, [json.dumps(r).encode() for r in rows])
    with pytest.raises(ValidationError, match=r"mixed\.h5: row 1: conversations\[0\]\.from"):
        datacopilot.load(path, schema="MM")
    ds = datacopilot.load(path, schema="MM", invalid="quarantine")
    assert [r["id"] for r in ds] == ["c", "b"]
    assert len(ds.quarantine) == 1
    q = ds.quarantine[0]
    assert q["_source"].endswith("mixed.h5: row 1") and "'bot'" in q["_error"]
    assert json.loads(q["_row"])["id"] == "bad"
