"""The literal prefilter never hides a regex match: every string a pattern matches (RE2 and Rust's regex,
case-insensitively) holds one of its required literals, and the compiled search finds exactly the strings that
hold one (Python's ``in`` on ASCII-lowered text), on any text."""

import re

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from datacopilot.kernels.literals import LiteralSet, pattern_strings, required_literals
from datacopilot.kernels.text import string_buffers
from datacopilot.operators.conversation_filters import REFUSALS
from hypothesis import given, settings
from hypothesis import strategies as st

_PIECES = ["as an ai model", "AS AN AI", "aſ an ai model", "\u212aind", "kind", "I'm sorry, but I can't", "i cannot help",
           "İ am not able to help", "cat", "CAT", "dog", "caté", "é", "东", "😀", " ", "\n", "ſ", "\u212a", "a", "s",
           "i don't have access to", "I do not have the ability to", "abab", "aab", "hello", "HeLLo", ""]
_TEXT = st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=6)), max_size=10).map("".join)
_PATTERNS = st.sampled_from([list(REFUSALS), ["cat"], ["dog|cat"], ["(?i)hello"], ["kind"], ["a{2}b"],
                             ["(ab){2}"], ["cat(s|é)?"], ["i('| a)m (sorry|afraid)"], ["x?cats*"], ["[a-z]+ing"],
                             ["as (an|a) ai"], ["(?:ki|ca)nd?"]])


def _ascii_lower(s: str) -> str:
    return "".join(c.lower() if c.isascii() else c for c in s)


@settings(max_examples=300, deadline=None)
@given(st.lists(_TEXT, max_size=25), _PATTERNS, st.integers(0, 3))
def test_every_match_holds_a_literal_and_the_search_finds_the_strings_holding_one(values, patterns, start):
    arr = pa.array(["skipped"] * start + values, pa.string()).slice(start)
    literals = sorted(set().union(*(required_literals(p) for p in patterns)))
    found = LiteralSet(literals).holding(*string_buffers(arr))
    combined = "|".join(f"(?:{p})" for p in patterns)
    re2 = np.array(pc.match_substring_regex(arr, combined, ignore_case=True).to_pylist(), dtype=bool)
    rust = pl.Series(values, dtype=pl.String).str.contains(f"(?i)(?:{combined})").to_numpy()
    assert not (re2 & ~found).any() and not (rust & ~found).any()  # no match hidden
    folds = np.array(["ſ" in v or "\u212a" in v for v in values], dtype=bool) if \
        any(c in s for s in literals for c in "ks") else np.zeros(len(values), dtype=bool)
    holds = np.array([any(s in _ascii_lower(v) for s in literals) for v in values], dtype=bool)
    assert found.tolist() == (holds | folds).tolist()


@settings(max_examples=200, deadline=None)
@given(st.lists(_TEXT, max_size=25), st.lists(st.text("abcd ", min_size=3, max_size=5).map(str.lower), min_size=1, max_size=4))
def test_selected_strings_only(values, literals):
    arr = pa.array(values, pa.large_string())
    sel = np.array([i % 3 != 1 for i in range(len(values))], dtype=bool)
    found = LiteralSet(literals).holding(*string_buffers(arr), sel)
    assert not (found & ~sel).any()
    holds = [bool(s) and any(x in _ascii_lower(v) for x in literals) for v, s in zip(values, sel)]
    assert found.tolist() == holds


def test_patterns_read_differently_by_the_engines_give_no_literals():
    for p in [r"\bcat", r"ca\w", "a{,3}cat", "[[:alpha:]]cat", "(?<=a)bcat", r"(cat)\1", "(?x) c a t", "ab"]:
        assert required_literals(p) is None, p


def test_the_built_in_refusal_patterns_each_give_literals():
    assert all(required_literals(p) for p in REFUSALS)
    assert required_literals("as an ai( language)? model") == ["as an ai language model", "as an ai model"]
    with pytest.raises(ValueError, match="3 or more"):
        LiteralSet(["ab"])
    assert re.compile("|".join(REFUSALS))  # the patterns themselves parse


@settings(max_examples=300, deadline=None)
@given(st.lists(_TEXT, max_size=25), _PATTERNS)
def test_a_pattern_of_fixed_strings_matches_exactly_where_the_text_holds_one(values, patterns):
    for p in patterns:
        strings = pattern_strings(p)
        if strings is None:
            continue
        re2 = pc.match_substring_regex(pa.array(values, pa.string()), p, ignore_case=True).to_pylist()
        for v, m in zip(values, re2):
            if "ſ" not in v and "\u212a" not in v:
                assert m == any(s in _ascii_lower(v) for s in strings), (p, v)


def test_patterns_with_anchors_classes_or_unbounded_repeats_have_no_fixed_strings():
    for p in ["^cat", "cat$", "c.t", "ca+t", "(?-i:cat)", "[ck]at", r"\bcat", "caté"]:
        assert pattern_strings(p) is None, p
    assert pattern_strings("i('| a)m (sorry|afraid)") == ["i am afraid", "i am sorry", "i'm afraid", "i'm sorry"]
