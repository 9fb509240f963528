"""The JSON array reader (``.json``: one array of objects): every layout loads the same rows, a bad element is
quarantined or named by row, line and field, and a file that is not JSON is one error naming line and column."""

from __future__ import annotations

import json

import numpy as np
import pytest

import datacopilot as dc
from datacopilot.errors import InputError, ValidationError
from datacopilot.io.json_array import split_array, split_lines


def _row(i: int, **kw) -> dict:
    turns = [{"from": "human", "value": f"<image>\nwhat is {i}?"}, {"from": "gpt", "value": f"it is {i}."}]
    r = {"id": f"{i:04d}", "image": f"images/{i}.jpg", "conversations": turns}
    r.update(kw)
    return r


def _rows(n: int = 8) -> list[dict]:
    rows = [_row(i) for i in range(n)]
    rows[2]["conversations"][1]["value"] = 'a "quoted" }, {"id": [1]} text\\ with [brackets] and \\"'
    rows[3]["conversations"][1]["value"] = "a line\nbreak, and a tab\t, and \\n text },\n    {"
    rows[4]["conversations"][1]["value"] = "café Zürich 东京 \U0001f600"
    return rows


def _loaded(path, **kw) -> list[dict]:
    ds = dc.load(str(path), schema="MM", **kw)
    return [{"id": r["id"], "image": r["image"]["path"], "conversations": r["conversations"]}
            for r in ds.to_arrow().to_pylist()]


LAYOUTS = {
    "indent4": lambda rows: json.dumps(rows, indent=4, ensure_ascii=False),
    "indent2-crlf": lambda rows: json.dumps(rows, indent=2).replace("\n", "\r\n") + "\r\n",
    "one-line": lambda rows: json.dumps(rows, ensure_ascii=False),
    "compact": lambda rows: json.dumps(rows, separators=(",", ":")),
    "one-a-line": lambda rows: "[" + ",\n".join(json.dumps(r) for r in rows) + "]",
    "one-a-line-spaced": lambda rows: "[\n" + " ,\n".join("  " + json.dumps(r) for r in rows) + "\n]\n",
    "nested-at-top-indent": lambda rows: "[\n" + ",\n".join(
        json.dumps({k: v for k, v in r.items() if k != "conversations"})[:-1] + ', "conversations": [\n'
        + ",\n".join(json.dumps(t) for t in r["conversations"]) + "]}" for r in rows) + "\n]",
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_of_the_array_loads_the_same_rows(tmp_path, layout):
    rows = _rows()
    path = tmp_path / "rows.json"
    path.write_text(LAYOUTS[layout](rows), encoding="utf-8")
    assert _loaded(path) == rows


def test_the_layout_guess_and_the_full_scan_find_the_same_elements(tmp_path):
    text = json.dumps(_rows(), indent=4).encode()
    by_lines, by_scan = split_lines(text), split_array(text)
    assert by_scan.checked and not by_lines.checked
    assert by_lines.starts.tolist() == by_scan.starts.tolist()
    assert [json.loads(text[s:e]) for s, e in zip(by_scan.starts, by_scan.ends)] == _rows()
    assert split_array(b'[{"a": 1}, 2]') is None and split_array(b'{"a": 1}') is None
    assert split_array(b'[{"a": 1},, {"a": 2}]') is None and split_array(b'[{"a": 1},]') is None


def test_ids_that_mix_strings_and_integers_keep_their_types(tmp_path):
    rows = [_row(i, id=i) if i % 3 == 0 else _row(i) for i in range(9)]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(rows, indent=4))
    assert [r["id"] for r in _loaded(path)] == [r["id"] for r in rows]


def test_one_object_an_empty_array_and_nan(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps(_row(1)))
    assert _loaded(tmp_path / "one.json") == [_row(1)]
    (tmp_path / "empty.json").write_text("[\n]\n")
    assert len(dc.load(str(tmp_path / "empty.json"))) == 0
    (tmp_path / "nan.json").write_text('[\n{"id": "a", "score": NaN},\n{"id": "b", "score": 1.5}\n]')
    scores = dc.load(str(tmp_path / "nan.json")).to_arrow().column("score").to_pylist()
    assert np.isnan(scores[0]) and scores[1] == 1.5


# -- bad elements -----------------------------------------------------------------------------------------------
def _bad_file(tmp_path, layout: str = "indent4"):
    rows = _rows(10)
    rows[1]["conversations"][0]["from"] = "bot"
    rows[3]["conversations"][1]["value"] = 5
    rows[5]["image"] = {"path": 7}
    text = LAYOUTS[layout](rows).encode()
    marker = b'"it is 7."'
    text = text.replace(marker, b'"it is \xff7."')  # invalid utf-8 in row 7
    deep = b'"' + b"it is 8." + b'"'
    text = text.replace(deep, b"[" * 20000 + b"]" * 20000)  # row 8 20,000 levels deep
    path = tmp_path / f"bad-{layout}.json"
    path.write_bytes(text)
    return path, text


