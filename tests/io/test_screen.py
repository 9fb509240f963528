"""Bad bytes are errors naming file and line, never crashes: deep nesting, invalid UTF-8, over-long lines
(datacopilot.io.screen), through dc.load, the pipeline Source, MMDataset.validate and `datacopilot validate`."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import datacopilot as dc
from datacopilot import source
from datacopilot.io import jsonl as jsonl_io
from datacopilot.cli import main
from datacopilot.errors import InputError
from datacopilot.io import screen
from datacopilot.io.screen import nesting_depth, screen_lines


def _row(i: int, **extra) -> dict:
    """A LLaVA-1.5 style row (llava_v1_5_mix665k.json: id, image, human/gpt conversations)."""
    return {"id": f"{i:09d}", "image": f"coco/train2017/{i:012d}.jpg",
            "conversations": [{"from": "human", "value": f"<image>\nWhat is in picture {i}?"},
                              {"from": "gpt", "value": f"A cat on a table, number {i}."}], **extra}


def _deep(depth: int) -> bytes:
    return b'{"id": "deep", "image": "a.jpg", "conversations": [], "extra": ' + b"[" * depth + b"]" * depth + b"}"


def _write(path, n: int, bad: dict[int, bytes]) -> list[int]:
    """n rows, line k (1-based) replaced by bad[k]; returns the byte offset of each line."""
    offsets, out, at = [], [], 0
    for k in range(1, n + 1):
        line = bad.get(k, json.dumps(_row(k)).encode())
        offsets.append(at)
        out.append(line)
        at += len(line) + 1
    path.write_bytes(b"\n".join(out) + b"\n")
    return offsets


def _bad_utf8_line(k: int) -> tuple[bytes, int]:
    """A row whose answer holds a lone 0xff byte; the byte's column in the line."""
    line = json.dumps(_row(k)).encode().replace(b"A cat", b"A c\xffat")
    return line, line.index(b"\xff")


# -- nesting ---------------------------------------------------------------------------------------------------
def test_a_line_nested_20000_deep_is_an_error_naming_file_and_line_not_a_segfault(tmp_path):
    path = tmp_path / "deep.jsonl"
    _write(path, 50, {31: _deep(20_000)})
    code = ("import sys, datacopilot as dc\n"
            "from datacopilot.errors import InputError\n"
            "try:\n"
            f"    dc.load({str(path)!r})\n"
            "except InputError as e:\n"
            "    print(e); sys.exit(3)\n"
            f"ds = dc.load({str(path)!r}, invalid='quarantine')\n"
            "print(len(ds), len(ds.quarantine))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, (res.returncode, res.stderr[-2000:])  # -11 was the segfault
    assert f"{path}:31: nested 20001 levels deep" in res.stdout
    assert "at most 512" in res.stdout
    cli = subprocess.run([sys.executable, "-m", "datacopilot", "validate", str(path)], capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 1, cli.stderr[-2000:]
    assert f"{path}:31: nested 20001 levels deep" in cli.stdout
    assert "1 invalid row(s) of 50" in cli.stdout


def test_depth_5000_raises_input_error_not_recursion_error_and_quarantines_the_line(tmp_path):
    path = tmp_path / "deep.jsonl"
    _write(path, 20, {7: _deep(5000)})
    with pytest.raises(InputError, match=rf"{path}:7: nested 5001 levels deep at column \d+; at most 512"):
        dc.load(str(path))
    ds = dc.load(str(path), invalid="quarantine")
    assert len(ds) == 19 and ds[6]["id"] == f"{8:09d}"
    q = ds.quarantine.to_arrow().to_pylist()
    assert [r["_source"] for r in q] == [f"{path}:7"]
    assert "nested 5001 levels deep" in q[0]["_error"] and q[0]["_row"].startswith('{"id": "deep"')


def test_depth_at_the_limit_loads_and_one_more_does_not(tmp_path):
    ok, deep = tmp_path / "ok.jsonl", tmp_path / "deep.jsonl"
    _write(ok, 3, {2: _deep(screen.MAX_DEPTH - 1)})  # the row object adds one level
    _write(deep, 3, {2: _deep(screen.MAX_DEPTH)})
    assert len(dc.load(str(ok))) == 3
    with pytest.raises(InputError, match=f"{deep}:2: nested {screen.MAX_DEPTH + 1} levels deep"):
        dc.load(str(deep))


def test_brackets_inside_strings_and_many_shallow_lists_are_not_nesting(tmp_path):
    brackets = _row(1)
    brackets["conversations"][1]["value"] = '[{"quoted": \\"' + "[" * 3000 + "{" * 3000
    many = _row(2)
    many["conversations"] = [{"from": "human" if t % 2 == 0 else "gpt", "value": f"turn {t} [x]"}
                             for t in range(1200)]  # 1,200 objects on one line, 3 levels deep
    path = tmp_path / "shallow.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [brackets, many, _row(3)]) + "\n")
    ds = dc.load(str(path))
    assert len(ds) == 3
    assert ds[0]["conversations"][1]["value"] == brackets["conversations"][1]["value"]
    assert len(ds[1]["conversations"]) == 1200


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.one_of(st.integers(), st.text(alphabet='[]{}"\\ab'), st.none()),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(st.text(alphabet='[]{}"\\k', max_size=3), inner,
                                                            max_size=3)),
                    max_leaves=30))
