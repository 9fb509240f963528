"""Lazy pipelines on the local executor give exactly what ds.apply gives: rows, order and accounting."""

import pytest
from datacopilot.operators import create
from hypothesis import given, settings
from hypothesis import strategies as st

import datacopilot as dc
from datacopilot.errors import DataCopilotError, OperatorError
from datacopilot.pipeline import Pipeline

from ._ops import FailOn, Twice
from tests._same import assert_same_run

from .conftest import row


def chain():
    return [create("clean_whitespace"), create("filter_turns", min_turns=2), create("dedup_exact"),
            create("filter_length", min_length=5)]


@pytest.mark.parametrize("batch_size", [1, 7, 1024])
def test_collect_equals_apply(ds, batch_size):
    out = ds.lazy(batch_size=batch_size).apply(chain()).collect()
    ref = ds.apply(chain())
    assert_same_run(out, ref)
    assert 0 < len(out) <= 40  # 40 distinct conversations at most
    assert out.history()[1].dropped == {"fewer than 2 turns": 22}


def test_near_dedup_and_ops_after_it(ds):
    ops = [create("clean_whitespace"), create("dedup_near_text", threshold=0.9), create("filter_turns", min_turns=2)]
    assert_same_run(ds.lazy(batch_size=16).apply(ops).collect(), ds.apply(ops))


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_workers_keep_order_and_accounting(ds, mode):
    out = ds.lazy(batch_size=10).apply(chain()).collect(num_workers=2, mode=mode)
    assert_same_run(out, ds.apply(chain()))


def test_process_workers_stop_cleanly_on_a_failure_and_run_again(ds):
    """Batches travel to process workers through shared-memory slots: a run stopped by a failure waits for the
    batches in flight, so the next run, which reuses the slots, gives the same rows as threads."""
    import os

    from datacopilot.parallel import _POOLS

    bad = [create("clean_whitespace"), FailOn(bad=("r20",)), create("filter_turns", min_turns=2)]
    with pytest.raises(OperatorError, match="r20"):
        ds.lazy(batch_size=5).apply(bad).collect(num_workers=2, mode="process")
    out = ds.lazy(batch_size=5).apply(chain()).collect(num_workers=2, mode="process")
    assert_same_run(out, ds.apply(chain()))
    shm = _POOLS[2].dir
    if shm is not None:  # results were shipped through it and unlinked once read; only the slots stay
        assert all(name.startswith("in-") for name in os.listdir(shm))


def test_augmenter_rows_out(ds):
    out = ds.lazy(batch_size=9).apply([Twice(), create("dedup_exact")]).collect()
    assert out.history()[0].rows_out == 300
    assert_same_run(out, ds.apply([Twice(), create("dedup_exact")]))


def test_plans_are_immutable(ds):
    p = ds.lazy()
    p2 = p.apply(create("clean_whitespace"))
    p3 = p2.apply([create("filter_turns", min_turns=2)])
    assert (len(p.ops), len(p2.ops), len(p3.ops)) == (0, 1, 2)
    assert len(p.collect()) == len(ds)
    assert isinstance(dc.pipeline(ds), Pipeline) and "clean_whitespace" in repr(p2)


@pytest.mark.parametrize("policy", ["skip", "quarantine"])
def test_failed_rows_like_apply(ds, policy):
    ops = [create("clean_whitespace"), FailOn(bad=("r3", "r77")), create("filter_turns", min_turns=2)]
    out = dc.pipeline(ds, on_error=policy, batch_size=8).apply(ops).collect()
    ref = ds.apply(ops, on_error=policy)
    assert_same_run(out, ref)
    assert out.history()[1].failed == 2
    if policy == "quarantine":
        q = out.quarantine.to_arrow()
        assert q.column("id").to_pylist() == ["r3", "r77"]
        assert q.column("_op").to_pylist() == ["test_pipe_fail_on"] * 2
        assert "bad row r3" in q.column("_error")[0].as_py()
    else:
        assert out.quarantine is None


def test_raise_names_operator_row_and_id(ds):
    ops = [create("filter_turns", min_turns=2), FailOn(bad=("r50",))]
    with pytest.raises(OperatorError) as got:
        ds.lazy(batch_size=8).apply(ops).collect()
    with pytest.raises(OperatorError) as want:
        ds.apply(ops)
    assert str(got.value) == str(want.value)
    assert "test_pipe_fail_on" in str(got.value) and "r50" in str(got.value)


def test_columns_checked_before_running(ds):
    class NeedsScore(FailOn):
        name, reads = "test_needs_score", ("score",)

    p = ds.lazy().apply([create("clean_whitespace"), NeedsScore()])
    with pytest.raises(OperatorError, match="test_needs_score.*'score'"):
        p.collect()
    with pytest.raises(DataCopilotError, match="evaluator"):
        ds.lazy().apply(create("dataset_stats"))
    with pytest.raises(DataCopilotError, match="operators"):
        ds.lazy().apply([len])
    with pytest.raises(DataCopilotError, match="on_error"):
        ds.lazy(on_error="ignore")


def test_history_continues_the_dataset(ds):
    base = ds.apply(create("clean_whitespace"))
    out = base.lazy().apply(create("filter_turns", min_turns=2)).collect()
    assert [r.op for r in out.history()] == [r.op for r in base.history()] + ["filter_turns"]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 200), max_size=60), st.integers(1, 20), st.sampled_from(["skip", "quarantine"]))
def test_property_accounting(keys, batch_size, policy):
    ds = dc.MMDataset.from_rows([row(k) for k in keys], schema="MM") if keys else \
        dc.MMDataset.from_rows([row(1)], schema="MM")[:0]
    ops = [FailOn(bad=("r5", "r13")), create("filter_turns", min_turns=2), create("dedup_exact")]
    out = dc.pipeline(ds, on_error=policy, batch_size=batch_size).apply(ops).collect()
    assert_same_run(out, ds.apply(ops, on_error=policy))
    n = len(ds)
    for r in out.history():
        assert r.rows_in == n == r.rows_out + r.n_dropped + r.failed
        n = r.rows_out


def test_running_a_plan_twice_counts_invalid_input_once(tmp_path):
    import json

    import datacopilot as dc

    path = tmp_path / "in.jsonl"
    good = {"id": "a", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    bad = {"id": "b", "conversations": [{"from": "bot", "value": "q"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    plan = dc.pipeline(str(path), schema="MM", on_error="quarantine")
    first, second = plan.collect(), plan.collect()
    assert len(first) == len(second) == 1
    assert len(first.quarantine) == len(second.quarantine) == 1


def test_write_keeps_invalid_input_rows_in_the_quarantine(tmp_path):
    import json

    import datacopilot as dc

    path = tmp_path / "in.jsonl"
    good = {"id": "a", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    bad = {"id": "b", "conversations": [{"from": "bot", "value": "q"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    report = dc.pipeline(str(path), schema="MM", on_error="quarantine").write(str(tmp_path / "out"))
    assert report["rows"] == 1 and report["invalid_input_rows"] == 1 and report["quarantined"] == 1
    q = dc.load(str(tmp_path / "out" / "quarantine")).to_list()
    assert len(q) == 1 and json.loads(q[0]["_row"])["id"] == "b" and "got 'bot'" in q[0]["_error"]
