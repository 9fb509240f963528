"""Groupers as distributed stages on a real multi-node Ray cluster (a head of 0 CPUs and three 1-CPU worker nodes
on loopback, tests/_cluster.py): sort, shuffle and merge_same_image give the local executor's rows, accounting,
quarantine and first failure, and the driver holds nothing that grows with the rows."""

import time

import pytest
from datacopilot.operators import create

import datacopilot as dc
from tests._cluster import ClusterSession, can_isolate
from tests._same import assert_same_run
from tests.executors._dist_group import KillNodeOnce, OwnArrange
from tests.executors._ops import JoinByLetter
from tests.operators.conftest import mm
from tests.operators.test_grouping import scattered

pytestmark = pytest.mark.skipif(not can_isolate(), reason="needs a loopback-only network namespace (unshare -n)")


@pytest.fixture(scope="module")
def cluster():
    with ClusterSession(workers=3) as c:
        yield c


def local(ds, ops, on_error="raise", batch_size=7):
    """The local executor's run (spilled and read back), or its first failure as the cluster call gives it."""
    try:
        return dc.pipeline(ds, batch_size=batch_size, on_error=on_error).apply(ops).collect()
    except dc.errors.OperatorError as e:
        return ("raised", e.op, e.row, e.row_id, str(e).splitlines()[0])


def on_cluster(cluster, ds, ops, on_error="raise", batch_size=7, block_rows=16, inline_bytes=256):
    """The run on the cluster (``inline_bytes``: small, so that a hash stage's groups of blocks are many here)."""
    return cluster.call("tests.executors._dist_group:run", ds.to_arrow(), ops, on_error, batch_size, block_rows,
                        inline_bytes)


def test_ray_listens_on_loopback_only(cluster):
    assert cluster.off_loopback == []


@pytest.mark.parametrize("ops", [
    lambda: [create("sort", by="image.path")],
    lambda: [create("sort", by=["image.path", "id"], descending=True)],
    lambda: [create("shuffle", seed=11)],
    lambda: [create("merge_same_image")],
    lambda: [create("merge_same_image", max_turns=3)],
    lambda: [create("clean_whitespace"), create("shuffle", seed=2), create("merge_same_image", max_turns=2),
             create("sort", by="id", descending=True)],
], ids=["sort", "sort-two-keys-descending", "shuffle", "merge", "merge-capped", "chain"])
def test_each_grouper_gives_the_local_executors_run(cluster, ops):
    ds = dc.MMDataset.from_rows(scattered(200), schema="MM")
    (table, records, quarantine), driver = on_cluster(cluster, ds, ops())
    assert_same_run((table, records, quarantine), local(ds, ops()))
    assert driver["partitions"] > 1 and driver["blocks"] >= 13  # really split: 200 rows in blocks of 16


def test_shuffle_on_the_cluster_is_ds_shuffle(cluster):
    ds = dc.MMDataset.from_rows(scattered(150), schema="MM")
    (table, _, _), _ = on_cluster(cluster, ds, [create("shuffle", seed=5)], block_rows=10)
    assert table.to_pylist() == ds.shuffle(5).to_arrow().to_pylist()


def test_failed_rows_and_failed_merges_as_on_the_local_executor(cluster):
    names = [f"{'abcd'[k % 4]}{k}" if k % 9 else f"{k}z" for k in range(60)]
    ds = dc.MMDataset.from_rows([mm(i, "<image>\nq?", "a") for i in names], schema="MM")
    op = lambda: [JoinByLetter(bad=("b5",), cap=4)]  # noqa: E731  (the groups holding b5 fail)
    for on_error in ("quarantine", "skip"):
        got, _ = on_cluster(cluster, ds, op(), on_error, batch_size=3, block_rows=5)
        assert_same_run(got, local(ds, op(), on_error, batch_size=3))
    assert got[1][-1].failed == 4  # the group b1+b5+b9+b13
    raised, _ = on_cluster(cluster, ds, op(), "raise", batch_size=3, block_rows=5)
    assert raised == local(ds, op(), "raise", batch_size=3) and raised[3] == "b1"
    # a row that fails before the merge (its signature): quarantined, or raised first
    rows = scattered(80)
    rows[33]["conversations"][1]["from"] = "bot"
    bad = dc.MMDataset.from_rows(rows, schema="MM", validate=False)
    merge = lambda: [create("merge_same_image", max_turns=3)]  # noqa: E731
    got, _ = on_cluster(cluster, bad, merge(), "quarantine")
    assert_same_run(got, local(bad, merge(), "quarantine"))
    assert [r["id"] for r in got[2].to_pylist()] == ["r33"]
    raised, _ = on_cluster(cluster, bad, merge(), "raise")
    assert raised == local(bad, merge(), "raise") and raised[2:4] == (33, "r33")


def interleaved(n=40):
    """Rows of four letters in turn: group ``b`` starts at input row 1 and comes out after group ``a``."""
    return dc.MMDataset.from_rows([mm(f"{'abcd'[i % 4]}{i}", "<image>\nq?", "a") for i in range(n)], schema="MM")


