"""generate_vqa and rewrite: tiny random Paddle models loaded from their directories (local and Ray), a rule-based
model behind a real OpenAI-compatible server (outputs that parse, checked exactly: pairs kept and dropped with
their reasons, rewrites accepted and rejected), every conversation format, failures accounted, YAML round trips."""

from __future__ import annotations

import json
import re

import pytest
import yaml

import datacopilot as dc
from datacopilot.errors import OperatorError
from datacopilot.operators import create

from ..executors._ray import executor, ray_session  # noqa: F401
from ._models import image_color, image_rows, rule_server, tiny_lm, tiny_vlm  # noqa: F401

OPENAI = {"backend": "openai", "endpoint": "http://127.0.0.1:9/v1"}


def dataset(tmp_path, n=6, **kw):
    return dc.MMDataset.from_rows(image_rows(tmp_path, n, **kw), schema="MM", root=str(tmp_path))


def run(ds, op, executor="local", on_error="raise"):
    """The operator over ``ds`` as a pipeline on ``executor``: (rows, the operator's record)."""
    out = dc.pipeline(ds, on_error=on_error).apply(op).collect(executor=executor)
    return out, out.history()[-1]


def qa(*pairs) -> str:
    return json.dumps([{"question": q, "answer": a} for q, a in pairs])


# -- generate_vqa ------------------------------------------------------------------------------------------------
def test_tiny_vlm_generates_vqa_on_both_executors(tmp_path, tiny_vlm, executor):
    rows = image_rows(tmp_path, 6)
    for i, r in enumerate(rows):
        r["caption"] = f"a small shape number {i}"
    ds = dc.MMDataset.from_rows(rows, schema="MM", root=str(tmp_path))
    spec = {"backend": "paddle", "path": tiny_vlm, "max_new_tokens": 8, "batch_size": 4}
    op = create("generate_vqa", model=spec, n=2, source="both")
    out, rec = run(ds, op, executor)
    assert len(out) == rec.rows_in == rec.rows_out == 6 and rec.failed == 0
    rows_counted = sum(v for k, v in rec.counts.items() if k == "generated" or k.startswith("rejected"))
    assert rows_counted == 6
    # a random model rarely writes JSON: whatever it says is accounted for, and only valid pairs become turns
    added = sum(len(r["conversations"]) - 2 for r in out)
    assert added == 2 * rec.counts.get("pairs", 0)
    local, _ = run(ds, create("generate_vqa", model=spec, n=2, source="both"), "local")
    assert [r["conversations"] for r in out] == [r["conversations"] for r in local]


def test_tiny_lm_generates_from_captions_of_text_only_rows(tiny_lm):
    rows = [{"id": f"t{i}", "image": None, "caption": c, "conversations": []}
            for i, c in enumerate(["a red circle", "", "a blue square"])]
    ds = dc.MMDataset.from_rows(rows, schema="MM")
    spec = {"backend": "paddle", "path": tiny_lm, "max_new_tokens": 6}
    out, rec = run(ds, create("generate_vqa", model=spec, n=1, source="caption"))
    assert rec.counts["skipped: no caption"] == 1 and rec.failed == 0
    assert sum(v for k, v in rec.counts.items() if k == "generated" or k.startswith("rejected")) == 2
    assert sum(len(r["conversations"]) for r in out) == 2 * rec.counts.get("pairs", 0)


# the rule model "sees" the color of the image and answers per color (colors cycle red, green, blue, white, ...)
VQA = {
    "red": qa(("What shape is it?", "A square."), ("Is it bright?", "Yes.")),
    "green": "I cannot answer that.",
    "blue": qa(("How many shapes?", "One."), ("how many SHAPES", "1"), ("<image>", "beyond n: never checked")),
    "white": qa(("What color is image 3?", "White."), ("Is it white?", "Yes.")),   # repeats the row's question
    "black": json.dumps([{"question": "", "answer": "x"}, {"q": "no keys"}, "beyond n"]),
    "yellow": qa(("<image> What is here?", "A square."), ("Why?", "x" * 60)),
}


def answer_vqa(req):
    return VQA[image_color(req.images[0])]


