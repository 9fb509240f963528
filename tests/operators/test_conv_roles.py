"""Roles are mapped to their canonical form once per distinct role (vectorized), as the per-turn lookup did."""

import numpy as np
import pyarrow as pa
from datacopilot.operators import create
from datacopilot.operators._conv import ROLES, canonical_roles, turns
from hypothesis import given, settings
from hypothesis import strategies as st

_ROLE = st.one_of(st.sampled_from(list(ROLES) + ["bot", "tool", "", "Human"]), st.none(), st.text(max_size=4))


def _per_turn(values: list) -> list:
    return [ROLES.get(r, r) for r in values]


@settings(max_examples=200, deadline=None)
@given(st.lists(_ROLE, max_size=40), st.sampled_from([pa.string(), pa.large_string()]))
def test_canonical_roles_equal_the_per_turn_lookup(values, type_):
    out = canonical_roles(pa.array(values, type_))
    assert out.dtype == object and out.tolist() == _per_turn(values)


def test_canonical_roles_of_a_dictionary_column_and_of_a_slice():
    raw = pa.array(["gpt", "human", None, "bot", "human"])
    assert canonical_roles(raw.dictionary_encode()).tolist() == ["assistant", "user", None, "bot", "user"]
    assert canonical_roles(raw.slice(2)).tolist() == [None, "bot", "user"]
    assert canonical_roles(pa.array([], pa.string())).tolist() == []


def test_turns_of_a_batch_carry_canonical_roles_per_turn():
    conv = pa.array([[{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], None,
                     [{"from": "system", "value": "s"}, {"from": "user", "value": "u"}, {"from": None, "value": "x"}]])
    batch = pa.RecordBatch.from_arrays([conv], ["conversations"])
    t = turns(create("filter_turns"), batch)
    assert t.role.tolist() == ["user", "assistant", "system", "user", None]
    assert t.row.tolist() == [0, 0, 2, 2, 2]
    assert np.array_equal(t.select("all"), [True, True, False, True, True])
