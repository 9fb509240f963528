"""Bin packing of token lengths into fixed-length packs (MixToken without cross-sample contamination).

``pack(lengths, max_length)`` decides which samples share a pack; the collator then concatenates them and
:mod:`datacopilot.kernels.masks` builds the block-diagonal mask and per-segment positions. Four strategies:

- ``"exact_fit"`` (default): exact-fit decreasing (:mod:`datacopilot.kernels._exact`). The longest remaining
  sample opens a pack and the room it leaves is closed exactly by one, two or three samples whenever the
  remaining lengths allow it (searched on a count histogram of the lengths), else the longest sample that fits
  goes in and the search repeats. Where samples fit only 2-3 to a pack (LLaVA-like: 576 image tokens + text,
  packs of 2048) it fills about 99% against 93.6% for best-fit decreasing, and it is faster (near O(n)).
- ``"bfd"``: best-fit decreasing. Samples are taken longest first (a counting sort, since lengths
  are integers <= ``max_length``) and each goes into the open pack with the least room that still fits it
  (a segment tree over remaining capacities). O(n log max_length); about 98-99% fill on text-only SFT mixes.
- ``"first_fit"``: the PaddleNLP InTokens / PaddleMIX MixToken baseline, kept faithful to it: samples in input
  order, a single open pack; a sample joins it if it still fits, otherwise the pack is closed and a new one is
  opened with that sample (packs never reopen, so in bin-packing terms this is next-fit).
- ``"stream"``: best-fit decreasing within a bounded window of pending samples (see
  :mod:`datacopilot.kernels.stream`), for shuffled streams of any size in bounded memory.

Samples longer than ``max_length`` are never lost silently: ``overlong="truncate"`` cuts them to
``max_length`` and lists them in ``plan.truncated``; ``overlong="drop"`` leaves them out and lists them in
``plan.dropped``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from datacopilot.errors import InputError

from . import _exact, _jit
from .lengths import OVERLONG, apply_overlong, check_lengths, check_max_length  # noqa: F401 (re-exported)

STRATEGIES = ("exact_fit", "bfd", "first_fit", "stream")
# exact_fit search limits: lengths tried per pair search, and third samples tried per triple search; they bound
# the worst case at O(n * 5 * 128) steps. On the LLaVA-like benchmark lengths (1M samples) any max_scan >= 64 with
# tries 4 (or 32) gives the same 99.25% fill; max_scan 16 with tries 2 gives 98.87%.
EXACT_MAX_SCAN = 128
EXACT_TRIES = 4


@dataclass(frozen=True)
class PackPlan:
    """Which samples go in which pack.

    ``pack_offsets`` (n_packs + 1) are CSR offsets into ``sample_ids``; ``lengths[k]`` is the (possibly
    truncated) length of ``sample_ids[k]``. ``truncated`` and ``dropped`` hold sample ids (input indices).

    Example:
        >>> plan = pack([5, 3, 2, 4], max_length=7)
        >>> [p.tolist() for p in plan.packs()], plan.pack_lengths().tolist(), round(plan.fill_rate, 3)
        ([[0, 2], [3, 1]], [7, 7], 1.0)
    """

    pack_offsets: np.ndarray
    sample_ids: np.ndarray
    lengths: np.ndarray
    truncated: np.ndarray
    dropped: np.ndarray
    max_length: int
    truncated_tokens: int = 0  # tokens cut off by truncation
    dropped_tokens: int = 0  # tokens of dropped samples
    strategy: str = field(default="exact_fit")

    @property
    def n_packs(self) -> int:
        return len(self.pack_offsets) - 1

    def packs(self) -> list[np.ndarray]:
        """The sample ids of each pack, in placement order."""
        return np.split(self.sample_ids, self.pack_offsets[1:-1]) if self.n_packs else []

    def pack_lengths(self) -> np.ndarray:
        """Tokens in each pack (int64, n_packs)."""
        if not self.n_packs:
            return np.zeros(0, np.int64)
        return np.add.reduceat(self.lengths, self.pack_offsets[:-1]).astype(np.int64)

    def seq_lens(self, i: int) -> list[int]:
        """The segment lengths of pack ``i``, as the mask builders take them."""
        return self.lengths[self.pack_offsets[i]:self.pack_offsets[i + 1]].tolist()

    @property
    def fill_rate(self) -> float:
        """Real tokens / (n_packs * max_length); 0.0 for an empty plan."""
        return float(self.lengths.sum()) / (self.n_packs * self.max_length) if self.n_packs else 0.0

    def stats(self) -> dict:
        """Counts for logs and benchmarks."""
        n = len(self.sample_ids)
        return {
            "strategy": self.strategy,
            "samples": n,
            "packs": self.n_packs,
            "tokens": int(self.lengths.sum()),
            "fill_rate": self.fill_rate,
            "samples_per_pack": n / self.n_packs if self.n_packs else 0.0,
            "truncated": len(self.truncated),
            "truncated_tokens": self.truncated_tokens,
            "dropped": len(self.dropped),
            "dropped_tokens": self.dropped_tokens,
        }


def pack(lengths, max_length: int, strategy: str = "exact_fit", window: int = 4096, overlong: str = "truncate",
         seed: int | None = None) -> PackPlan:
    """Assign samples with the given token ``lengths`` to packs of at most ``max_length`` tokens.

    Parameters:
        lengths: positive integer token counts, one per sample, image tokens included (a sample with k images
            counts each image's tokens: ``tokenize_dataset``'s ``length`` column).
        max_length: capacity of a pack.
        strategy: ``"exact_fit"`` (exact-fit decreasing, the tightest), ``"bfd"`` (best-fit decreasing),
            ``"first_fit"`` (input order, the InTokens/MixToken baseline) or ``"stream"`` (best-fit decreasing
            within ``window`` pending samples).
        window: pending samples the ``"stream"`` strategy may hold.
        overlong: ``"truncate"`` or ``"drop"`` for samples longer than ``max_length``.
        seed: if given, the packs come back in a random order drawn from it (exact-fit and best-fit decreasing
            open the packs of the longest samples first, so without a shuffle the pack order follows length).

    Returns:
        a :class:`PackPlan`; every input index is in exactly one pack or in ``plan.dropped``.

    Example:
        >>> plan = pack([300, 2000, 1800, 100, 9000], max_length=2048)
        >>> [p.tolist() for p in plan.packs()], plan.truncated.tolist(), plan.pack_lengths().tolist()
        ([[4], [1], [2, 3], [0]], [4], [2048, 2000, 1900, 300])
    """
    max_length = check_max_length(max_length)
    if strategy not in STRATEGIES:
        raise InputError(f"`strategy` must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}")
    arr = check_lengths(lengths)
    ids, lens, truncated, dropped, cut, lost = apply_overlong(arr, max_length, overlong)
    if strategy == "stream":
        from .stream import pack_stream

        stream = pack_stream(lens, max_length, window=window)
        groups = [ids[g] for g in stream]
        offsets = np.zeros(len(groups) + 1, np.int64)
        np.cumsum([len(g) for g in groups], out=offsets[1:])
        sample_ids = np.concatenate(groups) if groups else np.zeros(0, np.int64)
    elif strategy == "exact_fit":
        offsets, local = _exact.exact_fit(lens, max_length, EXACT_MAX_SCAN, EXACT_TRIES)
        sample_ids = ids[local]
    else:
        if strategy == "bfd":
            order = _jit.sort_desc(lens, max_length)
            bin_of, n_bins = _jit.best_fit(lens, order, max_length)
        else:
            order = np.arange(len(lens), dtype=np.int64)
            bin_of, n_bins = _jit.next_fit(lens, max_length)
        offsets, local = _jit.group(bin_of, order, n_bins)
        sample_ids = ids[local]
    full_len = np.zeros(len(arr), np.int64)
    full_len[ids] = lens
    if seed is not None and len(offsets) > 2:
        offsets, sample_ids = _shuffle_packs(offsets, sample_ids, seed)
    return PackPlan(offsets, sample_ids, full_len[sample_ids], truncated, dropped, max_length, cut, lost, strategy)


def _shuffle_packs(offsets: np.ndarray, sample_ids: np.ndarray, seed: int):
    perm = np.random.default_rng(seed).permutation(len(offsets) - 1)
    sizes = np.diff(offsets)[perm]
    new_offsets = np.zeros_like(offsets)
    np.cumsum(sizes, out=new_offsets[1:])
    # gather each permuted pack's slice: position k of the output belongs to pack perm[j] at offset k - new_offsets[j]
    owner = np.repeat(np.arange(len(perm)), sizes)
    src = offsets[perm][owner] + (np.arange(len(sample_ids)) - new_offsets[:-1][owner])
    return new_offsets, sample_ids[src]
