"""A deduplicator's decision split across partitions of its keys drops exactly the rows the decision over all rows
drops, whatever the blocks and the number of partitions."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from datacopilot.engine import dedup_parts as dp
from datacopilot.kernels.minhash import lsh_duplicates
from datacopilot.kernels.phash import near_duplicates


class Exact:
    near, banded = False, False


class Banded:
    near, banded = True, True


class Image:
    near, banded = True, False

    def __init__(self, max_distance):
        self.p = {"max_distance": max_distance}


def partitioned(op, keys, cuts, parts):
    """Scatter each block (``keys[cuts[i]:cuts[i + 1]]``) by partition, then gather each partition's pieces with
    global positions (the block's offset plus the row), as the executor's tasks do."""
    gathered = [[] for _ in range(parts)]
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        for p, (k, rows, extra) in enumerate(dp.scatter(op, keys[lo:hi], parts)):
            assert (np.diff(rows) >= 0).all()  # in row order
            gathered[p].append((k, rows + lo, extra))
    out = []
    for pieces in gathered:
        k = np.concatenate([x[0] for x in pieces])
        pos = np.concatenate([x[1] for x in pieces])
        extra = None if pieces[0][2] is None else np.concatenate([x[2] for x in pieces])
        out.append((k, pos, extra))
    return out


def cuts_of(n, draw_cuts):
    return np.array([0, *sorted(c for c in draw_cuts if c < n), n])


def test_first_wins_drops_every_later_holder_of_a_key_but_not_a_row_holding_it_twice():
    keys = np.array([7, 7, 5, 7, 5, 9], np.uint64)
    pos = np.array([4, 4, 1, 2, 8, 0])  # row 4 holds key 7 twice; row 2 holds it first
    assert dp.first_wins(keys, pos).tolist() == [4, 8]
    assert dp.first_wins(np.zeros(0, np.uint64), np.zeros(0, np.int64)).tolist() == []


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 200), st.integers(1, 4), st.integers(1, 6), st.lists(st.integers(0, 200), max_size=5),
       st.integers(0, 2**31))
def test_partitioned_banded_keys_drop_what_the_seen_set_drops(n, bands, parts, cuts, seed):
    keys = np.random.default_rng(seed).integers(0, max(2, n // 3), (n, bands)).astype(np.uint64)
    want = lsh_duplicates(keys)  # the online rule, fed all rows
    got = [dp.first_wins(k, pos) for k, pos, _ in partitioned(Banded, keys, cuts_of(n, cuts), parts)]
    assert dp.drop_mask(n, got).tolist() == want.tolist()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.integers(1, 6), st.lists(st.integers(0, 200), max_size=5), st.integers(0, 2**31))
def test_partitioned_exact_keys_keep_the_first_row_of_each_key(n, parts, cuts, seed):
    keys = np.random.default_rng(seed).integers(0, max(2, n // 2), n).astype(np.uint64)
    want = np.ones(n, bool)
    want[np.unique(keys, return_index=True)[1]] = False
    got = [dp.first_wins(k, pos) for k, pos, _ in partitioned(Exact, keys, cuts_of(n, cuts), parts)]
    assert dp.drop_mask(n, got).tolist() == want.tolist()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.integers(0, 8), st.integers(1, 5), st.sampled_from([1, 2, 3, 1000]),
       st.lists(st.integers(0, 300), max_size=4), st.integers(0, 2**31))
def test_partitioned_image_hashes_drop_what_the_clustering_kernel_drops(n, dist, parts, max_scan, cuts, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, 6, dtype=np.uint64)
    flips = np.zeros(n, np.uint64)
    for _ in range(3):  # a few random bits flipped: chains of near hashes, across buckets
        flips ^= (np.uint64(1) << rng.integers(0, 64, n).astype(np.uint64)) * rng.integers(0, 2, n).astype(np.uint64)
    hashes = base[rng.integers(0, 6, n)] ^ flips
    valid = rng.random(n) > 0.15  # rows without an image: hash 0, never anyone's duplicate, but in bucket 0
    hashes[~valid] = 0
    sigs = np.stack([hashes, valid.astype(np.uint64)], axis=1)
    want = near_duplicates(hashes, dist, valid=valid, max_scan=max_scan)
    a, b = [], []
    for k, pos, extra in partitioned(Image(dist), sigs, cuts_of(n, cuts), parts):
        x, y = dp.bucket_pairs(k, pos, extra, dist, max_scan)
        assert (x < y).all()
        a.append(x)
        b.append(y)
    got = dp.cluster_drops(np.concatenate(a), np.concatenate(b))
    assert dp.drop_mask(n, [got]).tolist() == want.tolist()


def test_a_cluster_drops_all_but_its_smallest_position_even_when_joined_through_a_later_one():
    # 1 joins 0 only through 2: the kernel's clusters (union-find) drop 1 as well
    assert dp.cluster_drops(np.array([0, 1]), np.array([2, 2])).tolist() == [1, 2]


def test_dropped_positions_go_back_to_their_blocks_as_rows():
    offsets = np.array([0, 3, 3, 7])
    parts = dp.by_block(np.array([1, 3, 6]), offsets)
    assert [p.tolist() for p in parts] == [[1], [], [0, 3]]
    assert dp.drop_mask(4, [parts[2], np.array([3])]).tolist() == [True, False, False, True]
