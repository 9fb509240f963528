"""Deduplication across the whole dataset: exact (normalized text, image bytes) and near-duplicate (MinHash-LSH
over the conversation text, perceptual hashes of images). The first row of each group is kept.

Only hashes are kept in memory while the rows stream past: 8 bytes a row for exact dedup, 8 bytes per LSH band
for near-duplicate text (72 for the default 9 bands), 16 bytes for images. (PaddleMIX DataCopilot's text dedup only
looks inside one sample; these look across the dataset.)

* ``dedup_exact``: ``by="text"`` hashes the conversation (or caption) text, lowercased with whitespace
  collapsed; ``by="image"`` the encoded bytes of the row's images (rows without an image are never image
  duplicates of each other); ``by="both"`` the two together (text alone for rows without images).
* ``dedup_near_text``: MinHash-LSH over word (or character) shingles: a row is dropped when it shares a band
  with an earlier row (dropped rows too: near-duplicate chains join). The bands and rows per band are chosen for
  ``threshold`` (:func:`~datacopilot.kernels.minhash.lsh_params`); candidates are not verified against the
  estimated Jaccard similarity (that would need every full signature in memory), so, as with datasketch's
  ``MinHashLSH``, a pair of similarity ``s`` is taken with probability ``1 - (1 - s**rows)**bands``: 0.93 at
  0.9, 0.40 at 0.8, 0.08 at 0.7, 0.01 at 0.6 for the default 0.8 / 128 perms (9 bands of 13).
* ``dedup_near_image``: rows whose first image's perceptual hash is within ``max_distance`` bits.

A row whose image is missing or does not decode fails with that error (run ``filter_image_exists`` first to drop
such rows instead).

>>> from datacopilot.operators import create
>>> ds.apply([create("dedup_exact"), create("dedup_near_text", threshold=0.8)])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datacopilot.kernels.hashing import combine, normalized_keys
from datacopilot.kernels.minhash import UNITS, lsh_duplicates, lsh_keys, lsh_params, signatures
from datacopilot.kernels.phash import METHODS, image_hashes, near_duplicates, thumbnail
from datacopilot.schemas import read_image_bytes

from ._conv import conversation_column, turn_counts, turns
from .base import Deduplicator, check_choice, check_float, check_int
from .image_filters import row_images
from .registry import register

_TEXT_READS = "conversations|messages|caption"


def row_texts(op, batch: pa.RecordBatch, sep: str = "\n") -> pa.Array:
    """One string per row: its turns' texts joined by ``sep`` (or its caption), vectorized."""
    names = batch.schema.names
    if "conversations" not in names and "messages" not in names and "caption" in names:
        return pc.fill_null(batch.column("caption"), "")
    conversation_column(op, batch)  # a clear error for PAIRS and other shapes
    t = turns(op, batch)
    offsets = np.zeros(batch.num_rows + 1, np.int32)
    np.cumsum(turn_counts(op, batch), out=offsets[1:])
    lists = pa.ListArray.from_arrays(pa.array(offsets), t.text.cast(pa.string()))
    return pc.binary_join(lists, sep)


def text_keys(op, batch: pa.RecordBatch) -> np.ndarray:
    """One uint64 per row: the key of its normalized text (the turns joined by spaces, which normalized is the
    same text as joined by newlines), hashed from the turns' string buffers (:func:`normalized_keys`)."""
    names = batch.schema.names
    if "conversations" not in names and "messages" not in names and "caption" in names:
        return normalized_keys(batch.column("caption"))
    conversation_column(op, batch)  # a clear error for PAIRS and other shapes
    t = turns(op, batch)
    return normalized_keys(t.text, t.offsets)


def _unique_keys(n: int) -> np.ndarray:
    """Fresh random keys: rows that must never be anyone's duplicate (no image to compare)."""
    return np.random.default_rng().integers(0, 2**63, n, dtype=np.uint64) | np.uint64(1 << 63)


class _ImageReader:
    uses_root = True

    def _read(self, value) -> bytes:
        return read_image_bytes(value, self.p["root"])

    @staticmethod
    def _check_root(op, root):
        if root is not None and not isinstance(root, str):
            raise op.error(f"`root` must be a directory or URL prefix, got {root!r}")
        return root


