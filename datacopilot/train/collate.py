"""Packed batches: several tokenized samples per row, no attention or label across a sample boundary.

A batch is a list of packs (rows); a pack is a list of tokenized samples (dicts with ``input_ids``, ``labels``,
``image_offsets`` and optionally ``pixel_values`` ``[n_images, C, H, W]``), as ``tokenize_dataset`` makes them and
``datacopilot.kernels.pack`` groups them. :class:`PackedCollator` lays each pack's samples back to back into a row
of ``max_length`` tokens, pads the rest, and builds (all numpy):

- ``input_ids`` ``[B, L]`` int64, ``pad_id`` after the last segment.
- ``labels`` ``[B, L]`` int64: the samples' labels (``-100`` outside assistant turns), ``-100`` on padding and
  on each segment's first position.
- ``position_ids`` ``[B, L]`` int64: 0.. within each segment, 0 on padding (``kernels.position_ids``).
- what the chosen attention path needs (``datacopilot.models.attention.Segments.from_batch`` reads it):
  ``attention="varlen"`` (the default) gives the bucket plan of per-segment attention (``kernels.varlen_plan``):
  ``varlen_gather`` and ``varlen_scatter`` int64 indices and ``varlen_buckets`` ``[n, 3]`` int64, no ``[L, L]``
  array; ``"dense"`` gives ``attention_mask`` ``[B, 1, L, L]`` bool (``kernels.block_causal_mask``, True = may
  attend); ``"flashmask"`` gives ``attn_mask_startend_row_indices`` ``[B, 1, L, 1]`` int32
  (``kernels.flashmask_row_indices``); ``"cu_seqlens"`` gives ``cu_seqlens`` int32 over the flattened batch
  (``kernels.cu_seqlens``) and ``max_seqlen`` (its longest sequence).
- images, any number per sample (0..k) and so per pack, flattened over the batch in pack order, then sample
  order, then placeholder order: ``image_pack`` / ``image_segment`` / ``image_offset`` ``[n_img]`` int64 give each
  image's row, its segment within the row (the sample it belongs to) and the position of its first token; it
  fills ``image_offset .. image_offset + image_token_count - 1``. ``pixel_values`` ``[n_img, C, H, W]`` when the
  samples carry them (a text-only sample carries none and adds no image).
- ``seq_lens`` (list of lists of segment lengths), ``n_target_tokens`` (int) and ``fill`` (float, tokens in
  segments / ``B * L``).

Which positions count as targets: labels are aligned with ``input_ids`` and the loss shifts by one, so position
``t - 1`` is trained to predict ``labels[t]`` wherever ``labels[t] != -100``. ``n_target_tokens`` is the number
of positions ``t`` with ``labels[t] != -100`` in the returned (already masked) labels, which equals the number of
terms in the shifted loss. Because every segment's first position is ``-100``, the last token of one sample never
predicts the first token of the next, and ``labels[:, 0]`` (which no position predicts) never counts.

A sample longer than ``max_length`` is cut to ``max_length`` (the packer's ``overlong="truncate"``, which gives it
a pack of its own); an image whose tokens would be cut raises :class:`InputError` (``tokenize_dataset`` drops such
samples with a counted reason first), and so does a pack whose samples add up to more than ``max_length``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from datacopilot.errors import InputError
from datacopilot.kernels import block_causal_mask, cu_seqlens, flashmask_row_indices, position_ids, varlen_plan

IGNORE = -100
ATTENTION = ("varlen", "dense", "flashmask", "cu_seqlens")


class PackedCollator:
    """Build packed batches for the attention path ``attention`` (see the module docs for the output).

    Example
    -------
    >>> coll = PackedCollator(max_length=8)
    >>> s = lambda ids: {"input_ids": ids, "labels": ids, "image_offsets": []}
    >>> b = coll([[s([5, 6, 7]), s([8, 9])]])
    >>> b["labels"].tolist(), b["position_ids"].tolist(), b["n_target_tokens"]
    ([[-100, 6, 7, -100, 9, -100, -100, -100]], [[0, 1, 2, 0, 1, 0, 0, 0]], 3)
    """

    def __init__(self, max_length: int, attention: str = "varlen", pad_id: int = 0,
                 image_token_count: int | None = None):
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
            raise InputError(f"`max_length` must be a positive integer, got {max_length!r}")
        if attention not in ATTENTION:
            raise InputError(f"`attention` must be one of {ATTENTION}, got {attention!r}")
        if isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer)) or pad_id < 0:
            raise InputError(f"`pad_id` must be a non-negative integer, got {pad_id!r}")
        self.max_length = int(max_length)
        self.attention = attention
        self.pad_id = int(pad_id)
        # how many tokens an image spans, to check that no image is cut; None = trust the offsets only
        self.image_token_count = image_token_count

    def __call__(self, samples: Sequence[Sequence[dict]]) -> dict:
        if not samples:
            raise InputError("a batch needs at least one pack, got none")
        B, L = len(samples), self.max_length
        input_ids = np.full((B, L), self.pad_id, np.int64)
        labels = np.full((B, L), IGNORE, np.int64)
        batch_lens: list[list[int]] = []
        image_pack: list[int] = []
        image_segment: list[int] = []
        image_offset: list[int] = []
        pixels: list[np.ndarray] = []
        n_with_pixels = n_images_total = 0
        for b, pack in enumerate(samples):
            if isinstance(pack, dict):
                raise InputError(f"pack {b}: expected a list of samples, got one sample (a dict); wrap it: [[sample]]")
            pos, lens = 0, []
            for k, s in enumerate(pack):
                ids = np.asarray(s["input_ids"], np.int64).reshape(-1)
                lab = np.asarray(s["labels"], np.int64).reshape(-1)
                if ids.shape != lab.shape:
                    raise InputError(f"pack {b} sample {k}: input_ids has {ids.size} tokens, labels {lab.size}")
                n = min(ids.size, L)
                if n == 0:
                    continue  # an empty sample holds nothing; it takes no segment
                if pos + n > L:
                    raise InputError(f"pack {b}: samples add up to more than max_length {L} "
                                     f"(lengths {[len(x['input_ids']) for x in pack]})")
                input_ids[b, pos:pos + n] = ids[:n]
                labels[b, pos:pos + n] = lab[:n]
                labels[b, pos] = IGNORE
                offs = [int(o) for o in (s.get("image_offsets") or [])]
                span = self.image_token_count or 1
                for i, o in enumerate(offs):
                    if o < 0 or o + span > n:
                        raise InputError(f"pack {b} sample {k}: image {i} at offset {o} does not fit in its "
                                         f"{n} kept tokens (max_length {L}); drop the sample before packing")
                    image_pack.append(b)
                    image_segment.append(len(lens))
                    image_offset.append(pos + o)
                pv = s.get("pixel_values")
                n_images_total += len(offs)
                if pv is not None:
                    pv = np.asarray(pv)
                    if pv.shape[0] != len(offs):
                        raise InputError(f"pack {b} sample {k}: {pv.shape[0]} pixel_values for {len(offs)} images")
                    n_with_pixels += len(offs)
                    pixels.extend(pv)
                lens.append(n)
                pos += n
            batch_lens.append(lens)
        out = {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": np.stack([position_ids(lens, L) for lens in batch_lens]),
            "image_pack": np.asarray(image_pack, np.int64),
            "image_segment": np.asarray(image_segment, np.int64),
            "image_offset": np.asarray(image_offset, np.int64),
            "seq_lens": batch_lens,
            "n_target_tokens": int((labels != IGNORE).sum()),
            "fill": float(sum(map(sum, batch_lens)) / (B * L)),
        }
        if self.attention == "varlen":
            plan = varlen_plan(batch_lens, L)
            out.update(varlen_gather=plan.gather, varlen_scatter=plan.scatter, varlen_buckets=plan.buckets)
        elif self.attention == "dense":
            out["attention_mask"] = block_causal_mask(batch_lens, L)
        elif self.attention == "flashmask":
            out["attn_mask_startend_row_indices"] = flashmask_row_indices(batch_lens, L)
        else:
            out["cu_seqlens"] = cu_seqlens(batch_lens, L)
            out["max_seqlen"] = int(np.diff(out["cu_seqlens"]).max())
        if n_with_pixels:
            if n_with_pixels != n_images_total:
                raise InputError(f"{n_images_total - n_with_pixels} of {n_images_total} images have no pixel_values")
            out["pixel_values"] = np.stack(pixels)
        return out
