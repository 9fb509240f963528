"""Mixing several datasets by ratio, deterministically under a seed.

``mix([(captions, 0.7), (vqa, 0.3)], seed=0)`` draws row indices from each dataset so that the mixture holds the
ratios exactly (largest-remainder rounding of ``n * ratio``), then shuffles the rows together. A dataset asked for
more rows than it has is repeated whole (each repetition in its own random order) before the remainder is drawn,
so up-sampling never over-weights some rows by chance. The same inputs and seed always give the same mixture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from datacopilot.errors import InputError

if TYPE_CHECKING:
    from datacopilot.dataset import MMDataset


def mix_counts(sizes: Sequence[int], ratios: Sequence[float], n: int | None = None) -> list[int]:
    """How many rows each dataset contributes to a mixture of ``n`` rows with the given ratios.

    With ``n=None`` the mixture is as large as possible without repeating any row: ``min(size / share)``.
    The counts sum to ``n`` exactly (largest remainder).

    >>> mix_counts([1000, 100], [0.7, 0.3], n=10)
    [7, 3]
    >>> mix_counts([1000, 100], [0.7, 0.3])
    [233, 100]
    """
    ratios = [float(r) for r in ratios]
    for i, r in enumerate(ratios):
        if not np.isfinite(r) or r <= 0:
            raise InputError(f"ratios[{i}]: expected a positive number, got {r!r}")
    for i, s in enumerate(sizes):
        if s <= 0:
            raise InputError(f"datasets[{i}]: cannot mix an empty dataset (0 rows)")
    total = sum(ratios)
    shares = np.array(ratios) / total
    if n is None:
        n = int(np.floor(min(s / p for s, p in zip(sizes, shares)) + 1e-9))
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InputError(f"`n` must be a non-negative integer, got {n!r}")
    exact = shares * n
    counts = np.floor(exact + 1e-9).astype(np.int64)
    short = int(n - counts.sum())
    if short > 0:  # largest remainders first; ties go to the earlier dataset
        order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
        for i in order[:short]:
            counts[i] += 1
    return counts.tolist()


def mix_indices(sizes: Sequence[int], ratios: Sequence[float], seed: int, n: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(source, row)`` int64 arrays: the k-th mixed row is row ``row[k]`` of dataset ``source[k]``.

    >>> src, row = mix_indices([5, 5], [0.5, 0.5], seed=0, n=4)
    >>> sorted(np.bincount(src).tolist())
    [2, 2]
    """
    counts = mix_counts(sizes, ratios, n)
    rng = np.random.default_rng(seed)
    sources, rows = [], []
    for i, (size, count) in enumerate(zip(sizes, counts)):
        full, rest = divmod(count, size)
        picked = [rng.permutation(size) for _ in range(full)]
        picked.append(rng.choice(size, rest, replace=False))
        idx = np.concatenate(picked).astype(np.int64)
        sources.append(np.full(len(idx), i, np.int64))
        rows.append(idx)
    source = np.concatenate(sources) if sources else np.zeros(0, np.int64)
    row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    perm = rng.permutation(len(source))
    return source[perm], row[perm]


def mix(parts: Sequence[tuple["MMDataset", float]], seed: int = 0, n: int | None = None) -> "MMDataset":
    """One dataset mixing ``parts`` (pairs of dataset and ratio) in the given ratios, shuffled under ``seed``.

    Datasets of one schema keep it; datasets of different schemas are all converted to MESSAGES (system/user/
    assistant messages and a list of images), which holds what any of the built-in schemas hold. Ratios need not
    sum to 1; they are normalized.

    >>> mixed = mix([(captions, 0.7), (vqa, 0.3)], seed=0, n=1000)  # doctest: +SKIP
    """
    from datacopilot.dataset import MMDataset

    if not parts:
        raise InputError("`parts` must hold at least one (dataset, ratio) pair")
    datasets, ratios = [], []
    for i, part in enumerate(parts):
        if not isinstance(part, (tuple, list)) or len(part) != 2 or not isinstance(part[0], MMDataset):
            raise InputError(f"parts[{i}]: expected a (MMDataset, ratio) pair, got {part!r}")
        datasets.append(part[0])
        ratios.append(part[1])
    if any(d.schema != datasets[0].schema for d in datasets):
        datasets = [d if d.schema.name == "MESSAGES" else d.convert("MESSAGES") for d in datasets]
    source, row = mix_indices([len(d) for d in datasets], ratios, seed, n)
    # take each dataset's rows, concatenate them, and put them in the mixed order with one more take
    taken = [datasets[i][row[source == i]] for i in range(len(datasets))]
    position = np.empty(len(source), np.int64)
    start = 0
    for i in range(len(datasets)):
        where = np.flatnonzero(source == i)
        position[where] = np.arange(start, start + len(where))
        start += len(where)
    merged = taken[0].concat(*taken[1:]) if len(taken) > 1 else taken[0]
    return merged[position]


__all__ = ["mix", "mix_counts", "mix_indices"]
