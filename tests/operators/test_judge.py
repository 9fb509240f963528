"""judge_filter, tag and filter_rare_tags: tiny random Paddle models loaded from their directories (local and Ray),
a rule-based model behind a real OpenAI-compatible server (outputs checked exactly: scores, thresholds, reasons,
tags), rows that fail or are skipped accounted for, a skewed tag distribution with exact results on both
executors, and a YAML pipeline of tag + filter_rare_tags."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest
import yaml

import datacopilot as dc
from datacopilot.errors import OperatorError
from datacopilot.operators import create
from datacopilot.operators.judge import parse_score, parse_tags
from datacopilot.pipeline import Pipeline

from ..executors._ray import executor, ray_session  # noqa: F401
from ._models import image_rows, rule_server, tiny_lm, tiny_vlm  # noqa: F401

ENDPOINT = {"backend": "openai", "endpoint": "http://127.0.0.1:9/v1"}


def dataset(tmp_path, n=6):
    return dc.MMDataset.from_rows(image_rows(tmp_path, n), schema="MM", root=str(tmp_path))


def run(ds, op, executor, on_error="raise", batch_size=1024):
    """``op`` over ``ds`` as a pipeline on ``executor``: (rows, the operator's record)."""
    out = dc.pipeline(ds, on_error=on_error, batch_size=batch_size).apply(op).collect(executor=executor)
    return out, out.history()[-1]


def row_index(req) -> int:
    """Which row a request is about (the rows ask "What color is image i?")."""
    return int(re.search(r"color is image (\d+)", req.messages[0]["content"]).group(1))


# -- parsing ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, score", [
    ('{"score": 4}', 4), ('Sure!\n```json\n{"score": "2", "reasons": ["vague"]}\n```', 2), ("{'score': 5}", 5),
    ('{"score": 4.0}', 4), ('{"score": 7}', None), ('{"score": 3.5}', None), ("Score: 3/5", 3),
    ("On a scale of 1-5 I give it 4.", 4), ("from 1 to 5: 2", 2), ("It deserves a 5.", 5), ("10 out of 10", None),
    ("4.5", None), ("the 3rd one", None), ("no score here", None), ("", None), ("score 0, then 9", None),
])
def test_scores_are_parsed_from_json_or_the_first_standalone_digit(text, score):
    assert parse_score(text) == score


@pytest.mark.parametrize("text, tags", [
    ('["OCR", " Counting ", "ocr", "Color  Recognition"]', ["ocr", "counting", "color recognition"]),
    ('{"tags": ["Spatial", 3, "chart"]}', ["spatial", "chart"]),
    ("Tags: counting, OCR; color\n- OCR\n2. Chart.", ["counting", "ocr", "color", "chart"]),
    ('{"score": 5}', []), ("[1, 2]", []), ("", []), (" , ; ", []), ("<image> cat, dog", ["dog"]),
    ("x" * 65 + ", short", ["short"]),
])
def test_tags_are_parsed_and_normalized(text, tags):
    assert parse_tags(text, max_tags=5) == tags


def test_tags_are_capped_at_max_tags():
    assert parse_tags('["a", "b", "c", "d"]', max_tags=2) == ["a", "b"]


# -- tiny random Paddle models, both executors -------------------------------------------------------------------
def test_tiny_vlm_judges_every_row_on_both_executors(tmp_path, tiny_vlm, executor):
    ds = dataset(tmp_path)          # rows with images: a VLM is sent them (with_images=None)
    spec = {"backend": "paddle", "path": tiny_vlm, "max_new_tokens": 6, "batch_size": 4}
    out, rec = run(ds, create("judge_filter", model=spec, min_score=1), executor)
    # a random model: what it says is arbitrary, but every row is accounted for: scored rows are kept
    # (min_score=1), unparsable ones dropped with their reason
    scored, unparsable = rec.counts.get("scored", 0), rec.counts.get("rejected: unparsable score", 0)
    assert scored + unparsable == 6 and rec.failed == 0 and rec.rows_in == 6
    assert rec.rows_out == len(out) == scored
    assert rec.dropped == ({"judge: unparsable score": unparsable} if unparsable else {})
    assert all(r["judge_score"] in (1, 2, 3, 4, 5) for r in out)
    local, _ = run(ds, create("judge_filter", model=spec, min_score=1), "local")
    assert sorted((r["id"], r["judge_score"]) for r in out) == sorted((r["id"], r["judge_score"]) for r in local)