def test_a_failed_merge_is_named_by_its_first_rows_input_position(cluster):
    ds = interleaved()
    op = lambda: [JoinByLetter(bad=("c14",), cap=3)]  # noqa: E731  (group c2+c6+c10 merges; c14+c18+c22 fails)
    raised, _ = on_cluster(cluster, ds, op(), "raise", batch_size=3, block_rows=5)
    assert raised == local(ds, op(), "raise", batch_size=3)
    assert raised[2:4] == (14, "c14")  # its row among the grouper's input, not its place in the output


@pytest.mark.parametrize("make", [lambda: create("shuffle", seed=1), lambda: create("sort", by="id"),
                                  lambda: create("merge_same_image")], ids=["shuffle", "sort", "merge"])
def test_the_driver_holds_nothing_per_row(cluster, make):
    """The same blocks with four times the rows: the driver fetched the same bytes and held as many references;
    a grouper decided on the driver fetches bytes that grow with the rows. (Not measured here: task results Ray
    keeps in the driver's memory because they are small; see datacopilot/executors/ray_group.py.)"""
    small, big = (dc.MMDataset.from_rows(scattered(n), schema="MM").to_arrow() for n in (300, 1200))
    a = cluster.call("tests.executors._dist_group:driver_state", small, [make()], 50, 50)
    b = cluster.call("tests.executors._dist_group:driver_state", big, [make()], 200, 200)
    assert a["blocks"] == b["blocks"] == 6 and a["partitions"] == b["partitions"] > 1
    # references: blocks x partitions, and the output blocks (one more or less as the rows fall)
    assert abs(b["refs"] - a["refs"]) <= a["partitions"] and b["fetched_bytes"] <= a["fetched_bytes"] + 64
    assert b["fetched_bytes"] < 2000  # counts of 6 blocks and at most a few sampled keys
    own = [cluster.call("tests.executors._dist_group:driver_state", t, [OwnArrange(by="id")], r, r)
           for t, r in ((small, 50), (big, 200))]
    assert own[0]["partitions"] == 0 and own[1]["fetched_bytes"] > 3 * own[0]["fetched_bytes"] > 0


def test_a_range_stage_keeps_no_rows_in_the_drivers_memory(cluster):
    """Each block's share of one range is under the 100 KiB Ray keeps inline, in the driver's memory: the rows are
    split per group of blocks, so every piece is in a worker's object store; the rows are the local executor's."""
    from tests.executors._dist_group import INLINE_BYTES

    ds = dc.MMDataset.from_rows([mm(f"r{i}", f"<image>\nquestion {i} " + "x" * 1000, "a") for i in range(2400)],
                                schema="MM")
    ops = [create("shuffle", seed=3)]
    got = cluster.call("tests.executors._dist_group:range_pieces", ds.to_arrow(), ops, 200)
    assert got["blocks"] == 12 and got["ranges"] >= 6
    assert 1 < got["groups"] < got["blocks"]  # a block alone: about 37 KB for each of 6 ranges
    assert got["pieces"] == got["groups"] * got["ranges"]
    assert got["inline"] == 0 and got["smallest"] >= INLINE_BYTES
    run, _ = on_cluster(cluster, ds, ops, batch_size=200, block_rows=200, inline_bytes=INLINE_BYTES)
    assert_same_run(run, local(ds, ops, batch_size=200))


def test_the_local_executor_names_a_failed_merge_by_input_position_over_many_buckets(monkeypatch):
    import datacopilot.executors.spill as spill

    monkeypatch.setattr(spill, "BATCH_ROWS", 8)  # 40 rows: buckets of 8 rows, the failed group in a later one
    with pytest.raises(dc.errors.OperatorError) as e:
        dc.pipeline(interleaved(), batch_size=3).apply(JoinByLetter(bad=("d31",), cap=2)).collect()
    assert (e.value.row, e.value.row_id) == (27, "d27")  # the group d27+d31


def test_a_worker_node_killed_in_the_partition_phase(cluster, tmp_path):
    """Last in this module: it leaves the cluster a node short."""
    names = [f"{'abcde'[k % 5]}{k}" for k in range(60)]
    ds = dc.MMDataset.from_rows([mm(i, "<image>\nq?", "a") for i in names], schema="MM")
    marker = tmp_path / "killed"
    got, _ = on_cluster(cluster, ds, [KillNodeOnce(cap=4, marker=str(marker))], batch_size=3, block_rows=4)
    assert marker.exists(), got  # a node really died in a merge
    alive = cluster.call("tests.executors._dist_group:nodes_alive")
    for _ in range(60):  # the head marks the killed node dead once its heartbeats stop: wait for it
        if alive == 2:
            break
        time.sleep(1)
        alive = cluster.call("tests.executors._dist_group:nodes_alive")
    assert alive == 2
    assert_same_run(got, local(ds, [KillNodeOnce(cap=4, marker=str(marker))], batch_size=3))  # (no kill now)
