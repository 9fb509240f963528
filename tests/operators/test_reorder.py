"""``shuffle`` and ``sort`` as dataset-wide pipeline stages: the rows of ``ds.shuffle`` / ``ds.sort`` on every
executor, whatever the batches and blocks, every row exactly once."""

import numpy as np
import pytest
from datacopilot.operators import Grouper, create

import datacopilot as dc
from datacopilot.errors import OperatorError
from datacopilot.executors import get_executor
from tests.executors._ray import executor, ray_session  # noqa: F401  (fixtures: "local" / "ray")

from .conftest import ids, last, mm
from .test_grouping import scattered


def run(ds, ops, executor, batch_size=7, **kw):  # noqa: F811
    ex = get_executor("ray", block_rows=16) if executor == "ray" else executor
    return dc.pipeline(ds, batch_size=batch_size, **kw).apply(ops).collect(ex)


def test_shuffle_is_ds_shuffle_on_each_executor(executor):  # noqa: F811
    ds = dc.MMDataset.from_rows(scattered(90), schema="MM")
    out = run(ds, create("shuffle", seed=5), executor)
    assert out.to_list() == ds.shuffle(5).to_list()
    assert sorted(ids(out)) == sorted(ids(ds)) and ids(out) != ids(ds)
    assert ids(run(ds, create("shuffle", seed=6), executor)) != ids(out)
    assert (last(out).rows_in, last(out).rows_out) == (90, 90)
    # after a filter: a permutation of the rows that reach it
    ops = [create("filter_turns", min_turns=4), create("shuffle", seed=5)]
    assert run(ds, ops, executor).to_list() == ds.apply(ops[0]).shuffle(5).to_list()


def test_sort_is_ds_sort_on_each_executor(executor):  # noqa: F811
    ds = dc.MMDataset.from_rows(scattered(90), schema="MM")
    out = run(ds, create("sort", by="id", descending=True), executor)
    assert out.to_list() == ds.sort("id", reverse=True).to_list()
    by_image = run(ds, create("sort", by="image.path"), executor)
    paths = [r["image"]["path"] if r["image"] else None for r in by_image]
    assert paths == sorted(p for p in paths if p) + [None] * paths.count(None)  # nulls last
    first = {}
    for r in ds:  # stable: rows of one image keep their order
        first.setdefault((r["image"] or {}).get("path"), []).append(r["id"])
    for members in first.values():
        assert [i for i in ids(by_image) if i in members] == members
    two = run(ds, create("sort", by=["image.path", "id"], descending=True), executor)
    with_image = sorted((r for r in ds if r["image"]), key=lambda r: (r["image"]["path"], r["id"]), reverse=True)
    without = sorted((r for r in ds if not r["image"]), key=lambda r: r["id"], reverse=True)
    assert ids(two) == [r["id"] for r in with_image + without]


def test_sort_then_merge_on_each_executor(executor):  # noqa: F811
    ds = dc.MMDataset.from_rows(scattered(90), schema="MM")
    ops = lambda: [create("sort", by="image.path"), create("merge_same_image", max_turns=3)]
    out = run(ds, ops(), executor)
    assert out.to_list() == ds.apply(ops(), batch_size=5).to_list()
    assert [r.rows_out for r in out.history()[-2:]] == [90, len(out)] and len(out) < 60


def test_bad_sort_parameters_and_fields():
    for by in ([], 3, [""], ["id", 4]):
        with pytest.raises(OperatorError, match="`by` must be"):
            create("sort", by=by)
    with pytest.raises(OperatorError, match="`descending` must be"):
        create("sort", descending="yes")
    ds = dc.MMDataset.from_rows([mm("a", "q", "a")], schema="MM")
    with pytest.raises(OperatorError, match="needs column.*'caption'"):
        ds.apply(create("sort", by="caption"))
    with pytest.raises(OperatorError, match="'image.size' is not a field of column 'image'"):
        ds.apply(create("sort", by="image.size"))
    with pytest.raises(OperatorError, match=r"sort: cannot sort by conversations \(list<"):
        dc.pipeline(ds).apply(create("sort", by="conversations")).collect()


class Broken(Grouper):
    """Loses a row in its arrangement."""

    name = "test_broken_arrange"

    def signatures(self, batch):
        return np.zeros((batch.num_rows, 0), np.uint8)

    def arrange(self, parts):
        n = sum(len(p) for p in parts)
        return np.arange(n - 1), np.arange(n)


def test_an_arrangement_that_loses_rows_is_refused():
    ds = dc.MMDataset.from_rows([mm(f"r{i}", "q", "a") for i in range(5)], schema="MM")
    with pytest.raises(OperatorError, match="each of the 5 rows exactly once"):
        ds.apply(Broken())
    with pytest.raises(OperatorError, match="each of the 5 rows exactly once"):
        dc.pipeline(ds, batch_size=2).apply(Broken()).collect()


def test_shuffle_streams_to_shards(tmp_path):
    rows = scattered(60)
    (tmp_path / "in").mkdir()
    for k in range(3):
        dc.MMDataset.from_rows(rows[k * 20:(k + 1) * 20], schema="MM").write(str(tmp_path / "in" / f"p{k}.jsonl"))
    files = sorted(str(p) for p in (tmp_path / "in").glob("*.jsonl"))
    report = dc.pipeline(files, schema="MM", batch_size=8).apply(create("shuffle", seed=2)).write(
        str(tmp_path / "out"), max_rows_per_shard=25)
    got = dc.load(str(tmp_path / "out"), schema="MM")
    assert report["rows"] == 60 and report["shards"] == 3
    assert ids(got) == ids(dc.load(files, schema="MM").shuffle(2))  # (image paths now relative to out/)