def test_tiny_lm_tags_every_row_on_both_executors(tmp_path, tiny_lm, executor):
    ds = dataset(tmp_path)          # rows with images: a text-only LM is sent the text only (with_images=None)
    spec = {"backend": "paddle", "path": tiny_lm, "max_new_tokens": 8, "batch_size": 4}
    out, rec = run(ds, create("tag", model=spec, max_tags=3), executor)
    assert rec.rows_in == rec.rows_out == len(out) == 6 and rec.failed == 0
    assert rec.counts.get("tagged", 0) + rec.counts.get("rejected: no tags", 0) == 6
    assert out.to_arrow().schema.field("tags").type == pa.list_(pa.string())
    tags = [r["tags"] for r in out]
    assert sum(t is not None for t in tags) == rec.counts.get("tagged", 0)
    assert all(0 < len(t) <= 3 and t == [x.strip().lower() for x in t] for t in tags if t is not None)


# -- a rule-based model behind a real server: exact outputs ----------------------------------------------------
SCORE_ANSWERS = ['{"score": 5}', "Score: 2/5", "I would rate it 4.", "no idea", '{"score": 9}',
                 '```json\n{"score": 3, "reasons": ["ok"]}\n```']


def scripted(answers, seen=None):
    def answer(req):
        if seen is not None:
            seen.append(req)
        return answers[row_index(req)]
    return answer


def test_rule_judge_scores_thresholds_and_reasons(tmp_path):
    ds = dataset(tmp_path)
    seen: list = []
    with rule_server(scripted(SCORE_ANSWERS, seen)) as (spec, model):
        out = ds.apply(create("judge_filter", model=spec))
        rec = out.history()[-1]
        assert [(r["id"], r["judge_score"]) for r in out] == [("r0", 5), ("r2", 4), ("r5", 3)]
        assert rec.dropped == {"judge score < 3": 1, "judge: unparsable score": 2}
        assert rec.counts == {"scored": 4, "rejected: unparsable score": 2}
        assert (rec.rows_in, rec.rows_out, rec.failed) == (6, 3, 0)
        kept = ds.apply(create("judge_filter", model=spec, min_score=4, field="quality", on_unparsable="keep"))
        assert [(r["id"], r["quality"]) for r in kept] == [("r0", 5), ("r2", 4), ("r3", None), ("r4", None)]
        assert kept.history()[-1].dropped == {"judge score < 4": 2}
        failed = ds.apply(create("judge_filter", model=spec, on_unparsable="fail"), on_error="quarantine")
        frec = failed.history()[-1]
        assert frec.failed == 2 and frec.dropped == {"judge score < 3": 1} and frec.counts == {"scored": 4}
        assert [r["id"] for r in failed.quarantine] == ["r3", "r4"]
        assert all("unparsable score" in r["_error"] for r in failed.quarantine)
        assert model.calls == 18         # 6 per run: the row-by-row retry of the failing run asked nothing new
    first = next(r for r in seen if row_index(r) == 0)   # requests arrive concurrently, in any order
    content = first.messages[0]["content"]
    assert len(first.images) == 1 and content.startswith("<image>\n") and content.count("<image>") == 1
    assert "User: What color is image 0?\nAssistant: It is red." in content
    assert "Rate how useful this sample is" in content and '{"score": <an integer from 1 to 5>}' in content


def test_judge_template_rubric_and_without_images(tmp_path):
    ds = dataset(tmp_path, 2)
    seen: list = []
    with rule_server(scripted(["5", "1"], seen)) as (spec, _):
        op = create("judge_filter", model=spec, rubric="Is it about colors?", with_images=False,
                    template="Rubric: {rubric}\n---\n{conversation}\n---\nScore 1-5.")
        out = ds.apply(op)
    assert [r["id"] for r in out] == ["r0"] and out.history()[-1].dropped == {"judge score < 3": 1}
    first = next(r for r in seen if row_index(r) == 0)   # requests arrive concurrently, in any order
    assert first.images == () and first.messages[0]["content"] == (
        "Rubric: Is it about colors?\n---\nUser: What color is image 0?\nAssistant: It is red.\n---\nScore 1-5.")


