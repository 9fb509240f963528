"""Python functions as engine operators (FunctionMap, FunctionFilter): what ds.map / ds.filter run."""

import pickle

import cloudpickle
import pyarrow as pa
import pytest

from datacopilot.engine import Accounting, run_chain
from datacopilot.engine.functions import FunctionFilter, FunctionMap


def test_a_row_function_is_called_once_per_row_even_when_rows_fail():
    calls = []

    def half(r):
        calls.append(r["x"])
        if r["x"] % 3 == 0:
            raise ValueError(f"no {r['x']}")
        return None if r["x"] == 4 else {"x": r["x"] * 2}

    out = FunctionMap(half).process(pa.table({"x": list(range(1, 8))}), "skip")
    assert calls == list(range(1, 8))  # not tried again row by row
    assert out.table.column("x").to_pylist() == [2, 4, 10, 14]
    assert [f.row for f in out.failures] == [2, 5] and out.failures[0].message == "ValueError: no 3"
    assert dict(out.dropped) == {"map returned None": 1}
    stopped = FunctionMap(half).process(pa.table({"x": [1, 3, 5]}), "raise")
    assert [f.row for f in stopped.failures] == [1]


def test_a_map_must_return_a_dict_and_a_batched_filter_a_mask_of_every_row():
    out = FunctionMap(lambda r: [r]).process(pa.table({"x": [1]}), "skip")
    assert out.failures[0].message == "TypeError: a map function must return a dict or None, got list"
    bad = FunctionFilter(lambda b: [True] * (b.num_rows + 1), batched=True)
    out = bad.process(pa.table({"x": [1, 2]}), "skip")
    assert [f.row for f in out.failures] == [0, 1] and out.table.num_rows == 0
    assert out.failures[0].message == "ValueError: a batched filter must return 1 booleans, got shape (2,)"


def test_labels_and_reasons_name_the_function_or_the_given_name():
    def short(r):
        return len(r["s"]) < 3

    f = FunctionFilter(short)
    assert f.label == "filter short" and FunctionMap(short, name="mine").label == "mine"
    acc = Accounting([f], "raise")
    run_chain([f], pa.table({"s": ["a", "abcd", "ab"]}), "raise", acc)
    r = acc.records()[0]
    assert (r.op, r.rows_in, r.rows_out, r.dropped) == ("filter short", 3, 2, {"filter short": 1})
    reasons = FunctionFilter(lambda r: (r["s"] != "b", "is b"), name="no b")
    assert dict(reasons.process(pa.table({"s": ["a", "b"]})).dropped) == {"is b": 1}


@pytest.mark.parametrize("batched", [False, True])
def test_function_operators_pickle_with_their_closures(batched):
    suffix = "!"
    fn = (lambda b: pa.table({"s": [v + suffix for v in b.column("s").to_pylist()]})) if batched else \
        (lambda r: {"s": r["s"] + suffix})
    op = pickle.loads(cloudpickle.dumps(FunctionMap(fn, batched=batched, name="bang")))
    assert op.label == "bang" and op.process(pa.table({"s": ["a", "b"]})).table.column("s").to_pylist() == ["a!", "b!"]
