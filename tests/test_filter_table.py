"""filter_table (every filter's copy): the rows Arrow's filter keeps, in order, on nested columns with nulls."""

import numpy as np
import pyarrow as pa
from datacopilot.transforms import filter_table
from hypothesis import given, settings
from hypothesis import strategies as st

_TURN = pa.struct([("from", pa.string()), ("value", pa.string())])
_ROW = st.fixed_dictionaries({
    "id": st.one_of(st.none(), st.text(max_size=3)),
    "conversations": st.one_of(st.none(), st.lists(st.one_of(st.none(), st.fixed_dictionaries(
        {"from": st.sampled_from(["human", "gpt"]), "value": st.one_of(st.none(), st.text(max_size=5))})),
        max_size=3)),
    "score": st.one_of(st.none(), st.integers(-5, 5))})


def _table(rows) -> pa.Table:
    schema = pa.schema([("id", pa.string()), ("conversations", pa.list_(_TURN)), ("score", pa.int64())])
    return pa.Table.from_pylist(rows, schema=schema)


@settings(max_examples=150, deadline=None)
@given(st.lists(_ROW, max_size=20), st.data())
def test_filter_table_keeps_the_rows_arrow_filter_keeps(rows, data):
    table = _table(rows)
    start = data.draw(st.integers(0, len(rows)))
    table = table.slice(start)  # an offset into the buffers, as the engine's batches have
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=table.num_rows, max_size=table.num_rows)), bool)
    out = filter_table(table, keep)
    assert out.schema == table.schema
    assert out.to_pylist() == table.filter(pa.array(keep, pa.bool_())).to_pylist()


def test_filter_table_returns_the_table_when_every_row_is_kept():
    table = _table([{"id": "a", "conversations": [], "score": 1}, {"id": "b", "conversations": None, "score": None}])
    assert filter_table(table, np.ones(2, bool)) is table
    assert filter_table(table, np.array([False, True])).column("id").to_pylist() == ["b"]
    assert filter_table(table, np.zeros(2, bool)).num_rows == 0
