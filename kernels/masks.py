"""Position ids and attention masks for packed sequences: each segment (sample) sees only its own earlier tokens.

A packed row of ``total_length`` tokens holds segments of the given lengths back to back, then padding. The
builders take ``seq_lens`` (one row) or ``batch_seq_lens`` (a list of rows) and return numpy arrays:

- :func:`position_ids`: 0..len-1 within each segment, 0 on padding.
- :func:`block_causal_mask`: dense bool ``[B, 1, L, L]``, True = may attend, for the CPU (dense) path. A padding
  position attends only to itself, so no softmax row is ever fully masked (no NaN).
- :func:`cu_seqlens`: int32 cumulative segment boundaries over the flattened ``[B * L]`` batch (flash-attn
  varlen style). Each row's padding run is one extra segment, so every row boundary is also a segment boundary
  and ``cu_seqlens[-1] == B * L``.
- :func:`flashmask_row_indices`: Paddle FlashMask ``startend_row_indices`` for ``causal=True``, int32
  ``[B, 1, L, 1]``, the ``attn_mask_startend_row_indices`` PaddleNLP passes to ``flashmask_attention``. Column
  ``j`` holds the row from which (inclusive) column ``j`` is masked below the diagonal: the end of ``j``'s
  segment, as PaddleNLP's zero-padding data builds it (each sample contributes ``[len] * len`` shifted by its
  offset). A padding column ``j`` holds ``j + 1`` (padding attends only to itself, as in the dense mask).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from datacopilot.errors import InputError


def check_row(seq_lens, total_length: int, where: str) -> np.ndarray:
    """One row's segment lengths as int64, each positive and all summing to at most ``total_length``."""
    lens = np.asarray(seq_lens, dtype=np.int64).reshape(-1)
    if lens.size and lens.min() <= 0:
        raise InputError(f"{where}: segment lengths must be positive, got {lens.tolist()}")
    if lens.sum() > total_length:
        raise InputError(f"{where}: segments sum to {int(lens.sum())}, more than total_length {total_length}")
    return lens


def check_total(total_length) -> int:
    """``total_length`` as an int; InputError unless it is a positive integer."""
    if isinstance(total_length, bool) or not isinstance(total_length, (int, np.integer)) or total_length <= 0:
        raise InputError(f"`total_length` must be a positive integer, got {total_length!r}")
    return int(total_length)


def _segment_ids(lens: np.ndarray, total_length: int) -> np.ndarray:
    """Segment index of every position; each padding position gets its own fresh index."""
    used = int(lens.sum())
    seg = np.empty(total_length, np.int64)
    seg[:used] = np.repeat(np.arange(len(lens)), lens)
    seg[used:] = len(lens) + np.arange(total_length - used)
    return seg


def position_ids(seq_lens: Sequence[int] | np.ndarray, total_length: int) -> np.ndarray:
    """Positions restarting at 0 for each segment; padding positions are 0.

    Example:
        >>> position_ids([3, 2], 7).tolist()
        [0, 1, 2, 0, 1, 0, 0]
    """
    total_length = check_total(total_length)
    lens = check_row(seq_lens, total_length, "seq_lens")
    used = int(lens.sum())
    out = np.zeros(total_length, np.int64)
    starts = np.cumsum(lens) - lens
    out[:used] = np.arange(used) - np.repeat(starts, lens)
    return out


def block_causal_mask(batch_seq_lens: Sequence[Sequence[int]], total_length: int) -> np.ndarray:
    """Dense block-diagonal causal mask ``[B, 1, L, L]`` (bool, True = query row may attend to key column).

    Example:
        >>> block_causal_mask([[2, 1]], 4)[0, 0].astype(int).tolist()
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    """
    total_length = check_total(total_length)
    out = np.empty((len(batch_seq_lens), 1, total_length, total_length), bool)
    causal = np.tri(total_length, dtype=bool)
    for b, row in enumerate(batch_seq_lens):
        seg = _segment_ids(check_row(row, total_length, f"batch_seq_lens[{b}]"), total_length)
        np.logical_and(seg[:, None] == seg[None, :], causal, out=out[b, 0])
    return out


