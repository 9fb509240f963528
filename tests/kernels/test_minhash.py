"""MinHash-LSH: identical texts always collide, dissimilar ones rarely, clusters keep their first row."""

import numpy as np
import pytest
from datacopilot.kernels.minhash import (
    EMPTY,
    MERSENNE,
    band_keys,
    cluster,
    duplicates,
    jaccard,
    lsh_duplicates,
    lsh_params,
    signatures,
)
from hypothesis import given, settings
from hypothesis import strategies as st

WORDS = [f"w{i}" for i in range(400)]


def shingles(text, n):
    toks = text.lower().split()
    if len(toks) < n:
        return {tuple(toks)} if toks else set()
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def true_jaccard(a, b, n):
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / len(sa | sb)


def test_signature_shape_range_and_empty_rows():
    s = signatures(["one two three four five six", "", None, "x"], num_perm=32, ngram=3)
    assert s.shape == (4, 32) and s.dtype == np.uint32
    assert (s[0] < MERSENNE).all() and (s[3] < MERSENNE).all()
    assert (s[1] == EMPTY).all() and (s[2] == EMPTY).all()


def test_normalization_and_seed():
    a, b = signatures(["Hello   World  again", "hello world AGAIN"], ngram=2)
    assert (a == b).all()
    other = signatures(["hello world again"], ngram=2, seed=2)[0]
    assert (other != a).any()


def test_char_shingles_handle_multibyte_text():
    s = signatures(["数据清洗与去重", "数据清洗与去重!", "图像文本对"], unit="char", ngram=3, num_perm=64)
    assert jaccard(s[0], s[1]) > 0.6
    assert jaccard(s[0], s[2]) < 0.2


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=40), st.sampled_from(["word", "char"]))
def test_identical_texts_always_collide(words, unit):
    text = " ".join(words)
    sigs = signatures([text, "unrelated filler text here", text], num_perm=64, ngram=3, unit=unit)
    assert (sigs[0] == sigs[2]).all()
    assert duplicates(sigs, threshold=0.9).tolist() == [False, False, True]


def test_estimate_tracks_true_jaccard():
    rng = np.random.default_rng(0)
    base = list(rng.choice(WORDS, 60))
    for keep in (10, 30, 50):
        other = base[:keep] + list(rng.choice(WORDS, 60 - keep))
        a, b = " ".join(base), " ".join(other)
        s = signatures([a, b], num_perm=256, ngram=2)
        assert abs(jaccard(s[0], s[1]) - true_jaccard(a, b, 2)) < 0.12


def test_dissimilar_texts_rarely_collide():
    rng = np.random.default_rng(1)
    texts = []
    for _ in range(150):
        base = list(rng.choice(WORDS, 40))
        other = base[:8] + list(rng.choice(WORDS, 32))  # shares a prefix: Jaccard well under 0.8
        texts += [" ".join(base), " ".join(other)]
    sigs = signatures(texts, num_perm=128, ngram=3)
    for i in range(0, len(texts), 2):
        assert true_jaccard(texts[i], texts[i + 1], 3) < 0.3
    drop = duplicates(sigs, threshold=0.8)
    assert drop.sum() <= 2  # of 150 pairs


def test_dataset_with_a_sample_three_times_with_tiny_edits_keeps_one():
    rng = np.random.default_rng(2)
    texts = [" ".join(rng.choice(WORDS, 50)) for _ in range(30)]
    sample = texts[5].split()
    edit1 = " ".join(sample[:-1] + ["changed"])
    edit2 = " ".join(["Also"] + sample)
    texts = texts[:8] + [edit1] + texts[8:20] + [edit2] + texts[20:]
    drop = duplicates(signatures(texts, num_perm=128, ngram=3), threshold=0.8)
    kept = [t for t, d in zip(texts, drop) if not d]
    assert len(kept) == 30
    assert sum(t in (texts[5], edit1, edit2) for t in kept) == 1
    assert not drop[5]  # the first occurrence is the one kept
    assert drop[8] and drop[21]


def test_lsh_params_fit_the_signature_and_move_with_threshold():
    for t in (0.5, 0.7, 0.9):
        b, r = lsh_params(t, 64)
        assert b * r <= 64
    assert lsh_params(0.9, 128)[1] > lsh_params(0.5, 128)[1]
    with pytest.raises(ValueError, match="threshold"):
        lsh_params(1.5, 64)


