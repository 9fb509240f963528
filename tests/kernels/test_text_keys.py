"""Exact-dedup keys hashed from the string buffers: equal exactly where normalize_text of the joined texts is."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datacopilot.kernels.hashing import normalize_text, normalized_keys
from datacopilot.kernels.text import string_buffers
from datacopilot.kernels.text_keys import row_keys, string_keys
from hypothesis import given, settings
from hypothesis import strategies as st

# every ASCII byte Arrow strips or RE2 collapses, Unicode spaces, letters whose lower case is ASCII (KELVIN SIGN,
# I WITH DOT ABOVE), other cased letters, and any text
_PIECES = st.sampled_from([" ", "  ", "\t", "\n", "\r", "\f", "\v", "\x1c", "\x1f", "\x00", "\xa0", "\u3000",
                           "\u2003", "\u0085", "\r\n", "A", "Z", "b", "k", "K", "\u212a", "\u0130", "i\u0307",
                           "É", "é", "ς", "Σ", "@", "[", "`", "{"])
_TEXT = st.lists(st.one_of(_PIECES, st.text(max_size=4)), max_size=10).map("".join)
_ROWS = st.lists(st.lists(st.one_of(st.none(), _TEXT), max_size=4), min_size=1, max_size=16)


def _normalized(rows) -> list[str]:
    """The old path: each row's texts joined by a space, normalized with Arrow."""
    joined = [" ".join("" if t is None else t for t in r) for r in rows]
    return normalize_text(pa.array(joined, pa.string())).to_pylist()


def _keys(rows) -> np.ndarray:
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    return normalized_keys(pa.array([t for r in rows for t in r], pa.string()), offsets)


def _same_pairs(values) -> list[list[bool]]:
    return [[a == b for b in values] for a in values]


@settings(max_examples=400, deadline=None)
@given(_ROWS)
def test_keys_are_equal_exactly_where_the_normalized_texts_are(rows):
    assert _same_pairs(_keys(rows).tolist()) == _same_pairs(_normalized(rows))


@settings(max_examples=300, deadline=None)
@given(_ROWS)
def test_a_key_is_the_byte_hash_of_the_normalized_text_on_either_path(rows):
    want = string_keys(*string_buffers(pa.array(_normalized(rows), pa.string())))
    assert _keys(rows).tolist() == want.tolist()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(max_codepoint=127), max_size=30), min_size=1, max_size=20))
def test_ascii_rows_take_the_compiled_path(texts):
    off, data = string_buffers(pa.array(texts))
    keys, ascii = row_keys(np.arange(len(texts) + 1), off, data)
    assert ascii.all()
    assert keys.tolist() == string_keys(*string_buffers(normalize_text(texts))).tolist()


def test_non_ascii_rows_are_reported_and_still_meet_their_ascii_equals():
    texts = ["Kelvin \u212a", "kelvin k", "Café", "café ", "plain", " PLAIN\t", "", None, "\v \x1c"]
    off, data = string_buffers(pc.fill_null(pa.array(texts), ""))
    _, ascii = row_keys(np.arange(len(texts) + 1), off, data)
    assert ascii.tolist() == [False, True, False, False, True, True, True, True, True]
    k = normalized_keys(pa.array(texts)).tolist()
    assert k[0] == k[1] and k[2] == k[3] and k[4] == k[5] and k[6] == k[7] == k[8]
    assert len({k[0], k[2], k[4], k[6]}) == 4


def test_turns_are_joined_by_a_space_and_empty_rows_match_empty_text():
    texts = pa.array(["Hello", "World", "hello world", "helloworld", "", "  "])
    k = normalized_keys(texts, np.array([0, 2, 3, 4, 4, 6])).tolist()
    assert k[0] == k[1] != k[2]
    assert k[3] == k[4] == normalized_keys(pa.array([""])).tolist()[0]  # no turns, or only blank ones


def test_keys_spread_over_distinct_texts():
    texts = [f"row {i}" for i in range(20_000)] + [f"Row  {i} " for i in range(100)]
    k = normalized_keys(pa.array(texts))
    assert len(set(k.tolist())) == 20_000
    assert len(set(string_keys(*string_buffers(pa.array([f"{i:08d}" for i in range(20_000)]))).tolist())) == 20_000


# long ASCII runs: the 8-bytes-at-a-time path, next to every byte that leaves it (spaces in a row, controls,
# the bytes on either side of "A" and "Z")
_ASCII_PIECES = st.sampled_from(["Word", "ABCDEFGH", "abcdefghijk", " ", "  ", "\t", "\n", "\v", "\x1f", "@", "[",
                                 "`", "{", "~", "!", "A", "Z", "a z", " x "])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.lists(_ASCII_PIECES, max_size=40).map("".join), max_size=3), min_size=1, max_size=8))
def test_long_ascii_text_hashes_as_its_normalized_bytes(rows):
    want = string_keys(*string_buffers(pa.array(_normalized(rows), pa.string())))
    assert _keys(rows).tolist() == want.tolist()
