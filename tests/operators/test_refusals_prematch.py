"""filter_refusals matches all patterns at once first: its reasons equal matching each pattern over every turn."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datacopilot.operators import create
from datacopilot.operators._conv import turns
from hypothesis import given, settings
from hypothesis import strategies as st

_WORDS = ["As an AI model", "as a language model", "I'm sorry, but I can't", "I cannot help", "hello", "cat",
          "I am not able to see", "i do not have access to", "", "AS AN AI LANGUAGE MODEL", "dog food", "\n",
          "aſ an ai model", "\u212aind", "İ am not able to help", "caté"]
_TURN = st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system", None]),
                               "value": st.one_of(st.none(), st.lists(st.sampled_from(_WORDS), max_size=4)
                                                  .map(" ".join))})
_CONVS = st.lists(st.one_of(st.none(), st.lists(_TURN, max_size=5)), min_size=1, max_size=10)


def _each_pattern_over_every_turn(op, batch):
    """The filter as it was: each pattern matched over every turn, the first that hits a row names it."""
    t = turns(op, batch)
    sel = t.select(op.p["role"])
    reasons = np.full(t.n_rows, None, dtype=object)
    for p in op._patterns:
        hit = pc.match_substring_regex(t.text, p, ignore_case=True).to_numpy(zero_copy_only=False)
        rows = t.per_row(hit, sel, "any")
        reasons[rows & (reasons == None)] = f"refusal or boilerplate: {p}"
    return reasons


@settings(max_examples=200, deadline=None)
@given(_CONVS, st.sampled_from(["assistant", "user", "all"]),
       st.sampled_from([None, ["cat"], ["dog|cat", "(?i)hello"], [], [r"\bcat\b"], ["kind", "a{2}"]]))
def test_refusal_reasons_equal_matching_each_pattern_over_every_turn(convs, role, extra):
    op = create("filter_refusals", role=role, extra_patterns=extra)
    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    batch = pa.RecordBatch.from_arrays([pa.array(convs, pa.list_(turn))], ["conversations"])
    keep, reasons = op.keep(batch)
    expected = _each_pattern_over_every_turn(op, batch)
    assert list(reasons) == list(expected)
    assert list(keep) == [r is None for r in expected]


def test_no_patterns_keeps_every_row():
    op = create("filter_refusals", patterns=[])
    conv = pa.array([[{"from": "gpt", "value": "As an AI model"}]])
    keep, _ = op.keep(pa.RecordBatch.from_arrays([conv], ["conversations"]))
    assert list(keep) == [True]


def test_a_pattern_re2_refuses_raises_as_it_did_when_polars_refuses_it_too():
    import pytest

    op = create("filter_refusals", extra_patterns=["(?<=a)b"])
    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    batch = pa.RecordBatch.from_arrays([pa.array([[{"from": "gpt", "value": "ab"}]], pa.list_(turn))],
                                       ["conversations"])
    with pytest.raises(pa.ArrowInvalid, match="invalid perl operator"):
        op.keep(batch)
