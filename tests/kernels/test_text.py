"""The compiled loops over turn texts equal the pyarrow compute (RE2) functions they replace, on any text."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datacopilot.kernels import text as k
from datacopilot.operators._conv import ROLES, canonical_roles
from hypothesis import given, settings
from hypothesis import strategies as st

# every kind of whitespace Python, RE2 or Arrow knows, multi-byte characters, the placeholder and its pieces
_PIECES = list(" \t\n\r\x0b\x0c\x1c\x85\xa0\u2000\u2028\u3000") + ["a", "é", "东", "😀", "<image>", "<", "image>",
                                                                    "<im", "<<image>", "ab cd", ""]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=16).map("".join)
_TEXTS = st.lists(st.one_of(_TEXT, st.text(max_size=8)), max_size=30)
_TYPES = st.sampled_from([pa.string(), pa.large_string()])


def _buffers(values, type_, start):
    arr = pa.array(["skipped"] * start + values, type_).slice(start)  # a slice: offsets must not shift the values
    return arr, k.string_buffers(arr)


@settings(max_examples=300, deadline=None)
@given(_TEXTS, _TYPES, st.integers(0, 3))
def test_lengths_and_word_counts_equal_pyarrow_compute(values, type_, start):
    arr, (off, data) = _buffers(values, type_, start)
    assert k.utf8_lengths(off, data).tolist() == pc.utf8_length(arr).to_pylist()
    words = pc.count_substring_regex(arr, r"\S+").to_pylist()
    assert k.word_counts(off, data).tolist() == words
    sel = np.array([i % 2 == 0 for i in range(len(values))], dtype=bool)
    assert k.word_counts_where(off, data, sel).tolist() == [w if s else 0 for w, s in zip(words, sel)]


@settings(max_examples=300, deadline=None)
@given(_TEXTS, _TYPES, st.integers(0, 2), st.integers(0, 12), st.integers(0, 12))
def test_length_proxies_fall_on_the_same_side_of_both_bounds_as_the_character_count(values, type_, start, lo, span):
    arr, (off, data) = _buffers(values, type_, start)
    hi = lo + span
    chars = np.array(pc.utf8_length(arr).to_pylist(), dtype=np.int64)
    sel = np.ones(len(values), dtype=bool)
    v = k.length_proxies(off, data, sel, lo, hi)
    assert np.array_equal(v < lo, chars < lo) and np.array_equal(v > hi, chars > hi)


@settings(max_examples=300, deadline=None)
@given(_TEXTS, _TYPES, st.integers(0, 2), st.sampled_from(["<image>", "a", "ab c", "东", "image>"]))
def test_count_literal_equals_count_substring(values, type_, start, needle):
    arr, (off, data) = _buffers(values, type_, start)
    assert k.count_literal(off, data, needle.encode()).tolist() == pc.count_substring(arr, needle).to_pylist()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=8), _TEXT, st.sampled_from(["12", "1 2", "a1", "9@", "@", "\x7f"])),
                max_size=30), _TYPES, st.integers(0, 2))
def test_byte_scans_equal_their_regular_expressions(values, type_, start):
    arr, (off, data) = _buffers(values, type_, start)
    assert k.has_unprintable(off, data).tolist() == pc.match_substring_regex(arr, r"[^\t\n\r\x20-\x7E]").to_pylist()
    assert k.has_byte(off, data, ord("@")).tolist() == pc.match_substring(arr, "@").to_pylist()
    assert k.has_digit_pair(off, data).tolist() == pc.match_substring_regex(arr, r"\d\d").to_pylist()


_ROLE = st.one_of(st.sampled_from(list(ROLES) + ["bot", "Human", "gpt ", "", "assistan", "systems"]), st.none())


@settings(max_examples=200, deadline=None)
@given(st.lists(_ROLE, max_size=30), _TYPES)
def test_role_codes_name_the_canonical_role(values, type_):
    arr = pa.array(values, type_)
    codes = k.role_codes(*k.string_buffers(arr))
    names = {k.USER: "user", k.ASSISTANT: "assistant", k.SYSTEM: "system"}
    canon = canonical_roles(arr).tolist()
    for c, r, raw in zip(codes.tolist(), canon, values):
        if raw is not None:
            assert names.get(c, "other") == (r if r in names.values() else "other")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 4), max_size=12), st.data())
def test_row_reductions_equal_numpy_per_row(sizes, data):
    off = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=off[1:])
    n = int(off[-1])
    vals = np.array(data.draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)), dtype=np.float64)
    sel = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    rows = [slice(off[r], off[r + 1]) for r in range(len(sizes))]
    assert k.row_sum(off, vals, sel).tolist() == [float(vals[s][sel[s]].sum()) for s in rows]
    assert k.row_count(off, sel).tolist() == [int(sel[s].sum()) for s in rows]
    assert k.row_any(off, vals, sel).tolist() == [bool((vals[s][sel[s]] != 0).any()) for s in rows]
    lo, hi = k.row_min_max(off, vals, sel, np.inf, -np.inf)
    assert lo.tolist() == [float(vals[s][sel[s]].min()) if sel[s].any() else np.inf for s in rows]
    assert hi.tolist() == [float(vals[s][sel[s]].max()) if sel[s].any() else -np.inf for s in rows]


def test_byte_scans_find_hits_across_chunk_boundaries(monkeypatch):
    monkeypatch.setattr(k, "_CHUNK", 3)  # every hit of two or more bytes crosses a boundary somewhere
    values = ["12", "a1", "2b", "@x", "é<image>", "<ima", "ge>", "x\x07", "<image><image>", "", "9 9", "99"]
    for start in range(4):
        arr = pa.array(values[start:] + values[:start], pa.string())
        off, data = k.string_buffers(arr)
        assert k.has_byte(off, data, ord("@")).tolist() == pc.match_substring(arr, "@").to_pylist()
        assert k.has_digit_pair(off, data).tolist() == pc.match_substring_regex(arr, r"\d\d").to_pylist()
        assert k.has_unprintable(off, data).tolist() == \
            pc.match_substring_regex(arr, r"[^\t\n\r\x20-\x7E]").to_pylist()
        assert k.count_literal(off, data, b"<image>").tolist() == pc.count_substring(arr, "<image>").to_pylist()
