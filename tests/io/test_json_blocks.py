"""A JSON Lines file of more than one parse block is parsed a block at a time (io._common.arrow_json_lines) and
loads exactly as the one-shot parse loaded it: same rows, same Arrow types, same quarantine; where a later
block's values do not fit the first block's types, the whole file is parsed at once and types widen as before."""

import json

import pyarrow as pa
import pytest

import datacopilot as dc
from datacopilot.io import _common

TURNS = [{"from": "human", "value": "<image>\nhello there"}, {"from": "gpt", "value": "a short answer"}]


def _write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def _load(path, block, monkeypatch, schema="MM", **kw):
    monkeypatch.setattr(_common, "JSON_BLOCK_BYTES", block)
    ds = dc.load(path, schema=schema, **kw)
    return ds.to_arrow(), ds


def _rows(n, extra=lambda i: {}):
    return [{"id": f"r{i}", "image": f"images/{i}.jpg", "conversations": TURNS, **extra(i)} for i in range(n)]


@pytest.mark.parametrize("schema", ["MM", None])
def test_a_file_of_many_blocks_loads_as_the_one_shot_parse_loads_it(tmp_path, monkeypatch, schema):
    path = _write(tmp_path / "a.jsonl", _rows(3000))
    whole, _ = _load(path, 1 << 30, monkeypatch, schema)
    blocks, _ = _load(path, 8192, monkeypatch, schema)
    assert blocks.num_rows == 3000
    assert blocks.schema == whole.schema
    assert blocks.equals(whole)


def test_a_later_block_that_does_not_fit_the_first_blocks_types_is_parsed_whole(tmp_path, monkeypatch):
    # "score" is absent (null) over the first blocks, an integer later, then a fraction: the first block's
    # types cannot hold them, the one-shot parse widens them
    def extra(i):
        return {} if i < 1500 else {"score": i if i < 2500 else i + 0.5}

    path = _write(tmp_path / "b.jsonl", _rows(3000, extra))
    seen = []
    real = _common._streamed_json

    def spy(*a):
        out = real(*a)
        seen.append(out is None)
        return out

    monkeypatch.setattr(_common, "_streamed_json", spy)
    blocks, _ = _load(path, 8192, monkeypatch, None)
    assert seen and seen[0]  # the block-at-a-time parse gave up on this file
    whole, _ = _load(path, 1 << 30, monkeypatch, None)
    assert blocks.equals(whole)
    scores = blocks.to_pylist()
    assert [r["score"] for r in scores[1499:1501]] == [None, 1500] and scores[2500]["score"] == 2500.5


def test_invalid_rows_of_a_many_block_file_are_quarantined_with_their_lines(tmp_path, monkeypatch):
    rows = _rows(2000)
    rows[1700]["conversations"] = [{"from": "bot", "value": "x"}]
    path = _write(tmp_path / "c.jsonl", rows)
    _, whole = _load(path, 1 << 30, monkeypatch, invalid="quarantine")
    _, blocks = _load(path, 8192, monkeypatch, invalid="quarantine")
    assert len(blocks) == len(whole) == 1999
    assert blocks.quarantine.to_list() == whole.quarantine.to_list()
    assert "c.jsonl:1701" in str(blocks.quarantine.to_list()[0])


def test_a_memory_mapped_file_stays_readable_after_its_pages_are_handed_back(tmp_path):
    import mmap

    path = _write(tmp_path / "d.jsonl", _rows(50))
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    before = bytes(m)
    _common._release_pages(m, len(m))
    assert bytes(m) == before
    assert pa.py_buffer(m).size == len(before)
