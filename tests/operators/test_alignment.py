"""image_text_alignment_filter: the tiny random VLM through the user path (local and Ray), the score's definition
checked against the backend's log-likelihoods by hand, exact accounting of skipped, dropped and failed rows, and a
real signal: a tiny VLM trained for 30 steps on captions naming the image's color scores matching captions above
mismatched ones, and the filter drops the mismatched rows."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest

import datacopilot as dc
from datacopilot.errors import OperatorError
from datacopilot.operators import create

from ..executors._ray import executor, ray_session  # noqa: F401
from ._models import image_rows, png, tiny_vlm  # noqa: F401

NAME = "image_text_alignment_filter"


def model(path, **kw):
    return {"backend": "paddle", "path": path, "batch_size": 64, **kw}


def run(ds, op, executor="local", on_error="raise"):
    out = dc.pipeline(ds, on_error=on_error).apply(op).collect(executor=executor)
    return out, out.history()[-1]


def mixed_rows(tmp_path, n=6):
    """MM rows with images and a question/answer each, plus a row without an image and one without an answer."""
    rows = image_rows(tmp_path, n)
    rows.append({"id": "noimg", "image": None, "conversations": rows[0]["conversations"]})
    rows.append({"id": "notext", "image": "img/1.png",
                 "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": " "}]})
    return rows


def backend_of(path):
    from datacopilot.models.backends import ModelSpec, shared_backend

    return shared_backend(ModelSpec(**create(NAME, model=model(path)).p["model"]))


def test_tiny_vlm_scores_and_filters_with_exact_accounting_on_both_executors(tmp_path, tiny_vlm, executor):
    ds = dc.MMDataset.from_rows(mixed_rows(tmp_path), schema="MM", root=str(tmp_path))
    out, rec = run(ds, create(NAME, model=model(tiny_vlm)))
    assert rec.rows_in == rec.rows_out == 8 and rec.failed == 0 and not rec.dropped
    assert rec.counts == {"scored": 6, "skipped: no image": 1, "skipped: no text": 1}
    scores = {r["id"]: r["alignment_score"] for r in out}
    assert scores["noimg"] is None and scores["notext"] is None
    scored = {k: v for k, v in scores.items() if v is not None}
    assert len(scored) == 6 and all(np.isfinite(v) for v in scored.values())
    assert len({round(v, 4) for v in scored.values()}) > 1                 # a random model, but images matter
    # on the executor, a threshold between the scores drops exactly the rows under it, with the reason; the kept
    # rows carry the same scores as the local run, the skipped ones a null score
    threshold = float(np.median(list(scored.values())))
    under = {k for k, v in scored.items() if v < threshold}
    kept, rec = run(ds, create(NAME, model=model(tiny_vlm), min_score=threshold), executor)
    assert rec.dropped == {f"alignment score < {threshold}": 3} and len(under) == 3
    assert rec.rows_in == 8 and rec.rows_out == 5 and rec.failed == 0
    assert rec.counts == {"scored": 6, "skipped: no image": 1, "skipped: no text": 1}
    got = {r["id"]: r["alignment_score"] for r in kept}
    assert set(got) == set(scores) - under and got["noimg"] is None and got["notext"] is None
    assert {k: v for k, v in got.items() if v is not None} == pytest.approx(
        {k: v for k, v in scored.items() if k not in under}, abs=1e-5)


def test_the_score_is_the_loglikelihood_with_the_image_minus_with_a_gray_one(tmp_path, tiny_vlm):
    """Checked by hand with the backend: captions after a bare <image> turn; answers each after their context,
    averaged per row; loglik without the gray baseline."""
    from datacopilot.models.backends import Request

    rows = image_rows(tmp_path, 2)
    rows[1]["conversations"] += [{"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": "a square"}]
    table = dc.MMDataset.from_rows(rows, schema="MM").to_arrow()
    table = table.append_column("caption", pa.array(["a red square", None]))
    ds = dc.MMDataset(table, "MM", root=str(tmp_path))
    backend = backend_of(tiny_vlm)
    red, green, gray = png("red"), png("green"), png((128, 128, 128))
    ll = backend.loglikelihood
    bare = [{"role": "user", "content": "<image>"}]
    q0 = [{"role": "user", "content": "<image>\nWhat color is image 1?"}]
    q1 = q0 + [{"role": "assistant", "content": "It is green."}, {"role": "user", "content": "And the shape?"}]

    def pmi(msgs, text, img):
        a, b = ll([Request(msgs, images=(img,)), Request(msgs, images=(gray,))], [text, text])
        return a - b

    caption = pmi(bare, "a red square", red)                                # row 0: its caption (auto)
    answers = (pmi(q0, "It is green.", green) + pmi(q1, "a square", green)) / 2   # row 1: no caption: answers
    out = ds.apply(create(NAME, model=model(tiny_vlm)))
    assert [r["alignment_score"] for r in out] == pytest.approx([caption, answers], abs=1e-4)
    loglik = ds.apply(create(NAME, model=model(tiny_vlm), score="loglik"))
    assert loglik[0]["alignment_score"] == pytest.approx(ll([Request(bare, images=(red,))], ["a red square"])[0],
                                                         abs=1e-4)
    # text="answers" ignores the caption; text="caption" skips the row without one
    row0 = pmi([{"role": "user", "content": "<image>\nWhat color is image 0?"}], "It is red.", red)
    assert ds.apply(create(NAME, model=model(tiny_vlm), text="answers"))[0]["alignment_score"] == \
        pytest.approx(row0, abs=1e-4)
    only = ds.apply(create(NAME, model=model(tiny_vlm), text="caption", field="fit"))
    assert [r["fit"] for r in only][0] == pytest.approx(caption, abs=1e-4) and only[1]["fit"] is None
    assert only.history()[-1].counts == {"scored": 1, "skipped: no text": 1}


def test_failed_rows_are_accounted_and_the_retry_makes_no_model_calls(tmp_path, tiny_vlm):
    rows = image_rows(tmp_path, 5)
    rows[2]["image"] = "img/missing.png"                                     # cannot be read: the row fails
    ds = dc.MMDataset.from_rows(rows, schema="MM", root=str(tmp_path))
    backend = backend_of(tiny_vlm)
    before = backend.model_calls
    out, rec = run(ds, create(NAME, model=model(tiny_vlm)), on_error="quarantine")
    assert rec.failed == 1 and rec.rows_out == 4 and rec.counts == {"scored": 4}
    assert len(out.quarantine) == 1 and "missing.png" in out.quarantine[0]["_error"]
    assert backend.model_calls - before == 1                                 # one pass for the batch, none on retry
    with pytest.raises(OperatorError, match="missing.png"):
        run(ds, create(NAME, model=model(tiny_vlm)))


def test_parameters_models_and_columns_are_checked(tmp_path, tiny_vlm):
    with pytest.raises(OperatorError, match="'openai' backend cannot score"):
        create(NAME, model={"backend": "openai", "endpoint": "http://127.0.0.1:9/v1"})
    text_only = tmp_path / "lm"
    text_only.mkdir()
    (text_only / "config.json").write_text("{}")
    with pytest.raises(OperatorError, match="text-only model"):
        create(NAME, model={"backend": "paddle", "path": str(text_only), "tokenizer": f"{tiny_vlm}/tokenizer"})
    for bad, match in ((dict(text="both"), "`text`"), (dict(score="clip"), "`score`"),
                       (dict(min_score="low"), "`min_score`"), (dict(field=""), "`field`"),
                       (dict(prompt=3), "`prompt`"), (dict(cache_dir="c"), "cache_dir")):
        with pytest.raises((OperatorError, TypeError), match=match):
            create(NAME, model=model(tiny_vlm), **bad)
    ds = dc.MMDataset.from_rows(image_rows(tmp_path, 2), schema="MM", root=str(tmp_path))
    with pytest.raises(OperatorError, match="no 'caption' column"):
        ds.apply(create(NAME, model=model(tiny_vlm), text="caption"))
    captions = dc.MMDataset.from_rows([{"id": "a", "image": "img/0.png", "caption": "red"}], schema="CAPTION",
                                      root=str(tmp_path))
    with pytest.raises(OperatorError, match="no 'conversations' or 'messages'"):
        captions.apply(create(NAME, model=model(tiny_vlm), text="answers"))
    op = create(NAME, model=model(tiny_vlm), min_score=0, score="loglik", field="fit")
    assert create(NAME, **op.params()).params() == op.params() == pickle.loads(pickle.dumps(op)).params()
    assert op.writes == ("fit",) and op.resources()["concurrency"] == 1


@pytest.fixture(scope="module")
def color_vlm(tmp_path_factory, tiny_vlm):
    """The tiny VLM after 30 SFT steps on CAPTION rows "a {color} square" for red, green and blue images."""
    from datacopilot.train import SFTConfig, sft

    d = tmp_path_factory.mktemp("color_vlm")
    (d / "img").mkdir()
    rows = []
    for k in range(24):
        color = ["red", "green", "blue"][k % 3]
        (d / "img" / f"{k}.png").write_bytes(png(color, 16 + k))
        rows.append({"id": f"t{k}", "image": f"img/{k}.png", "caption": f"a {color} square"})
    train = dc.MMDataset.from_rows(rows, schema="CAPTION", root=str(d))
    cfg = SFTConfig(data=train, model=tiny_vlm, model_type="vlm", tokenizer=f"{tiny_vlm}/tokenizer",
                    output_dir=str(d / "run"), max_length=64, batch_size=4, lr=3e-3, warmup_steps=2, max_steps=30,
                    image_token_count=4, image_size=16, progress=False, num_workers=1, log_every=30)
    result = sft(cfg, echo=lambda line: None)
    assert result["loss"] < result["history"][0]["loss"] / 4
    return model(result["model_dir"], tokenizer=f"{tiny_vlm}/tokenizer")


def test_a_trained_vlm_scores_matching_captions_higher_and_the_filter_drops_the_others(tmp_path, color_vlm):
    colors = ["red", "green", "blue"]
    rows = []
    (tmp_path / "img").mkdir()
    for k, color in enumerate(colors):
        (tmp_path / "img" / f"{k}.png").write_bytes(png(color, 20))          # a size not seen in training
        rows += [{"id": f"{color}-{said}", "image": f"img/{k}.png", "caption": f"a {said} square"} for said in colors]
    ds = dc.MMDataset.from_rows(rows, schema="CAPTION", root=str(tmp_path))
    for score in ("pmi", "loglik"):
        got = {r["id"]: r["alignment_score"] for r in ds.apply(create(NAME, model=color_vlm, score=score))}
        for color in colors:
            match = got[f"{color}-{color}"]
            assert all(match > got[f"{color}-{said}"] for said in colors if said != color), (score, got)
            # pmi: the image explains its own color better than a blank one does, and others' colors worse
            if score == "pmi":
                assert match > 0 > max(got[f"{color}-{said}"] for said in colors if said != color), got
    out, rec = run(ds, create(NAME, model=color_vlm, min_score=0.0))
    assert sorted(r["id"] for r in out) == ["blue-blue", "green-green", "red-red"]
    assert rec.dropped == {"alignment score < 0.0": 6} and rec.counts == {"scored": 9}