def test_rule_model_pairs_are_kept_and_dropped_with_reasons(tmp_path):
    ds = dataset(tmp_path)
    prompts = []
    with rule_server(lambda r: prompts.append(r.messages[0]["content"]) or answer_vqa(r)) as (spec, model):
        out, rec = run(ds, create("generate_vqa", model=spec, n=2, max_answer_chars=50))
        assert model.calls == 6
    assert rec.counts == {"generated": 3, "pairs": 4, "rejected: unparsable": 1, "rejected: out of format": 1,
                          "rejected: placeholder in question": 1, "pair rejected: repeated question": 2,
                          "pair rejected: out of format": 2, "pair rejected: placeholder in question": 1,
                          "pair rejected: answer too long": 1, "pairs beyond n": 2}
    assert prompts[0].startswith("<image>\n") and '[{"question": "...", "answer": "..."}' in prompts[0]
    assert "2 objects" in prompts[0]
    conv = [[(t["from"], t["value"]) for t in r["conversations"]] for r in out]
    assert conv[0][2:] == [("human", "What shape is it?"), ("gpt", "A square."), ("human", "Is it bright?"),
                           ("gpt", "Yes.")]                      # the conversation has its <image> already
    assert conv[2][2:] == [("human", "How many shapes?"), ("gpt", "One.")]
    assert conv[3][2:] == [("human", "Is it white?"), ("gpt", "Yes.")]
    assert all(out[i]["conversations"] == ds[i]["conversations"] for i in (1, 4, 5))   # rejected: unchanged
    out.validate()


def test_rejected_rows_fail_under_on_reject_fail_and_no_row_is_lost(tmp_path):
    rows = image_rows(tmp_path, 6)
    rows[0]["image"] = "img/missing.png"                      # cannot be read: the row fails
    rows[1]["image"] = None                                   # nothing to ask about: skipped
    ds = dc.MMDataset.from_rows(rows, schema="MM", root=str(tmp_path))
    with rule_server(answer_vqa) as (spec, model):
        out, rec = run(ds, create("generate_vqa", model=spec, n=2, max_answer_chars=50), on_error="quarantine")
        assert rec.failed == 1 and rec.rows_out == 5 and "missing.png" in out.quarantine[0]["_error"]
        assert rec.counts["skipped: no image"] == 1 and rec.counts["generated"] == 2
        assert model.calls == 4                               # the row-by-row retry asked the model nothing new
        strict, srec = run(ds, create("generate_vqa", model=spec, n=2, max_answer_chars=50, on_reject="fail"),
                           on_error="skip")
        assert model.calls == 8
        with pytest.raises(OperatorError, match="rejected: out of format"):
            ds[4:5].apply(create("generate_vqa", model=spec, n=2, on_reject="fail"))
    # blue and white are generated (a pair dropped from each); black and yellow fail with the unreadable one
    assert srec.failed == 3 and [r["id"] for r in strict] == ["r1", "r2", "r3"]
    assert srec.counts == {"skipped: no image": 1, "generated": 2, "pairs": 2, "pairs beyond n": 1,
                           "pair rejected: repeated question": 2}


def test_captions_without_images_and_rows_without_conversation(tmp_path):
    rows = [{"id": "a", "image": None, "caption": "a red circle", "conversations": []},
            {"id": "b", "image": None, "caption": None, "conversations": []},
            {"id": "c", "image": "img/0.png", "caption": "a red square", "conversations": []},
            {"id": "d", "image": None, "caption": "  ", "conversations": []}]
    image_rows(tmp_path, 1)
    ds = dc.MMDataset.from_rows(rows, schema="MM", root=str(tmp_path))

    def answer(req):
        caption = re.search(r"follows:\n(.*)\n", req.messages[0]["content"]).group(1)
        return qa((f"What is in {caption}?", caption), ("Is it nice?", "yes"))

    with rule_server(answer) as (spec, model):
        out, rec = run(ds, create("generate_vqa", model=spec, n=2, source="caption"))
        assert model.calls == 2
        both, brec = run(ds, create("generate_vqa", model=spec, n=1, source="both"))
    assert rec.counts == {"generated": 2, "pairs": 4, "skipped: no caption": 2}
    assert out[0]["conversations"][0] == {"from": "human", "value": "What is in a red circle?"}
    assert out[1]["conversations"] == []
    assert out[2]["conversations"][0]["value"] == "<image>\nWhat is in a red square?"   # the row has an image
    out.validate()
    assert brec.counts == {"generated": 1, "pairs": 1, "skipped: no image": 3, "pairs beyond n": 1}
    assert [t["value"] for t in both[2]["conversations"]] == ["<image>\nWhat is in a red square?", "a red square"]


