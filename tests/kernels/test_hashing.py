"""Exact-dedup hashes: normalization, string and byte hashes, first occurrences across batches."""

import numpy as np
import pyarrow as pa
from datacopilot.kernels.hashing import (
    combine,
    combine_columns,
    first_occurrence,
    hash_bytes,
    hash_strings,
    mix64,
    normalize_text,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def test_normalize_text_lowercases_collapses_and_strips():
    out = normalize_text(pa.chunked_array([[" Hello\t\tWORLD \n", None], ["É  é"]])).to_pylist()
    assert out == ["hello world", "", "é é"]


_WS_TEXT = st.lists(st.one_of(st.sampled_from([" ", "  ", "\t", "\n", "\r", "\f", "\v", "\xa0", "\u3000", "\u2003",
                                              "\r\n", "A", "b", "É", "ς"]), st.text(max_size=4)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), _WS_TEXT.map("".join)), max_size=20))
def test_normalize_text_equals_the_regex_over_every_value(values):
    """Rewriting only the values that hold a whitespace run (or a non-space one) gives what rewriting every
    run of RE2's \\s with a space gives."""
    import pyarrow.compute as pc

    arr = pa.array(values, pa.string())
    want = pc.utf8_trim_whitespace(pc.replace_substring_regex(pc.utf8_lower(pc.fill_null(arr, "")), r"\s+", " "))
    assert normalize_text(arr).to_pylist() == want.to_pylist()


def test_hash_strings_equal_iff_equal_text():
    h = hash_strings(["a", "b", "a", "", None])
    assert h.dtype == np.uint64 and len(h) == 5
    assert h[0] == h[2] and h[0] != h[1] and h[3] != h[4]
    assert len(set(hash_strings([f"row {i}" for i in range(10_000)]).tolist())) == 10_000


def test_hash_strings_is_the_same_in_chunks_and_seeds_differ():
    texts = [f"t{i % 7}" for i in range(50)]
    whole = hash_strings(texts)
    parts = np.concatenate([hash_strings(texts[:20]), hash_strings(texts[20:])])
    assert (whole == parts).all()
    assert (hash_strings(texts, seed=1) != whole).any()
    assert len(hash_strings([])) == 0


def test_hash_bytes():
    h = hash_bytes([b"\x89PNG...", b"\x89PNG...", b"\x89PNG..,", None])
    assert h[0] == h[1] != h[2] and h[3] == 0


def test_mix_and_combine_are_order_dependent_and_spread_bits():
    x = np.arange(1000, dtype=np.uint64)
    assert len(set(mix64(x).tolist())) == 1000
    a, b = np.array([1], np.uint64), np.array([2], np.uint64)
    assert combine(a, b)[0] != combine(b, a)[0]
    k = combine_columns(np.array([[1, 2, 3], [1, 2, 3], [3, 2, 1], [1, 2, 4]]))
    assert k[0] == k[1] and len(set(k.tolist())) == 3


def test_first_occurrence_keeps_earliest_and_respects_seen():
    keys = np.array([9, 4, 9, 9, 4, 1], np.uint64)
    assert first_occurrence(keys).tolist() == [True, True, False, False, False, True]
    seen = np.sort(np.array([4, 7], np.uint64))
    assert first_occurrence(keys, seen).tolist() == [True, False, False, False, False, True]
    assert first_occurrence(np.array([], np.uint64)).tolist() == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=60), st.integers(0, 60))
def test_streamed_first_occurrence_equals_whole(values, cut):
    keys = np.array(values, np.uint64)
    whole = first_occurrence(keys)
    first = first_occurrence(keys[:cut])
    seen = np.unique(keys[:cut])
    second = first_occurrence(keys[cut:], seen)
    assert np.concatenate([first, second]).tolist() == whole.tolist()
    assert whole.sum() == len(set(values))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 50), max_size=20), max_size=15))
def test_keyset_matches_a_python_set(batches):
    from datacopilot.kernels.hashing import KeySet

    ks, ref = KeySet(), set()
    for b in batches:
        keys = np.array(b, dtype=np.uint64)
        got = ks.first_new(keys)
        want, seen_here = [], set()
        for k in b:
            want.append(k not in ref and k not in seen_here)
            seen_here.add(k)
        assert got.tolist() == want
        ks.add(keys[got])
        ref |= set(b)
        assert len(ks) == len(ref) and ks.array().tolist() == sorted(ref)
    assert len(ks.runs) <= max(1, int(np.log2(max(len(ref), 1))) + 2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=12), max_size=10))
def test_keyset_new_rows_matches_a_python_reference(batches):
    """Rows of two keys: a row is new when neither key was met before (in any earlier row, new or not)."""
    from datacopilot.kernels.hashing import KeySet

    ks, met = KeySet(), set()
    for b in batches:
        keys = np.array(b, dtype=np.uint64).reshape(-1, 2)
        want = []
        for row in b:
            want.append(not (set(row) & met))
            met |= set(row)
        assert ks.new_rows(keys).tolist() == want
        assert len(ks) == len(met)
    assert ks.array().tolist() == sorted(met) and len(ks.runs) <= 1
    assert ks.nbytes == 8 * len(met)  # nothing but the keys


def test_keyset_merges_large_runs_into_their_sorted_union():
    from datacopilot.kernels.hashing import KeySet

    rng = np.random.default_rng(3)
    ks, ref = KeySet(), np.zeros(0, np.uint64)
    for n in (5000, 3000, 2000, 7000, 1):
        keys = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
        ks.add(keys)
        ks.add(keys[:10])  # again: no key is held twice
        ref = np.union1d(ref, keys)
    assert len(ks) == len(ref) and (ks.array() == ref).all()