def test_nesting_depth_matches_the_parsed_structure(value):
    def depth(v):
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        return 0

    assert nesting_depth(json.dumps(value).encode()) == depth(value)


# -- invalid UTF-8 ---------------------------------------------------------------------------------------------
def test_invalid_utf8_in_the_middle_of_a_big_jsonl_names_its_line_and_byte_offset(tmp_path):
    path = tmp_path / "big.jsonl"
    line, col = _bad_utf8_line(17_321)
    offsets = _write(path, 40_000, {17_321: line})
    with pytest.raises(InputError) as e:
        dc.load(str(path))
    assert f"{path}:17321: invalid utf-8 at byte offset {offsets[17_320] + col} (column {col + 1})" in str(e.value)
    ds = dc.load(str(path), invalid="quarantine")
    assert len(ds) == 39_999
    assert ds[17_319]["id"] == f"{17_320:09d}" and ds[17_320]["id"] == f"{17_322:09d}"
    q = ds.quarantine.to_arrow().to_pylist()
    assert [r["_source"] for r in q] == [f"{path}:17321"]
    assert "A c\\xffat" in q[0]["_row"]  # the bad byte kept, visibly


def test_every_invalid_utf8_line_is_reported_and_rows_after_it_keep_their_line_numbers(tmp_path):
    path = tmp_path / "two.jsonl"
    bad1, _ = _bad_utf8_line(3)
    bad2 = json.dumps(_row(9)).encode().replace(b"cat", b"\xc3\x28cat\xe2\x82")  # two bad sequences
    who = json.dumps(_row(12)).replace('"gpt"', '"bot"').encode()  # a schema problem after both
    _write(path, 15, {3: bad1, 9: bad2, 12: who})
    ds = dc.load(str(path), schema="MM", invalid="quarantine")
    errors = ds.quarantine.to_arrow().column("_error").to_pylist()
    assert errors[0].startswith(f"{path}:3: invalid utf-8")
    assert errors[1].startswith(f"{path}:9: invalid utf-8") and "and 1 more invalid sequence" in errors[1]
    assert errors[2].startswith(f"{path}:12: conversations[1].from")
    assert len(ds) == 12