@pytest.mark.parametrize("schema", ["MESSAGES", "MIX"])
def test_turns_are_appended_in_the_batch_format(tmp_path, schema):
    ds = dataset(tmp_path, 2, with_conversation=False).convert(schema)
    with rule_server(lambda r: qa(("What is it?", image_color(r.images[0])))) as (spec, _):
        out = ds.apply(create("generate_vqa", model=spec, n=1))
    col, role, text = ("messages", "role", "content") if schema == "MESSAGES" else ("conversations", "from",
                                                                                    "value")
    turns = [(t[role], t[text]) for t in out[1][col]]
    assert turns == [("user", "<image>\nWhat is it?"), ("assistant", "green")]
    out.validate()


def test_check_pairs_reasons():
    from datacopilot.operators._model import Rejected
    from datacopilot.operators.synthesize import check_pairs

    for parsed, reason in [({"question": "q", "answer": "a"}, "out of format"), ([], "no pairs"),
                           ([{"question": "q?", "answer": 3}], "out of format"),
                           ([{"question": "?!", "answer": "a"}], "out of format"),
                           ([{"question": "q", "answer": "<image> a"}], "placeholder in answer")]:
        with pytest.raises(Rejected) as e:
            check_pairs(parsed, 3, set(), 100, {})
        assert e.value.reason == reason
    counts = {}
    assert check_pairs([{"question": " Q? ", "answer": " A. ", "extra": 1}], 1, set(), 100, counts) == [("Q?", "A.")]
    assert counts == {}


def test_generate_vqa_parameters_are_checked(tmp_path):
    with pytest.raises(OperatorError, match="`source`"):
        create("generate_vqa", model=OPENAI, source="text")
    with pytest.raises(OperatorError, match="unknown field"):
        create("generate_vqa", model=OPENAI, prompt="{n} about {caption}")           # source image: no caption
    with pytest.raises(OperatorError, match="must contain {caption}"):
        create("generate_vqa", model=OPENAI, source="caption", prompt="Write {n} pairs.")
    with pytest.raises(OperatorError, match="`n`"):
        create("generate_vqa", model=OPENAI, n=0)
    with pytest.raises(OperatorError, match="`max_answer_chars`"):
        create("generate_vqa", model=OPENAI, max_answer_chars="long")
    with pytest.raises(OperatorError, match="model directory"):
        create("generate_vqa", model={"backend": "paddle", "path": str(tmp_path / "nope")})
    ds = dataset(tmp_path, 1)
    with pytest.raises(OperatorError, match="`caption_field` 'desc'"):
        ds.apply(create("generate_vqa", model=OPENAI, source="both", caption_field="desc"))


# -- rewrite -----------------------------------------------------------------------------------------------------
def test_tiny_lm_rewrites_answers_on_both_executors(tmp_path, tiny_lm, executor):
    ds = dataset(tmp_path, 4)
    spec = {"backend": "paddle", "path": tiny_lm, "max_new_tokens": 8, "batch_size": 4}
    out, rec = run(ds, create("rewrite", model=spec, style="detailed"), executor)
    assert len(out) == rec.rows_out == 4 and rec.failed == 0
    assert sum(v for k, v in rec.counts.items() if k == "rewritten" or k.startswith("rejected")) == 4  # turns
    changed = sum(a["conversations"][1]["value"] != b["conversations"][1]["value"] for a, b in zip(out, ds))
    assert changed == rec.counts.get("rewritten", 0)
    assert all(len(r["conversations"][1]["value"]) > len(f"It is {c}.") for r, c in zip(out, ["red", "green",
               "blue", "white"]) if r["conversations"][1]["value"] != f"It is {c}.")
    local, _ = run(ds, create("rewrite", model=spec, style="detailed"), "local")
    assert [r["conversations"] for r in out] == [r["conversations"] for r in local]


REWRITES = {"It is red, like a ripe tomato.": "Red.", "Because.": "Because it is.", "A circle.": "",
            "On the left side.": "<image> left"}


def answer_rewrite(req):
    answer = re.search(r"Answer: (.*)\n\nReply", req.messages[0]["content"]).group(1)
    return REWRITES.get(answer, f"{answer} Put in other words, at length.")


def rewrite_rows(to_schema, schema="MM"):
    from .conftest import mm

    return to_schema([mm("a", "<image>\nWhat color is it?", "It is red, like a ripe tomato.", "Why?", "Because."),
                      mm("b", "<image>\nWhat?", "A circle."),
                      mm("c", "<image>\nWhere?", "On the left side."),
                      mm("d", image=None)], schema)