@pytest.mark.parametrize("layout", ["indent4", "one-line", "one-a-line", "nested-at-top-indent", "indent2-crlf"])
def test_quarantine_keeps_every_good_element_and_names_each_bad_one(tmp_path, layout):
    path, text = _bad_file(tmp_path, layout)
    ds = dc.load(str(path), schema="MM", invalid="quarantine")
    assert [r["id"] for r in ds.to_arrow().to_pylist()] == ["0000", "0002", "0004", "0006", "0009"]
    q = {r["_source"].split(": row ")[1].split(" ")[0]: r for r in ds.quarantine.to_arrow().to_pylist()}
    assert sorted(q, key=int) == ["1", "3", "5", "7", "8"]
    assert "conversations[0].from: expected one of 'human', 'gpt', got 'bot'" in q["1"]["_error"]
    assert "conversations[1].value: expected a string" in q["3"]["_error"]
    assert "image.path: expected a string" in q["5"]["_error"]
    at = text.index(b"\xff")
    line = text[:at].count(b"\n") + 1
    assert q["7"]["_error"].startswith(f"{path}:{line}: invalid utf-8 at byte offset {at} ")
    assert q["7"]["_error"].endswith("(row 7)") and "\\xff7." in q["7"]["_row"]
    assert "nested 20004 levels deep" in q["8"]["_error"] and q["8"]["_error"].endswith("(row 8)")


def test_raise_names_file_row_line_and_field(tmp_path):
    path, _ = _bad_file(tmp_path)
    with pytest.raises(InputError) as ei:  # the screen's flaws come first: no parser sees them
        dc.load(str(path), schema="MM")
    msg = str(ei.value)
    assert msg.startswith("2 unreadable JSON array element(s):") and "(row 7)" in msg and "(row 8)" in msg
    rows = [_row(i) for i in range(4)]
    rows[2]["conversations"][0]["from"] = "bot"
    text = json.dumps(rows, indent=4)
    (tmp_path / "v.json").write_text(text)
    line = [k + 1 for k, ln in enumerate(text.split("\n")) if ln == "    {"][2]
    with pytest.raises(ValidationError) as ei:
        dc.load(str(tmp_path / "v.json"), schema="MM")
    assert f"{tmp_path / 'v.json'}: row 2 (line {line}): conversations[0].from: expected one of" in str(ei.value)


def test_a_deep_element_is_an_error_in_every_layout_never_a_crash(tmp_path):
    for layout in ("indent4", "one-line", "one-a-line"):
        rows = [_row(0), _row(1, extra=None)]
        text = LAYOUTS[layout](rows).replace("null", "[" * 20000 + "]" * 20000)
        (tmp_path / "deep.json").write_text(text)
        with pytest.raises(InputError, match=r"nested 20002 levels deep at column \d+; at most 512 are read"):
            dc.load(str(tmp_path / "deep.json"))
    (tmp_path / "deep-doc.json").write_text("[" * 20000 + "]" * 20000)  # not an array of objects at all
    with pytest.raises(InputError, match="deep-doc.json:1: nested 20000 levels deep"):
        dc.load(str(tmp_path / "deep-doc.json"), invalid="quarantine")


