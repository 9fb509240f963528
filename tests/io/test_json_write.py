"""The json/jsonl writers (orjson, with the standard library for what orjson would write differently): every value
reads back as it was, NaN/infinity and integers past 64 bits included, and files are valid JSON / JSON Lines."""

from __future__ import annotations

import json
import math

import datacopilot as dc
from datacopilot.io.json_write import encode_rows


def test_encode_rows_matches_the_standard_library():
    rows = [{"id": 1, "t": "héllo \u2028 \n \"q\" \\", "f": 0.1, "e": 1e-7, "big": 2**62, "n": None, "l": [1.5, {}]}]
    assert [json.loads(b) for b in encode_rows(rows)] == rows
    assert encode_rows(rows)[0].decode().count("\n") == 0  # a line per row


def test_encode_rows_falls_back_where_orjson_differs():
    for row in ({"x": float("nan")}, {"x": float("inf")}, {"x": 2**70}):
        out = encode_rows([{"ok": "null"}, row])
        back = json.loads(out[1])
        if isinstance(row["x"], float):
            assert math.isnan(back["x"]) or math.isinf(back["x"])  # not turned into null
        else:
            assert back == row


def test_json_and_jsonl_round_trip_across_batches(tmp_path):
    rows = [{"id": i if i % 3 else str(i), "conversations": [{"from": "human", "value": f"<image>\nq {i} ü"},
                                                            {"from": "gpt", "value": "a" * (i % 7)}],
             "image": f"img/{i}.jpg"} for i in range(9000)]
    ds = dc.MMDataset.from_rows(rows, schema="MM")
    for name in ("a.jsonl", "a.json"):
        ds.write(str(tmp_path / name))
        back = dc.load(str(tmp_path / name))
        assert back.to_list() == ds.to_list()
        assert [type(r["id"]) for r in back.to_list()] == [type(r["id"]) for r in rows]
    doc = json.loads((tmp_path / "a.json").read_text())
    assert len(doc) == 9000 and doc[1]["id"] == 1 and doc[0]["id"] == "0"
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert len(lines) == 9000 and json.loads(lines[8999])["image"] == "img/8999.jpg"


def test_empty_dataset_writes_valid_files(tmp_path):
    ds = dc.MMDataset.from_rows([], schema="MM")
    ds.write(str(tmp_path / "e.json"))
    assert json.loads((tmp_path / "e.json").read_text()) == []
    ds.write(str(tmp_path / "e.jsonl"))
    assert (tmp_path / "e.jsonl").read_bytes() == b""
