"""The vectorized screen (datacopilot.loading.screen and the types' bad_mask) against validate_row, row by row:
it flags every row validate_row finds a problem in, on tables in many chunks (as HF's Arrow files come), with
large_string children, nulls and images with neither path nor bytes."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datacopilot.loading import empty_image_rows, screen, table_problems
from datacopilot.schemas import MM, String
from datacopilot.schemas.types import choice_mask

ROLES = st.sampled_from(["human", "gpt", "bot", "Human", "", "humanx", None])
TURN = st.fixed_dictionaries({"from": ROLES, "value": st.one_of(st.none(), st.text(max_size=5))})
IMAGE = st.one_of(st.none(), st.fixed_dictionaries({"path": st.one_of(st.none(), st.just("a.png")),
                                                    "bytes": st.one_of(st.none(), st.just(b"\x89PNG"))}))
ROW = st.fixed_dictionaries({"id": st.one_of(st.none(), st.text(max_size=3)), "image": IMAGE,
                             "conversations": st.one_of(st.none(), st.lists(st.one_of(st.none(), TURN), max_size=4))})


def _chunked(rows: list[dict], chunk: int, large: bool) -> pa.Table:
    string = pa.large_string() if large else pa.string()
    turn = pa.struct([("from", string), ("value", string)])
    t = pa.schema([("id", pa.string()), ("image", pa.struct([("path", pa.string()), ("bytes", pa.binary())])),
                   ("conversations", pa.list_(turn))])
    batches = [pa.RecordBatch.from_pylist(rows[i:i + chunk], schema=t) for i in range(0, len(rows), chunk)]
    return pa.Table.from_batches(batches, schema=t)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(ROW, min_size=1, max_size=30), chunk=st.integers(1, 7), large=st.booleans())
def test_the_screen_flags_every_row_validate_row_rejects_across_chunks(rows, chunk, large):
    table = MM.conform(_chunked(rows, chunk, large))
    flagged = screen(table, MM) | empty_image_rows(table)
    named = {i for i, _ in table_problems(table, MM)}
    for i, r in enumerate(table.to_pylist()):
        bad = bool(MM.validate_row(r, f"row {i}"))
        assert not bad or flagged[i], (i, r)
        assert (i in named) == bad, (i, r)


def test_a_bad_role_in_a_late_chunk_is_named_with_its_row_and_field():
    rows = [{"id": str(i), "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
            for i in range(2_500)]
    rows[2_345]["conversations"][1]["from"] = "bot"
    probs = table_problems(MM.conform(_chunked(rows, 1_000, False)), MM)
    assert probs == [(2_345, "row 2345: conversations[1].from: expected one of 'human', 'gpt', got 'bot'")]


@pytest.mark.parametrize("choices", [("human", "gpt"), ("a", "b", "c", "d", "e", "f")])
@pytest.mark.parametrize("string", [pa.string(), pa.large_string()])
def test_choice_mask_is_in_for_few_and_many_choices(choices, string):
    values = ["human", "gpt", "a", "f", "bot", None, "", "gptx"]
    arr = pa.chunked_array([pa.array(values[:3], string), pa.array(values[3:], string)])
    expect = [None if v is None else v in choices for v in values]
    assert choice_mask(arr, choices).to_pylist() == expect
    mask = String(choices).bad_mask(arr)
    assert mask is not None and mask.tolist() == [e is False for e in expect]


def test_a_column_of_valid_choices_needs_no_mask():
    assert String(("human", "gpt")).bad_mask(pa.chunked_array([["human", None], ["gpt"]])) is None


def test_conform_returns_a_conformed_table_as_it_is_and_drops_metadata_otherwise():
    t = MM.conform(pa.table({"id": ["1"], "conversations": [[{"from": "human", "value": "hi"}]]}))
    assert MM.conform(t) is t
    with_meta = t.replace_schema_metadata({"k": "v"})
    assert MM.conform(with_meta).schema.metadata is None
    assert MM.conform(with_meta).equals(t)


def test_repeated_choices_do_not_let_a_bad_value_pass_the_count():
    mask = String(("human", "human", "gpt")).bad_mask(pa.chunked_array([["human", "bot"], [None, "gpt"]]))
    assert mask is not None and mask.tolist() == [False, True, False, False]
