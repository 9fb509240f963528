"""The Ray executor gives the rows and the per-operator accounting of the local executor (ds.apply)."""

import subprocess
import sys

import pyarrow as pa
import pytest
from datacopilot.operators import create
from hypothesis import given, settings
from hypothesis import strategies as st

import datacopilot as dc
from datacopilot.errors import OperatorError
from datacopilot.executors.ray import RayOptions, run_ops_on_ray, stateful

from ._ops import CountSetup, DieOnce, FailOn, NearTextWithSetup, Twice


def mm(i, *turns):
    conv = [{"from": "human" if k % 2 == 0 else "gpt", "value": t} for k, t in enumerate(turns)]
    return {"id": f"r{i}", "image": "img/0.png", "conversations": conv}


def rows(n=40):
    out = []
    for i in range(n):
        if i % 7 == 3:
            out.append(mm(i, "only a question"))  # one turn: filter_turns drops it
        elif i % 5 == 1:
            out.append(mm(i, "what is   this?", "a cat"))  # whitespace cleaned, then a duplicate of others
        elif i % 11 == 2:
            out.append(mm(i, "describe it", "x"))  # answer too short for filter_length
        else:
            out.append(mm(i, f"question {i}  here", f"answer number {i}"))
    return out


def records(ds_or_list):
    recs = ds_or_list.history() if hasattr(ds_or_list, "history") else ds_or_list
    return [(r.op, r.rows_in, r.rows_out, r.dropped, r.failed) for r in recs]


def same_as_local(ds, ops, on_error="raise", batch_size=6, options=None):
    local = ds.apply(ops, on_error=on_error)
    options = options or RayOptions(block_rows=1)  # blocks of batch_size rows: many blocks on small data
    table, recs, quarantine = run_ops_on_ray(ds, ops, on_error, batch_size=batch_size, options=options)
    assert table.to_pylist() == local.to_arrow().to_pylist()
    assert records(recs) == records(local.history()[len(ds.history()):])
    return table, recs, quarantine, local


def same_error(got: OperatorError, want: OperatorError):
    """The same operator, row (among the operator's input), id and message, raised where the hook raised."""
    assert (got.op, got.row, got.row_id) == (want.op, want.row, want.row_id)
    assert str(got).splitlines()[0] == str(want).splitlines()[0]
    assert got.tb.splitlines()[-3:] == want.tb.splitlines()[-3:]


def test_builtin_chain_same_rows_and_accounting(ray_session):
    ds = dc.MMDataset.from_rows(rows(), schema="MM")
    ops = [create("clean_whitespace"), create("filter_turns", min_turns=2),
           create("filter_length", role="assistant", min_length=2), create("dedup_exact")]
    table, recs, _, _ = same_as_local(ds, ops)
    by_op = {r.op: r for r in recs}
    assert by_op["filter_turns"].n_dropped > 0 and by_op["filter_length"].n_dropped > 0
    assert by_op["dedup_exact"].n_dropped > 0  # the cleaned "what is this?" rows collapse to one
    assert recs[0].rows_in == 40 and recs[-1].rows_out == table.num_rows
    for r in recs:
        assert r.rows_in == r.rows_out + r.n_dropped + r.failed


def test_failures_quarantine_skip_and_raise(ray_session):
    ds = dc.MMDataset.from_rows(rows(20), schema="MM")
    ops = [FailOn(bad=("r4", "r9")), create("filter_turns", min_turns=2), FailOn(bad=("r12",))]
    _, recs, quarantine, local = same_as_local(ds, ops, on_error="quarantine")
    assert [r.failed for r in recs] == [2, 0, 1]
    assert quarantine.to_pylist() == local.quarantine.to_arrow().to_pylist()
    assert quarantine.column("_op").to_pylist() == ["test_fail_on"] * 3
    assert "bad row r9" in quarantine.column("_error")[1].as_py()
    _, _, skipped, _ = same_as_local(ds, ops, on_error="skip")
    assert skipped is None
    with pytest.raises(OperatorError, match=r"test_fail_on at row 10 .*'r12'.*bad row r12") as got:
        run_ops_on_ray(ds, ops[1:], "raise", batch_size=6)
    with pytest.raises(OperatorError) as want:
        ds.apply(ops[1:])
    same_error(got.value, want.value)


