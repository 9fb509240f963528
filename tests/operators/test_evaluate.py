"""Dataset statistics (checked by hand on a small dataset) and the describe() report files."""

import json
import os
import re

import numpy as np
import pytest
from datacopilot.operators import create
from datacopilot.operators.evaluate import summarize
from datacopilot.operators.report import _draw_pillow, describe
from datacopilot.operators.run import evaluate
from PIL import Image

import datacopilot as dc
from datacopilot.errors import OperatorError

from .conftest import mm


@pytest.fixture
def small(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (64, 32), "red").save(tmp_path / "img/a.png")
    Image.new("RGB", (100, 50), "blue").save(tmp_path / "img/b.png")
    (tmp_path / "img/bad.png").write_bytes(b"broken")
    rows = [mm("1", "abcd", "xy", image="img/a.png"),
            mm("2", "abcdef", "x", "ab", "xyz", image="img/b.png"),
            mm("3", "a", "xyzw", "abc", "x", "ab", "x", image="img/bad.png"),
            mm("4", "abc", "xy", image=None)]
    return dc.MMDataset.from_rows(rows, schema="MM", root=str(tmp_path))


def test_statistics_are_right(small):
    stats = evaluate(small, create("dataset_stats", languages=False), batch_size=3)
    assert stats["rows"] == 4
    m = stats["metrics"]
    assert m["turns"]["mean"] == pytest.approx((2 + 4 + 6 + 2) / 4)
    assert (m["turns"]["min"], m["turns"]["max"]) == (2, 6)
    q = [4, 6, 2, 1, 3, 2, 3]  # user turns
    a = [2, 1, 3, 4, 1, 1, 2]  # assistant turns
    assert m["question_chars"]["count"] == 7 and m["question_chars"]["mean"] == pytest.approx(np.mean(q))
    assert m["answer_chars"]["mean"] == pytest.approx(np.mean(a))
    assert m["answer_chars"]["p50"] == pytest.approx(np.median(a))
    assert m["images_per_row"]["mean"] == pytest.approx(0.75)
    assert m["image_width"]["count"] == 2 and m["image_width"]["mean"] == pytest.approx(82)
    assert m["image_height"]["max"] == 50
    assert stats["images_unreadable"] == 1
    assert "tokens" not in m
    assert sum(m["turns"]["histogram"]["counts"]) == 4
    json.dumps(stats)  # serializable as it is


def test_same_statistics_on_messages_and_in_parallel(small):
    one = evaluate(small, create("dataset_stats", images=False, languages=False))
    msgs = small.convert("MESSAGES")
    two = evaluate(msgs, create("dataset_stats", images=False, languages=False), num_workers=2, batch_size=1)
    for k in ("turns", "question_chars", "answer_chars", "images_per_row"):
        assert one["metrics"][k] == two["metrics"][k], k
    assert "image_width" not in one["metrics"]


def test_token_counts_with_a_tokenizer_object(small):
    class Words:  # any callable with the tokenizer call convention works
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [t.split() for t in texts]}

    stats = evaluate(small, create("dataset_stats", tokenizer=Words(), images=False, languages=False))
    assert stats["metrics"]["tokens"]["mean"] == pytest.approx((2 + 4 + 6 + 2) / 4)


def test_summarize():
    s = summarize(np.array([1, 1, 2, 5]))
    assert (s["count"], s["mean"], s["min"], s["max"], s["p50"]) == (4, 2.25, 1, 5, 1.5)
    assert sum(s["histogram"]["counts"]) == 4 and len(s["histogram"]["edges"]) == len(s["histogram"]["counts"]) + 1
    assert summarize(np.array([]))["count"] == 0
    assert summarize(np.array([3.0, 3.0]))["histogram"]["counts"] == [2]


def test_describe_writes_pngs_html_and_json(small, tmp_path):
    out = str(tmp_path / "report")
    stats = describe(small, out, languages=False)
    assert stats["metrics"]["turns"]["mean"] == pytest.approx(3.5)
    files = set(os.listdir(out))
    assert {"index.html", "stats.json", "turns.png", "question_chars.png", "answer_chars.png",
            "image_width.png"} <= files
    with open(os.path.join(out, "index.html"), encoding="utf-8") as f:
        page = f.read()
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert "turns.png" in srcs and all(s in files for s in srcs)
    assert "turns per row" in page and "3.5" in page
    for s in srcs:
        with Image.open(os.path.join(out, s)) as img:
            assert img.format == "PNG" and img.size[0] > 100
    with open(os.path.join(out, "stats.json"), encoding="utf-8") as f:
        assert json.load(f)["rows"] == 4


def test_pillow_fallback_draws_a_png(tmp_path):
    path = str(tmp_path / "h.png")
    _draw_pillow(path, [1, 5, 2], "title", ["0", "1", "2"])
    with Image.open(path) as img:
        px = np.asarray(img.convert("RGB"))
    assert (px == [76, 114, 176]).all(axis=-1).sum() > 100  # the bars are drawn


def test_bad_parameters_and_empty_dataset(small, tmp_path):
    with pytest.raises(OperatorError, match="`bins`"):
        create("dataset_stats", bins=0)
    with pytest.raises(OperatorError, match="`images`"):
        create("dataset_stats", images="yes")
    empty = small.filter(lambda r: False)
    assert evaluate(empty, create("dataset_stats"))["rows"] == 0
    with pytest.raises(Exception, match="evaluator"):
        small.apply(create("dataset_stats"))
