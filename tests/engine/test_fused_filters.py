"""Runs of row-local filters decide over the same rows and copy the kept ones once: rows, drops, failures and
records are those of the filters run one by one."""

import numpy as np
import pyarrow as pa
import pytest
from datacopilot.engine import Accounting, run_chain
from datacopilot.engine.kinds import Filter, Mapper
from hypothesis import given, settings
from hypothesis import strategies as st


class Multiple(Filter):
    """Keep multiples of ``m``; a reason names the remainder. Raises on ``bad``."""

    name = "multiple"
    row_local = True

    def __init__(self, m: int = 2, bad: int | None = None):
        super().__init__(m=m, bad=bad)

    def keep(self, batch):
        x = batch.column("x").to_numpy()
        if self.p["bad"] is not None and (x == self.p["bad"]).any():
            raise ValueError(f"bad value {self.p['bad']}")
        keep = x % self.p["m"] == 0
        return keep, np.array([f"rest {v % self.p['m']}" for v in x], dtype=object)


class Plus(Mapper):
    name = "plus"

    def map_batch(self, batch):
        return pa.table({"x": pa.compute.add(batch.column("x"), 1)})


def _one_by_one(ops):
    """The same operators, declared not row-local (run one at a time)."""
    out = []
    for op in ops:
        if isinstance(op, Multiple):
            op = Multiple(**op.p)
            op.row_local = False
        out.append(op)
    return out


def _run(ops, xs, policy):
    acc = Accounting(ops, policy)
    out = run_chain(ops, pa.table({"x": pa.array(xs, pa.int64())}), policy, acc)
    q = acc.take_quarantine()
    return (out.column("x").to_pylist(), [(r.rows_in, r.rows_out, dict(r.dropped), r.failed) for r in acc.records()],
            None if q is None else q.column("x").to_pylist())


_OPS = st.lists(st.one_of(st.builds(Multiple, st.integers(1, 4), st.one_of(st.none(), st.integers(0, 30))),
                          st.just(Plus())), min_size=1, max_size=5)


@settings(max_examples=200, deadline=None)
@given(_OPS, st.lists(st.integers(0, 30), max_size=40), st.sampled_from(["quarantine", "skip"]))
def test_row_local_filters_at_once_give_the_rows_records_and_quarantine_of_one_by_one(ops, xs, policy):
    assert _run(ops, xs, policy) == _run(_one_by_one(ops), xs, policy)


def test_a_failing_row_fails_in_the_filter_that_sees_it_as_one_by_one():
    ops = [Multiple(2), Multiple(3, bad=5)]  # 5 is dropped by the first filter: the second never sees it
    assert _run(ops, [2, 5, 6, 12], "quarantine") == ([6, 12], [(4, 3, {"rest 1": 1}, 0),
                                                                (3, 2, {"rest 2": 1}, 0)], None)
    ops = [Multiple(1), Multiple(3, bad=4)]
    xs, records, quarantined = _run(ops, [3, 4, 6], "quarantine")
    assert (xs, quarantined) == ([3, 6], [4]) and records[1][3] == 1


def test_a_filter_not_declared_row_local_sees_only_the_rows_kept_before_it():
    class AboveMean(Filter):  # depends on the other rows of its batch
        name = "above_mean"

        def keep(self, batch):
            x = batch.column("x").to_numpy()
            return x >= x.mean()

    ops = [Multiple(2), AboveMean()]
    assert _run(ops, [0, 1, 2, 3, 4, 100, 7], "raise")[0] == [100]


def test_a_contract_breach_in_a_run_of_filters_raises():
    from datacopilot.errors import HookError

    class Wrong(Filter):
        name = "wrong"
        row_local = True

        def keep(self, batch):
            return np.ones(batch.num_rows + 1, bool)

    with pytest.raises(HookError):
        _run([Multiple(1), Wrong()], [1, 2], "quarantine")