@register
class ExactDedup(_ImageReader, Deduplicator):
    """Drop rows whose normalized text (or image bytes, or both) equal an earlier row's."""

    name = "dedup_exact"
    reads = (_TEXT_READS,)
    uses_root = True

    def __init__(self, by: str = "text", root: str | None = None):
        super().__init__(by=check_choice(self, "by", by, ("text", "image", "both")),
                         root=self._check_root(self, root))
        if by != "text":
            self.reads = (_TEXT_READS, "image|images") if by == "both" else ("image|images",)

    def _image_keys(self, batch: pa.RecordBatch, alone_unique: bool) -> np.ndarray:
        """One key per row from its images' bytes, in order; a row without images gets a fresh random key
        (never a duplicate) when ``alone_unique``, else 0."""
        rows = row_images(batch)
        keys = _unique_keys(len(rows)) if alone_unique else np.zeros(len(rows), np.uint64)
        for i, images in enumerate(rows):
            if images:
                h = hashlib.blake2b(digest_size=8)
                for img in images:
                    h.update(hashlib.blake2b(self._read(img), digest_size=8).digest())
                keys[i] = int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)  # the top bit marks random keys
        return keys

    def keys(self, batch: pa.RecordBatch) -> np.ndarray:
        by = self.p["by"]
        if by == "image":
            return self._image_keys(batch, alone_unique=True)
        text = text_keys(self, batch)
        return text if by == "text" else combine(text, self._image_keys(batch, alone_unique=False))


@register
class NearTextDedup(Deduplicator):
    """Drop rows whose text shares a MinHash-LSH band with an earlier row's (tuned for Jaccard >= threshold).

    Its signatures are the rows' band keys, ``(n, bands)`` uint64, and ``banded`` tells executors that a row is
    a duplicate exactly when one of its keys belongs to an earlier row, so they decide it as rows stream past
    with a :class:`~datacopilot.kernels.hashing.KeySet` of the keys seen (as for exact keys), with the result of
    :meth:`duplicates` over all rows at once.
    """

    name = "dedup_near_text"
    reads = (_TEXT_READS,)
    near = True
    banded = True

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, unit: str = "word",
                 seed: int = 1):
        super().__init__(threshold=check_float(self, "threshold", threshold, 0.01, 0.99),
                         num_perm=check_int(self, "num_perm", num_perm, 2, 1024),
                         ngram=check_int(self, "ngram", ngram, 1, 64), unit=check_choice(self, "unit", unit, UNITS),
                         seed=check_int(self, "seed", seed, 0))
        self.bands, self.rows = lsh_params(self.p["threshold"], self.p["num_perm"])

    def signatures(self, batch: pa.RecordBatch) -> np.ndarray:
        """The band keys of the rows, ``(n, bands)`` uint64 (:func:`~datacopilot.kernels.minhash.lsh_keys`)."""
        p = self.p
        sigs = signatures(row_texts(self, batch), num_perm=p["num_perm"], ngram=p["ngram"], unit=p["unit"],
                          seed=p["seed"])
        return lsh_keys(sigs, self.bands, self.rows)

    def duplicates(self, sigs: np.ndarray) -> np.ndarray:
        return lsh_duplicates(np.asarray(sigs, np.uint64).reshape(-1, self.bands))


@register
class NearImageDedup(_ImageReader, Deduplicator):
    """Drop rows whose first image's perceptual hash is within `max_distance` bits of an earlier row's."""

    name = "dedup_near_image"
    reads = ("image|images",)
    near = True
    hashed_buckets = True

    def __init__(self, method: str = "phash", max_distance: int = 5, root: str | None = None):
        super().__init__(method=check_choice(self, "method", method, tuple(METHODS)),
                         max_distance=check_int(self, "max_distance", max_distance, 0, 32),
                         root=self._check_root(self, root))

    def signatures(self, batch: pa.RecordBatch) -> np.ndarray:
        """``(n, 2)`` uint64: the hash and 1, or 0 and 0 for a row without an image."""
        method = self.p["method"]
        out = np.zeros((batch.num_rows, 2), np.uint64)
        rows = [i for i, imgs in enumerate(row_images(batch)) if imgs]
        if rows:
            images = row_images(batch)
            thumbs = np.stack([self._thumb(images[i][0]) for i in rows])
            out[rows, 0] = image_hashes(thumbs, method)
            out[rows, 1] = 1
        return out

    def _thumb(self, value) -> np.ndarray:
        from datacopilot.errors import InputError

        data = self._read(value)
        try:
            return thumbnail(data, self.p["method"])
        except Exception as e:  # Pillow raises many types for corrupt data
            name = value if isinstance(value, str) else (value.get("path") or "<bytes>")
            raise InputError(f"image {name!r} does not decode: {e}") from e

    def duplicates(self, sigs: np.ndarray) -> np.ndarray:
        sigs = np.asarray(sigs, np.uint64).reshape(-1, 2)
        return near_duplicates(sigs[:, 0], self.p["max_distance"], valid=sigs[:, 1] == 1)
