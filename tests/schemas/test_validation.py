"""Validation through the real loaders: messages name the source, the row and the field path; every problem is
reported; invalid rows can be kept apart in a quarantine."""

import json

import pytest

import datacopilot as dc
from datacopilot.errors import ValidationError
from datacopilot.schemas import BUILTIN, CAPTION, MESSAGES, MIX, MM, PAIRS


def turns(*pairs):
    return [{"from": f, "value": v} for f, v in pairs]


def mm_row(i, **kw):
    row = {"id": str(i), "conversations": turns(("human", f"q{i}"), ("gpt", f"a{i}"), ("human", "more?"))}
    row.update(kw)
    return row


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_line_17_named_exactly(tmp_path):
    rows = [mm_row(i) for i in range(30)]
    rows[16]["conversations"][2]["from"] = "bot"  # the 17th line
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(ValidationError) as ei:
        dc.load(str(path), schema="MM")
    assert ei.value.problems == [f"{path}:17: conversations[2].from: expected one of 'human', 'gpt', got 'bot'"]
    assert str(path) + ":17" in str(ei.value)


def test_line_numbers_survive_blank_lines(tmp_path):
    rows = [mm_row(i) for i in range(5)]
    rows[3]["conversations"][0]["from"] = "bot"
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(r) for r in rows]
    path.write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")  # a blank line 2 shifts row 3 to line 5
    with pytest.raises(ValidationError) as ei:
        dc.load(str(path), schema="MM")
    assert ei.value.problems == [f"{path}:5: conversations[0].from: expected one of 'human', 'gpt', got 'bot'"]


def test_bad_line_with_meta_goes_through_row_path(tmp_path):
    rows = [mm_row(i, meta={"src": "x", "n": i}) for i in range(20)]
    rows[16]["conversations"][1]["from"] = "robot"
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(ValidationError) as ei:
        dc.load(str(path), schema="MM")
    assert ei.value.problems == [f"{path}:17: conversations[1].from: expected one of 'human', 'gpt', got 'robot'"]


def test_load_reports_every_problem(tmp_path):
    rows = [mm_row(i) for i in range(10)]
    rows[2]["conversations"][0]["from"] = "bot"
    rows[2]["conversations"][1]["value"] = 5
    del rows[5]["conversations"]
    rows[8]["id"] = 1.5
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(ValidationError) as ei:
        dc.load(str(path), schema="MM")
    probs = ei.value.problems
    joined = "\n".join(probs)
    assert f"{path}:3: conversations[0].from: expected one of 'human', 'gpt', got 'bot'" in joined
    assert f"{path}:3: conversations[1].value: expected a string, got int 5" in joined
    assert f"{path}:6: conversations: missing required field" in joined
    assert f"{path}:9: id: expected a string or an integer, got float 1.5" in joined


def test_dataset_validate_reports_all_without_stopping():
    rows = [mm_row(i) for i in range(6)]
    ds = dc.MMDataset.from_rows(rows, schema="MM")
    t = ds.to_arrow().to_pylist()
    t[1]["conversations"][0]["from"] = "bot"
    t[1]["conversations"][2]["from"] = "system"
    t[4]["conversations"] = []
    t[4]["conversations"] = [{"from": None, "value": "x"}]
    t[5]["conversations"] = None
    import pyarrow as pa

    bad = dc.MMDataset(pa.Table.from_pylist(t, schema=ds.to_arrow().schema), schema="MM")
    probs = bad.validate()
    assert "row 1: conversations[0].from: expected one of 'human', 'gpt', got 'bot'" in probs
    assert "row 1: conversations[2].from: expected one of 'human', 'gpt', got 'system'" in probs
    assert "row 4: conversations[0].from: missing required field" in probs
    assert "row 5: conversations: missing required field" in probs
    assert len(probs) == 4
    assert ds.validate() == []