def test_invalid_utf8_and_deep_nesting_in_a_json_file_name_the_line(tmp_path):
    rows = [_row(i) for i in range(6)]
    text = json.dumps(rows, indent=1).encode()
    bad = text.replace(b"number 4.", b"number \xff4.")
    at = bad.index(b"\xff")
    line = bad[:at].count(b"\n") + 1
    (tmp_path / "bad.json").write_bytes(bad)
    with pytest.raises(InputError, match=rf"bad.json:{line}: invalid utf-8 at byte offset {at} .*\(row 4\)"):
        dc.load(str(tmp_path / "bad.json"))
    ds = dc.load(str(tmp_path / "bad.json"), invalid="quarantine")  # the other elements load
    assert len(ds) == 5 and ds.quarantine.to_arrow().column("_error").to_pylist()[0].startswith(
        f"{tmp_path / 'bad.json'}:{line}: invalid utf-8 at byte offset {at} ")
    deep = text.replace(b'"id": "000000002"', b'"id": "000000002", "x": ' + b"[" * 3000 + b"]" * 3000, 1)
    (tmp_path / "deep.json").write_bytes(deep)
    line = deep[:deep.index(b"[" * 10)].count(b"\n") + 1
    with pytest.raises(InputError, match=rf"deep.json:{line}: nested 3002 levels deep"):
        dc.load(str(tmp_path / "deep.json"))
    (tmp_path / "ok.json").write_bytes(text)
    assert len(dc.load(str(tmp_path / "ok.json"))) == 6


# -- over-long lines ---------------------------------------------------------------------------------------------
def test_an_over_long_line_is_an_error_with_its_line_or_a_quarantined_row(tmp_path, monkeypatch):
    monkeypatch.setattr(screen, "MAX_LINE_BYTES", 400)
    path = tmp_path / "long.jsonl"
    _write(path, 30, {22: json.dumps(_row(22, note="x" * 5000)).encode()})
    with pytest.raises(InputError, match=rf"{path}:22: line of \d+ bytes; at most 400 are read"):
        dc.load(str(path))
    ds = dc.load(str(path), invalid="quarantine")
    assert len(ds) == 29
    assert ds.quarantine.to_arrow().column("_source").to_pylist() == [f"{path}:22"]


# -- the pipeline's streaming Source -----------------------------------------------------------------------------
def _source_rows(path, invalid: str):
    src = source.Source.from_paths(str(path), schema="MM")
    tables = list(src.batches(src.units()[0], 1000, invalid=invalid))
    return pa.concat_tables(tables, promote_options="permissive").column("id").to_pylist(), src.bad


def test_pipeline_source_screens_every_block_with_file_line_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl_io, "BLOCK_BYTES", 4096)  # many blocks: line numbers must carry across them
    path = tmp_path / "src.jsonl"
    utf8, col = _bad_utf8_line(140)
    offsets = _write(path, 300, {61: _deep(20_000), 140: utf8})
    with pytest.raises(InputError, match=f"{path}:61: nested 20001 levels deep"):
        _source_rows(path, "raise")
    ids, bad = _source_rows(path, "quarantine")
    assert len(ids) == 298 and f"{61:09d}" not in ids and f"{140:09d}" not in ids
    assert [w for w, _, _ in bad] == [f"{path}:61", f"{path}:140"]
    assert f"invalid utf-8 at byte offset {offsets[139] + col} " in bad[1][1]


def test_pipeline_source_never_holds_an_over_long_line(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl_io, "BLOCK_BYTES", 1024)
    monkeypatch.setattr(screen, "MAX_LINE_BYTES", 3000)
    path = tmp_path / "long.jsonl"
    _write(path, 40, {5: json.dumps(_row(5, note="y" * 20_000)).encode(),
                      33: json.dumps(_row(33, note="z" * 2000)).encode()})  # under the limit: read
    with pytest.raises(InputError, match=rf"{path}:5: line of \d+ bytes; at most 3000"):
        _source_rows(path, "raise")
    ids, bad = _source_rows(path, "quarantine")
    assert len(ids) == 39 and f"{33:09d}" in ids and f"{6:09d}" in ids
    assert [w for w, _, _ in bad] == [f"{path}:5"] and "more bytes not kept" in bad[0][2]


