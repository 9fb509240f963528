"""JSON Lines whose ids mix strings and integers (LLaVA-1.5 mix665k) load through Arrow's parser
(datacopilot.io.jsonl_ids) with every id keeping its type, the same table the row path builds; ids of another
type, and lines that are not JSON, are still errors naming file, line and field."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import datacopilot as dc
from datacopilot.errors import DataCopilotError
from datacopilot.io import jsonl_ids
from datacopilot.io._fs import mapped_bytes
from datacopilot.io.jsonl import _parse_lines, read_jsonl
from datacopilot.io.jsonl_ids import quote_int_ids
from datacopilot.loading import load_rows
from datacopilot.schemas import MIX, MM


def _row(i, id_=None) -> dict:
    r = {"image": f"coco/{i:06d}.jpg", "conversations": [{"from": "human", "value": f"<image>\nWhat is {i}?"},
                                                        {"from": "gpt", "value": f"Picture {i}."}]}
    return r if id_ is None else {"id": id_, **r}


def _write(path, rows, dumps=json.dumps) -> None:
    path.write_text("".join(dumps(r) + "\n" for r in rows), encoding="utf-8")


def _row_path(path, schema):
    """What the per-line Python path loads from the file (the reference the fast path must equal)."""
    p = str(path)
    rows, lines, _ = _parse_lines(bytes(mapped_bytes(p, "jsonl")), p, "raise")
    return load_rows(rows, schema, p, where=lambda i: f"{p}:{lines[i]}")


def _fast_taken(path, schema) -> bool:
    """Whether the file's ids are read apart and Arrow's parser takes the file (not the row path)."""
    from datacopilot.io._common import arrow_json_lines

    data = bytes(mapped_bytes(str(path), "jsonl"))
    return jsonl_ids.parse_mixed_ids(data, schema, lambda d: arrow_json_lines(d, schema)) is not None


def test_mix665k_ids_keep_their_types_through_the_arrow_path_and_equal_the_row_path(tmp_path):
    path = tmp_path / "mix.jsonl"
    ids = [k if k % 7 == 0 else f"{k:07d}" for k in range(200)] + ["123", 123, "0", 0]
    _write(path, [_row(i, x) for i, x in enumerate(ids)])
    assert _fast_taken(path, MM)
    for schema in (MM, None):
        loaded = read_jsonl(str(path), schema)
        got = loaded.table.column("id").to_pylist()
        assert got == ids and [type(x) for x in got] == [type(x) for x in ids]
        assert loaded.schema.name == "MM"
        ref = _row_path(path, schema)
        assert loaded.table.schema == ref.table.schema
        assert loaded.table.combine_chunks().equals(ref.table.combine_chunks())
    assert [r["id"] for r in dc.load(str(path), schema="MM").to_list()][-4:] == ["123", 123, "0", 0]


def test_only_top_level_ids_are_touched_nested_ids_and_text_stay_as_they_are(tmp_path):
    path = tmp_path / "mix_schema.jsonl"
    text = 'a value that says {"id": 5} and \\"id\\": 6'
    rows = [{"id": 1, "images": [{"id": 0, "url": "a.jpg"}],
             "conversations": [{"from": "user", "value": "<image>0</image> hi " + text},
                               {"from": "assistant", "value": "ok"}]},
            {"images": [{"id": 3, "url": "b.jpg"}], "id": "two",
             "conversations": [{"from": "user", "value": '<image>0</image>{"id": 7}'},
                               {"from": "assistant", "value": "x"}]}]
    _write(path, rows)
    q = quote_int_ids(path.read_bytes())
    assert q.count == 1  # the first row's own id only
    assert _fast_taken(path, MIX)
    got = dc.load(str(path), schema="MIX").to_list()
    assert [r["id"] for r in got] == [1, "two"]
    assert [r["images"][0]["id"] for r in got] == [0, 3]
    assert got[0]["conversations"][0]["value"].endswith(text)
    assert got[1]["conversations"][0]["value"] == '<image>0</image>{"id": 7}'


def test_the_id_as_a_later_key_with_odd_spacing_and_blank_lines_is_read_apart(tmp_path):
    path = tmp_path / "late_key.jsonl"
    lines = ['{"image": "a.jpg", "conversations": [{"from": "human", "value": "[{x"}], "id" :\t42 }',
             "", "   ",
             '{"image": "b.jpg", "conversations": [{"from": "gpt", "value": "}]"}], "id": "42"}',
             '{"conversations": [{"from": "gpt", "value": "y"}],"id":0}']
    path.write_text("\n".join(lines) + "\n")
    assert quote_int_ids(path.read_bytes()).count == 2
    assert _fast_taken(path, MM)
    assert dc.load(str(path), schema="MM").to_list()[0]["id"] == 42
    assert [r["id"] for r in dc.load(str(path)).to_list()] == [42, "42", 0]


@pytest.mark.parametrize("bad, shown", [("1.5", "got float 1.5"), ("true", "got bool True"),
                                        ('{"n": 1}', "got dict"), ("1e3", "got float 1000.0"),
                                        ("-3", "expected an integer >= 0, got -3")])
def test_an_id_of_another_type_among_mixed_ids_is_an_error_naming_file_line_and_field(tmp_path, bad, shown):
    path = tmp_path / "bad_id.jsonl"
    lines = [json.dumps(_row(i, i if i % 3 == 0 else str(i))) for i in range(10)]
    lines[6] = lines[6].replace('"id": 6', f'"id": {bad}', 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataCopilotError) as e:
        dc.load(str(path), schema="MM")
    assert f"{path}:7: id: " in str(e.value) and shown in str(e.value)
    ds = dc.load(str(path), schema="MM", invalid="quarantine")
    assert len(ds) == 9 and [r["id"] for r in ds.to_list()][:3] == [0, "1", "2"]
    q = ds.quarantine.to_list()
    assert [r["_source"] for r in q] == [f"{path}:7"] and shown in q[0]["_error"]


@pytest.mark.parametrize("value", ["007", "01"])
def test_an_integer_with_leading_zeros_is_invalid_json_on_its_line_not_a_string(tmp_path, value):
    path = tmp_path / "zeros.jsonl"
    lines = [json.dumps(_row(i, i if i % 2 else str(i))) for i in range(5)]
    lines[3] = lines[3].replace('"id": 3', f'"id": {value}', 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataCopilotError, match=f"{path}:4: invalid JSON"):
        dc.load(str(path), schema="MM")


def test_a_string_id_starting_with_u0000_and_a_key_given_twice_load_as_the_row_path_does(tmp_path):
    path = tmp_path / "odd.jsonl"
    rows = [_row(0, 5), _row(1, "\x007"), _row(2, "x")]
    _write(path, rows)
    assert not _fast_taken(path, MM)  # the marker count differs: the row path decides
    assert [r["id"] for r in dc.load(str(path), schema="MM").to_list()] == [5, "\x007", "x"]
    twice = tmp_path / "twice.jsonl"
    twice.write_text('{"id": 1, "id": "b", "conversations": []}\n{"id": "c", "conversations": []}\n')
    assert [r["id"] for r in dc.load(str(twice), schema="MM").to_list()] == ["b", "c"]  # json's last wins


def test_integers_past_18_digits_keep_their_value(tmp_path):
    path = tmp_path / "big.jsonl"
    ids = [2**63 - 1, "a", 10**18, 12345678901234567]
    _write(path, [_row(i, x) for i, x in enumerate(ids)])
    got = [r["id"] for r in dc.load(str(path), schema="MM").to_list()]
    assert got == ids and [type(x) for x in got] == [type(x) for x in ids]


def test_a_file_whose_ids_are_all_integers_or_all_strings_is_not_rewritten_or_changed(tmp_path):
    ints, strs = tmp_path / "ints.jsonl", tmp_path / "strs.jsonl"
    _write(ints, [_row(i, i) for i in range(5)])
    _write(strs, [_row(i, str(i)) for i in range(5)])
    assert [r["id"] for r in dc.load(str(ints), schema="MM").to_list()] == list(range(5))
    assert [r["id"] for r in dc.load(str(strs), schema="MM").to_list()] == [str(i) for i in range(5)]
    assert quote_int_ids(strs.read_bytes()) is None


_ids = st.lists(st.one_of(st.integers(0, 2**63 - 1), st.text(max_size=12), st.none(),
                          st.integers(0, 50).map(str)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=_ids, first=st.booleans(), spaced=st.booleans())
@example(ids=["\x85", 1, "\u2028", 0, "\x00"], first=False, spaced=False)  # line breaks to splitlines, U+0000
def test_ids_of_both_types_in_any_order_round_trip_with_their_types(tmp_path, ids, first, spaced):
    path = tmp_path / "h.jsonl"
    rows = []
    for i, x in enumerate(ids):
        r = _row(i)
        if x is not None:
            r = {"id": x, **r} if first else {**r, "id": x}
        rows.append(r)
    sep = (", ", ": ") if spaced else (",", ":")
    _write(path, rows, lambda r: json.dumps(r, separators=sep, ensure_ascii=bool(len(ids) % 2)))
    loaded = read_jsonl(str(path), MM)
    got = loaded.table.column("id").to_pylist()
    assert got == ids and [type(x) for x in got] == [type(x) for x in ids]
    ref = _row_path(path, MM)
    assert loaded.table.combine_chunks().equals(ref.table.combine_chunks())
    again = tmp_path / "again.jsonl"
    dc.load(str(path), schema="MM").write(str(again))
    lines = again.read_text(encoding="utf-8").split("\n")  # not splitlines: U+0085 in an id is no line break
    assert [json.loads(line).get("id") for line in lines if line] == ids


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.one_of(st.integers(0, 10**6), st.text(max_size=5)), min_size=2, max_size=30),
       data=st.data())
def test_an_id_of_another_type_is_named_with_its_exact_line(tmp_path, ids, data):
    bad_at = data.draw(st.integers(0, len(ids) - 1))
    bad = data.draw(st.sampled_from([1.5, True, [1], {"a": 1}, -1]))
    blanks = data.draw(st.integers(0, 3))
    path = tmp_path / "e.jsonl"
    lines = [json.dumps(_row(i, bad if i == bad_at else x)) for i, x in enumerate(ids)]
    lines = [""] * blanks + lines  # blank lines before: the numbers still count them
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataCopilotError) as e:
        dc.load(str(path), schema="MM")
    msg = str(e.value)
    assert f"{path}:{bad_at + 1 + blanks}: id: " in msg
    assert msg.count(f"{path}:") == 1
