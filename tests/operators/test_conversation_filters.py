"""Conversation filters on LLaVA-style rows: rows that must be kept, rows that must be dropped, reasons."""

import os

import pytest

from datacopilot.errors import OperatorError
from datacopilot.operators import create

from .conftest import ids, last, mm

ROWS = [
    mm("good", "<image>\nWhat animal is on the sofa?", "A grey cat is sleeping on the sofa next to a pillow."),
    mm("single", "<image>\nDescribe the image."),
    mm("short", "<image>\nIs it a cat?", "Yes"),
    mm("refusal", "<image>\nWhat is this?", "As an AI language model, I cannot see images."),
    mm("sorry", "<image>\nRead the sign.", "I'm sorry, but I can't read text in images."),
    mm("loop", "<image>\nDescribe it.", " ".join(["the cat sat on the mat"] * 12)),
    mm("symbols", "<image>\nWhat?", "$$$ ### @@@ %%% &&& *** ^^^ ~~~ |||"),
    mm("empty", "<image>\nWhat is it?", "   "),
    mm("dup", "<image>\nWhat is it?", "A dog.", "What is it?", "A dog."),
    mm("long_chat", "<image>\nq1", "a1", "q2", "a2", "q3", "a3"),
]


@pytest.mark.parametrize("schema", ["MM", "MESSAGES"])
def test_turns(to_schema, schema):
    out = to_schema(ROWS, schema).apply(create("filter_turns", min_turns=2, max_turns=4))
    assert "single" not in ids(out) and "long_chat" not in ids(out) and "good" in ids(out)
    assert last(out).dropped == {"fewer than 2 turns": 1, "more than 4 turns": 1}


def test_turns_do_not_count_system_messages(to_schema):
    ds = to_schema([mm("1", "q", "a")], "MESSAGES")
    rows = ds.to_list()
    rows[0]["messages"].insert(0, {"role": "system", "content": "be nice"})
    import datacopilot as dc

    ds = dc.MMDataset.from_rows(rows, schema="MESSAGES")
    assert len(ds.apply(create("filter_turns", max_turns=2))) == 1
    assert len(ds.apply(create("filter_turns", min_turns=3))) == 0


@pytest.mark.parametrize("schema", ["MM", "MESSAGES"])
def test_length_in_chars_and_words(to_schema, schema):
    ds = to_schema(ROWS, schema)
    out = ds.apply(create("filter_length", role="assistant", unit="words", min_length=2, max_length=40))
    assert ids(out) == ["good", "single", "refusal", "sorry", "symbols", "dup"]  # "single" has no answer to judge
    assert last(out).dropped == {"assistant turn shorter than 2 words": 3, "assistant turn longer than 40 words": 1}
    q = ds.apply(create("filter_length", role="user", unit="chars", min_length=18))
    assert ids(q) == ["good", "single", "short", "refusal", "sorry", "loop", "empty"]  # every question counts
    assert last(q).dropped == {"user turn shorter than 18 chars": 3}
    with pytest.raises(OperatorError, match=r"`min_length` \(5\) must not exceed `max_length` \(2\)"):
        create("filter_length", min_length=5, max_length=2)


@pytest.mark.parametrize("schema", ["MM", "MESSAGES"])
def test_empty_and_duplicate_turns(to_schema, schema):
    out = to_schema(ROWS, schema).apply(create("filter_empty_turns"))
    assert "empty" not in ids(out) and "dup" not in ids(out) and len(out) == len(ROWS) - 2
    assert last(out).dropped == {"empty turn": 1, "duplicate turn": 1}
    assert "dup" in ids(to_schema(ROWS, schema).apply(create("filter_empty_turns", duplicates=False)))