def test_judge_failed_and_skipped_rows_are_accounted_on_both_executors(tmp_path, executor):
    rows = image_rows(tmp_path, 6)
    rows[1]["image"] = "img/missing.png"          # cannot be read: the row fails
    rows[2]["conversations"] = []                 # nothing to judge: skipped, kept without a score
    ds = dc.MMDataset.from_rows(rows, schema="MM", root=str(tmp_path))
    with rule_server(scripted(["4", "4", "4", "1", "4", "x"])) as (spec, model):
        out, rec = run(ds, create("judge_filter", model=spec), executor, on_error="quarantine", batch_size=4)
        assert sorted((r["id"], r["judge_score"]) for r in out) == [("r0", 4), ("r2", None), ("r4", 4)]
        assert rec.counts == {"scored": 3, "rejected: unparsable score": 1, "skipped: no conversation": 1}
        assert rec.dropped == {"judge score < 3": 1, "judge: unparsable score": 1} and rec.failed == 1
        assert rec.rows_in == 6 == rec.rows_out + sum(rec.dropped.values()) + rec.failed   # no row lost
        assert len(out.quarantine) == 1 and "missing.png" in out.quarantine[0]["_error"]
        assert model.calls == 4                   # the row-by-row retry asked the model nothing new
        _, text_only = run(ds, create("judge_filter", model=spec, with_images=False), executor)
    assert text_only.failed == 0 and text_only.counts["scored"] == 4


def test_rule_tags_are_normalized_and_rejections_accounted(tmp_path):
    ds = dataset(tmp_path)
    answers = ['["OCR", "Counting", "ocr"]', "Tags: Color, spatial reasoning", "", '{"tags": ["A", "b", "c"]}',
               "[1, 2]", "- Chart\n- Math"]
    with rule_server(scripted(answers)) as (spec, _):
        out = ds.apply(create("tag", model=spec, max_tags=2))
        assert [r["tags"] for r in out] == [["ocr", "counting"], ["color", "spatial reasoning"], None, ["a", "b"],
                                            None, ["chart", "math"]]
        assert out.history()[-1].counts == {"tagged": 4, "rejected: no tags": 2}
        retagged = out.apply(create("tag", model=spec, max_tags=1))      # rejected rows keep their old tags
        assert [r["tags"] for r in retagged] == [["ocr"], ["color"], None, ["a"], None, ["chart"]]
        strict = ds.apply(create("tag", model=spec, on_reject="fail"), on_error="quarantine")
        assert strict.history()[-1].failed == 2 and [r["id"] for r in strict.quarantine] == ["r2", "r4"]
        assert "rejected: no tags" in strict.quarantine[0]["_error"]
        with pytest.raises(OperatorError, match="rejected: no tags"):
            ds[2:3].apply(create("tag", model=spec, on_reject="fail"))


def test_tag_prompt_fields(tmp_path):
    ds = dataset(tmp_path, 1)
    seen: list = []
    with rule_server(scripted(["x"], seen)) as (spec, _):
        ds.apply(create("tag", model=spec, prompt="{max_tags} tags for: {instruction}"))
    assert seen[0].messages[0]["content"] == "<image>\n5 tags for: What color is image 0?"


# -- filter_rare_tags -----------------------------------------------------------------------------------------
SKEWED = ([["caption", "color"]] * 4 + [["caption", "counting"]] * 2 + [["caption", "ocr"]] + [["caption"]] * 5
          + [["color", "counting"], ["Color "], ["color"], ["color"], ["counting"], ["counting"], ["ocr"],
             ["chart"], None, []])
# tag counts: caption 12, color 8, counting 5, ocr 2, chart 1; rows 20 and 21 have no tags
ONLY_CAPTION = [7, 8, 9, 10, 11]
ONLY_CAPTION_COLOR = [0, 1, 2, 3, 7, 8, 9, 10, 11, 13, 14, 15]


@pytest.mark.parametrize("params, dropped", [
    ({"top_k": 1}, ONLY_CAPTION), ({"top_k": 2}, ONLY_CAPTION_COLOR),
    ({"common_share": 0.5}, ONLY_CAPTION), ({"common_share": 0.3}, ONLY_CAPTION_COLOR),
    ({}, ONLY_CAPTION),                       # drop_share=0.5: at most 11 of 22; caption+color would drop 12
    ({"drop_share": 0.6}, ONLY_CAPTION_COLOR), ({"top_k": 5}, list(range(20))), ({"drop_share": 0.1}, []),
])
def test_filter_rare_tags_on_a_skewed_distribution(params, dropped, executor):
    ds = dc.MMDataset.from_rows([{"id": str(i), "tags": t} for i, t in enumerate(SKEWED)])
    out, rec = run(ds, create("filter_rare_tags", **params), executor, batch_size=4)
    assert sorted(int(r["id"]) for r in out) == [i for i in range(len(SKEWED)) if i not in dropped]
    assert rec.dropped == ({"only common tags": len(dropped)} if dropped else {})
    assert rec.rows_in == 22 and rec.rows_out == 22 - len(dropped)


def test_common_tags_are_ranked_by_frequency_then_name():
    op = create("filter_rare_tags", top_k=3)
    ds = dc.MMDataset.from_rows([{"tags": t} for t in SKEWED])
    sigs = op.signatures(ds.to_arrow().to_batches()[0])
    assert op.common_tags(sigs) == ["caption", "color", "counting"]
    tie = create("filter_rare_tags", top_k=1).common_tags([("b",), ("a",), None])
    assert tie == ["a"]


