"""Dataset-wide dedup operators on real rows and real image files: which rows stay, which go, and the accounting."""


import json
import os

import numpy as np
import pytest
from datacopilot.operators import Mapper, create
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

import datacopilot as dc
from datacopilot.errors import OperatorError

from .conftest import ids, last, mm

WORDS = [f"word{i}" for i in range(300)]


def picture(kind: str, size=(200, 160)) -> Image.Image:
    img = Image.new("RGB", size, (235, 235, 225))
    d = ImageDraw.Draw(img)
    w, h = size
    if kind == "circle":
        d.ellipse([w * 0.2, h * 0.2, w * 0.7, h * 0.8], fill=(200, 30, 30))
    elif kind == "bars":
        for x in range(0, w, w // 5):
            d.rectangle([x, 0, x + w // 10, h], fill=(20, 20, 120))
    else:
        d.polygon([(w * 0.9, h * 0.1), (w * 0.1, h * 0.9), (w * 0.9, h * 0.9)], fill=(30, 150, 30))
    return img


@pytest.fixture
def images(tmp_path):
    """Image files: a.png and a_copy.png (same bytes), a_small.jpg (resized, recompressed), b.png, c.png."""
    (tmp_path / "img").mkdir()
    picture("circle").save(tmp_path / "img/a.png")
    (tmp_path / "img/a_copy.png").write_bytes((tmp_path / "img/a.png").read_bytes())
    picture("circle").resize((90, 72)).save(tmp_path / "img/a_small.jpg", quality=50)
    picture("bars").save(tmp_path / "img/b.png")
    picture("triangle").save(tmp_path / "img/c.png")
    return tmp_path


def test_exact_text_dedup_normalizes_and_keeps_first(to_schema):
    rows = [mm("1", "What is it?", "A cat."), mm("2", "what   is IT?", "a cat."), mm("3", "What is it?", "A dog."),
            mm("4", "What is it?\n", " A  CAT. "), mm("5", "Other", "Text")]
    for schema in ("MM", "MESSAGES"):
        out = to_schema(rows, schema).apply(create("dedup_exact"))
        assert ids(out) == ["1", "3", "5"]
        rec = last(out)
        assert (rec.rows_in, rec.rows_out, rec.dropped) == (5, 3, {"duplicate (dedup_exact)": 2})


def test_exact_text_dedup_across_batches_and_workers(to_schema):
    rows = [mm(str(i), f"question {i % 7}", "same answer") for i in range(100)]
    out = to_schema(rows).apply(create("dedup_exact"), num_workers=2, batch_size=9)
    assert ids(out) == [str(i) for i in range(7)]


def test_exact_text_dedup_on_captions():
    ds = dc.MMDataset.from_rows([{"id": "1", "caption": "A red circle."}, {"id": "2", "caption": "a red  circle."},
                                 {"id": "3", "caption": "A blue square."}], schema="CAPTION")
    assert ids(ds.apply(create("dedup_exact"))) == ["1", "3"]


def test_exact_image_dedup_by_bytes(images):
    rows = [mm("1", "q1", "a1", image="img/a.png"), mm("2", "q2", "a2", image="img/a_copy.png"),
            mm("3", "q3", "a3", image="img/a_small.jpg"), mm("4", "q4", "a4", image="img/b.png"),
            mm("5", "q5", "a5", image=None), mm("6", "q6", "a6", image=None)]
    ds = dc.MMDataset.from_rows(rows, schema="MM", root=str(images))
    assert ids(ds.apply(create("dedup_exact", by="image"))) == ["1", "3", "4", "5", "6"]
    # embedded bytes hash like the file they came from
    assert ids(ds.embed_images().apply(create("dedup_exact", by="image"))) == ["1", "3", "4", "5", "6"]
    # both: same text and same image
    rows2 = [mm("1", "q", "a", image="img/a.png"), mm("2", "q", "a", image="img/a_copy.png"),
             mm("3", "q", "a", image="img/b.png"), mm("4", "Q", "A", image=None), mm("5", "q", "a", image=None)]
    ds2 = dc.MMDataset.from_rows(rows2, schema="MM", root=str(images))
    assert ids(ds2.apply(create("dedup_exact", by="both"))) == ["1", "3", "4"]


def test_missing_image_fails_the_row_not_the_batch(images):
    rows = [mm("1", "q", "a", image="img/a.png"), mm("2", "q", "a", image="img/nope.png"),
            mm("3", "q", "a", image="img/a_copy.png")]
    ds = dc.MMDataset.from_rows(rows, schema="MM", root=str(images))
    with pytest.raises(OperatorError, match="nope.png"):
        ds.apply(create("dedup_exact", by="image"))
    out = ds.apply(create("dedup_exact", by="image"), on_error="quarantine")
    assert ids(out) == ["1"] and ids(out.quarantine) == ["2"]
    rec = last(out)
    assert (rec.rows_in, rec.rows_out, rec.failed, rec.n_dropped) == (3, 1, 1, 1)


def test_near_text_dedup_keeps_one_of_three_edited_copies(to_schema):
    rng = np.random.default_rng(0)
    rows = [mm(f"r{i}", " ".join(rng.choice(WORDS, 25)), " ".join(rng.choice(WORDS, 40))) for i in range(40)]
    q, a = rows[3]["conversations"][0]["value"], rows[3]["conversations"][1]["value"]
    rows.insert(10, mm("copy1", q, a + " Indeed."))
    rows.insert(25, mm("copy2", "Please: " + q, a.replace(a.split()[5], "changed", 1)))
    for schema in ("MM", "MESSAGES"):
        out = to_schema(rows, schema).apply(create("dedup_near_text", threshold=0.7, ngram=3), batch_size=8)
        kept = ids(out)
        assert len(kept) == 40 and "r3" in kept and "copy1" not in kept and "copy2" not in kept
        assert last(out).dropped == {"duplicate (dedup_near_text)": 2}


def test_near_text_dedup_keeps_different_rows_and_empty_texts(to_schema):
    rows = [mm("1", "", ""), mm("2", "", ""), mm("3", "alpha beta gamma delta", "epsilon zeta eta theta"),
            mm("4", "one two three four", "five six seven eight")]
    assert ids(to_schema(rows).apply(create("dedup_near_text"))) == ["1", "2", "3", "4"]


def test_near_text_dedup_keeps_only_band_keys_and_streams_like_apply(to_schema, tmp_path):
    """8 bytes per band a row (not the 4 * num_perm of a signature); the streaming local executor and a
    pipeline write in small batches keep the rows ``ds.apply`` keeps, with the same accounting."""
    rng = np.random.default_rng(5)
    rows = []
    for i in range(120):
        if i % 6 == 5:  # an edited copy of an earlier row
            q, a = (t["value"] for t in rows[int(rng.integers(len(rows)))]["conversations"])
            rows.append(mm(f"c{i}", q, a.replace(a.split()[3], "edited", 1)))
        else:
            rows.append(mm(f"r{i}", " ".join(rng.choice(WORDS, 20)), " ".join(rng.choice(WORDS, 40))))
    ds = to_schema(rows)
    op = create("dedup_near_text", threshold=0.7, ngram=3)
    keys = op.signatures(ds.to_arrow().to_batches()[0])
    assert keys.dtype == np.uint64 and keys.shape == (120, op.bands)
    want = ds.apply(op)
    assert ids(want) == [r["id"] for r in rows if r["id"].startswith("r")]  # every copy goes, no original
    for batch_size in (7, 50):
        got = dc.pipeline(ds, batch_size=batch_size).apply(op).collect()
        assert ids(got) == ids(want) and last(got).dropped == last(want).dropped
    ds.write(str(tmp_path / "in.jsonl"))
    dc.pipeline(str(tmp_path / "in.jsonl"), schema="MM", batch_size=9).apply(op).write(str(tmp_path / "out"))
    assert ids(dc.load(str(tmp_path / "out"))) == ids(want)


class _CrashAt(Mapper):
    """Raises at row ``at`` while the file ``marker`` exists: a run that dies half way."""

    name, reads, writes = "test_crash_at", ("id",), ("id",)

    def __init__(self, at: str = "", marker: str = ""):
        super().__init__(at=at, marker=marker)

    def map_batch(self, batch):
        if self.p["at"] in batch.column("id").to_pylist() and os.path.exists(self.p["marker"]):
            raise RuntimeError("crash")
        return batch


def test_near_text_dedup_resumes_with_its_band_keys(to_schema, tmp_path):
    """A write over three files that stops in the third, resumed, keeps the rows of an uninterrupted write: the
    band keys of the finished files are saved with the manifest and read back."""
    rng = np.random.default_rng(6)
    rows = [mm(f"r{i}", " ".join(rng.choice(WORDS, 20)), " ".join(rng.choice(WORDS, 40))) for i in range(60)]
    for i in (25, 45, 50):  # copies, in later files, of rows of the first file
        q, a = (t["value"] for t in rows[i - 22]["conversations"])
        rows[i] = mm(f"c{i}", q, a + " too")
    files = []
    for k in range(3):
        to_schema(rows[k * 20:(k + 1) * 20]).write(str(tmp_path / f"part{k}.jsonl"))
        files.append(str(tmp_path / f"part{k}.jsonl"))
    marker = tmp_path / "crash"
    marker.touch()
    ops = [create("dedup_near_text", threshold=0.7, ngram=3), _CrashAt(at="r55", marker=str(marker))]
    plan = lambda: dc.pipeline(files, schema="MM", batch_size=8).apply(ops)
    with pytest.raises(OperatorError, match="crash"):
        plan().write(str(tmp_path / "out"), max_rows_per_shard=10)
    assert not (tmp_path / "out" / "manifest.json").exists()  # nothing published: the run's progress is staged
    staged = sorted((tmp_path / "out").glob(".staging-g*/manifest.json"))
    done = json.loads(staged[-1].read_text())["pipeline"]["done"]
    assert done == files[:2]
    marker.unlink()
    plan().write(str(tmp_path / "out"), max_rows_per_shard=10, resume=True)
    want = [r["id"] for r in rows if r["id"].startswith("r")]
    assert ids(dc.load(str(tmp_path / "out"))) == want == ids(to_schema(rows).apply(ops[0]))


def test_near_image_dedup(images):
    rows = [mm("1", "q", "a", image="img/a.png"), mm("2", "q", "a", image="img/b.png"),
            mm("3", "q", "a", image="img/a_small.jpg"), mm("4", "q", "a", image=None),
            mm("5", "q", "a", image="img/c.png"), mm("6", "q", "a", image=None)]
    ds = dc.MMDataset.from_rows(rows, schema="MM", root=str(images))
    for method in ("phash", "dhash"):
        out = ds.apply(create("dedup_near_image", method=method), batch_size=2)
        assert ids(out) == ["1", "2", "4", "5", "6"], method
    # MESSAGES rows with embedded bytes work the same way
    msgs = ds.embed_images().convert("MESSAGES")
    assert ids(msgs.apply(create("dedup_near_image"))) == ["1", "2", "4", "5", "6"]


def test_corrupt_image_is_a_row_failure(images):
    (images / "img/bad.png").write_bytes(b"not a png")
    rows = [mm("1", "q", "a", image="img/a.png"), mm("2", "q", "a", image="img/bad.png")]
    ds = dc.MMDataset.from_rows(rows, schema="MM", root=str(images))
    with pytest.raises(OperatorError, match="does not decode"):
        ds.apply(create("dedup_near_image"))


def test_parameters_are_checked():
    with pytest.raises(OperatorError, match="`by`"):
        create("dedup_exact", by="pixels")
    with pytest.raises(OperatorError, match="`threshold`"):
        create("dedup_near_text", threshold=1.5)
    with pytest.raises(OperatorError, match="`method`"):
        create("dedup_near_image", method="ahash")
    op = create("dedup_near_text", threshold=0.9, num_perm=64)
    assert op.params() == {"threshold": 0.9, "num_perm": 64, "ngram": 5, "unit": "word", "seed": 1}
    assert op.bands * op.rows <= 64


def test_pairs_schema_is_refused_with_the_conversion():
    ds = dc.MMDataset.from_rows([{"id": "1", "conversations": [["q", "a"]]}], schema="PAIRS")
    with pytest.raises(OperatorError, match="convert"):
        ds.apply(create("dedup_exact"))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.text(alphabet=" \t\n\r\xa0aBé.", max_size=6), max_size=4), min_size=1, max_size=12))
def test_exact_keys_equal_the_newline_joined_text_normalized(convs):
    """dedup_exact's keys (the turns joined by spaces, hashed from their buffers) are equal exactly where the
    texts joined by newlines, normalized, are."""
    import pyarrow as pa
    from datacopilot.kernels.hashing import normalize_text
    from datacopilot.operators.dedup import row_texts

    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    rows = [[{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(c)] for c in convs]
    batch = pa.RecordBatch.from_pydict({"id": [str(i) for i in range(len(rows))],
                                        "conversations": pa.array(rows, pa.list_(turn))})
    op = create("dedup_exact")
    texts = normalize_text(row_texts(op, batch, "\n")).to_pylist()
    keys = op.keys(batch).tolist()
    assert [[keys[i] == keys[j] for j in range(len(keys))] for i in range(len(keys))] == \
        [[texts[i] == texts[j] for j in range(len(texts))] for i in range(len(texts))]