# -- validate ------------------------------------------------------------------------------------------------------
def test_validate_reports_images_with_neither_path_nor_bytes_single_and_in_lists(tmp_path):
    one = dict(_row(1), image={"path": None})
    many = dict(_row(2), image=["a.jpg", {"path": None, "bytes_base64": None}])
    path = tmp_path / "img.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [_row(0), one, _row(3)]) + "\n")
    ds = dc.load(str(path), schema="MM", invalid="quarantine")  # the Arrow fast path
    assert ds.quarantine.to_arrow().column("_error").to_pylist() == [
        f"{path}:2: image: image has neither path nor bytes"]
    table = dc.MMDataset.from_rows([_row(0), dict(_row(1), image={"path": None, "bytes": None}),
                                    dict(many, image=[{"path": "a.jpg", "bytes": None},
                                                      {"path": None, "bytes": None}])],
                                   schema="MM", validate=False)
    assert table.validate() == ["row 1: image: image has neither path nor bytes",
                                "row 2: image[1]: image has neither path nor bytes"]


def test_validate_reports_invalid_utf8_in_a_loaded_arrow_table_and_what_loading_quarantined(tmp_path):
    ids = pa.array([b"ok", b"b\xffd", b"fine"], pa.binary()).view(pa.string())  # as an Arrow file may hold it
    good = dc.MMDataset.from_rows([_row(i) for i in range(3)], schema="MM").to_arrow()
    bad = dc.MMDataset(good.set_column(good.column_names.index("id"), "id", ids), schema="MM")
    assert bad.validate() == ["row 1: id: text that is not valid utf-8"]
    path = tmp_path / "q.jsonl"
    _write(path, 5, {4: _bad_utf8_line(4)[0]})
    loaded = dc.load(str(path), invalid="quarantine")
    assert [p.split(": invalid")[0] for p in loaded.validate()] == [f"{path}:4"]


def test_cli_validate_exit_code_and_messages(tmp_path):
    path = tmp_path / "bad.jsonl"
    _write(path, 10, {2: _bad_utf8_line(2)[0], 8: _deep(1000)})
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert lines[0].startswith(f"{path}:2: invalid utf-8 at byte offset")
    assert lines[1].startswith(f"{path}:8: nested 1001 levels deep")
    assert "2 invalid row(s) of 10" in lines[-1]
    good = tmp_path / "good.jsonl"
    _write(good, 10, {})
    res = CliRunner().invoke(main, ["validate", str(good)])
    assert res.exit_code == 0 and "all 10 rows valid" in res.output


def test_screen_finds_nothing_in_clean_data_and_counts_lines_from_line0():
    data = b"\n".join(json.dumps(_row(i)).encode() for i in range(100)) + b"\n"
    assert screen_lines(data, "x.jsonl") == []
    flaws = screen_lines(data + b'{"a": "\xfe"}\n', "x.jsonl", line0=501, offset=1000)
    assert [(f.line, f.message) for f in flaws] == [
        (601, f"x.jsonl:601: invalid utf-8 at byte offset {1000 + len(data) + 7} (column 8)")]


# -- escaped lone surrogates --------------------------------------------------------------------------------------
def _lone_line(k: int, escape: str = "\\ud800") -> bytes:
    """Row k with ``escape`` (six ASCII characters) inside its answer."""
    return json.dumps(_row(k)).encode().replace(b"A cat", b"A c" + escape.encode() + b"at")


def test_an_escaped_lone_surrogate_is_an_error_naming_file_line_field_and_column(tmp_path):
    path = tmp_path / "lone.jsonl"
    line = _lone_line(23)
    _write(path, 40, {23: line, 31: _lone_line(31, "\\uDC00")})
    with pytest.raises(InputError) as e:
        dc.load(str(path), schema="MM")
    col = line.index(b"\\ud800") + 1
    assert f"{path}:23: conversations[1].value: escaped lone surrogate \\ud800 at column {col}: not unicode text" \
        in str(e.value)
    assert f"{path}:31: conversations[1].value: escaped lone surrogate \\uDC00" in str(e.value)
    ds = dc.load(str(path), schema="MM", invalid="quarantine")
    assert len(ds) == 38 and ds[22]["id"] == f"{24:09d}"
    q = ds.quarantine.to_arrow().to_pylist()
    assert [r["_source"] for r in q] == [f"{path}:23", f"{path}:31"]
    assert "\\ud800" in q[0]["_row"]
    for r in ds.to_list():  # every loaded string encodes
        json.dumps(r, ensure_ascii=False).encode("utf-8")


