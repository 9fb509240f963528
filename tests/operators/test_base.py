"""The Operator base classes and the local runner (ds.apply): accounting, reasons, errors, setup, pickling."""

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import datacopilot as dc
from datacopilot.errors import DataCopilotError, MissingDependencyError, OperatorError
from datacopilot.operators import Deduplicator, Evaluator, Filter, Mapper, check_int, create
from datacopilot.operators.run import evaluate

from .conftest import ids, last, mm


class Upper(Mapper):
    name, reads, writes = "test_upper", ("id",), ("id",)

    def __init__(self, suffix: str = ""):
        super().__init__(suffix=suffix)
        self.setups = 0

    def setup(self):
        self.setups += 1
        self.tail = self.p["suffix"]  # state built in setup, used by the hook

    def map_batch(self, batch):
        t = pa.Table.from_batches([batch])
        new = pc.binary_join_element_wise(pc.utf8_upper(t["id"]), self.tail, "")
        return t.set_column(t.column_names.index("id"), "id", new)


class FailOn(Filter):
    name, reads = "test_fail_on", ("id",)

    def __init__(self, bad: str = "b"):
        super().__init__(bad=bad)

    def keep(self, batch):
        values = batch.column("id").to_pylist()
        if self.p["bad"] in values:
            raise ValueError(f"cannot judge {self.p['bad']!r}")
        keep = np.array([v != "c" for v in values])
        return keep, np.where(keep, None, "is c")


class MinLen(Filter):
    name, reads = "test_min_len", ("id",)

    def __init__(self, n: int = 1):
        super().__init__(n=check_int(self, "n", n, minimum=0))

    def keep(self, batch):  # a plain mask: reasons default to the operator's name
        return pc.utf8_length(batch.column("id")).to_numpy(zero_copy_only=False) >= self.p["n"]


def _ds(n=6):
    return dc.MMDataset.from_rows([mm(c, "q", "a") for c in "abcdefgh"[:n]], schema="MM")


def test_parameters_are_validated_at_construction_naming_operator_and_parameter():
    with pytest.raises(OperatorError, match=r"test_min_len: `n` must be >= 0, got -1"):
        MinLen(n=-1)
    with pytest.raises(OperatorError, match=r"`n` must be an integer, got 'x'"):
        MinLen(n="x")
    assert MinLen(n=2).params() == {"n": 2}
    with pytest.raises(OperatorError, match=r"`emails` must be one of True, False, got 1"):
        create("mask_pii", emails=1)  # 1 == True, but a flag takes a boolean
    assert create("mask_pii", emails=False).params()["emails"] is False


def test_missing_dependency_fails_at_construction_with_install_line():
    class NeedsPkg(Filter):
        name, requires = "test_needs", (("no_such_module_xyz", "fancy"),)

    with pytest.raises(MissingDependencyError, match=r"no_such_module_xyz is not installed: pip install "
                                                     r"'datacopilot\[fancy\]'"):
        NeedsPkg()


def test_check_names_missing_columns_and_alternatives():
    class Needs(Filter):
        name, reads = "test_needs_cols", ("caption", "image|images")

    with pytest.raises(OperatorError, match=r"test_needs_cols: needs column\(s\) 'caption'; the dataset has"):
        Needs().check(["id", "image", "conversations"])
    Needs().check(["caption", "images"])  # an alternative is enough
    with pytest.raises(OperatorError, match="needs column"):
        _ds().apply(Needs())


def test_mapper_runs_setup_once_per_worker_and_keeps_order():
    op = Upper(suffix="!")
    out = _ds(8).apply(op, num_workers=2, batch_size=2)
    assert ids(out) == [c.upper() + "!" for c in "abcdefgh"]
    assert op.setups == 1  # four batches on two threads share one setup
    rec = last(out)
    assert (rec.op, rec.rows_in, rec.rows_out, rec.failed) == ("test_upper", 8, 8, 0)


def test_operator_pickles_as_parameters_and_runs_in_processes():
    op = Upper(suffix="?")
    op.ensure_setup()
    clone = pickle.loads(pickle.dumps(op))
    assert clone.params() == {"suffix": "?"} and not clone._ready  # setup state does not travel
    out = _ds(8).apply(Upper(suffix="?"), num_workers=2, mode="process", batch_size=3)
    assert ids(out) == [c.upper() + "?" for c in "abcdefgh"]


def test_filter_reasons_are_counted_and_default_to_the_operator_name():
    ds = dc.MMDataset.from_rows([mm("aa", "q", "a"), mm("c", "q", "a"), mm("b", "q", "a")], schema="MM")
    out = ds.apply([FailOn(bad="zz"), MinLen(n=2)])
    assert ids(out) == ["aa"]
    assert out.history()[0].dropped == {"is c": 1}
    assert out.history()[1].dropped == {"test_min_len": 1}