@settings(max_examples=8, deadline=None)
@given(st.lists(st.integers(0, 30), max_size=40), st.integers(1, 12), st.sampled_from(["skip", "quarantine"]))
def test_property_same_as_local(ray_session, keys, batch_size, policy):
    data = [mm(k, f"q {k % 9}", f"a {k % 9}") if k % 4 else mm(k, "one turn") for k in keys]
    ds = dc.MMDataset.from_rows(data, schema="MM") if data else dc.MMDataset.from_rows([mm(0, "x")], schema="MM")[:0]
    ops = [FailOn(bad=("r5", "r13")), Twice(), create("filter_turns", min_turns=2), create("dedup_exact")]
    _, recs, quarantine, local = same_as_local(ds, ops, on_error=policy, batch_size=batch_size)
    assert recs[1].rows_out == 2 * recs[1].rows_in
    if policy == "quarantine" and local.quarantine is not None:
        assert quarantine.to_pylist() == local.quarantine.to_arrow().to_pylist()
    else:
        assert quarantine is None


def test_stateful_operator_runs_in_an_actor_pool(ray_session, tmp_path):
    log = tmp_path / "setup.log"
    op = CountSetup(log=str(log))
    assert stateful(op) and not stateful(create("clean_whitespace"))
    ds = dc.MMDataset.from_rows(rows(30), schema="MM")
    table, _, _ = run_ops_on_ray(ds, [op], batch_size=5, options=RayOptions(concurrency=1))
    assert table.column("tag").to_pylist() == ["ready"] * 30
    assert table.column("id").to_pylist() == ds.to_arrow().column("id").to_pylist()
    assert len(log.read_text().splitlines()) == 1  # six blocks, one actor: setup ran once


def test_killed_worker_is_retried_without_loss_or_duplicates(ray_session, tmp_path):
    marker = tmp_path / "died"
    ds = dc.MMDataset.from_rows(rows(30), schema="MM")
    ops = [create("clean_whitespace"), DieOnce(marker=str(marker)), create("filter_turns", min_turns=2)]
    local = ds.apply([ops[0], ops[2]])
    table, recs, _ = run_ops_on_ray(ds, ops, batch_size=5)
    assert marker.exists()  # a worker really died
    assert table.to_pylist() == local.to_arrow().to_pylist()
    assert [r.rows_in for r in recs] == [30, 30, 30] and recs[2].rows_out == len(local)


def test_partitioned_dedups_in_the_stage_tasks_after_a_dying_worker_and_after_an_actor_pool(ray_session, tmp_path):
    """A deduplicator closing a stateless stage scatters its keys in the stage's tasks (a worker of one dies and
    Ray runs it again); one with state runs in an actor pool and a task per block scatters after it: the rows and
    accounting are the local executor's, and those of the driver-side barriers."""
    def text(g, changed=0):  # 20 words of group g, the first ``changed`` of them replaced
        return " ".join(["other"] * changed + [f"w{g}x{k}" for k in range(changed, 20)])

    # per group of 13: the row, an exact copy once whitespace is cleaned, a near copy (one word changed)
    data = [mm(i, [text(i % 13), text(i % 13).replace(" ", "   ", 2), text(i % 13, 1)][i % 3], "ok")
            for i in range(60)]
    ds = dc.MMDataset.from_rows(data, schema="MM")
    marker = tmp_path / "died"
    ops = [create("clean_whitespace"), DieOnce(marker=str(marker)), create("dedup_exact"),
           NearTextWithSetup(threshold=0.7, ngram=3), create("dedup_near_text", threshold=0.5, ngram=2)]
    assert stateful(ops[3]) and not stateful(ops[2])
    local = ds.apply([op for op in ops if not isinstance(op, DieOnce)])
    for barriers in ("partitioned", "driver"):
        marker.unlink(missing_ok=True)
        table, recs, _ = run_ops_on_ray(ds, ops, batch_size=5, options=RayOptions(block_rows=1, barriers=barriers))
        assert marker.exists()  # a worker really died in the stage before the first barrier
        assert table.to_pylist() == local.to_arrow().to_pylist()
        assert [r for r in records(recs) if r[0] != "test_die_once"] == records(local.history())
        assert [sum(r.dropped.values()) > 0 for r in recs[2:4]] == [True, True]