def cu_seqlens(batch_seq_lens: Sequence[Sequence[int]], total_length: int) -> np.ndarray:
    """Cumulative segment boundaries (int32) over the flattened batch, padding runs as their own segments.

    Example:
        >>> cu_seqlens([[3, 2], [4]], 6).tolist()
        [0, 3, 5, 6, 10, 12]
    """
    total_length = check_total(total_length)
    bounds = [0]
    for b, row in enumerate(batch_seq_lens):
        lens = check_row(row, total_length, f"batch_seq_lens[{b}]")
        base = b * total_length
        bounds.extend((base + np.cumsum(lens)).tolist())
        if lens.sum() < total_length:
            bounds.append(base + total_length)
    return np.asarray(bounds, np.int32)


def flashmask_row_indices(batch_seq_lens: Sequence[Sequence[int]], total_length: int) -> np.ndarray:
    """FlashMask ``attn_mask_startend_row_indices`` for a causal document mask, int32 ``[B, 1, L, 1]``.

    With ``causal=True``, key column ``j`` is visible to query rows ``j <= i < out[b, 0, j, 0]``.

    Example:
        >>> flashmask_row_indices([[2, 1]], 4)[0, 0, :, 0].tolist()
        [2, 2, 3, 4]
    """
    total_length = check_total(total_length)
    out = np.empty((len(batch_seq_lens), 1, total_length, 1), np.int32)
    for b, row in enumerate(batch_seq_lens):
        lens = check_row(row, total_length, f"batch_seq_lens[{b}]")
        used = int(lens.sum())
        out[b, 0, :used, 0] = np.repeat(np.cumsum(lens), lens)
        out[b, 0, used:, 0] = np.arange(used + 1, total_length + 1)
    return out


def dense_from_flashmask(row_indices: np.ndarray) -> np.ndarray:
    """The dense bool mask ``[B, H, L, L]`` that causal FlashMask row indices ``[B, H, L, 1]`` describe.

    Example:
        >>> dense_from_flashmask(flashmask_row_indices([[2, 1]], 4)).astype(int)[0, 0, 3].tolist()
        [0, 0, 0, 1]
    """
    start = np.asarray(row_indices)[..., 0]  # [B, H, L] per key column
    length = start.shape[-1]
    rows = np.arange(length)[:, None]
    cols = np.arange(length)[None, :]
    return (rows >= cols) & (rows < start[:, :, None, :])


def dense_from_cu_seqlens(cu: np.ndarray, batch: int, total_length: int) -> np.ndarray:
    """The dense bool mask ``[B, 1, L, L]`` that causal varlen attention over ``cu_seqlens`` computes.

    Each ``[cu[i], cu[i + 1])`` range of the flattened batch is one causal sequence. On real tokens this is
    :func:`block_causal_mask`; a padding run of :func:`cu_seqlens` is one sequence, so there a padding position
    sees the padding before it too (outputs nothing reads: no real token attends to padding).

    Example:
        >>> dense_from_cu_seqlens(cu_seqlens([[2]], 4), 1, 4).astype(int)[0, 0, 3].tolist()
        [0, 0, 1, 1]
    """
    cu = np.asarray(cu, np.int64)
    n = batch * total_length
    if cu.ndim != 1 or cu.size < 2 or cu[0] != 0 or cu[-1] != n or (np.diff(cu) <= 0).any():
        raise InputError(f"`cu` must rise strictly from 0 to batch * total_length = {n}, got {cu.tolist()}")
    seq = np.repeat(np.arange(cu.size - 1), np.diff(cu)).reshape(batch, total_length)
    causal = np.tri(total_length, dtype=bool)
    return ((seq[:, :, None] == seq[:, None, :]) & causal)[:, None]
