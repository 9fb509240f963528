"""pack(): capacity, accounting, fill rate, overlong policies, input checks, and BFD against the baseline.

The exact-fit strategy (the default) has its own tests in test_packing_exact.py."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datacopilot.errors import DataCopilotError, InputError
from datacopilot.kernels import pack

lengths_st = st.lists(st.integers(1, 300), min_size=0, max_size=300)
strategy_st = st.sampled_from(["exact_fit", "bfd", "first_fit", "stream"])


def check_plan(plan, lengths, max_length):
    lengths = np.asarray(lengths, np.int64)
    # no pack exceeds max_length, no pack is empty
    assert (plan.pack_lengths() <= max_length).all()
    assert (np.diff(plan.pack_offsets) > 0).all()
    # every sample in exactly one pack, or dropped
    placed = plan.sample_ids.tolist()
    assert len(placed) == len(set(placed))
    assert sorted(placed + plan.dropped.tolist()) == list(range(len(lengths)))
    # lengths: kept as given, or truncated to max_length (and then listed)
    over = set(np.flatnonzero(lengths > max_length).tolist())
    assert set(plan.truncated.tolist()) | set(plan.dropped.tolist()) == over
    np.testing.assert_array_equal(plan.lengths, np.minimum(lengths[plan.sample_ids], max_length))
    # fill rate computed right
    if plan.n_packs:
        assert plan.fill_rate == pytest.approx(plan.lengths.sum() / (plan.n_packs * max_length))
        assert plan.pack_lengths().sum() == plan.lengths.sum()
    else:
        assert plan.fill_rate == 0.0


@settings(max_examples=150, deadline=None)
@given(lengths=lengths_st, max_length=st.integers(1, 400), strategy=strategy_st,
       overlong=st.sampled_from(["truncate", "drop"]), window=st.integers(2, 40), seed=st.none() | st.integers(0, 9))
def test_pack_invariants(lengths, max_length, strategy, overlong, window, seed):
    plan = pack(lengths, max_length, strategy=strategy, overlong=overlong, window=window, seed=seed)
    check_plan(plan, lengths, max_length)
    stats = plan.stats()
    assert stats["samples"] + stats["dropped"] == len(lengths)
    assert stats["tokens"] + stats["truncated_tokens"] + stats["dropped_tokens"] == sum(lengths)


@pytest.mark.parametrize("strategy", ["exact_fit", "bfd"])
def test_examples_by_hand(strategy):
    plan = pack([5, 3, 2, 4], 7, strategy=strategy)
    assert [p.tolist() for p in plan.packs()] == [[0, 2], [3, 1]]
    assert plan.fill_rate == 1.0
    assert plan.seq_lens(1) == [4, 3]
    # first fit in input order: 5 | 3 2 | 4 (4 does not fit beside 3 + 2, and the closed pack never reopens)
    ff = pack([5, 3, 2, 4], 7, strategy="first_fit")
    assert [p.tolist() for p in ff.packs()] == [[0], [1, 2], [3]]
    assert ff.fill_rate == pytest.approx(14 / 21)


def test_first_fit_matches_intokens_rule():
    """The baseline reproduces the InTokens/MixToken loop: append if cur + len <= max_length, else start anew."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 100, 2000)
    expected, cur, total = [], [], 0
    for i, n in enumerate(lengths):
        if total + n <= 128:
            cur.append(i)
            total += n
        else:
            expected.append(cur)
            cur, total = [i], n
    expected.append(cur)
    assert [p.tolist() for p in pack(lengths, 128, strategy="first_fit").packs()] == expected


def test_best_fit_places_into_tightest_pack():
    # 6 opens A (room 4), 5 opens B (room 5); 4 goes to A (tightest that fits), 3 goes to B, 2 to B
    plan = pack([6, 5, 4, 3, 2], 10, strategy="bfd")
    assert [p.tolist() for p in plan.packs()] == [[0, 2], [1, 3, 4]]
    # the same lengths in other orders give the same packs: lengths are taken longest first
    assert sorted(map(sorted, pack([2, 3, 6, 4, 5], 10, strategy="bfd").packs())) == [[0, 1, 4], [2, 3]]


def test_bfd_fills_at_least_as_well_as_first_fit_in_aggregate():
    rng = np.random.default_rng(0)
    bfd_packs = ff_packs = 0
    for _ in range(30):
        lengths = rng.integers(1, 1024, rng.integers(50, 500))
        bfd_packs += pack(lengths, 1024, strategy="bfd").n_packs
        ff_packs += pack(lengths, 1024, strategy="first_fit").n_packs
    assert bfd_packs < ff_packs


def test_overlong_truncate_and_drop_are_counted():
    lengths = [10, 50, 7, 99]
    cut = pack(lengths, 20)
    assert cut.truncated.tolist() == [1, 3] and cut.dropped.size == 0
    assert cut.truncated_tokens == 30 + 79
    assert sorted(cut.lengths.tolist()) == [7, 10, 20, 20]
    gone = pack(lengths, 20, overlong="drop")
    assert gone.dropped.tolist() == [1, 3] and gone.truncated.size == 0
    assert sorted(gone.sample_ids.tolist()) == [0, 2]
    assert gone.stats()["dropped"] == 2 and gone.dropped_tokens == 149


def test_seed_shuffles_pack_order_deterministically():
    lengths = np.random.default_rng(3).integers(1, 500, 400)
    a, b = pack(lengths, 512, seed=7), pack(lengths, 512, seed=7)
    plain = pack(lengths, 512)
    np.testing.assert_array_equal(a.sample_ids, b.sample_ids)
    assert sorted(map(tuple, a.packs())) == sorted(map(tuple, plain.packs()))
    assert [tuple(p) for p in a.packs()] != [tuple(p) for p in plain.packs()]


def test_empty_input():
    plan = pack([], 16)
    assert plan.n_packs == 0 and plan.fill_rate == 0.0 and plan.packs() == []


@pytest.mark.parametrize("lengths, max_length, kwargs, message", [
    ([3, 0, 2], 8, {}, "lengths[1]: expected a positive length, got 0"),
    ([3, -4], 8, {}, "lengths[1]: expected a positive length, got -4"),
    ([1.5], 8, {}, "lengths[0]: expected an integer length"),
    (["a"], 8, {}, "`lengths` must hold integers"),
    ([[1, 2]], 8, {}, "`lengths` must be one-dimensional"),
    ([1], 0, {}, "`max_length` must be a positive integer, got 0"),
    ([1], -3, {}, "`max_length` must be a positive integer, got -3"),
    ([1], 8, {"strategy": "worst"}, "`strategy` must be one of"),
    ([1], 8, {"overlong": "keep"}, "`overlong` must be one of"),
    ([1], 8, {"strategy": "stream", "window": 1}, "`window` must be an integer >= 2, got 1"),
])
def test_bad_input_is_named(lengths, max_length, kwargs, message):
    with pytest.raises(InputError) as err:
        pack(lengths, max_length, **kwargs)
    assert message in str(err.value)
    assert isinstance(err.value, DataCopilotError)


def test_integral_floats_are_accepted():
    assert pack(np.array([3.0, 4.0]), 8).n_packs == 1


def test_default_strategy_is_exact_fit():
    lengths = np.random.default_rng(4).integers(1, 700, 500)
    plan = pack(lengths, 1024)
    assert plan.strategy == "exact_fit"
    assert [p.tolist() for p in plan.packs()] == [p.tolist() for p in pack(lengths, 1024, strategy="exact_fit").packs()]
