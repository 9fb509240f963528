"""A grouper's decision split across partitions (datacopilot.engine.partitions) gives the arrangement decided over
all rows at once, whatever the blocks and the number of partitions: sort and shuffle range-partitioned, the groups
of merge_same_image hash-partitioned by key then laid out by leader."""

import numpy as np
import pyarrow as pa
import pytest
from datacopilot.operators import create
from hypothesis import given, settings
from hypothesis import strategies as st

from datacopilot.engine import partitions as pt
from datacopilot.engine.grouping import arranged, layout, order_keys, shuffle_keys
from tests.executors._ops import JoinByLetter


def cut(n, sizes):
    """Block boundaries of ``n`` rows in blocks of the given sizes (cycled)."""
    out, at, i = [0], 0, 0
    while at < n:
        at = min(n, at + sizes[i % len(sizes)])
        out.append(at)
        i += 1
    return out


def by_ranges(op, parts_sigs, blocks, parts):
    """The range-partitioned order, as the Ray stages compute it: samples -> bounds -> ranges -> each sorted."""
    sigs = [op.order_by(p, np.arange(a, b)) for p, (a, b) in zip(parts_sigs, zip(blocks[:-1], blocks[1:]))]
    keys = [pt.with_positions(s, np.arange(a, b)) for s, (a, b) in zip(sigs, zip(blocks[:-1], blocks[1:]))]
    samples = pa.concat_tables([k.take(pa.array(pt.sample_at(k.num_rows, 3))) for k in keys])
    bounds = pt.range_bounds(op, samples, parts)
    assert bounds.num_rows <= parts - 1
    ranges = [[] for _ in range(bounds.num_rows + 1)]
    for k in keys:
        which = pt.range_of(op, k, bounds)
        for q in range(len(ranges)):
            ranges[q].append(k.filter(pa.array(which == q)))
    order = []
    for pieces in ranges:
        t = pa.concat_tables(pieces)
        order += t.column(pt.POS).to_numpy()[pt.sort_range(op, t)].tolist()
    return order


values = st.one_of(st.none(), st.integers(-3, 3))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(values, st.sampled_from(["a", "b", None, "c"])), min_size=1, max_size=60),
       st.lists(st.integers(1, 9), min_size=1, max_size=4), st.integers(1, 7), st.booleans())
def test_a_range_partitioned_sort_is_the_sort_of_all_rows(rows, sizes, parts, descending):
    op = create("sort", by=["x", "s"], descending=descending)
    table = pa.table({"x": pa.array([r[0] for r in rows], pa.int64()), "s": [r[1] for r in rows]})
    blocks = cut(len(rows), sizes)
    sigs = [op.signatures(table.slice(a, b - a).to_batches()[0]) for a, b in zip(blocks[:-1], blocks[1:])]
    want, _ = arranged(op, sigs, len(rows))
    assert by_ranges(op, sigs, blocks, parts) == want.tolist()
    # the order is the stable sort: ties in input order, nulls last
    ref = table.sort_by([("x", "descending" if descending else "ascending"),
                         ("s", "descending" if descending else "ascending")])
    assert table.take(pa.array(want)).equals(ref)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 300), st.lists(st.integers(1, 50), min_size=1, max_size=3), st.integers(1, 9),
       st.integers(0, 2**64 - 1))
def test_a_range_partitioned_shuffle_is_the_shuffle_of_all_rows(n, sizes, parts, seed):
    op = create("shuffle", seed=seed)
    blocks = cut(n, sizes)
    sigs = [np.zeros((b - a, 0), np.uint8) for a, b in zip(blocks[:-1], blocks[1:])]
    want, _ = arranged(op, sigs, n)
    assert sorted(want.tolist()) == list(range(n))
    assert want.tolist() == np.argsort(shuffle_keys(seed, np.arange(n)), kind="stable").tolist()
    if n:
        assert by_ranges(op, sigs, blocks, parts) == want.tolist()


