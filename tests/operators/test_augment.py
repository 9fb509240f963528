"""Augmenters on LLaVA-style rows (MM and MESSAGES): rephrase, split, merge, shuffle; rows out, failures per row,
and the same rows on the local and the Ray executor."""

import pytest
from datacopilot.operators import create, list_operators
from datacopilot.operators._augment import refers_back

import datacopilot as dc
from datacopilot.errors import OperatorError
from tests.executors._ray import executor, ray_session  # noqa: F401  (fixtures: "local" / "ray")

from .conftest import ids, last, mm

ROWS = [
    mm("long", "<image>\nWhat is on the table?", "A laptop and a cup.", "What color is the wall?", "White.",
       "Is it clean?", "Yes, it looks clean.", "How many chairs are there?", "Two.",
       "Where is the window?", "On the left."),
    mm("short", "How many people are in the photo?\n<image>", "Three."),
    mm("same_img", "<image>\nWhat is the man holding?", "A red umbrella."),
    mm("other_img", "<image>\nDescribe the scene.", "A busy street at night.", image="img/1.png"),
    mm("text_only", "What is the capital of France?", "Paris.", image=None),
    mm("no_question", ("gpt", "Hello, ask me anything."), image=None),
]


def values(row, key="conversations", text="value"):
    return [t[text] for t in row[key]]


def conv_of(row):
    return values(row) if "conversations" in row else values(row, "messages", "content")


def test_registered_as_augmenters():
    kinds = {r["name"]: r["kind"] for r in list_operators("augmenter")}
    for name in ("rephrase_questions", "split_conversations", "shuffle_turns"):
        assert kinds[name] == "augmenter"
    assert [r["kind"] for r in list_operators("group")] == ["group"] * len(list_operators("group"))
    assert "merge_same_image" in {r["name"] for r in list_operators("group")}


# -- rephrase_questions -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("schema", ["MM", "MESSAGES"])
def test_rephrase_adds_copies_and_keeps_placeholders(to_schema, schema):
    ds = to_schema(ROWS, schema)
    out = ds.apply(create("rephrase_questions", seed=7))
    assert ids(out) == ["long", "long#rephrased", "short", "short#rephrased", "same_img", "same_img#rephrased",
                        "other_img", "other_img#rephrased", "text_only", "text_only#rephrased", "no_question"]
    assert (last(out).rows_in, last(out).rows_out) == (6, 11)
    rows = out.to_list()
    for orig, copy in zip(rows[0:10:2], rows[1:10:2]):
        a, b = conv_of(orig), conv_of(copy)
        assert a[1::2] == b[1::2]  # answers untouched
        assert all(x != y for x, y in zip(a[0::2], b[0::2]))  # every question rephrased
        assert [q.count("<image>") for q in a] == [q.count("<image>") for q in b]
        assert b[0].startswith("<image>\n") == a[0].startswith("<image>\n")
        assert b[0].endswith("\n<image>") == a[0].endswith("\n<image>")
    assert "image" not in conv_of(rows[9])[0]  # a text-only row gets a template that does not mention an image
    # seeded: the same seed gives the same rows whatever the batch size; another seed gives others
    assert out.to_list() == ds.apply(create("rephrase_questions", seed=7), batch_size=1).to_list()
    assert out.to_list() != ds.apply(create("rephrase_questions", seed=8)).to_list()


def test_rephrase_replace_with_own_templates(to_schema):
    op = create("rephrase_questions", templates=["Q: {question}", "Tell me {question_bare}."], keep_original=False,
                turns="first")
    out = to_schema(ROWS[:2], "MM").apply(op)
    assert ids(out) == ["long", "short"] and last(out).rows_out == 2
    first = values(out[0])
    assert first[0] in ("<image>\nQ: What is on the table?", "<image>\nTell me what is on the table.")
    assert first[2] == "What color is the wall?"  # turns="first": later questions as they were
    assert values(out[1])[0] in ("Q: How many people are in the photo?\n<image>",
                                 "Tell me how many people are in the photo.\n<image>")


@pytest.mark.parametrize("bad, match", [(["no slot here"], "slot"), (["{question} {other}"], "other"),
                                        ("{question}", "list"), ([], "list")])
