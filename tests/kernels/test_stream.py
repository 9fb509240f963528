"""pack_stream(): bounded memory, accounting over a stream, and fill close to a global best fit."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from datacopilot.kernels import pack, pack_stream


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(1, 120), max_size=400), window=st.integers(2, 64),
       max_length=st.integers(1, 100), overlong=st.sampled_from(["truncate", "drop"]))
def test_stream_accounts_for_every_sample_and_holds_at_most_window(lengths, window, max_length, overlong):
    seen = []
    stream = pack_stream(iter(lengths), max_length, window=window, overlong=overlong)
    for ids in stream:
        assert stream.max_pending <= window
        assert np.minimum(np.asarray(lengths)[ids], max_length).sum() <= max_length
        seen.extend(ids.tolist())
    assert stream.max_pending <= window
    assert len(seen) == len(set(seen))
    assert sorted(seen + stream.dropped) == list(range(len(lengths)))
    assert set(stream.truncated + stream.dropped) == {i for i, n in enumerate(lengths) if n > max_length}
    assert stream.samples == len(lengths)


def test_stream_emits_before_the_stream_ends():
    """A generator that never ends still yields packs: memory is bounded by the window, not the stream."""
    def endless():
        rng = np.random.default_rng(0)
        while True:
            yield int(rng.integers(1, 600))

    stream = pack_stream(endless(), 1024, window=256)
    got = [next(stream) for _ in range(500)]
    assert stream.max_pending <= 256
    assert stream.samples < 5000
    assert all(len(p) for p in got)


def test_stream_fill_is_close_to_global_bfd():
    lengths = np.random.default_rng(5).integers(1, 900, 20_000)
    glob = pack(lengths, 1024)
    streamed = pack(lengths, 1024, strategy="stream", window=2048)
    naive = pack(lengths, 1024, strategy="first_fit")
    assert streamed.fill_rate > naive.fill_rate
    assert streamed.fill_rate > glob.fill_rate - 0.02


def test_stream_array_and_iterator_agree():
    lengths = np.random.default_rng(2).integers(1, 300, 3000)
    a = [p.tolist() for p in pack_stream(lengths, 512, window=100)]
    b = [p.tolist() for p in pack_stream(iter(lengths.tolist()), 512, window=100)]
    assert a == b


def test_stream_reports_bad_length_with_its_stream_position():
    import pytest

    from datacopilot.errors import InputError

    lengths = [5] * 10 + [0]
    with pytest.raises(InputError, match=r"lengths\[10\]: expected a positive length"):
        list(pack_stream(iter(lengths), 16, window=4))