@pytest.mark.parametrize("policy", ["skip", "quarantine"])
def test_a_failing_row_fails_alone_and_the_rest_of_its_batch_goes_on(policy):
    out = _ds(6).apply(FailOn(bad="b"), on_error=policy, batch_size=4)
    assert ids(out) == ["a", "d", "e", "f"]
    rec = last(out)
    assert (rec.rows_in, rec.rows_out, rec.dropped, rec.failed) == (6, 4, {"is c": 1}, 1)
    assert rec.rows_in == rec.rows_out + rec.n_dropped + rec.failed
    if policy == "quarantine":
        q = out.quarantine.to_list()
        assert [r["id"] for r in q] == ["b"] and "cannot judge 'b'" in q[0]["_error"]
        assert q[0]["_op"] == "test_fail_on"
    else:
        assert out.quarantine is None


def test_raise_policy_names_operator_row_and_id():
    with pytest.raises(OperatorError, match=r"test_fail_on at row 1 \(id 'b'\): ValueError: cannot judge 'b'"):
        _ds(6).apply(FailOn(bad="b"), batch_size=4)


def test_mapper_must_keep_the_row_count():
    class Halve(Mapper):
        name = "test_halve"

        def map_batch(self, batch):
            return batch.slice(0, batch.num_rows // 2)

    # a broken hook is the operator's bug: raised for the batch, whatever the error policy, not hidden row by row
    for policy in ("raise", "skip"):
        with pytest.raises(OperatorError, match=r"test_halve: a mapper must return 4 rows, got 2"):
            _ds(4).apply(Halve(), batch_size=4, on_error=policy)


def test_exact_dedup_keeps_first_of_each_key_across_batches():
    class SameAnswer(Deduplicator):
        name, reads = "test_same_answer", ("conversations",)

        def keys(self, batch):
            texts = [c[-1]["value"] for c in batch.column("conversations").to_pylist()]
            return np.array([hash(t) % (1 << 63) for t in texts], dtype=np.uint64)

    rows = [mm(i, "q", a) for i, a in zip("abcdef", ["x", "y", "x", "z", "y", "x"])]
    out = dc.MMDataset.from_rows(rows, schema="MM").apply(SameAnswer(), batch_size=2)
    assert ids(out) == ["a", "b", "d"]
    assert last(out).dropped == {"duplicate (test_same_answer)": 3}


def test_evaluators_change_no_rows_and_run_with_evaluate():
    class CountTurns(Evaluator):
        name, reads = "test_count_turns", ("conversations",)

        def evaluate(self, batch):
            return {"turns": int(pc.sum(pc.list_value_length(batch.column("conversations"))).as_py())}

        def merge(self, parts):
            return {"turns": sum(p["turns"] for p in parts)}

    ds = _ds(5)
    assert evaluate(ds, CountTurns(), batch_size=2) == {"turns": 10}
    assert ds.evaluate(CountTurns(), num_workers=2, mode="process", batch_size=2) == {"turns": 10}
    with pytest.raises(DataCopilotError, match="is an evaluator"):
        ds.apply(CountTurns())

    class FailsOnC(CountTurns):
        name = "test_fails_on_c"

        def evaluate(self, batch):
            if "c" in batch.column("id").to_pylist():
                raise ValueError("cannot count c")
            return super().evaluate(batch)

    with pytest.raises(OperatorError, match=r"test_fails_on_c at row 2 \(id 'c'\): ValueError: cannot count c"):
        ds.evaluate(FailsOnC(), batch_size=2)
    with pytest.raises(DataCopilotError, match="evaluate takes an Evaluator"):
        ds.evaluate(MinLen())


def test_apply_rejects_what_is_not_an_operator_and_bad_policies():
    with pytest.raises(DataCopilotError, match="apply takes operators"):
        _ds().apply([lambda r: r])
    with pytest.raises(DataCopilotError, match="`on_error` must be one of"):
        _ds().apply(MinLen(), on_error="ignore")


def test_root_is_filled_from_the_dataset_for_operators_that_read_files(tmp_path):
    seen = []

    class Roots(Filter):
        name, reads, uses_root = "test_roots", ("id",), True

        def __init__(self, root=None):
            super().__init__(root=root)

        def keep(self, batch):
            seen.append(self.p["root"])
            return np.ones(batch.num_rows, dtype=bool)

    ds = dc.MMDataset.from_rows([mm("a", "q", "a")], schema="MM", root=str(tmp_path))
    ds.apply(Roots())
    ds.apply(Roots(root="/elsewhere"))
    assert seen == [str(tmp_path), "/elsewhere"]