def test_rephrase_refuses_bad_templates(bad, match):
    with pytest.raises(OperatorError, match=match):
        create("rephrase_questions", templates=bad)


# -- split_conversations ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("schema", ["MM", "MESSAGES"])
def test_split_long_conversations(to_schema, schema):
    out = to_schema(ROWS, schema).apply(create("split_conversations", max_turns=2))
    assert ids(out) == ["long#1", "long#2", "long#3", "short", "same_img", "other_img", "text_only", "no_question"]
    assert (last(out).rows_in, last(out).rows_out) == (6, 8)
    parts = out.to_list()[:3]
    assert [len(conv_of(p)) for p in parts] == [4, 4, 2]
    assert [t for p in parts for t in conv_of(p)] == values(ROWS[0])  # nothing lost, order kept
    img = "image" if schema == "MM" else "images"
    empty = None if schema == "MM" else []
    assert parts[0][img] not in (None, []) and parts[1][img] == parts[2][img] == empty
    assert conv_of(parts[0])[0].startswith("<image>\n") and "<image>" not in "".join(conv_of(parts[1]))
    # every part still has as many placeholders as images
    assert len(out.apply(create("filter_image_tokens"))) == len(out)


@pytest.mark.parametrize("schema", ["MM", "MESSAGES"])
def test_split_keep_image_adds_placeholder(to_schema, schema):
    out = to_schema(ROWS[:1], schema).apply(create("split_conversations", max_turns=2, keep_image=True))
    rows = out.to_list()
    assert len(rows) == 3 and all(r["image" if schema == "MM" else "images"] for r in rows)
    assert conv_of(rows[1])[0] == "<image>\nIs it clean?"
    assert len(out.apply(create("filter_image_tokens"))) == 3


def test_split_repeats_system_and_distributes_images():
    row = {"id": "m", "images": ["img/a.png", "img/b.png"], "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image>\nWhat is in the first picture?"}, {"role": "assistant", "content": "A dog."},
        {"role": "user", "content": "<image>\nAnd in this one?"}, {"role": "assistant", "content": "A cat."}]}
    out = dc.MMDataset.from_rows([row], schema="MESSAGES").apply(create("split_conversations", max_turns=1)).to_list()
    assert [r["id"] for r in out] == ["m#1", "m#2"]
    assert [values(r, "messages", "content")[0] for r in out] == ["Be brief."] * 2
    assert [[i["path"] for i in r["images"]] for r in out] == [["img/a.png"], ["img/b.png"]]


def test_split_fails_only_the_bad_row():
    bad = mm("bad", "q1", "a1", "q2", "a2", image=None)
    bad["conversations"][1]["from"] = "bot"
    ds = dc.MMDataset.from_rows([ROWS[0], bad, ROWS[1]], schema="MM", validate=False)
    out = ds.apply(create("split_conversations", max_turns=3), on_error="quarantine")
    assert ids(out) == ["long#1", "long#2", "short"]
    assert (last(out).rows_in, last(out).rows_out, last(out).failed) == (3, 3, 1)
    q = out.quarantine.to_list()
    assert [r["id"] for r in q] == ["bad"] and "conversations[1].from" in q[0]["_error"] and "'bot'" in q[0]["_error"]
    with pytest.raises(OperatorError, match="bad"):
        ds.apply(create("split_conversations", max_turns=3))


# -- merge_same_image ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schema", ["MM", "MESSAGES"])
def test_merge_rows_on_the_same_image(to_schema, schema):
    ds = to_schema(ROWS[1:] + [mm("again", "<image>\nIs it raining?", "Yes.")], schema)
    out = ds.apply(create("merge_same_image"))
    assert ids(out) == ["short+same_img+again", "other_img", "text_only", "no_question"]
    assert (last(out).rows_in, last(out).rows_out) == (6, 4)
    assert conv_of(out[0]) == ["How many people are in the photo?\n<image>", "Three.", "What is the man holding?",
                               "A red umbrella.", "Is it raining?", "Yes."]
    assert len(out.apply(create("filter_image_tokens"))) == 4
    # max_turns: a group closes when the next row would pass the limit
    capped = ds.apply(create("merge_same_image", max_turns=2))
    assert ids(capped) == ["short+same_img", "other_img", "text_only", "no_question", "again"]
    # dataset-wide: rows in different batches merge too, whatever the batch size
    assert ids(ds.apply(create("merge_same_image"), batch_size=2)) == ids(out)
    assert ds.apply(create("merge_same_image"), batch_size=1).to_list() == out.to_list()


