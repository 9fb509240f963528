"""Packing a stream of lengths with bounded memory: best-fit decreasing within a window of pending samples.

The stream fills a buffer of at most ``window`` pending samples. When the buffer is full, its samples are
packed by best-fit decreasing; packs at least ``min_fill`` full are emitted, and so are the next fullest ones
until at most ``window // 2`` samples remain. Those (the least-filled packs' samples) stay pending and are
packed again with the samples that arrive next. At the end of the stream everything left is emitted. So no
more than ``window`` samples are ever held, every round emits at least half a window, and a shuffled stream of
any size is packed nearly as tightly as a global best-fit decreasing would.
"""

from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator

import numpy as np

from datacopilot.errors import InputError

from . import _jit
from .lengths import apply_overlong, check_lengths, check_max_length


class PackStream:
    """Iterator over packs (int64 arrays of stream positions: the i-th length of the input is sample i).

    Attributes, updated as the stream is consumed: ``truncated`` and ``dropped`` (stream positions of overlong
    samples), ``truncated_tokens``, ``dropped_tokens``, ``samples`` (lengths read), ``packs`` (packs emitted),
    ``max_pending`` (the most samples held at once; never more than ``window``).

    Example:
        >>> stream = PackStream(iter([5, 3, 2, 4, 7, 1]), max_length=7, window=4)
        >>> sorted(sorted(p.tolist()) for p in stream)
        [[0, 2], [1, 3], [4], [5]]
    """

    def __init__(self, lengths: Iterable[int] | np.ndarray, max_length: int, window: int = 4096,
                 overlong: str = "truncate", min_fill: float = 0.98):
        self.max_length = check_max_length(max_length)
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 2:
            raise InputError(f"`window` must be an integer >= 2, got {window!r}")
        if not 0.0 <= min_fill <= 1.0:
            raise InputError(f"`min_fill` must be between 0 and 1, got {min_fill!r}")
        apply_overlong(np.zeros(0, np.int64), self.max_length, overlong)  # validates `overlong`
        self.window, self.overlong, self.min_fill = int(window), overlong, float(min_fill)
        self.truncated: list[int] = []
        self.dropped: list[int] = []
        self.truncated_tokens = self.dropped_tokens = 0
        self.samples = self.packs = self.max_pending = 0
        if isinstance(lengths, np.ndarray):
            self._array, self._iter = lengths, None
        else:
            self._array, self._iter = None, iter(lengths)
        self._packs = self._run()

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        out = next(self._packs)
        self.packs += 1
        return out

    def _read(self, k: int) -> np.ndarray:
        if self._array is not None:
            chunk = self._array[self.samples:self.samples + k]
        else:
            chunk = np.asarray(list(islice(self._iter, k)))
        return check_lengths(chunk, offset=self.samples)

    def _run(self) -> Iterator[np.ndarray]:
        ids = np.zeros(0, np.int64)
        lens = np.zeros(0, np.int64)
        exhausted = False
        while not exhausted:
            room = self.window - len(ids)
            chunk = self._read(room)
            exhausted = len(chunk) < room
            base = self.samples
            self.samples += len(chunk)
            keep, clens, trunc, drop, cut, lost = apply_overlong(chunk, self.max_length, self.overlong)
            self.truncated.extend((trunc + base).tolist())
            self.dropped.extend((drop + base).tolist())
            self.truncated_tokens += cut
            self.dropped_tokens += lost
            ids = np.concatenate([ids, keep + base])
            lens = np.concatenate([lens, clens])
            self.max_pending = max(self.max_pending, len(ids))
            if len(ids) == 0 or (len(ids) < self.window and not exhausted):
                continue
            emit, offsets, local, bin_of = self._round(lens, final=exhausted)
            placed = ids[local]
            bounds = offsets.tolist()
            emitted = np.zeros(len(offsets) - 1, bool)
            emitted[emit] = True
            kept = ~emitted[bin_of]
            ids, lens = ids[kept], lens[kept]
            for p in emit.tolist():
                yield placed[bounds[p]:bounds[p + 1]]

    def _round(self, lens: np.ndarray, final: bool):
        """Best-fit decreasing over the pending samples: (packs to emit, CSR offsets, local ids, pack of each)."""
        order = _jit.sort_desc(lens, self.max_length)
        bin_of, n_bins = _jit.best_fit(lens, order, self.max_length)
        offsets, local = _jit.group(bin_of, order, n_bins)
        if final:
            return np.arange(n_bins), offsets, local, bin_of
        fill = np.add.reduceat(lens[local], offsets[:-1]) / self.max_length
        by_fill = np.argsort(-fill, kind="stable")
        sizes = np.diff(offsets)[by_fill]
        left_before = len(lens) - np.cumsum(sizes) + sizes
        take = (fill[by_fill] >= self.min_fill) | (left_before > self.window // 2)
        m = int(np.argmin(take)) if not take.all() else len(take)
        return np.sort(by_fill[:m]), offsets, local, bin_of


def pack_stream(lengths: Iterable[int] | np.ndarray, max_length: int, window: int = 4096,
                overlong: str = "truncate", min_fill: float = 0.98) -> PackStream:
    """Pack a stream of token lengths with at most ``window`` samples pending; yields packs as they close.

    Each pack is an int64 array of stream positions (0 for the first length read). Overlong samples follow
    ``overlong`` and are listed on the returned iterator's ``truncated`` / ``dropped`` attributes.

    Example:
        >>> stream = pack_stream((n % 7 + 1 for n in range(100)), max_length=16, window=32)
        >>> packs = list(stream)
        >>> sum(len(p) for p in packs), stream.max_pending <= 32
        (100, True)
    """
    return PackStream(lengths, max_length, window=window, overlong=overlong, min_fill=min_fill)