def test_escaped_pairs_load_as_the_character_and_escaped_backslashes_as_text(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [_row(0, note="\U0001F600 smile"), _row(1, note="C:\\ud800\\x"), _row(2, note="\\\ud83d\ude00")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # ensure_ascii: the emoji as \ud83d\ude00
    assert b"\\ud83d\\ude00" in path.read_bytes() and b"\\\\ud800" in path.read_bytes()
    assert screen.lone_surrogates(path.read_bytes(), str(path)) == []
    got = dc.load(str(path)).to_list()
    assert [r["note"] for r in got] == ["\U0001F600 smile", "C:\\ud800\\x", "\\\U0001F600"]


def test_a_lone_half_after_an_escaped_backslash_or_a_reversed_pair_is_found():
    data = (b'{"a": "\\\\\\ud800"}\n'  # an escaped backslash, then a real \ud800
            b'{"a": "\\\\ud83d\\ude00"}\n'  # the text \ud83d, then a lone low half
            b'{"\\udc00\\ud83d": 1}\n'  # reversed: two lone halves, in a key
            b'{"a": "\\uD83D\\uDE00", "b": "\\ud800"}\n')
    flaws = screen.lone_surrogates(data, "x.jsonl", line0=10)
    assert [(f.line, f.message.split(": ")[1]) for f in flaws] == [(10, "a"), (11, "a"), (12, "key \\udc00\\ud83d"),
                                                                   (13, "b")]
    assert "and 1 more on this line" in flaws[2].message
    assert screen.lone_surrogates(b'{"a": "\\\\ud800 \\u00e9 \\ud7ff \\ue000"}\n', "x.jsonl") == []


def test_pipeline_source_screens_lone_surrogates_with_file_line_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl_io, "BLOCK_BYTES", 4096)
    path = tmp_path / "src.jsonl"
    _write(path, 200, {150: _lone_line(150)})
    with pytest.raises(InputError, match=rf"{path}:150: conversations\[1\].value: escaped lone surrogate"):
        _source_rows(path, "raise")
    ids, bad = _source_rows(path, "quarantine")
    assert len(ids) == 199 and f"{150:09d}" not in ids and [w for w, _, _ in bad] == [f"{path}:150"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=8), st.sampled_from(["\ud800", "\udfff", "\U0001F600", "\\ud800"])),
                min_size=1, max_size=12))
def test_the_screen_flags_a_line_exactly_when_its_text_cannot_be_utf8(texts):
    lines = [json.dumps({"id": str(i), "t": t}).encode() for i, t in enumerate(texts)]
    flagged = {f.line for f in screen.lone_surrogates(b"\n".join(lines) + b"\n", "x.jsonl")}
    bad = set()
    for i, t in enumerate(texts):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            bad.add(i + 1)
    assert flagged == bad


def test_a_line_with_invalid_utf8_and_a_lone_surrogate_is_one_flaw_with_both_reasons(tmp_path):
    path = tmp_path / "both.jsonl"
    both = _lone_line(4).replace(b"table", b"ta\xffble")
    _write(path, 6, {4: both, 5: _lone_line(5)})
    ds = dc.load(str(path), invalid="quarantine")
    q = ds.quarantine.to_arrow().to_pylist()
    assert [r["_source"] for r in q] == [f"{path}:4", f"{path}:5"] and len(ds) == 4
    assert "invalid utf-8" in q[0]["_error"] and "; conversations[1].value: escaped lone surrogate" in q[0]["_error"]