@pytest.mark.parametrize("schema", ["MM", "MESSAGES"])
def test_refusals(to_schema, schema):
    out = to_schema(ROWS, schema).apply(create("filter_refusals"))
    assert ids(out) == [i for i in (r["id"] for r in ROWS) if i not in ("refusal", "sorry")]
    assert sorted(last(out).dropped.values()) == [1, 1]
    assert all(k.startswith("refusal or boilerplate: ") for k in last(out).dropped)
    extra = to_schema(ROWS, schema).apply(create("filter_refusals", patterns=[], extra_patterns=[r"\bgrey cat\b"]))
    assert "good" not in ids(extra) and "refusal" in ids(extra)
    with pytest.raises(OperatorError, match="is not a regular expression"):
        create("filter_refusals", extra_patterns=["(unclosed"])


@pytest.mark.parametrize("schema", ["MM", "MESSAGES"])
def test_repetition_char_and_word(to_schema, schema):
    ds = to_schema(ROWS, schema)
    out = ds.apply(create("filter_repetition"))
    assert "loop" not in ids(out) and "good" in ids(out) and len(out) == len(ROWS) - 1
    assert last(out).dropped == {"character 10-gram repetition above 0.5": 1}
    words = ds.apply(create("filter_repetition", max_char_ratio=None, word_n=2, max_word_ratio=0.5))
    assert last(words).dropped == {"word 2-gram repetition above 0.5": 1}
    with pytest.raises(OperatorError, match="set `max_char_ratio` or `max_word_ratio`"):
        create("filter_repetition", max_char_ratio=None, max_word_ratio=None)


@pytest.mark.parametrize("schema", ["MM", "MESSAGES"])
def test_special_characters(to_schema, schema):
    out = to_schema(ROWS, schema).apply(create("filter_special_chars", role="assistant", max_ratio=0.3))
    assert "symbols" not in ids(out) and len(out) == len(ROWS) - 1
    assert last(out).dropped == {"special characters above 0.3": 1}


MULTILINGUAL = [
    mm("en", "<image>\nWhat is on the table?", "There is a red apple and a glass of water on the wooden table."),
    mm("de", "<image>\nWas liegt auf dem Tisch?", "Auf dem Holztisch liegen ein roter Apfel und ein Glas Wasser."),
    mm("zh", "<image>\n桌子上有什么？", "木桌上有一个红苹果和一杯水。"),
    mm("fr", "<image>\nQu'y a-t-il sur la table ?", "Il y a une pomme rouge et un verre d'eau sur la table en bois."),
]


@pytest.mark.parametrize("schema", ["MM", "MESSAGES"])
def test_language(to_schema, schema):
    pytest.importorskip("lingua", reason="lingua-language-detector cannot be installed here")
    out = to_schema(MULTILINGUAL, schema).apply(create("filter_language", languages=["en", "zh"]))
    assert ids(out) == ["en", "zh"]
    assert last(out).dropped == {"language de not in ['en', 'zh']": 1, "language fr not in ['en', 'zh']": 1}
    with pytest.raises(OperatorError, match="'xx' is not an ISO 639-1 language code"):
        create("filter_language", languages=["xx"])


def _bert_tokenizer_dir(tmp_path) -> str:
    try:
        from datacopilot.models.tokenizer import train_tokenizer  # noqa: F401
    except ImportError:
        pass
    pytest.importorskip("paddlenlp", reason="the paddle extra is not installed")
    from paddlenlp.transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "on", "the", "table", "a", "red", "apple"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    out = str(tmp_path / "tok")
    BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(out)
    return out


def test_token_count_with_a_saved_tokenizer(tmp_path, to_schema):
    path = _bert_tokenizer_dir(tmp_path)
    rows = [mm("fits", "what is on the table?", "a red apple"),  # 6 + 3 tokens
            mm("long", "what is on the table?", "a red apple on the table, a red apple on the table")]
    out = to_schema(rows).apply(create("filter_tokens", tokenizer=path, max_tokens=10))
    assert ids(out) == ["fits"]
    assert last(out).dropped == {"more than 10 tokens": 1}
    assert create("filter_tokens", tokenizer=path).count(["a red apple", ""]).tolist() == [3, 0]
    with pytest.raises(OperatorError, match="`tokenizer` must be a tokenizer directory"):
        create("filter_tokens", tokenizer=os.path.join(str(tmp_path), "nowhere"))
