"""Checks of the packer's inputs and its overlong policy, shared by :mod:`datacopilot.kernels.packing` and
:mod:`datacopilot.kernels.stream` (kept apart so neither imports the other back).

>>> check_lengths([3, 5]).tolist(), apply_overlong(check_lengths([3, 9]), 8, "truncate")[1].tolist()
([3, 5], [3, 8])
"""

from __future__ import annotations

import numpy as np

from datacopilot.errors import InputError

OVERLONG = ("truncate", "drop")


def check_max_length(max_length) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length <= 0:
        raise InputError(f"`max_length` must be a positive integer, got {max_length!r}")
    return int(max_length)


def check_lengths(lengths, offset: int = 0) -> np.ndarray:
    """``lengths`` as a 1-D int64 array of positive integers, or an InputError naming the first bad entry
    (its index plus ``offset``, for chunks of a stream)."""
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise InputError(f"`lengths` must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if bad.size:
            raise InputError(f"lengths[{bad[0] + offset}]: expected an integer length, got {arr[bad[0]]!r}")
    elif arr.dtype.kind not in "iu":
        raise InputError(f"`lengths` must hold integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero(arr <= 0)
    if bad.size:
        raise InputError(f"lengths[{bad[0] + offset}]: expected a positive length, got {int(arr[bad[0]])} "
                         f"({bad.size} non-positive length(s) in all)")
    return arr


def apply_overlong(lengths: np.ndarray, max_length: int, overlong: str):
    """(kept ids, their lengths, truncated ids, dropped ids, truncated tokens, dropped tokens)."""
    if overlong not in OVERLONG:
        raise InputError(f"`overlong` must be one of {', '.join(map(repr, OVERLONG))}, got {overlong!r}")
    over = np.flatnonzero(lengths > max_length)
    none = np.zeros(0, np.int64)
    if over.size == 0:
        return np.arange(len(lengths), dtype=np.int64), lengths, none, none, 0, 0
    if overlong == "truncate":
        cut = int((lengths[over] - max_length).sum())
        return np.arange(len(lengths), dtype=np.int64), np.minimum(lengths, max_length), over, none, cut, 0
    keep = np.flatnonzero(lengths <= max_length)
    return keep, lengths[keep], none, over, 0, int(lengths[over].sum())