# -- not JSON -----------------------------------------------------------------------------------------------------
BROKEN = {
    "a missing comma": ('[\n  {"id": "0"},\n  {"id": "1"}\n  {"id": "2"}\n]', 4),
    "a missing value": ('[\n  {"id": "0"},\n  {"id": }\n]', 3),
    "a trailing comma": ('[\n  {"id": "0"},\n  {"id": "1"},\n]', "[34]"),  # orjson: the comma's line, or the bracket's
    "an unclosed string": ('[\n  {"id": "0"},\n  {"id": "1}\n]', 3),
    "a raw newline in a string": ('[\n  {"id": "0"},\n  {"id": "1\n2"}\n]', 3),
    "a raw tab in a string": ('[\n  {"id": "0"},\n  {"id": "1\t2"}\n]', 3),
    "garbage after the array": ('[\n  {"id": "0"},\n  {"id": "1"}\n] x', 4),
    "no closing bracket": ('[\n  {"id": "0"},\n  {"id": "1"}\n', 4),
    "nothing": ("", 1),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_file_that_is_not_json_is_one_error_naming_line_and_column(tmp_path, case):
    text, line = BROKEN[case]
    path = tmp_path / "broken.json"
    path.write_text(text)
    for invalid in ("raise", "quarantine"):
        with pytest.raises(InputError, match=rf"^{path}:{line}: invalid JSON at column \d+"):
            dc.load(str(path), invalid=invalid)


def test_the_row_path_names_the_broken_element_by_row(tmp_path):
    rows = [_row(i, id=i) if i % 2 else _row(i) for i in range(5)]  # mixed ids: each element parsed alone
    text = json.dumps(rows, indent=4)
    text = text.replace('"it is 3."', '"it is 3." x')
    path = tmp_path / "b.json"
    path.write_text(text)
    line = text[:text.index(" x")].count("\n") + 1
    with pytest.raises(InputError, match=rf"b.json:{line}: invalid JSON at column \d+ \(row 3\)"):
        dc.load(str(path), schema="MM")


@pytest.mark.parametrize("layout", ["indent4", "one-a-line", "one-line"])
def test_mixed_ids_load_as_one_variant_column_or_by_rows_when_the_layout_does_not_show_them(tmp_path, layout):
    rows = [_row(i, id=i * 1000) if i % 3 == 0 else _row(i) for i in range(12)]
    rows[4]["id"] = "x" * 80  # longer than the byte-level split takes
    rows[5]["id"] = 'with \\"escape\\"'
    for case in ("plain", "long", "escaped", "id-not-first"):
        got = [dict(r) for r in rows]
        if case != "long":
            got[4] = _row(4)
        if case != "escaped":
            got[5] = _row(5)
        if case == "id-not-first":
            got = [{"image": r["image"], "id": r["id"], "conversations": r["conversations"]} for r in got]
        path = tmp_path / f"{case}.json"
        path.write_text(LAYOUTS[layout](got))
        table = dc.load(str(path), schema="MM").to_arrow()
        assert table.column("id").to_pylist() == [r["id"] for r in got], case
        assert table.column("id").type.extension_name == "datacopilot.variant"


def test_integer_ids_not_json_or_negative_are_named_by_row(tmp_path):
    rows = [_row(i, id=i) if i % 2 else _row(i) for i in range(6)]
    text = json.dumps(rows, indent=4)
    (tmp_path / "zero.json").write_text(text.replace('"id": 3,', '"id": 03,'))
    with pytest.raises(InputError, match=r"zero.json:\d+: invalid JSON at column 15 \(row 3\)"):
        dc.load(str(tmp_path / "zero.json"), schema="MM")
    neg = text.replace('"id": 3,', '"id": -3,')
    (tmp_path / "neg.json").write_text(neg)
    line = neg.split("\n").index('        "id": -3,')  # the line before it, 1-based: the element's {
    ds = dc.load(str(tmp_path / "neg.json"), schema="MM", invalid="quarantine")
    assert ds.to_arrow().column("id").to_pylist() == ["0000", 1, "0002", "0004", 5]
    (err,) = ds.quarantine.to_arrow().column("_error").to_pylist()
    assert err.startswith(f"{tmp_path / 'neg.json'}: row 3 (line {line}): id: expected an integer >= 0, got -3")


def test_an_escaped_lone_surrogate_is_a_bad_element_not_a_crash(tmp_path):
    rows = [_row(i) for i in range(5)]
    text = json.dumps(rows, indent=2).replace('"id": "0002"', '"id": "0002\\ud800"')
    path = tmp_path / "s.json"
    path.write_text(text)
    line = text[:text.index("\\ud800")].count("\n") + 1
    ds = dc.load(str(path), schema="MM", invalid="quarantine")
    assert ds.to_arrow().column("id").to_pylist() == ["0000", "0001", "0003", "0004"]
    (err,) = ds.quarantine.to_arrow().column("_error").to_pylist()
    assert err == f"{path}:{line}: escaped lone surrogate \\ud800 at column 16: not unicode text (row 2)"
    with pytest.raises(InputError, match=r"escaped lone surrogate \\ud800 at column 16: not unicode text \(row 2\)"):
        dc.load(str(path), schema="MM")
    (tmp_path / "one.json").write_text('{"id": "a\\udc00b"}')  # one object: the whole document
    with pytest.raises(InputError, match=r"one.json:1: escaped lone surrogate \\udc00 at column 10"):
        dc.load(str(tmp_path / "one.json"))
    (tmp_path / "pair.json").write_text('[{"id": "a\\ud83d\\ude00"}]')  # a pair is text
    assert dc.load(str(tmp_path / "pair.json")).to_arrow().column("id").to_pylist() == ["a\U0001f600"]


def test_mixed_ids_with_no_schema_detect_the_same_table(tmp_path):
    rows = [_row(i, id=i) if i % 4 == 0 else _row(i) for i in range(10)]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(rows, indent=4))
    detected, named = dc.load(str(path)), dc.load(str(path), schema="MM")
    assert detected.schema.name == "MM"
    assert detected.to_arrow().equals(named.to_arrow())
    assert detected.to_arrow().column("id").to_pylist() == [r["id"] for r in rows]
