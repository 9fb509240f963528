"""The compiled row converter (``json_rows.compile_rows``) gives exactly what the per-row rule (``jsonable``)
gives, on rows of every built-in schema and on the edge cases of the rule."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import datacopilot as dc
from datacopilot.io.json_rows import compile_rows, jsonable
from datacopilot.io.json_write import encode_rows
from datacopilot.schemas import IMAGE_ARROW_TYPE, MM, Field, Json, Schema

from .test_round_trip import dataset


def _both(table: pa.Table, schema, chunk: int = 3) -> tuple[list, list]:
    conv = compile_rows(schema, table.schema)
    fast = [r for b in table.to_batches(max_chunksize=chunk) for r in conv(b)]
    slow = [jsonable(r, schema) for r in table.to_pylist()]
    return fast, slow


def _same(table: pa.Table, schema, chunk: int = 3) -> list:
    fast, slow = _both(table, schema, chunk)
    assert fast == slow
    assert encode_rows(fast) == encode_rows(slow)  # the bytes too: 1 and 1.0, key order
    return fast


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dataset(), st.integers(1, 4))
def test_compiled_rows_equal_the_rule_on_every_schema(case, chunk):
    name, rows = case
    ds = dc.MMDataset.from_rows(rows, schema=name)
    _same(ds.to_arrow(), ds.schema, chunk)


def test_an_image_with_neither_path_nor_bytes_keeps_its_key_as_null():
    t = pa.table({"image": pa.array([{"path": None, "bytes": None}, None, {"path": "a", "bytes": b"x"}],
                                    IMAGE_ARROW_TYPE),
                  "conversations": pa.array([[], [], []], pa.list_(MM.field("conversations").dtype.inner.arrow()))})
    rows = _same(t, MM)
    assert rows[0] == {"image": None, "conversations": []}
    assert rows[1] == {"conversations": []}
    assert rows[2]["image"] == {"path": "a", "bytes_base64": "eA=="}


def test_json_text_null_keeps_its_key_and_text_that_is_not_json_stays_text():
    schema = Schema("T", [Field("meta", Json(), required=False)])
    t = pa.table({"meta": ["null", None, "not json", '{"a":1.5e3,"b":123456789012345678901234}', "NaN"]})
    rows = _same(t, schema, chunk=2)
    assert rows[:3] == [{"meta": None}, {}, {"meta": "not json"}]
    assert rows[3]["meta"]["b"] == 123456789012345678901234 and isinstance(rows[3]["meta"]["a"], float)


def test_unnamed_columns_drop_null_keys_at_every_depth_and_bytes_become_base64():
    t = pa.table({"x": [{"a": None, "b": [1, None]}, None],
                  "blob": pa.array([b"\x00\xff", None]),
                  "m": pa.array([[("k", 1)], None], pa.map_(pa.string(), pa.int64()))})
    rows = _same(t, MM, chunk=1)
    assert rows[0]["x"] == {"b": [1, None]} and rows[0]["blob"] == {"bytes_base64": "AP8="}
    assert rows[1] == {}


def test_mixed_ids_and_extra_keys_of_mixed_shapes_keep_their_types():
    rows = [{"id": "a", "conversations": [{"from": "human", "value": "hi", "w": 1}], "extra": {"k": None}},
            {"id": 7, "conversations": [{"from": "gpt", "value": "yo"}], "extra": [1, "x"]},
            {"id": None, "conversations": [], "extra": None}]
    ds = dc.MMDataset.from_rows(rows, schema="MM")
    out = _same(ds.to_arrow(), ds.schema, chunk=2)
    assert [r.get("id") for r in out] == ["a", 7, None] and "id" not in out[2]


def test_an_empty_batch_gives_no_rows():
    b = pa.record_batch([pa.array([], pa.string())], names=["id"])
    assert compile_rows(MM, b.schema)(b) == []
