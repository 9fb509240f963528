"""The streaming source reads jsonl blocks through the same reader as ``dc.load`` (``io.jsonl.read_lines``): ids
that mix strings and integers keep their types, numbers keep int vs float, and errors name the file's own line
in every block."""

from __future__ import annotations

import json

import pytest

import datacopilot as dc
from datacopilot.errors import ValidationError


def _rows(n):
    return [{"id": i if i % 7 == 0 else f"s{i}",
             "conversations": [{"from": "human", "value": f"<image>\nq{i}"}, {"from": "gpt", "value": "a"}],
             "image": f"img/{i}.jpg", "score": 0.5 if i % 2 else 1} for i in range(n)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_mixed_ids_and_numbers_stream_as_they_load(tmp_path, monkeypatch):
    monkeypatch.setattr("datacopilot.io.jsonl.BLOCK_BYTES", 4096)  # many blocks
    p = tmp_path / "a.jsonl"
    _write(p, _rows(300))
    want = dc.load(str(p), schema="MM").to_list()
    got = dc.pipeline(str(p), schema="MM", batch_size=64).collect().to_list()
    assert got == want
    assert [type(r["id"]) for r in got] == [type(r["id"]) for r in _rows(300)]
    assert [type(r["score"]) for r in got] == [type(r["score"]) for r in _rows(300)]


def test_numbers_keep_int_and_float_in_every_block(tmp_path, monkeypatch):
    monkeypatch.setattr("datacopilot.io.jsonl.BLOCK_BYTES", 4096)
    rows = [{**r, "id": str(r["id"])} for r in _rows(300)]  # Arrow's parser takes these: 1 beside 0.5 stays 1
    p = tmp_path / "n.jsonl"
    _write(p, rows)
    got = dc.pipeline(str(p), schema="MM", batch_size=64).collect().to_list()
    assert [r["score"] for r in got] == [r["score"] for r in rows]
    assert [type(r["score"]) for r in got] == [type(r["score"]) for r in rows]


def test_an_error_in_a_later_block_names_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr("datacopilot.io.jsonl.BLOCK_BYTES", 4096)
    rows = _rows(300)
    rows[250]["conversations"][0]["from"] = "robot"
    p = tmp_path / "b.jsonl"
    _write(p, rows)
    with pytest.raises(ValidationError, match=r"b\.jsonl:251: conversations\[0\]\.from"):
        dc.pipeline(str(p), schema="MM", batch_size=64).collect()