def test_rule_model_rewrites_are_accepted_or_rejected_per_turn(to_schema):
    ds = rewrite_rows(to_schema)
    prompts = []
    with rule_server(lambda r: prompts.append(r.messages[0]["content"]) or answer_rewrite(r)) as (spec, model):
        out, rec = run(ds, create("rewrite", model=spec, style="concise"))
        assert model.calls == 4                                           # one request per assistant answer
        detailed = ds.apply(create("rewrite", model=spec, style="detailed"))
    assert rec.counts == {"rewritten": 1, "rejected: not shorter": 1, "rejected: empty output": 1,
                          "rejected: placeholder in output": 1, "skipped: no answer": 1}
    assert [t["value"] for t in out[0]["conversations"]] == ["<image>\nWhat color is it?", "Red.", "Why?",
                                                             "Because."]
    assert [r["conversations"] for r in out][1:] == [r["conversations"] for r in ds][1:]
    assert prompts[0].startswith("Rewrite the answer below so that it is shorter")
    assert any("Question: What color is it?\nAnswer: It is red, like a ripe tomato." in p   # no <image>
               for p in prompts)
    assert detailed.history()[-1].counts == {"rewritten": 1, "rejected: not longer": 1, "rejected: empty output": 1,
                                             "rejected: placeholder in output": 1, "skipped: no answer": 1}
    assert [t["value"] for t in detailed[0]["conversations"]][1::2] == ["It is red, like a ripe tomato.",
                                                                       "Because it is."]
    out.validate()


def test_translate_on_messages_and_a_custom_instruction(to_schema):
    ds = rewrite_rows(to_schema, "MESSAGES")
    with rule_server(lambda r: "FR " + r.messages[0]["content"].split("\n")[0]) as (spec, _):
        out = ds.apply(create("rewrite", model=spec, style="translate", language="French"))
        custom = ds[:1].apply(create("rewrite", model=spec, instruction="Say it in {language}, briefly.",
                                     language="German", template="{instruction} {answer}"))
    assert out.history()[-1].counts == {"rewritten": 4, "skipped: no answer": 1}
    assert [(t["role"], t["content"]) for t in out[1]["messages"]] == [
        ("user", "<image>\nWhat?"),
        ("assistant", "FR Translate the answer below into French. Keep its meaning and formatting.")]
    assert custom[0]["messages"][1]["content"] == "FR Say it in German, briefly. It is red, like a ripe tomato."
    out.validate()


def test_rewrite_rejections_fail_rows_and_unreachable_models_lose_none(to_schema):
    ds = rewrite_rows(to_schema)
    with rule_server(answer_rewrite) as (spec, model):
        strict, rec = run(ds, create("rewrite", model=spec, style="concise", on_reject="fail"), on_error="skip")
        assert model.calls == 4                               # the row-by-row retry asked the model nothing new
    assert rec.failed == 3 and [r["id"] for r in strict] == ["d"] and rec.counts == {"skipped: no answer": 1}
    down = {"backend": "openai", "endpoint": "http://127.0.0.1:9/v1", "max_retries": 0, "timeout": 2}
    out, rec = run(ds, create("rewrite", model=down, style="concise"), on_error="quarantine")
    assert rec.failed == 3 and len(out) == 1 and len(out.quarantine) == 3
    assert "unreachable" in out.quarantine[0]["_error"]


def test_rewrite_parameters_are_checked():
    with pytest.raises(OperatorError, match="give `style`"):
        create("rewrite", model=OPENAI)
    with pytest.raises(OperatorError, match="`style`"):
        create("rewrite", model=OPENAI, style="poetic")
    with pytest.raises(OperatorError, match="`language`"):
        create("rewrite", model=OPENAI, style="translate")
    with pytest.raises(OperatorError, match="only used by"):
        create("rewrite", model=OPENAI, style="concise", language="French")
    with pytest.raises(OperatorError, match="must contain {answer}"):
        create("rewrite", model=OPENAI, style="concise", template="{instruction} {question}")
    with pytest.raises(OperatorError, match="unknown field"):
        create("rewrite", model=OPENAI, instruction="Shorten {answer}")


@pytest.mark.parametrize("name,params", [
    ("generate_vqa", {"n": 2, "source": "both", "prompt": "{n} pairs on {caption}", "caption_field": "desc"}),
    ("rewrite", {"style": "translate", "language": "French", "on_reject": "fail"}),
])
def test_params_round_trip_through_yaml(name, params):
    op = create(name, model=dict(OPENAI, max_new_tokens=128), **params)
    again = create(name, **yaml.safe_load(yaml.safe_dump(op.params())))
    assert again.params() == op.params() and again.p["model"]["max_new_tokens"] == 128
    assert create(name, **op.params()).params() == op.params()
