"""The varlen plan: buckets of segments whose causal attention is exactly the block-diagonal mask, at sum(si^2) cost."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datacopilot.errors import InputError
from datacopilot.kernels import (block_causal_mask, bucket_lengths, cu_seqlens, dense_from_cu_seqlens, pack,
                                 varlen_plan)


@st.composite
def batches(draw):
    total = draw(st.integers(1, 70))
    rows = []
    for _ in range(draw(st.integers(1, 4))):
        lens, left = [], total
        while left and draw(st.booleans()):
            n = draw(st.integers(1, left))
            lens.append(n)
            left -= n
        rows.append(lens)
    return rows, total


def implied_mask(plan, batch, total):
    """Query slot i of a bucket sees key slot j <= i of the same segment; map real slots back to positions."""
    n = batch * total
    out = np.zeros((n, n), bool)
    for m, count, first in plan.buckets.tolist():
        idx = plan.gather[first:first + count * m].reshape(count, m)
        for row in idx:
            for i in range(m):
                for j in range(i + 1):
                    if row[i] < n and row[j] < n:
                        out[row[i], row[j]] = True
                    elif row[i] < n:
                        raise AssertionError(f"a real query at slot {i} sees the filler slot {j}")
    full = np.zeros((batch, 1, total, total), bool)
    for b in range(batch):
        full[b, 0] = out[b * total:(b + 1) * total, b * total:(b + 1) * total]
    assert out.sum() == full.sum(), "a query sees a key of another row"
    return full


@settings(max_examples=120, deadline=None)
@given(batches())
def test_plan_attends_exactly_as_the_block_mask(batch):
    rows, total = batch
    plan = varlen_plan(rows, total)
    n = len(rows) * total
    assert plan.gather.dtype == plan.scatter.dtype == np.int64 and plan.scatter.shape == (n,)
    np.testing.assert_array_equal(plan.gather[plan.scatter], np.arange(n))   # every position reads itself back
    real = plan.gather[plan.gather < n]
    assert sorted(real.tolist()) == list(range(n))                           # each exactly once
    m = plan.buckets[:, 0]
    assert (np.diff(m) > 0).all() and (m <= total).all()
    assert plan.buckets[-1, 2] + plan.buckets[-1, 0] * plan.buckets[-1, 1] == len(plan.gather)
    np.testing.assert_array_equal(implied_mask(plan, len(rows), total), block_causal_mask(rows, total))


@settings(max_examples=100, deadline=None)
@given(batches())
def test_cu_seqlens_attend_as_the_block_mask_on_real_tokens(batch):
    """What flash_attn_unpadded computes over cu_seqlens: the block mask on every real query row; a padding row
    sees only padding (the padding run is one sequence there)."""
    rows, total = batch
    implied = dense_from_cu_seqlens(cu_seqlens(rows, total), len(rows), total)
    dense = block_causal_mask(rows, total)
    for b, lens in enumerate(rows):
        used = sum(lens)
        np.testing.assert_array_equal(implied[b, 0, :used], dense[b, 0, :used])
        assert not implied[b, 0, used:, :used].any()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=30), st.integers(1, 8192))
def test_bucket_lengths_bound_the_waste(lengths, total):
    lengths = [min(n, total) for n in lengths]
    m = bucket_lengths(lengths, total)
    for n, b in zip(lengths, m.tolist()):
        assert n <= b <= total
        if n == 1:
            assert b == 1
        elif n > 8:
            assert b < 1.25 * n
        else:
            assert b == min(8, total)


def test_cost_follows_the_sum_of_squares_not_the_pack_length():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(200), 1.0, 400).astype(int), 8, 4096)
    plan_packs = pack(lengths, 4096)
    rows = [plan_packs.seq_lens(i) for i in range(plan_packs.n_packs)]
    plan = varlen_plan(rows, 4096)
    squares = int((np.asarray(lengths, np.int64) ** 2).sum())
    assert plan.cost <= 1.5625 * squares + 64 * len(lengths)
    assert plan.cost < 0.5 * len(rows) * 4096 ** 2       # well under dense L^2 per pack
    assert len(plan.buckets) <= 40                      # a few dozen batched matmuls, not one per segment


def test_a_full_row_is_one_bucket_of_its_length():
    plan = varlen_plan([[16], [16]], 16)
    assert plan.buckets.tolist() == [[16, 2, 0]] and plan.cost == 2 * 256


def test_bad_rows_are_named():
    with pytest.raises(InputError, match=r"batch_seq_lens\[1\]: segments sum to 6"):
        varlen_plan([[2], [3, 3]], 5)