def test_the_shuffle_rule_is_a_seeded_permutation_of_positions():
    a, b = shuffle_keys(3, np.arange(1000)), shuffle_keys(4, np.arange(1000))
    assert len(np.unique(a)) == 1000 and not np.array_equal(np.argsort(a), np.argsort(b))
    assert np.array_equal(shuffle_keys(3, np.arange(400, 410)), a[400:410])  # a row's key is its own
    # spread: each tenth of the positions lands about evenly over the output (not a rotation of the input)
    dest = np.empty(1000, np.int64)
    dest[np.argsort(a)] = np.arange(1000)
    assert all(abs(np.mean(dest[i:i + 100]) - 500) < 120 for i in range(0, 1000, 100))


def by_hash(op, sigs, blocks, parts):
    """The hash-partitioned groups, as the Ray stages compute them: leaders per key partition, rows by range of
    their leader, each range laid out by leader."""
    sigs = np.asarray(sigs, np.uint64).reshape(-1, 2)
    n = len(sigs)
    lead = np.arange(n)
    keyed = np.flatnonzero(sigs[:, 0] != 0)
    which = pt.hash_of(sigs[keyed, 0], parts)
    for p in range(parts):
        rows = keyed[which == p]  # in input order, from every block
        lead[rows] = pt.leaders(rows, sigs[rows, 0], sigs[rows, 1], op.capacity)
    cuts = pt.output_cuts(np.diff(blocks), parts)
    order, sizes = [], []
    rng = pt.range_index(cuts, lead)
    for q in range(len(cuts) - 1):
        mine = np.flatnonzero(rng == q)
        o, offs = layout(lead[mine])
        order += mine[o].tolist()
        sizes += np.diff(offs).tolist()
    return order, sizes


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 3)), max_size=80),
       st.lists(st.integers(1, 12), min_size=1, max_size=3), st.integers(1, 6), st.sampled_from([None, 1, 3, 5]))
def test_hash_partitioned_groups_are_the_groups_of_all_rows(rows, sizes, parts, cap):
    op = JoinByLetter(cap=cap)
    sigs = np.array([[k * 7919, s] for k, s in rows], np.uint64).reshape(-1, 2)
    want, offsets = arranged(op, [sigs], len(rows))
    got, group_sizes = by_hash(op, sigs, cut(len(rows), sizes), parts)
    assert got == want.tolist() and group_sizes == np.diff(offsets).tolist()


def test_output_cuts_fall_on_block_boundaries():
    assert pt.output_cuts(np.array([5, 5, 5, 5]), 2).tolist() == [0, 10, 20]
    assert pt.output_cuts(np.array([100, 1, 1]), 3).tolist() == [0, 100, 102]  # a big block: a range alone
    assert pt.output_cuts(np.array([0, 7, 0]), 4).tolist() == [0, 7]  # fewer ranges than asked, none empty
    assert pt.range_index(np.array([0, 10, 20]), np.array([0, 9, 10, 19])).tolist() == [0, 0, 1, 1]


def test_partition_count_grows_with_blocks_not_rows():
    assert pt.partition_count(3, 8) == 3  # never more than the blocks
    assert pt.partition_count(100, 2) == 7  # two per worker, or 16 blocks a partition at most
    assert pt.partition_count(10_000, 64) == 625


def test_range_bounds_are_sampled_rows_in_order():
    op = create("sort", by="x")
    keys = pt.with_positions(pa.table({"x": [5, 1, 4, 1, 3, 9, 2, 6]}), np.arange(8))
    bounds = pt.range_bounds(op, keys, 4)
    assert bounds.column("x").to_pylist() == [2, 4, 6] and bounds.column(pt.POS).to_pylist() == [6, 2, 7]
    which = pt.range_of(op, keys, bounds)
    assert which.tolist() == [2, 0, 1, 0, 1, 3, 0, 2]  # a boundary's own row in its range
    assert pt.range_bounds(op, keys.slice(0, 0), 4).num_rows == 0


def test_order_keys_name_what_cannot_be_sorted():
    op = create("sort", by=["id", "id"])
    assert op.names == ["id#0", "id#1"]
    keys = order_keys(op, [pa.table({"k0": [2, 1], "k1": [0, 0]})], start=5)
    assert keys.column_names == ["id#0", "id#1"]
    bad = create("sort", by="conversations")
    with pytest.raises(Exception, match=r"sort: cannot sort by conversations \(list<"):
        arranged(bad, [pa.table({"k0": pa.array([[1], [2]])})], 2)
