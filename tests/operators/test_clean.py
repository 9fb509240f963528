"""Cleaning mappers and repair operators on LLaVA-style rows, in MM and MESSAGES form."""

import pytest

from datacopilot.errors import OperatorError
from datacopilot.operators import create
from datacopilot.operators.clean import fix_mojibake

from .conftest import ids, last, mm


def _texts(ds):
    col = "conversations" if "conversations" in ds.columns else "messages"
    key = "value" if col == "conversations" else "content"
    return [[t[key] for t in r[col]] for r in ds]


@pytest.mark.parametrize("schema", ["MM", "MESSAGES"])
def test_clean_unicode_repairs_and_leaves_clean_text_alone(to_schema, schema):
    rows = [mm("1", "<image>\nWhat is the cafe\u0301\u200b sign?",
               "It says Caf\u00c3\u00a9 \u00e2\u20ac\u201c open\x07."),
            mm("2", "<image>\n日本語のテキスト", "naïve façade, 100 € — fine")]
    out = to_schema(rows, schema).apply(create("clean_unicode"))
    assert _texts(out) == [["<image>\nWhat is the café sign?", "It says Café – open."],
                           ["<image>\n日本語のテキスト", "naïve façade, 100 € — fine"]]
    assert out.schema.name == schema and len(out) == 2 and last(out).rows_out == 2


def test_fix_mojibake_only_when_unambiguous():
    assert fix_mojibake("Itâ€™s") == "It’s" and fix_mojibake("CafÃ©") == "Café"
    assert fix_mojibake("Ã  la carte") == "Ã  la carte"  # not a valid UTF-8 round trip: left alone
    assert fix_mojibake("Äpfel und Öl") == "Äpfel und Öl"


@pytest.mark.parametrize("schema", ["MM", "MESSAGES"])
def test_clean_whitespace(to_schema, schema):
    rows = [mm("1", "  <image>\n  What   is\tthis?  ", "A dog.\r\n\r\n\r\n\r\nIt runs. "), mm("2", "ok", "fine")]
    out = to_schema(rows, schema).apply(create("clean_whitespace", max_newlines=1))
    assert _texts(out) == [["<image>\nWhat is this?", "A dog.\nIt runs."], ["ok", "fine"]]


def test_mask_pii_masks_emails_and_phones_but_not_numbers(to_schema):
    rows = [mm("1", "Contact me at john.doe@example.co.uk", "Call +1 (555) 123-4567 or 138 1234 5678."),
            mm("2", "In 2023-2024 version 1.2.3 ran on 192.168.1.10", "It costs 12,500 dollars.")]
    out = to_schema(rows).apply(create("mask_pii"))
    assert _texts(out) == [["Contact me at <EMAIL>", "Call <PHONE> or <PHONE>."],
                           ["In 2023-2024 version 1.2.3 ran on 192.168.1.10", "It costs 12,500 dollars."]]
    only_mail = to_schema(rows).apply(create("mask_pii", phones=False, email_token="[mail]"))
    assert _texts(only_mail)[0] == ["Contact me at [mail]", "Call +1 (555) 123-4567 or 138 1234 5678."]
    with pytest.raises(OperatorError, match="`min_phone_digits` must be >= 5"):
        create("mask_pii", min_phone_digits=2)


@pytest.mark.parametrize("schema", ["MM", "MESSAGES"])
def test_image_tokens_fixed_and_unfixable_rows_dropped_with_reason(to_schema, schema):
    rows = [mm("ok", "<image>\nWhat is it?", "A cat."),
            mm("missing", "What is it?", "A cat."),
            mm("extra", "<image>\n<image>\nWhat is it?", "A cat <image>."),
            mm("text_only", "<image>\nHi", "Hello.", image=None),
            mm("no_user", ("gpt", "A cat."))]
    out = to_schema(rows, schema).apply([create("fix_image_tokens"), create("filter_image_tokens")])
    assert ids(out) == ["ok", "missing", "extra", "text_only"]
    assert _texts(out) == [["<image>\nWhat is it?", "A cat."], ["<image>\nWhat is it?", "A cat."],
                           ["<image>\nWhat is it?", "A cat ."], ["Hi", "Hello."]]
    assert last(out).dropped == {"fewer <image> tokens than images": 1}


def test_filter_image_tokens_alone_drops_mismatches_with_reasons(to_schema):
    rows = [mm("ok", "<image>\nq", "a"), mm("extra", "<image><image> q", "a"), mm("missing", "q", "a")]
    out = to_schema(rows).apply(create("filter_image_tokens"))
    assert ids(out) == ["ok"]
    assert last(out).dropped == {"more <image> tokens than images": 1, "fewer <image> tokens than images": 1}


@pytest.mark.parametrize("schema", ["MM", "MESSAGES"])
def test_fix_roles_merges_repeats_and_drops_a_leading_answer(to_schema, schema):
    rows = [mm("lead", ("gpt", "Hello!"), ("human", "<image>\nWhat is it?"), ("human", "Be brief."),
               ("gpt", "A cat."), ("gpt", "A grey one.")),
            mm("ok", "<image>\nq", "a")]
    out = to_schema(rows, schema).apply(create("fix_roles"))
    assert _texts(out) == [["<image>\nWhat is it?\n\nBe brief.", "A cat.\n\nA grey one."], ["<image>\nq", "a"]]
    assert len(out) == 2


def test_conversation_operators_refuse_pairs_clearly(to_schema):
    pairs = to_schema([mm("1", "q", "a")]).convert("PAIRS")
    with pytest.raises(OperatorError, match=r"clean_unicode: works on MM, MIX and MESSAGES.*not PAIRS"):
        pairs.apply(create("clean_unicode"))
