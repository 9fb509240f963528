"""Perceptual hashes on real images drawn with Pillow: resized or recompressed copies collide, other shapes do not."""

import io

import numpy as np
import pytest
from datacopilot.kernels.phash import bucket_keys, dhash, hamming, image_hashes, near_duplicates, phash, thumbnail
from PIL import Image, ImageDraw


def draw(shape: str, size=(256, 192), color=(200, 40, 40)) -> Image.Image:
    img = Image.new("RGB", size, (240, 240, 230))
    d = ImageDraw.Draw(img)
    w, h = size
    if shape == "circle":
        d.ellipse([w * 0.2, h * 0.15, w * 0.7, h * 0.85], fill=color)
    elif shape == "bars":
        for x in range(0, w, w // 6):
            d.rectangle([x, 0, x + w // 12, h], fill=(20, 20, 120))
    elif shape == "triangle":
        d.polygon([(w * 0.9, h * 0.1), (w * 0.1, h * 0.9), (w * 0.9, h * 0.9)], fill=(30, 150, 30))
    elif shape == "scene":  # many random shapes, closer to a photograph
        rng = np.random.default_rng(7)
        for _ in range(25):
            x, y = rng.integers(0, w), rng.integers(0, h)
            box = [x, y, x + rng.integers(10, w // 2), y + rng.integers(10, h // 2)]
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
    return img


def jpeg(img: Image.Image, quality=40) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("method", ["dhash", "phash"])
def test_resized_and_recompressed_copies_collide_and_other_shapes_do_not(method):
    shapes = ["circle", "bars", "triangle", "scene"]
    originals = [png(draw(s)) for s in shapes]
    copies = [jpeg(draw(s).resize((97, 73))) for s in shapes]  # smaller, lossy
    thumbs = np.stack([thumbnail(b, method) for b in originals + copies])
    h = image_hashes(thumbs, method)
    assert h.dtype == np.uint64 and h.shape == (8,)
    for i in range(4):
        assert hamming(h[i], h[i + 4]) <= 5, (shapes[i], int(hamming(h[i], h[i + 4])))
        for j in range(4):
            if j != i:
                assert hamming(h[i], h[j]) > 12, (shapes[i], shapes[j])
    drop = near_duplicates(h, max_distance=5)
    assert drop.tolist() == [False] * 4 + [True] * 4


def test_thumbnail_shapes_and_pil_input():
    img = draw("circle")
    assert thumbnail(img, "dhash").shape == (8, 9)
    assert thumbnail(png(img), "phash").shape == (32, 32)
    with pytest.raises(ValueError, match="method"):
        thumbnail(img, "ahash")


def test_kernels_check_shapes():
    with pytest.raises(ValueError, match=r"\(n, 8, 9\)"):
        dhash(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match=r"\(n, 32, 32\)"):
        phash(np.zeros((1, 8, 9)))
    flat = phash(np.zeros((2, 32, 32)))
    assert flat.tolist() == [0, 0]


def test_bucket_keys_pigeonhole_finds_every_pair_within_distance():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 50, dtype=np.uint64)
    flips = np.zeros(50, np.uint64)
    for i in range(50):  # flip exactly 4 distinct random bits
        for b in rng.choice(64, 4, replace=False):
            flips[i] |= np.uint64(1) << np.uint64(b)
    near = base ^ flips
    h = np.concatenate([base, near])
    assert (hamming(base, near) == 4).all()
    keys = bucket_keys(h, 4)
    assert keys.shape == (100, 5)
    assert ((keys[:50] == keys[50:]).any(axis=1)).all()
    drop = near_duplicates(h, max_distance=4)
    assert not drop[:50].any() and drop[50:].all()
    assert not near_duplicates(h, max_distance=3)[50:].any()


def test_invalid_rows_are_never_duplicates():
    h = np.array([7, 7, 7], np.uint64)
    assert near_duplicates(h, 0, valid=np.array([True, False, True])).tolist() == [False, False, True]
    with pytest.raises(ValueError, match="max_distance"):
        bucket_keys(h, 64)