def test_quarantine_keeps_bad_rows_with_errors(tmp_path):
    rows = [mm_row(i) for i in range(12)]
    rows[3]["conversations"][0]["from"] = "bot"
    rows[7]["conversations"] = "not a list"
    path = tmp_path / "data.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in rows) + "{broken json\n"
    path.write_text(text)
    ds = dc.load(str(path), schema="MM", invalid="quarantine")
    assert len(ds) == 10
    assert [r["id"] for r in ds] == [str(i) for i in range(12) if i not in (3, 7)]
    q = ds.quarantine.to_list()
    assert len(q) == 3
    by_src = {r["_source"]: r for r in q}
    assert set(by_src) == {f"{path}:4", f"{path}:8", f"{path}:13"}
    assert "conversations[0].from: expected one of 'human', 'gpt', got 'bot'" in by_src[f"{path}:4"]["_error"]
    assert "conversations: expected a list" in by_src[f"{path}:8"]["_error"]
    assert "invalid JSON" in by_src[f"{path}:13"]["_error"]
    assert json.loads(by_src[f"{path}:4"]["_row"])["id"] == "3"
    (rec,) = ds.history()
    assert rec.rows_in == 13 and rec.rows_out == 10 and rec.n_dropped == 3
    assert rec.rows_in == rec.rows_out + rec.n_dropped + rec.failed


def test_quarantine_from_fast_reader(tmp_path):
    ds = dc.MMDataset.from_rows([mm_row(i) for i in range(5)], schema="MM")
    t = ds.to_arrow().to_pylist()
    t[2]["conversations"][1]["from"] = "bot"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(t, schema=ds.to_arrow().schema), tmp_path / "x.parquet")
    with pytest.raises(ValidationError) as ei:
        dc.load(str(tmp_path / "x.parquet"), schema="MM")
    assert ei.value.problems == [
        f"{tmp_path / 'x.parquet'}: row 2: conversations[1].from: expected one of 'human', 'gpt', got 'bot'"]
    ok = dc.load(str(tmp_path / "x.parquet"), schema="MM", invalid="quarantine")
    assert [r["id"] for r in ok] == ["0", "1", "3", "4"]
    assert len(ok.quarantine) == 1
    assert "got 'bot'" in ok.quarantine[0]["_error"]


TEXT_ONLY = {
    "MM": {"id": "a", "conversations": turns(("human", "hi"), ("gpt", "hello"))},
    "MIX": {"id": "a", "conversations": [{"from": "user", "value": "hi"}, {"from": "assistant", "value": "yo"}]},
    "PAIRS": {"id": "a", "conversations": [["hi", "hello"], ["how?", "fine"]]},
    "MESSAGES": {"id": "a", "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
                                         {"role": "assistant", "content": "hello"}]},
    "CAPTION": {"id": "a", "caption": "just text"},
    "SHAREGPT": {"id": 7, "conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "hi"},
                                             {"from": "gpt", "value": "hello"}]},
    "CAULDRON": {"texts": [{"user": "hi", "assistant": "hello", "source": "chat"}]},
    "MMC4": {"image_info": [], "text_list": ["one sentence.", "another."]},
}


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_text_only_rows_in_every_schema(name, tmp_path):
    schema = BUILTIN[name]
    row = TEXT_ONLY[name]
    assert schema.validate_row(row) == []
    path = write_jsonl(tmp_path / "t.jsonl", [row, row])
    ds = dc.load(str(path), schema=name)
    assert len(ds) == 2 and ds.schema == schema
    got = ds[0]
    for k, v in row.items():
        assert got[k] == v
    assert ds.validate() == []


@pytest.mark.parametrize("schema,row,expect", [
    (MIX, {"conversations": [{"from": "gpt", "value": "x"}]},
     "conversations[0].from: expected one of 'user', 'assistant', got 'gpt'"),
    (PAIRS, {"conversations": [["q", "a", "extra"]]}, "conversations[0]: expected 2 items, got 3"),
    (MESSAGES, {"messages": [{"role": "bot", "content": "x"}]},
     "messages[0].role: expected one of 'system', 'user', 'assistant', 'tool', got 'bot'"),
    (CAPTION, {"image": "a.png"}, "caption: missing required field"),
    (MM, {"image": 3, "conversations": []}, "image: expected an image path or {path, bytes}"
     " or a list of images, got int 3"),
    (MIX, {"images": [{"id": 1}], "conversations": []}, "images[0].url: missing required field"),
    (MIX, {"images": [{"id": "1", "url": "a.png"}], "conversations": []},
     "images[0].id: expected an integer, got str '1'"),
])
def test_field_paths(schema, row, expect):
    assert schema.validate_row(row, where="f.jsonl:3") == [f"f.jsonl:3: {expect}"]


def test_a_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(mm_row(0)) + "\n[1, 2]\n" + json.dumps(mm_row(2)) + "\n")
    for schema in ("MM", None):
        with pytest.raises(ValidationError) as ei:
            dc.load(str(path), schema=schema)
        assert ei.value.problems == [f"{path}:2: expected an object, got list [1, 2]"]
    ds = dc.load(str(path), schema="MM", invalid="quarantine")
    assert [r["id"] for r in ds] == ["0", "2"] and ds.quarantine[0]["_source"] == f"{path}:2"
