"""The text cleaners rewrite only the values that need it: the result equals rewriting every value.

Each cleaner's ``_rewrite`` is the rewrite of every value (what the operators did before the pre-match); its
``_texts`` matches first and rewrites the matched values only. The two must agree on any text.
"""

import pyarrow as pa
import pyarrow.compute as pc
from datacopilot.operators import create
from datacopilot.operators.clean import rewrite_where
from hypothesis import given, settings
from hypothesis import strategies as st

# every kind of whitespace Python or Arrow knows, line breaks, invisible characters, controls, mojibake pieces
_SPACES = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2005\u200a\u2028\u2029\u202f\u205f\u3000"
_ODD = "\u200b\u200c\u200d\u2060\ufeff\u00ad\x00\x07\x7f\x9f\u180e" + "ÃÂÅ€â©\u0301" + "e\u0301" + "ﬁ"
_ALPHABET = st.sampled_from(list(_SPACES + _ODD + "ab@.-+()0123456789") + ["x@y.com", "555 123 4567", "<image>"])
_TEXT = st.lists(_ALPHABET, max_size=30).map("".join)
_CLEAN = st.lists(st.sampled_from(["a", "b", "word", " ", ".", "?", "<image>", "\n", "\n\n"]), max_size=20).map(
    lambda parts: " ".join("".join(parts).split(" ")).strip())

_OPS = [create("clean_whitespace"), create("clean_whitespace", max_newlines=0),
        create("clean_whitespace", max_newlines=1), create("clean_unicode"),
        create("clean_unicode", form="NFKC", fix_mojibake=False), create("clean_unicode", form=None),
        create("mask_pii"), create("mask_pii", phones=False)]


def _full(op, texts: pa.Array) -> pa.Array:
    """Every value rewritten, as before the pre-match (mask_pii's phone step was already selective)."""
    return op._rewrite(texts) if hasattr(op, "_rewrite") else op._texts(texts)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_TEXT, _CLEAN, st.none()), max_size=12))
def test_cleaners_match_rewriting_every_value_on_random_text(values):
    texts = pa.array(values, pa.string())
    for op in _OPS:
        assert op._texts(texts).to_pylist() == _full(op, texts).to_pylist(), (op.name, op.p, values)


@settings(max_examples=100, deadline=None)
@given(st.lists(_CLEAN, min_size=1, max_size=12))
def test_clean_whitespace_returns_values_that_need_no_change_as_they_are(values):
    op = create("clean_whitespace")
    cleaned = op._rewrite(pa.array(values, pa.string()))
    assert op._texts(cleaned).to_pylist() == op._rewrite(cleaned).to_pylist() == cleaned.to_pylist()


def test_whitespace_pre_match_leaves_clean_values_and_rewrites_dirty_ones_in_place():
    op = create("clean_whitespace")
    values = ["clean text", " lead", "tab\there", "ok\n\nfine", "three\n\n\n\nbreaks", None, "trail\u3000", "é ok"]
    out = op._texts(pa.array(values)).to_pylist()
    assert out == ["clean text", "lead", "tab here", "ok\n\nfine", "three\n\nbreaks", None, "trail", "é ok"]


def test_rewrite_where_calls_the_rewrite_only_on_matched_values():
    seen = []

    def upper(sub):
        seen.append(sub.to_pylist())
        return pc.utf8_upper(sub)

    texts = pa.array(["a", "b!", None, "c!", "d"]).slice(1)  # a slice: offsets must not shift the values
    assert rewrite_where(texts, "!", upper).to_pylist() == ["B!", None, "C!", "d"]
    assert seen == [["b!", "c!"]]
    assert rewrite_where(texts, "zzz", upper) is texts


def _whitespace_as_before(texts: pa.Array, n: int) -> pa.Array:
    """clean_whitespace's rewrite as it was, with patterns that also match what they leave unchanged."""
    texts = pc.replace_substring_regex(texts, r"\r\n?", "\n")
    texts = pc.replace_substring_regex(texts, r"[ \t\f\v\x{A0}\x{3000}]+", " ")
    texts = pc.replace_substring_regex(texts, r" ?\n ?", "\n")
    texts = pc.replace_substring_regex(texts, r"\n{%d,}" % (n + 1), "\n" * n if n else " ")
    return pc.utf8_trim_whitespace(texts)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_TEXT, _CLEAN, st.none()), max_size=12), st.sampled_from([0, 1, 2, 3]))
def test_clean_whitespace_rewrite_equals_the_patterns_that_rewrite_every_space(values, n):
    texts = pa.array(values, pa.string())
    op = create("clean_whitespace", max_newlines=n)
    assert op._rewrite(texts).to_pylist() == _whitespace_as_before(texts, n).to_pylist(), values


# long runs of plain ASCII (the 8-bytes-at-a-time scan) beside every kind of whitespace and stripped character
_LONG = st.lists(st.sampled_from(["word", "Longerword", "abcdefgh", " ", "  ", "\n", "\n\n", "\n\n\n", "\r\n", "\r",
                                  "\t", "\v", "\f", "\x1c", "\xa0", "\u3000", "\u2003", "\x85", "é", "…", " \n ",
                                  ".", "<image>"]), max_size=60).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_LONG, _TEXT, st.none()), max_size=10), st.sampled_from([0, 1, 2, 3]))
def test_clean_whitespace_finds_exactly_the_values_it_changes(values, n):
    from datacopilot.kernels.text import string_buffers
    from datacopilot.kernels.whitespace import needs_change

    texts = pa.array(values, pa.string())
    before = _whitespace_as_before(texts, n).to_pylist()
    need = needs_change(*string_buffers(texts), n).tolist()
    assert [v is not None and b != v for v, b in zip(values, before)] == [nd and v is not None
                                                                         for v, nd in zip(values, need)]
    op = create("clean_whitespace", max_newlines=n)
    assert op._texts(texts).to_pylist() == op._rewrite(texts).to_pylist() == before
    assert op._rewrite(texts.slice(1)).to_pylist() == before[1:]


def test_clean_whitespace_finds_a_change_at_every_position_of_a_word():
    """Each pair that needs a change, at every offset from the 8-byte words the scan reads, and canonical ones."""
    from datacopilot.kernels.text import string_buffers
    from datacopilot.kernels.whitespace import needs_change

    pairs = ["  ", " \n", "\n ", "\n\n\n", "\t", "\r", "\xa0", "\u3000"]
    values = [("a" * j) + p + ("b" * 17) for p in pairs for j in range(1, 18)]
    values += [("a" * j) + p + ("b" * 17) for p in [" ", "\n", "\n\n", "é", " é "] for j in range(1, 18)]
    want = _whitespace_as_before(pa.array(values), 2).to_pylist()
    assert needs_change(*string_buffers(pa.array(values)), 2).tolist() == [w != v for v, w in zip(values, want)]
    assert sum(w != v for v, w in zip(values, want)) == 8 * 17
