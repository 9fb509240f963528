"""Masks and positions: a token attends exactly to the earlier tokens of its own segment."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datacopilot.errors import InputError
from datacopilot.kernels import (block_causal_mask, cu_seqlens, dense_from_flashmask, flashmask_row_indices, pack,
                                 position_ids)


@st.composite
def batches(draw):
    total = draw(st.integers(1, 40))
    rows = []
    for _ in range(draw(st.integers(1, 4))):
        lens, left = [], total
        while left and draw(st.booleans()):
            n = draw(st.integers(1, left))
            lens.append(n)
            left -= n
        rows.append(lens)
    return rows, total


def reference_mask(lens, total):
    """Token by token: query i may see key j iff same segment and j <= i; padding sees only itself."""
    seg = []
    for s, n in enumerate(lens):
        seg += [s] * n
    seg += [f"pad{k}" for k in range(total - len(seg))]
    return np.array([[seg[i] == seg[j] and j <= i for j in range(total)] for i in range(total)])


@settings(max_examples=100, deadline=None)
@given(batches())
def test_block_mask_and_flashmask_agree_with_token_rule(batch):
    rows, total = batch
    dense = block_causal_mask(rows, total)
    assert dense.shape == (len(rows), 1, total, total) and dense.dtype == bool
    for b, lens in enumerate(rows):
        np.testing.assert_array_equal(dense[b, 0], reference_mask(lens, total))
    assert dense.any(axis=-1).all()  # no fully masked query row, so softmax never sees all -inf
    fm = flashmask_row_indices(rows, total)
    assert fm.shape == (len(rows), 1, total, 1) and fm.dtype == np.int32
    np.testing.assert_array_equal(dense_from_flashmask(fm), dense)


@settings(max_examples=100, deadline=None)
@given(batches())
def test_positions_and_cu_seqlens(batch):
    rows, total = batch
    for lens in rows:
        pos = position_ids(lens, total)
        expected = [p for n in lens for p in range(n)] + [0] * (total - sum(lens))
        assert pos.tolist() == expected
    cu = cu_seqlens(rows, total)
    assert cu.dtype == np.int32 and cu[0] == 0 and cu[-1] == len(rows) * total
    assert (np.diff(cu) > 0).all()
    # every row boundary is a segment boundary; the real segments appear in order
    assert set(range(0, len(rows) * total + 1, total)) <= set(cu.tolist())
    seg_lens = np.diff(cu).tolist()
    expected = []
    for lens in rows:
        expected += list(lens) + ([total - sum(lens)] if sum(lens) < total else [])
    assert seg_lens == expected


def test_flashmask_matches_paddle_doc_example():
    """Paddle's flashmask_attention docs, figure (b): causal document mask 4 + 3 + 3 over 10 tokens."""
    assert flashmask_row_indices([[4, 3, 3]], 10)[0, 0, :, 0].tolist() == [4, 4, 4, 4, 7, 7, 7, 10, 10, 10]


def test_masks_from_a_plan():
    lengths = np.random.default_rng(0).integers(1, 60, 50)
    plan = pack(lengths, 64)
    rows = [plan.seq_lens(i) for i in range(plan.n_packs)]
    mask = block_causal_mask(rows, 64)
    # attention pairs within a pack are exactly the causal pairs of its samples
    assert int(mask.sum()) == sum(n * (n + 1) // 2 for n in plan.lengths.tolist()) + int(64 * plan.n_packs
                                                                                         - plan.lengths.sum())


@pytest.mark.parametrize("call", [
    lambda: position_ids([3, 4], 5),
    lambda: block_causal_mask([[2], [3, 3]], 5),
    lambda: cu_seqlens([[0, 2]], 5),
    lambda: flashmask_row_indices([[2]], 0),
])
def test_bad_segments_are_named(call):
    with pytest.raises(InputError):
        call()


def test_overfull_row_message():
    with pytest.raises(InputError, match=r"batch_seq_lens\[1\]: segments sum to 6, more than total_length 5"):
        block_causal_mask([[2], [3, 3]], 5)
