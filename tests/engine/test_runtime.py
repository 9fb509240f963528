"""The one runtime: ``Operator.process`` (each kind's hook as one StepOut), ``run_chain`` and ``Accounting``."""

import doctest

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import datacopilot.engine.barriers
import datacopilot.engine.operator
import datacopilot.engine.runtime
import datacopilot.engine.step
from datacopilot.engine import Accounting, Augmenter, Filter, Mapper, StepOut, run_chain
from datacopilot.errors import OperatorError


class Double(Mapper):
    name = "double"

    def map_batch(self, batch):
        x = batch.column("x").to_numpy()
        if (x == 13).any():
            raise ValueError("thirteen")
        return pa.table({"x": x * 2})


class Odd(Filter):
    name = "odd"

    def keep(self, batch):
        x = batch.column("x").to_numpy()
        return x % 2 == 1, np.where(x % 2 == 1, None, "even")


class Twice(Augmenter):
    name = "twice"

    def augment(self, batch):
        return pa.Table.from_batches([batch]).take(np.repeat(np.arange(batch.num_rows), 2))


def table(xs):
    return pa.table({"id": [f"r{x}" for x in xs], "x": pa.array(xs, pa.int64())})


@pytest.mark.parametrize("module", [datacopilot.engine.step, datacopilot.engine.operator,
                                    datacopilot.engine.runtime, datacopilot.engine.barriers])
def test_engine_docstring_examples_run(module):
    assert doctest.testmod(module).failed == 0


def test_a_hook_that_raises_is_retried_row_by_row_so_only_the_bad_row_fails():
    out = Double().process(table([1, 13, 3]), "skip")
    assert out.table.column("x").to_pylist() == [2, 6]
    assert [(f.row, f.message) for f in out.failures] == [(1, "ValueError: thirteen")]
    assert "thirteen" in out.failures[0].traceback


def test_under_raise_the_retry_stops_at_the_first_failure_and_check_names_op_row_and_id():
    acc = Accounting([Odd(), Double()], "raise")
    run_chain([Odd(), Double()], table([1, 2, 3]), "raise", acc)
    assert not acc.failed
    out = run_chain([Odd(), Double()], table([5, 13, 7]), "raise", acc)
    assert out.num_rows == 0 and acc.failed
    with pytest.raises(OperatorError) as e:
        acc.check()
    assert e.value.row == 3 and e.value.row_id == "r13" and "double" in str(e.value)


def test_quarantine_holds_the_failed_rows_with_op_and_error():
    acc = Accounting([Double()], "quarantine")
    out = run_chain([Double()], table([13, 2]), "quarantine", acc)
    assert out.column("x").to_pylist() == [4]
    q = acc.take_quarantine()
    assert q.column("id").to_pylist() == ["r13"] and q.column("_op").to_pylist() == ["double"]
    assert q.column("_error").to_pylist() == ["ValueError: thirteen"]
    assert acc.take_quarantine() is None


def test_worker_accountings_merge_in_input_order_with_global_row_numbers():
    ops = [Odd(), Double()]
    whole = Accounting(ops, "raise")
    parts = [table([1, 3, 4]), table([5, 13, 9])]
    for p in parts:
        w = whole.fresh()
        run_chain(ops, p, "raise", w)
        whole.merge(w)
    with pytest.raises(OperatorError) as e:
        whole.check()
    assert e.value.row == 3  # the 4th row that reached `double`: 1, 3, 5, then 13
    assert whole.records()[0].rows_in == 6 and whole.records()[0].dropped == {"even": 1}


@settings(max_examples=50, deadline=None)
@given(xs=st.lists(st.integers(0, 20), max_size=60), cut=st.integers(1, 30),
       policy=st.sampled_from(["skip", "quarantine"]))
def test_rows_are_accounted_for_whatever_the_batching(xs, cut, policy):
    ops = [Odd(), Double(), Twice()]
    acc = Accounting(ops, policy)
    t = table(xs)
    outs = [run_chain(ops, t.slice(s, cut), policy, acc) for s in range(0, len(xs), cut)]
    one = Accounting(ops, policy)
    whole = run_chain(ops, t, policy, one)
    got = [v for o in outs for v in o.column("x").to_pylist()]
    assert got == whole.column("x").to_pylist()
    for r, s in zip(acc.records(), one.records()):
        assert (r.rows_in, r.rows_out, r.dropped, r.failed) == (s.rows_in, s.rows_out, s.dropped, s.failed)
    f = acc.records()
    assert f[0].rows_in == len(xs) == f[0].rows_out + sum(f[0].dropped.values())
    assert f[1].rows_in == f[1].rows_out + f[1].failed
    assert f[2].rows_out == 2 * f[2].rows_in


def test_filter_columns_written_for_the_batch_are_kept_on_the_rows_that_pass():
    from datacopilot.engine import Outcome

    class Scored(Filter):
        name = "scored"

        def keep(self, batch):
            x = batch.column("x").to_numpy()
            return Outcome(x > 1, counts={"scored": len(x)}, columns=pa.table({"score": x * 0.5}))

    out = Scored().process(table([1, 2, 3]), "raise")
    assert out.table.column("score").to_pylist() == [1.0, 1.5] and out.counts == {"scored": 3}
    assert isinstance(out, StepOut) and out.dropped == {"scored": 1}


def test_an_accounting_with_no_rows_in_keeps_its_error_row_on_merge():
    """A barrier's apply step (a grouper's merge of rows held from many batches) names the row among the whole
    input: merged after the observed rows, it is not shifted; a worker's accounting of later rows is."""
    ops = [Double()]
    whole = Accounting(ops, "raise")
    run_chain(ops, table([1, 2, 3]), "raise", whole)
    applied = whole.fresh()
    applied.fail(0, table([13]), [datacopilot.engine.Failure(0, "ValueError: thirteen")], base=1)
    whole.merge(applied)
    assert whole.ops[0].error.row == 1
    later = Accounting(ops, "raise")
    run_chain(ops, table([1, 2, 3]), "raise", later)
    w = later.fresh()
    run_chain(ops, table([5, 13]), "raise", w)
    later.merge(w)
    assert later.ops[0].error.row == 4


def test_a_hook_that_breaks_its_contract_raises_at_once_and_is_not_hidden_by_the_row_retry():
    from datacopilot.errors import HookError

    class OneBool(Filter):
        name = "one_bool"

        def keep(self, batch):
            return np.array([True])  # one answer whatever the batch: right for one row, wrong for two

    with pytest.raises(HookError, match="one_bool.*keep\\(\\) must return 2 booleans"):
        OneBool().process(table([1, 2]), "skip")


def test_quarantined_rows_whose_columns_differ_in_type_between_batches_are_all_kept():
    acc = Accounting([Double()], "quarantine")
    run_chain([Double()], pa.table({"id": ["a"], "x": [13]}), "quarantine", acc)
    run_chain([Double()], pa.table({"id": [7], "x": [13]}), "quarantine", acc)  # an integer id this time
    q = acc.take_quarantine()
    assert q.column("id").to_pylist() == ["a", 7] and q.column("_op").to_pylist() == ["double", "double"]
