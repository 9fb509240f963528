"""Property tests of chained operations: every row is accounted for, whatever the chain."""

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import datacopilot as dc

TEXT = st.text(alphabet="ab <>\n", max_size=6)
TURN = st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt"]), "value": TEXT})
ROW = st.fixed_dictionaries({
    "id": st.text(alphabet="xyz", min_size=1, max_size=3),
    "conversations": st.lists(TURN, min_size=1, max_size=4),
})

OPS = {
    "nonempty": lambda ds: ds.nonempty(),
    "unique": lambda ds: ds.unique("id"),
    "filter_expr": lambda ds: ds.filter(pl.col("conversations").list.len() >= 2),
    "filter_fn": lambda ds: ds.filter(lambda r: (len(r["id"]) > 1, "short id")),
    "map_drop": lambda ds: ds.map(lambda r: None if r["id"].startswith("x") else {**r, "id": r["id"] + "!"}),
    "map_fail": lambda ds: ds.map(lambda r: {**r, "n": 1 // (len(r["id"]) - 2)}, on_error="quarantine"),
    "sanitize": lambda ds: ds.sanitize(),
    "shuffle": lambda ds: ds.shuffle(seed=1),
    "slice": lambda ds: ds[1:],
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(ROW, max_size=30), ops=st.lists(st.sampled_from(sorted(OPS)), max_size=6))
def test_chain_accounts_for_every_row(rows, ops):
    ds = dc.MMDataset.from_rows(rows, schema="MM")
    failed_rows = 0
    for name in ops:
        before = len(ds)
        ds = OPS[name](ds)
        rec = ds.history()[-1] if ds.history() else None
        if rec is not None and name not in ("shuffle", "slice"):
            assert rec.rows_in == before
            assert rec.rows_in == rec.rows_out + rec.n_dropped + rec.failed, (name, rec)
            assert rec.rows_out == len(ds)
            failed_rows += rec.failed
        assert ds.schema.name == "MM"
    quarantined = len(ds.quarantine) if ds.quarantine is not None else 0
    assert quarantined == failed_rows
    # ids never appear that were not in the input (maps only append '!')
    assert {r["id"].rstrip("!") for r in ds} <= {r["id"] for r in rows}


def test_quarantines_merge_across_steps_even_when_columns_change_type():
    rows = [{"id": i, "conversations": [{"from": "human", "value": "a"}]} for i in ["ab", "abc", "x", "xy", "abcd"]]
    ds = dc.MMDataset.from_rows(rows, schema="MM")
    d1 = ds.map(lambda r: {**r, "n": 1 // (len(r["id"]) - 2)}, on_error="quarantine")  # fails on 2-char ids
    d2 = d1.map(lambda r: {**r, "n": str(1 // (len(r["id"]) - 3))}, on_error="quarantine")  # on 'abc'
    assert len(d2) == 2 and len(d2.quarantine) == 3
    q = d2.quarantine.to_list()
    assert sorted(r["id"] for r in q) == ["ab", "abc", "xy"]
    # a column of conflicting types across steps: rows fall back to JSON text, none is lost
    d3 = d2.map(lambda r: {**r, "n": [1] if r["id"] == "x" else 1 // 0}, on_error="quarantine")
    q3 = d3.quarantine.to_list()
    assert len(d3) == 1 and len(q3) == 4
    assert all(r["_error"] for r in q3)