def test_merge_moves_a_placeholder_to_the_first_question():
    rows = [mm("a", "What is this?", "A lamp."), mm("b", "<image>\nIs it on?", "No.")]
    out = dc.MMDataset.from_rows(rows, schema="MM").apply(create("merge_same_image"))
    assert values(out[0]) == ["<image>\nWhat is this?", "A lamp.", "Is it on?", "No."]


# -- shuffle_turns -----------------------------------------------------------------------------------------------
def test_refers_back_heuristic():
    assert not refers_back("<image>\nHow many chairs are there?")
    assert refers_back("Is it clean?") and refers_back("What about the door?")
    assert refers_back("Is the answer above correct?") and not refers_back("Where is the window?")


@pytest.mark.parametrize("schema", ["MM", "MESSAGES"])
def test_shuffle_keeps_dependent_exchanges_and_placeholder(to_schema, schema):
    ds = to_schema(ROWS, schema)
    out = ds.apply(create("shuffle_turns", seed=3, keep_original=True))
    assert ids(out) == ["long", "long#shuffled", "short", "same_img", "other_img", "text_only", "no_question"]
    assert (last(out).rows_in, last(out).rows_out) == (6, 7)
    a, b = conv_of(out[0]), conv_of(out[1])
    assert b != a and b[0].startswith("<image>\n") and "<image>" not in "".join(b[1:])
    pairs = lambda c: [(c[i].replace("<image>\n", ""), c[i + 1]) for i in range(0, len(c), 2)]
    assert sorted(pairs(a)) == sorted(pairs(b))  # the same exchanges, each question with its answer
    k = b.index("Is it clean?")  # refers back: still right after the exchange it follows
    assert b[k - 2].replace("<image>\n", "") == "What color is the wall?"
    again = ds.apply(create("shuffle_turns", seed=3, keep_original=True), batch_size=1)
    assert again.to_list() == out.to_list()
    replaced = ds.apply(create("shuffle_turns", seed=3))
    assert ids(replaced) == ids(ds) and conv_of(replaced[0]) == b


def test_shuffle_leaves_dependent_or_interleaved_rows():
    rows = [mm("dep", "<image>\nWhat is the dog doing?", "Running.", "Is it happy?", "Yes."),
            mm("two_img", "<image>\nq1?", "a1", "<image>\nq2?", "a2")]
    ds = dc.MMDataset.from_rows(rows, schema="MM", validate=False)
    out = ds.apply(create("shuffle_turns", keep_original=True))
    assert ids(out) == ["dep", "two_img"]
    forced = ds.apply(create("shuffle_turns", keep_original=True, assume_independent=True))
    assert ids(forced) == ["dep", "dep#shuffled", "two_img"]
    assert values(forced[1]) == ["<image>\nIs it happy?", "Yes.", "What is the dog doing?", "Running."]


# -- both executors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [{"name": "rephrase_questions", "seed": 5},
                                {"name": "split_conversations", "max_turns": 2},
                                {"name": "merge_same_image", "max_turns": 6},
                                {"name": "shuffle_turns", "seed": 5, "keep_original": True}],
                         ids=lambda d: d["name"])
def test_same_rows_on_each_executor(executor, op):  # noqa: F811
    ds = dc.MMDataset.from_rows(ROWS * 3, schema="MM").convert("MESSAGES")
    make = lambda: create(**op)
    out = dc.pipeline(ds, batch_size=32, on_error="quarantine").apply(make()).collect(executor)
    ref = ds.apply(make(), on_error="quarantine", batch_size=32)
    assert out.to_arrow().to_pylist() == ref.to_arrow().to_pylist()
    rec, want = out.history()[-1], ref.history()[-1]
    assert (rec.rows_in, rec.rows_out, rec.failed) == (want.rows_in, want.rows_out, want.failed)
    assert rec.rows_in == 18 and rec.rows_out != 18
