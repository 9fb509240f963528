"""Image filters on real image files: the demo's generated set and images drawn here."""

import os

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageFilter

import datacopilot as dc
from datacopilot.errors import OperatorError
from datacopilot.operators import create
from datacopilot.operators.image_filters import laplacian_variance
from datacopilot.schemas import encode_image

from .conftest import ids, last, mm


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A directory of images with known properties (relative names), and a dataset over them."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    noise.save(root / "sharp.png")
    noise.filter(ImageFilter.GaussianBlur(5)).save(root / "blurry.png")
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / "tiny.png")
    Image.fromarray(rng.integers(0, 255, (40, 400, 3), dtype=np.uint8)).save(root / "banner.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    names = ["sharp", "blurry", "tiny", "banner", "corrupt", "gone"]
    rows = [mm(n, "<image>\nWhat is this?", "Something.", image=f"{n}.png") for n in names]
    rows.append(mm("text_only", "Hi", "Hello.", image=None))
    return str(root), dc.MMDataset.from_rows(rows, schema="MM", root=str(root))


def test_exists_and_decodes(images):
    _, ds = images
    out = ds.apply(create("filter_image_exists"), num_workers=2, batch_size=3)
    assert ids(out) == ["sharp", "blurry", "tiny", "banner", "text_only"]
    assert last(out).dropped == {"image does not decode": 1, "image missing": 1}


def test_exists_on_the_demo_set_drops_exactly_its_missing_images(tmp_path):
    from datacopilot.demo_data import make_demo_data

    info = make_demo_data(str(tmp_path), n=60, seed=1)
    ds = dc.load(info["path"], schema="MM", invalid="quarantine")
    out = ds.apply(create("filter_image_exists"))
    assert last(out).dropped == {"image missing": info["missing_images"]}
    assert len(out) == len(ds) - info["missing_images"]


def test_resolution(images):
    _, ds = images
    out = ds.apply(create("filter_image_size", min_width=32, min_height=32, max_width=256))
    assert ids(out) == ["sharp", "blurry", "text_only"]
    assert last(out).dropped == {"image smaller than 32x32": 1, "image larger than 256xNone": 1,
                                 "image does not decode": 1, "image missing": 1}
    with pytest.raises(OperatorError, match=r"`min_width` \(300\) must not exceed `max_width` \(200\)"):
        create("filter_image_size", min_width=300, max_width=200)


def test_aspect_ratio(images):
    _, ds = images
    out = ds.apply(create("filter_aspect_ratio", min_ratio=0.5, max_ratio=2.0))
    assert "banner" not in ids(out) and {"sharp", "tiny", "text_only"} <= set(ids(out))
    assert last(out).dropped["aspect ratio above 2.0"] == 1


def test_file_size_on_paths_and_embedded_bytes(images):
    root, ds = images
    small = os.path.getsize(f"{root}/tiny.png")
    assert small < os.path.getsize(f"{root}/sharp.png")
    out = ds.apply(create("filter_file_size", min_bytes=small + 1))
    assert ids(out) == ["sharp", "blurry", "banner", "text_only"]  # file size alone does not decode: corrupt goes
    assert last(out).dropped == {"image file smaller than %d bytes" % (small + 1): 2, "image missing": 1}
    embedded = dc.MMDataset.from_rows([mm("e", "<image>\nq", "a", image=encode_image(Image.open(f"{root}/tiny.png")))],
                                      schema="MM")
    assert len(embedded.apply(create("filter_file_size", max_bytes=10))) == 0
    assert len(embedded.apply(create("filter_file_size", max_bytes=10_000_000))) == 1


def test_blur(images):
    root, ds = images
    op = create("filter_blur", min_variance=100)
    assert op.score(f"{root}/sharp.png") > 1000 > 10 > op.score(f"{root}/blurry.png")
    out = ds.select(["id", "image", "conversations"])[:2].apply(op)
    assert ids(out) == ["sharp"]
    assert last(out).dropped == {"image blurry (Laplacian variance below 100.0)": 1}


def test_laplacian_variance_of_flat_and_edge_images():
    assert laplacian_variance(np.full((10, 10), 7)) == 0.0
    edge = np.zeros((10, 10))
    edge[:, 5:] = 255
    assert laplacian_variance(edge) > 0


def test_root_parameter_overrides_the_dataset_root(images, tmp_path):
    root, ds = images
    moved = dc.MMDataset(ds.to_arrow(), "MM", root=str(tmp_path))  # images are not under this root
    assert ids(moved.apply(create("filter_image_exists"))) == ["text_only"]
    assert len(moved.apply(create("filter_image_exists", root=root))) == 5


def test_messages_rows_with_several_images(images):
    root, _ = images
    rows = [{"id": "both_ok", "images": ["sharp.png", "blurry.png"],
             "messages": [{"role": "user", "content": "<image><image>compare"}, {"role": "assistant", "content": "x"}]},
            {"id": "one_gone", "images": ["sharp.png", "gone.png"],
             "messages": [{"role": "user", "content": "<image><image>compare"}, {"role": "assistant", "content": "x"}]}]
    ds = dc.MMDataset.from_rows(rows, schema="MESSAGES", root=root)
    out = ds.apply(create("filter_image_exists"))
    assert ids(out) == ["both_ok"] and last(out).dropped == {"image missing": 1}


def test_image_filters_need_an_image_column():
    ds = dc.MMDataset(pa.table({"id": ["1"], "caption_text": ["a cat"]}))
    with pytest.raises(OperatorError, match=r"filter_blur: needs column\(s\) 'image' or 'images'"):
        ds.apply(create("filter_blur"))


def test_file_size_of_embedded_images_is_decided_vectorized_as_image_by_image():
    """Every image embedded: sizes are the bytes' lengths (vectorized); the reasons equal judging each image."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from datacopilot.operators.image_filters import ImageFilter
    from datacopilot.schemas.image import IMAGE_ARROW_TYPE

    image = st.one_of(st.none(), st.binary(max_size=12).map(lambda b: {"path": None, "bytes": b}))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.one_of(st.none(), st.lists(image, max_size=3)), min_size=1, max_size=10),
           st.integers(0, 6), st.one_of(st.none(), st.integers(6, 10)), st.booleans())
    def check(images, lo, hi, single):
        if single:  # MM: one image per row
            col, name = pa.array([(r or [None])[0] for r in images], IMAGE_ARROW_TYPE), "image"
        else:
            col, name = pa.array(images, pa.list_(IMAGE_ARROW_TYPE)), "images"
        whole = pa.RecordBatch.from_arrays([col], [name])
        op = create("filter_file_size", min_bytes=lo, max_bytes=hi, num_threads=1)
        for batch in (whole, whole.slice(1)):  # a slice: the image values start past the buffers' first
            keep, reasons = op.keep(batch)
            old_keep, old_reasons = ImageFilter.keep(op, batch)
            assert keep.tolist() == old_keep.tolist() and list(reasons) == list(old_reasons)

    check()
