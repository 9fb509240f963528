"""Perceptual image hashes (dHash, pHash) as uint64, and near-duplicates under a Hamming distance.

A perceptual hash summarizes a small grayscale thumbnail, so the same picture resized or recompressed gets the
same or a nearby hash while a different picture does not. dHash sets one bit per pixel of an 8x9 thumbnail that
is darker than its right neighbour; pHash takes the 8x8 lowest frequencies of the 2-D DCT of a 32x32 thumbnail
and sets a bit where a coefficient is above their median. Near-duplicates are found without comparing all pairs:
split into ``d + 1`` bit ranges, two hashes within Hamming distance ``d`` agree exactly on at least one range
(pigeonhole), so each range is a bucket key and only rows sharing one are compared.

Example:
    >>> import numpy as np
    >>> from datacopilot.kernels.phash import dhash, hamming
    >>> g = np.tile(np.arange(9, dtype=np.float32), (2, 8, 1)); g[1, :, 0] = 99
    >>> int(hamming(dhash(g)[0], dhash(g)[1]))
    8
"""

from __future__ import annotations

import io

import numpy as np

from .minhash import cluster

METHODS = {"dhash": (9, 8), "phash": (32, 32)}  # thumbnail (width, height) each method reads


def _pack(bits: np.ndarray) -> np.ndarray:
    """(n, 64) booleans -> (n,) uint64, the first bit the most significant."""
    packed = np.packbits(bits.astype(np.uint8), axis=1)  # (n, 8) uint8, big-endian bit order
    return packed.view(">u8").reshape(-1).astype(np.uint64)


def dhash(gray: np.ndarray) -> np.ndarray:
    """Difference hashes of grayscale thumbnails shaped ``(n, 8, 9)``: bit = pixel < its right neighbour."""
    gray = np.asarray(gray, np.float32)
    if gray.ndim != 3 or gray.shape[1:] != (8, 9):
        raise ValueError(f"dhash expects thumbnails shaped (n, 8, 9), got {gray.shape}")
    bits = gray[:, :, :-1] < gray[:, :, 1:]
    return _pack(bits.reshape(len(gray), 64))


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT32 = _dct_matrix(32)
_DEAD_ZONE = 0.05


def phash(gray: np.ndarray) -> np.ndarray:
    """DCT hashes of grayscale thumbnails shaped ``(n, 32, 32)``: the 8x8 lowest frequencies above their median
    (the constant term left out of the median) by more than 5% of their mean magnitude."""
    gray = np.asarray(gray, np.float64)
    if gray.ndim != 3 or gray.shape[1:] != (32, 32):
        raise ValueError(f"phash expects thumbnails shaped (n, 32, 32), got {gray.shape}")
    coef = np.einsum("ij,njk,lk->nil", _DCT32, gray, _DCT32)[:, :8, :8].reshape(len(gray), 64)
    ac = coef[:, 1:]
    med = np.median(ac, axis=1, keepdims=True)
    # a dead zone above the median: coefficients that are zero by symmetry (flat or mirrored pictures) would
    # otherwise flip with compression noise
    tol = _DEAD_ZONE * np.mean(np.abs(ac), axis=1, keepdims=True)
    return _pack(coef > med + tol)


def thumbnail(image, method: str = "phash") -> np.ndarray:
    """The grayscale float32 thumbnail a method reads, from a PIL image or encoded image bytes (Pillow)."""
    from PIL import Image

    if method not in METHODS:
        raise ValueError(f"`method` must be one of {sorted(METHODS)}, got {method!r}")
    if isinstance(image, (bytes, bytearray, memoryview)):
        image = Image.open(io.BytesIO(image))
    small = image.convert("L").resize(METHODS[method], Image.Resampling.LANCZOS)
    return np.asarray(small, np.float32)


def image_hashes(thumbs: np.ndarray, method: str = "phash") -> np.ndarray:
    """:func:`dhash` or :func:`phash` by name over stacked thumbnails."""
    if method == "dhash":
        return dhash(thumbs)
    if method == "phash":
        return phash(thumbs)
    raise ValueError(f"`method` must be one of {sorted(METHODS)}, got {method!r}")


def hamming(a, b) -> np.ndarray:
    """Bitwise Hamming distance between uint64 hashes (element-wise, broadcasting)."""
    return np.bitwise_count(np.asarray(a, np.uint64) ^ np.asarray(b, np.uint64))


def bucket_keys(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """``(n, max_distance + 1)`` keys: the hash split into that many bit ranges, each masked to its range."""
    if not 0 <= max_distance < 64:
        raise ValueError(f"`max_distance` must be between 0 and 63, got {max_distance!r}")
    parts = max_distance + 1
    edges = np.linspace(0, 64, parts + 1).astype(int)
    hashes = np.asarray(hashes, np.uint64)
    keys = np.empty((len(hashes), parts), np.uint64)
    for i in range(parts):
        width = edges[i + 1] - edges[i]
        mask = np.uint64((1 << 64) - 1 if width == 64 else ((1 << width) - 1) << edges[i])
        keys[:, i] = hashes & mask
    return keys


def near_duplicates(hashes: np.ndarray, max_distance: int = 5, valid: np.ndarray | None = None,
                    max_scan: int = 1000) -> np.ndarray:
    """A boolean mask of rows to drop: each hash within ``max_distance`` bits of an earlier kept cluster.

    ``valid`` marks rows that have a hash (False: the image is missing; such rows are never duplicates).
    Every pair within the distance is found while no bucket holds more than ``max_scan`` rows; past that a
    row is compared with the ``max_scan`` rows before it in the bucket (bounded work on huge datasets).

    >>> near_duplicates(np.array([0b1111, 0b0111, 0xFFFF0000], np.uint64), max_distance=1).tolist()
    [False, True, False]
    """
    hashes = np.asarray(hashes, np.uint64)
    roots = cluster(bucket_keys(hashes, max_distance), hashes.reshape(-1, 1), max_distance, hamming=True,
                    valid=valid, max_scan=max_scan)
    return roots != np.arange(len(roots))