def test_band_keys_and_cluster_roots_are_smallest_row():
    sigs = np.array([[1, 2, 3, 4], [9, 9, 9, 9], [1, 2, 3, 4], [1, 2, 3, 5]], np.uint32)
    keys = band_keys(sigs, 2, 2)
    assert keys.shape == (4, 2) and keys[0, 0] == keys[2, 0] == keys[3, 0] and keys[0, 1] != keys[3, 1]
    assert cluster(keys, sigs, 0.7).tolist() == [0, 1, 0, 0]
    assert cluster(keys, sigs, 1.0).tolist() == [0, 1, 0, 3]
    with pytest.raises(ValueError, match="exceeds"):
        band_keys(sigs, 3, 2)


def test_hamming_cluster_is_transitive_and_keeps_first():
    h = np.array([[0b0000], [0b0011], [0b0111], [0xFF00]], np.uint64)
    keys = np.zeros((4, 1), np.uint64)  # one bucket: every pair is a candidate
    assert cluster(keys, h, 2, hamming=True).tolist() == [0, 0, 0, 3]
    assert cluster(keys, h, 1, hamming=True).tolist() == [0, 1, 1, 3]


def test_bad_parameters():
    with pytest.raises(ValueError, match="unit"):
        signatures(["a"], unit="line")
    with pytest.raises(ValueError, match="num_perm"):
        signatures(["a"], num_perm=0)
    with pytest.raises(ValueError, match="both"):
        duplicates(signatures(["a"]), bands=4)


def test_lsh_keys_tag_bands_and_give_empty_rows_unique_keys():
    from datacopilot.kernels.minhash import lsh_keys

    sigs = signatures(["one two three four", "one two three four", "", None], num_perm=32, ngram=2)
    keys = lsh_keys(sigs, 4, 8)
    assert keys.shape == (4, 4) and keys.dtype == np.uint64
    assert (keys[0] == keys[1]).all()
    assert len(set(keys[0].tolist())) == 4  # equal band values in two bands still give two keys
    assert not set(keys[2].tolist()) & set(keys[3].tolist())  # empty texts are nobody's duplicate
    assert lsh_duplicates(keys).tolist() == [False, True, False, False]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 6), min_size=3, max_size=3), max_size=30), st.integers(0, 30))
def test_lsh_duplicates_is_earlier_band_sharing_in_any_batches(rows, cut):
    """A row is a duplicate iff one of its band keys belongs to an earlier row (dropped rows included);
    deciding in two batches through a KeySet gives the same mask (what the streaming executors do)."""
    from datacopilot.kernels.hashing import KeySet

    keys = np.array(rows, np.uint64).reshape(-1, 3) + np.array([0, 100, 200], np.uint64)
    met, want = set(), []
    for row in keys.tolist():
        want.append(bool(set(row) & met))
        met |= set(row)
    assert lsh_duplicates(keys).tolist() == want
    ks = KeySet()
    streamed = np.concatenate([~ks.new_rows(keys[:cut]), ~ks.new_rows(keys[cut:])])
    assert streamed.tolist() == want


def test_lsh_keeps_one_of_three_edited_copies_and_most_dissimilar_pairs():
    from datacopilot.kernels.minhash import lsh_keys

    rng = np.random.default_rng(2)
    texts = [" ".join(rng.choice(WORDS, 50)) for _ in range(30)]
    sample = texts[5].split()
    texts = texts[:8] + [" ".join(sample[:-1] + ["changed"])] + texts[8:20] + [" ".join(["Also"] + sample)] \
        + texts[20:]
    b, r = lsh_params(0.8, 128)
    drop = lsh_duplicates(lsh_keys(signatures(texts, ngram=3), b, r))
    assert np.flatnonzero(drop).tolist() == [8, 21]
    pairs = []
    for _ in range(150):
        base = list(rng.choice(WORDS, 40))
        pairs += [" ".join(base), " ".join(base[:8] + list(rng.choice(WORDS, 32)))]  # Jaccard under 0.3
    assert lsh_duplicates(lsh_keys(signatures(pairs, ngram=3), b, r)).sum() <= 2
