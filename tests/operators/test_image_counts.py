"""image_counts counts a row's images from the column's validity or list lengths, as the list view of the column
(schemas.image.as_image_lists) counts them, for every shape an image column takes."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datacopilot.operators._conv import image_counts
from datacopilot.schemas.image import IMAGE_ARROW_TYPE, as_image_lists


def _reference(col) -> list:
    return pc.fill_null(pc.list_value_length(as_image_lists(col)), 0).to_pylist()


def test_counts_equal_the_list_view_for_each_column_shape():
    img = {"path": "a.png", "bytes": None}
    columns = {
        "image": [pa.array([img, None, img], IMAGE_ARROW_TYPE), pa.array(["a.png", None, "b.png"]),
                  pa.array([img, img], IMAGE_ARROW_TYPE), pa.array([[img, img], None, []], pa.list_(IMAGE_ARROW_TYPE)),
                  pa.chunked_array([pa.array([img, None], IMAGE_ARROW_TYPE), pa.array([None], IMAGE_ARROW_TYPE)])],
        "images": [pa.array([[img], None, [img, img, img]], pa.list_(IMAGE_ARROW_TYPE))],
    }
    for name, cols in columns.items():
        for col in cols:
            table = pa.table({name: col})
            got = image_counts(table.to_batches()[0] if table.column(name).num_chunks == 1 else table)
            assert got.dtype == np.int64
            assert got.tolist() == _reference(col), (name, col.type)


def test_no_image_column_counts_zero():
    assert image_counts(pa.table({"id": ["a", "b"]}).to_batches()[0]).tolist() == [0, 0]
