"""Deduplicators on a real multi-node Ray cluster (a head of 0 CPUs and 3 worker nodes of 1 CPU, loopback only:
:mod:`tests._cluster`) as distributed stages: their keys partitioned across tasks, they give the local executor's
rows and accounting, row for row, while the driver holds only references to the keys."""

import numpy as np
import pytest
from datacopilot.operators import create

import datacopilot as dc
from tests._cluster import ClusterSession, can_isolate
from tests._same import assert_same_run

from ._ops import FailOn

pytestmark = pytest.mark.skipif(not can_isolate(), reason="needs a loopback-only network namespace (unshare -n)")
pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    with ClusterSession(workers=3) as c:
        yield c


def conv(i, q, a):
    return {"id": f"r{i}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}


def text_rows(n=240, seed=0):
    """Rows with exact duplicates (after normalization) and near duplicates (a word changed), in any order."""
    rng = np.random.default_rng(seed)
    words = [f"w{k}" for k in range(40)]
    texts = [" ".join(rng.choice(words, 14)) for _ in range(n // 4)]
    out = []
    for i in range(n):
        t = texts[int(rng.integers(0, len(texts)))].split()
        r = rng.random()
        if r < 0.3:
            t[int(rng.integers(0, len(t)))] = "changed"  # a near duplicate
        q = " ".join(t).upper() if r > 0.8 else " ".join(t)  # the same text, normalized
        out.append(conv(i, q, f"answer {i % 3}"))
    return out


def local_run(ds, ops, on_error="raise"):
    out = ds.apply(ops, on_error=on_error, batch_size=8)
    q = out.quarantine.to_arrow() if out.quarantine is not None else None
    return out.to_arrow(), out.history()[len(ds.history()):], q


def test_the_cluster_is_multi_node_and_listens_on_loopback_only(cluster):
    assert cluster.off_loopback == []
    got = cluster.call("tests._cluster:where", 6)
    assert len(got["workers"]) == 3
    assert len(got["ran_on"]) >= 2  # tasks spread over the worker nodes (the head has no CPU)


def test_exact_and_near_text_dedup_give_the_local_rows_and_accounting(cluster):
    ds = dc.MMDataset.from_rows(text_rows(), schema="MM")
    ops = [create("clean_whitespace"), create("dedup_exact"), create("dedup_near_text", threshold=0.7, ngram=3)]
    want = local_run(ds, ops)
    got = cluster.call("tests.executors._dist:run", ds.to_arrow(), ops)
    assert_same_run(got, want)
    dropped = [sum(r.dropped.values()) for r in want[1]]
    assert dropped[1] > 0 and dropped[2] > 0  # both deduplicators dropped rows
    # and the same as the driver-side decision it replaces
    assert_same_run(cluster.call("tests.executors._dist:run", ds.to_arrow(), ops, barriers="driver"), want)


def test_failed_rows_before_the_barrier_are_quarantined_as_locally(cluster):
    ds = dc.MMDataset.from_rows(text_rows(120, seed=1), schema="MM")
    ops = [FailOn(bad=("r3", "r50", "r51")), create("dedup_exact"), create("dedup_near_text", threshold=0.8)]
    want = local_run(ds, ops, "quarantine")
    assert want[2] is not None and want[2].num_rows > 0
    assert_same_run(cluster.call("tests.executors._dist:run", ds.to_arrow(), ops, "quarantine"), want)


def images(root, n, seed=0):
    """``n`` image paths under ``root`` (near copies of six pictures; every ninth row has none)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    bases = [rng.integers(0, 256, (8, 8)) for _ in range(6)]
    (root / "img").mkdir()
    paths = []
    for i in range(n):
        if i % 9 == 4:
            paths.append(None)
            continue
        g = bases[int(rng.integers(0, 6))]
        if rng.random() < 0.5:
            g = np.clip(g + rng.integers(-8, 9, g.shape), 0, 255)  # a near copy
        Image.fromarray(g.astype(np.uint8)).resize((64, 64), Image.NEAREST).save(root / f"img/{i}.png")
        paths.append(f"img/{i}.png")
    return paths


def test_near_image_dedup_gives_the_local_rows_and_accounting(cluster, tmp_path):
    paths = images(tmp_path, 90)
    rows = [{**conv(i, f"q {i}", "a"), "image": p} for i, p in enumerate(paths)]
    ds = dc.MMDataset.from_rows(rows, schema="MM", root=str(tmp_path))
    ops = [create("dedup_near_image", max_distance=6)]
    want = local_run(ds, ops)
    assert 0 < sum(want[1][0].dropped.values()) < 80
    got = cluster.call("tests.executors._dist:run", ds.to_arrow(), ops, "raise", str(tmp_path))
    assert_same_run(got, want)


def test_the_driver_holds_references_only_whatever_the_number_of_rows(cluster):
    ops = [create("dedup_exact"), create("dedup_near_text", threshold=0.7, ngram=3)]
    states = []
    for n in (160, 1600):  # ten times the rows, the same 20 blocks
        ds = dc.MMDataset.from_rows(text_rows(n, seed=2), schema="MM")
        rows, state = cluster.call("tests.executors._dist:driver_state", ds.to_arrow(), ops, n // 20)
        assert rows == ds.apply(ops).to_arrow().num_rows
        states.append(state)
    for small, big in zip(*states):
        assert small["blocks"] == big["blocks"] == 20
        for s in (small, big):
            assert s["pieces"] == [20] * len(s["pieces"]) and len(s["pieces"]) == 3  # partitions x blocks
            assert all(r == 20 for r in s["routed"])
            assert s["kinds"] <= {"ObjectRef", "NoneType"}  # references, not arrays
            assert s["inline"] == 0 and s["on_head"] == 0  # every key piece and decision in a worker's store
        # the keys grew with the rows (8 bytes a key and 8 its position), in the workers' object stores
        assert big["bytes"] - small["bytes"] >= 16 * (1600 - 160)


def test_killing_a_worker_node_while_the_keys_are_partitioned_still_gives_the_local_rows(cluster):
    # last in the module: it replaces a node of the shared cluster
    ds = dc.MMDataset.from_rows(text_rows(160, seed=3), schema="MM")
    ops = [create("dedup_exact"), create("dedup_near_text", threshold=0.7, ngram=3)]
    want = local_run(ds, ops)
    table, records, quarantine, killed, decided = cluster.call(
        "tests.executors._dist:kill_a_node_while_partitioned", ds.to_arrow(), ops)
    assert killed is not None
    assert decided == 3  # the first barrier lost its keys with the node and ran again; the second ran once
    assert_same_run((table, records, quarantine), want)