def test_files_read_in_parallel_tasks(ray_session, tmp_path):
    data = rows(24)
    for k in range(3):
        dc.MMDataset.from_rows(data[k * 8:(k + 1) * 8], schema="MM").write(str(tmp_path / f"part{k}.jsonl"))
    ops = [create("filter_turns", min_turns=2), create("dedup_near_text", threshold=0.9)]
    local = dc.load(sorted(str(p) for p in tmp_path.glob("*.jsonl")), schema="MM").apply(ops)
    table, recs, _ = run_ops_on_ray(str(tmp_path / "*.jsonl"), ops, schema="MM", batch_size=5)
    assert table.column("id").to_pylist() == local.to_arrow().column("id").to_pylist()
    assert records(recs) == records(local.history()[-2:])


def test_missing_ray_raises_missing_dependency():
    code = ("import sys; sys.modules['ray'] = None\n"
            "from datacopilot.executors.ray_executor import RayExecutor\n"
            "try:\n    RayExecutor()\nexcept ImportError as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "MissingDependencyError ray is not installed: pip install 'datacopilot[ray]'"


def test_stages_fuse_stateless_runs_and_close_them_with_a_dedup(tmp_path):
    from datacopilot.executors.ray import stages

    ops = [create("clean_whitespace"), create("filter_turns"), create("dedup_exact"), create("dedup_near_text"),
           CountSetup(log=str(tmp_path / "log")), create("filter_length", role="assistant"), Twice()]
    assert stages(ops, RayOptions()) == [(0, 3), (3, 4), (4, 5), (5, 7)]
    gpu = RayOptions(resources={"filter_turns": {"num_gpus": 1}})  # other resources: a stage of its own
    assert stages(ops, gpu) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 7)]


@pytest.mark.parametrize("policy", ["quarantine", "raise"])
def test_blocks_of_several_batches_same_as_local(ray_session, policy):
    """Blocks of 16 rows given to the operators 5 at a time: the rows, the accounting, the failed row raised."""
    ds = dc.MMDataset.from_rows(rows(60), schema="MM")
    ops = [create("clean_whitespace"), FailOn(bad=("r17", "r44")), create("filter_turns", min_turns=2),
           create("dedup_exact"), create("dedup_near_text", threshold=0.9)]
    if policy == "raise":
        with pytest.raises(OperatorError) as want:
            ds.apply(ops)
        with pytest.raises(OperatorError) as got:
            run_ops_on_ray(ds, ops, "raise", batch_size=5, options=RayOptions(block_rows=16))
        same_error(got.value, want.value)
        return
    _, recs, quarantine, local = same_as_local(ds, ops, policy, batch_size=5, options=RayOptions(block_rows=16))
    assert recs[1].failed == 2 and recs[2].n_dropped > 0 and recs[3].n_dropped > 0
    assert quarantine.to_pylist() == local.quarantine.to_arrow().to_pylist()


def test_each_block_carries_one_event_row_with_its_accounting(ray_session):
    """A block's accounting travels in one event row; merged in block order, it is the local executor's."""
    from datacopilot.engine import Accounting
    from datacopilot.executors import ray_stages as rs
    from datacopilot.executors.ray import execute

    ds = dc.MMDataset.from_rows(rows(60), schema="MM")
    ops = [create("clean_whitespace"), create("filter_turns", min_turns=2), FailOn(bad=("r8", "r50")),
           create("dedup_exact")]
    ray, refs, ops, _, _ = execute(ds.to_arrow(), ops, "quarantine", batch_size=5, options=RayOptions(block_rows=20))
    parts = [rs.split(b) for b in ray.get(refs)]
    assert len(refs) == 3 and [ev.num_rows for _, ev in parts] == [1, 1, 1]
    assert all(ev.column(rs.PAYLOAD).null_count == 1 for _, ev in parts)  # the dedup's keys cleared once applied
    accs = [rs.accounting(ev, Accounting(ops, "quarantine")) for _, ev in parts]
    assert [a.ops[0].rows_in for a in accs] == [20, 20, 20]
    assert [a.ops[3].rows_out for a in accs] == [live.num_rows for live, _ in parts]
    local = ds.apply(ops, on_error="quarantine")
    merged = rs.accounting(pa.concat_tables([ev for _, ev in parts]), Accounting(ops, "quarantine"))
    assert records(merged.records()) == records(local.history()[len(ds.history()):])
    assert merged.take_quarantine().to_pylist() == local.quarantine.to_arrow().to_pylist()
