"""The h5 reader's Arrow path gives exactly the rows its Python row path gives, and hands every file it cannot
read safely (raw newlines, deep nesting, invalid UTF-8, empty rows) to the row path."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from datacopilot import MMDataset
from datacopilot.errors import InputError
from datacopilot.io.h5 import MAX_OPENERS, _read_arrays, json_lines, read_h5, read_h5_rows, write_h5
from datacopilot.loading import load_rows
from datacopilot.schemas import MM


def _turns(q, a, **extra):
    return [{"from": "human", "value": q, **extra}, {"from": "gpt", "value": a}]


SHAPES = {
    "llava": [{"id": f"{i:07d}", "image": f"images/{i % 3:03d}/{i:07d}.jpg",
               "conversations": _turns("<image>\nWhat is shown?", f"A cat, number {i}.")} for i in range(50)],
    "text only and unicode": [
        {"id": "a", "conversations": _turns("大家好", "你好，世界 🌍 — ünïcode \\ \"q\"")},
                              {"id": "b", "image": "x.jpg", "conversations": _turns("<image>", "")}],
    "extra keys at every level": [
        {"id": "a", "image": "a.jpg", "source": {"k": [1, 2], "name": "coco"},
         "conversations": _turns("<image>\nq", "a", weight=0.5)},
        {"id": "b", "conversations": _turns("q", "a")}],
}


def _row_path(path):
    rows, index, broken, _ = read_h5_rows(path)
    return load_rows(rows, MM, path, where=lambda i: f"{path}: row {index[i]}")


def _raw_file(path, texts: list[bytes]):
    """An h5 file in DataCopilot's layout holding exactly these row texts."""
    starts = np.cumsum([0] + [len(t) for t in texts[:-1]])
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset", data=np.frombuffer(b"".join(texts), np.uint8))
        f.create_dataset("offset", data=starts.astype(np.uint32))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_arrow_path_gives_the_row_paths_table(tmp_path, shape):
    path = str(tmp_path / "x.h5")
    write_h5(MMDataset.from_rows(SHAPES[shape], "MM"), path)
    data, offsets, _ = _read_arrays(path)
    assert json_lines(data, offsets) is not None  # the file takes the Arrow path
    fast, slow = read_h5(path, MM), _row_path(path)
    assert fast.table.equals(slow.table)
    assert fast.table.to_pylist() == slow.table.to_pylist()
    assert len(fast.table) == len(SHAPES[shape]) and not fast.bad


def test_json_lines_puts_one_row_on_each_line():
    data = np.frombuffer(b'{"a":1}{"a":[2]}{"b":"x"}', np.uint8)
    assert bytes(json_lines(data, np.array([0, 7, 16]))) == b'{"a":1}\n{"a":[2]}\n{"b":"x"}\n'


@pytest.mark.parametrize("texts, why", [
    ([b'{"id":"a",\n"conversations":[]}', b'{"id":"b"}'], "a raw newline"),
    ([b'{"id":"a","x":' + b"[" * (MAX_OPENERS + 1) + b"]" * (MAX_OPENERS + 1) + b"}"], "deep nesting"),
    ([b'{"id":"a\xff"}'], "invalid utf-8"),
    ([b'{"id":"a"}', b"", b'{"id":"b"}'], "an empty row"),
])
def test_rows_arrow_cannot_take_safely_go_to_the_row_path(texts, why):
    starts = np.cumsum([0] + [len(t) for t in texts[:-1]])
    assert json_lines(np.frombuffer(b"".join(texts), np.uint8), starts) is None, why


def test_invalid_utf8_is_an_error_naming_file_and_row(tmp_path):
    path = str(tmp_path / "bad.h5")
    good = json.dumps({"id": "a", "conversations": _turns("q", "a")}, separators=(",", ":")).encode()
    _raw_file(path, [good, good.replace(b'"a"', b'"a\xff"', 1)])
    with pytest.raises(InputError, match=r"bad\.h5: row 1"):
        read_h5(path, MM)
    loaded = read_h5(path, MM, invalid="quarantine")
    assert len(loaded.table) == 1 and [w for w, _, _ in loaded.bad] == [f"{path}: row 1"]


def test_pretty_printed_rows_load_through_the_row_path(tmp_path):
    path = str(tmp_path / "pretty.h5")
    rows = [{"id": "a", "conversations": _turns("q", "a")}, {"id": "b", "conversations": _turns("q2", "a2")}]
    _raw_file(path, [json.dumps(r, indent=2).encode() for r in rows])
    loaded = read_h5(path, MM)
    assert loaded.table.column("id").to_pylist() == ["a", "b"]
    assert loaded.table.to_pylist() == _row_path(path).table.to_pylist()


def test_a_row_of_another_type_falls_back_and_is_reported(tmp_path):
    path = str(tmp_path / "typed.h5")
    rows = [{"id": "a", "conversations": _turns("q", "a")}, {"id": "b", "conversations": "not a list"}]
    _raw_file(path, [json.dumps(r, separators=(",", ":")).encode() for r in rows])
    loaded = read_h5(path, MM, invalid="quarantine")
    assert loaded.table.column("id").to_pylist() == ["a"]
    assert len(loaded.bad) == 1 and "row 1" in loaded.bad[0][0]