def test_filter_rare_tags_refuses_a_column_that_is_not_tags():
    ds = dc.MMDataset.from_rows([{"id": "1", "tags": "ocr, chart"}])
    with pytest.raises(OperatorError, match="list of strings"):
        ds.apply(create("filter_rare_tags"))
    with pytest.raises(OperatorError, match="'labels'"):
        ds.apply(create("filter_rare_tags", field="labels"))


def test_tag_then_filter_rare_tags_from_yaml(tmp_path, executor):
    rows = image_rows(tmp_path, 8)
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    answers = ['["color"]'] * 4 + ['["Color", "counting"]'] * 2 + ["color, OCR", ""]
    with rule_server(scripted(answers)) as (spec, _):
        ops = [create("tag", model=spec), create("filter_rare_tags", top_k=1)]
        path = tmp_path / "pipe.yaml"
        dc.pipeline(str(src), schema="MM", root=str(tmp_path), ops=ops).to_yaml(str(path))
        out = Pipeline.from_yaml(str(path)).collect(executor=executor)
    assert sorted((r["id"], r["tags"]) for r in out) == [("r4", ["color", "counting"]),
                                                         ("r5", ["color", "counting"]), ("r6", ["color", "ocr"]),
                                                         ("r7", None)]
    tag_rec, rare_rec = out.history()[-2:]
    assert tag_rec.counts == {"tagged": 7, "rejected: no tags": 1}
    assert rare_rec.dropped == {"only common tags": 4} and rare_rec.rows_out == 4


# -- parameters --------------------------------------------------------------------------------------------------
def test_params_round_trip_through_yaml_and_create(tiny_vlm):
    vlm = {"backend": "paddle", "path": tiny_vlm, "max_new_tokens": 4}
    ops = [create("judge_filter", model=vlm, min_score=4.5, with_images=True, on_unparsable="keep"),
           create("judge_filter", model=ENDPOINT), create("tag", model=ENDPOINT, max_tags=3, field="skills"),
           create("filter_rare_tags", common_share=0.2), create("filter_rare_tags")]
    for op in ops:
        params = yaml.safe_load(yaml.safe_dump(op.params()))
        again = create(op.name, **params)
        assert again.params() == op.params() and type(again) is type(op)
    assert ops[0].p["min_score"] == 4.5 and ops[1].p["min_score"] == 3 and ops[4].p["drop_share"] == 0.5
    assert ops[2].writes == ("skills",) and ops[3].reads == ("tags",)


def test_bad_parameters_are_refused_at_construction(tmp_path, tiny_lm):
    cases = [
        ("judge_filter", {"min_score": 6}, "`min_score`"), ("judge_filter", {"min_score": "3"}, "`min_score`"),
        ("judge_filter", {"template": "{rubric} only"}, "{conversation}"),
        ("judge_filter", {"template": "{conversation} {oops}"}, "unknown field"),
        ("judge_filter", {"template": "<image>{conversation}"}, "<image>"),
        ("judge_filter", {"rubric": " "}, "`rubric`"), ("judge_filter", {"rubric": "<image> ok?"}, "`rubric`"),
        ("judge_filter", {"template": "{{conversation}}"}, "{conversation}"), ("judge_filter", {"on_unparsable": "skip"}, "on_unparsable"),
        ("judge_filter", {"with_images": "yes"}, "`with_images`"), ("judge_filter", {"field": ""}, "`field`"),
        ("tag", {"max_tags": 0}, "`max_tags`"), ("tag", {"prompt": "tags please"}, "{conversation}"),
        ("tag", {"on_reject": "drop"}, "on_reject"),
    ]
    for name, params, message in cases:
        with pytest.raises(OperatorError, match=re.escape(message)):
            create(name, model=ENDPOINT, **params)
    with pytest.raises(OperatorError, match="text-only"):
        create("judge_filter", model={"backend": "paddle", "path": tiny_lm}, with_images=True)
    with pytest.raises(OperatorError, match="model directory"):
        create("tag", model={"backend": "paddle", "path": str(tmp_path / "nope")})
    with pytest.raises(OperatorError, match="one of `top_k`"):
        create("filter_rare_tags", top_k=3, common_share=0.1)
    with pytest.raises(OperatorError, match="`common_share` must be > 0"):
        create("filter_rare_tags", common_share=0)
    with pytest.raises(OperatorError, match="`top_k`"):
        create("filter_rare_tags", top_k=0)
