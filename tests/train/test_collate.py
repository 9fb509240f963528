"""PackedCollator: segment boundaries, position resets, label masking at segment starts, masks, padding."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datacopilot.errors import InputError
from datacopilot.kernels import block_causal_mask, dense_from_cu_seqlens, dense_from_flashmask, varlen_plan
from datacopilot.train.collate import IGNORE, PackedCollator


def sample(ids, labels=None, offsets=(), pixels=None):
    s = {"input_ids": list(ids), "labels": list(ids if labels is None else labels), "image_offsets": list(offsets)}
    if pixels is not None:
        s["pixel_values"] = pixels
    return s


def test_segments_positions_and_labels():
    a = sample([10, 11, 12, 13], [IGNORE, IGNORE, 12, 13])
    b = sample([20, 21, 22], [20, 21, 22])  # fully labelled: its first label must still be masked
    c = sample([30, 31], [IGNORE, 31])
    out = PackedCollator(max_length=12, pad_id=7)([[a, b], [c]])
    assert out["input_ids"].tolist() == [[10, 11, 12, 13, 20, 21, 22, 7, 7, 7, 7, 7],
                                         [30, 31, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]]
    assert out["labels"].tolist() == [[IGNORE, IGNORE, 12, 13, IGNORE, 21, 22] + [IGNORE] * 5,
                                      [IGNORE, 31] + [IGNORE] * 10]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 0, 0, 0, 0], [0, 1] + [0] * 10]
    assert out["seq_lens"] == [[4, 3], [2]]
    assert out["n_target_tokens"] == 5  # 12, 13, 21, 22, 31
    assert out["fill"] == pytest.approx(9 / 24)
    assert out["input_ids"].dtype == np.int64 and out["labels"].dtype == np.int64


def test_dense_mask_is_the_kernels_block_mask_and_blocks_cross_attention():
    packs = [[sample([1, 2, 3]), sample([4, 5])], [sample([6] * 6)]]
    out = PackedCollator(max_length=8, attention="dense")(packs)
    m = out["attention_mask"]
    assert m.shape == (2, 1, 8, 8) and m.dtype == bool
    np.testing.assert_array_equal(m, block_causal_mask([[3, 2], [6]], 8))
    assert not m[0, 0, 3, :3].any()  # the second sample's first token sees nothing of the first sample
    assert m[0, 0, 4, 3] and m[0, 0, 2, 0]
    assert m[0, 0, 6].tolist() == [False] * 6 + [True, False]  # padding attends only to itself


def test_other_attention_paths_describe_the_same_mask():
    packs = [[sample([1, 2, 3]), sample([4, 5])], [sample([6] * 6)]]
    fm = PackedCollator(8, attention="flashmask")(packs)
    assert "attention_mask" not in fm
    np.testing.assert_array_equal(dense_from_flashmask(fm["attn_mask_startend_row_indices"]),
                                  block_causal_mask([[3, 2], [6]], 8))
    cu = PackedCollator(8, attention="cu_seqlens")(packs)
    assert cu["cu_seqlens"].tolist() == [0, 3, 5, 8, 14, 16] and cu["max_seqlen"] == 6
    np.testing.assert_array_equal(dense_from_cu_seqlens(cu["cu_seqlens"], 2, 8)[0, 0, :5, :5],
                                  block_causal_mask([[3, 2], [6]], 8)[0, 0, :5, :5])


def test_varlen_is_the_default_and_builds_no_square_mask():
    packs = [[sample([1, 2, 3]), sample([4, 5])], [sample([6] * 6)]]
    out = PackedCollator(8)(packs)
    assert "attention_mask" not in out and max(v.size for v in out.values() if isinstance(v, np.ndarray)) <= 32
    plan = varlen_plan([[3, 2], [6]], 8)
    np.testing.assert_array_equal(out["varlen_gather"], plan.gather)
    np.testing.assert_array_equal(out["varlen_scatter"], plan.scatter)
    np.testing.assert_array_equal(out["varlen_buckets"], plan.buckets)
    # every real token reads its own position back; padding positions are one-token buckets
    flat = np.arange(16)
    np.testing.assert_array_equal(out["varlen_gather"][out["varlen_scatter"]], flat)


def test_images_get_their_pack_and_offset_and_pixels_stack():
    px = lambda n, v: np.full((n, 3, 4, 4), v, np.float32)  # noqa: E731
    packs = [[sample([1] * 5, offsets=[1], pixels=px(1, 0.0)), sample([2] * 6, offsets=[0, 3], pixels=px(2, 1.0))],
             [sample([3] * 4, offsets=[2], pixels=px(1, 2.0))]]
    out = PackedCollator(16, image_token_count=2)(packs)
    assert out["image_pack"].tolist() == [0, 0, 0, 1]
    assert out["image_offset"].tolist() == [1, 5, 8, 2]
    assert out["pixel_values"].shape == (4, 3, 4, 4)
    assert out["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 1.0, 1.0, 2.0]
    assert "pixel_values" not in PackedCollator(16)([[sample([1, 2])]])


def test_overlong_sample_is_cut_but_images_never_are():
    out = PackedCollator(4)([[sample([1, 2, 3, 4, 5, 6])]])
    assert out["input_ids"].tolist() == [[1, 2, 3, 4]] and out["seq_lens"] == [[4]]
    with pytest.raises(InputError, match="image 0 at offset 3 does not fit"):
        PackedCollator(4, image_token_count=2)([[sample([1, 2, 3, 9, 9, 6], offsets=[3])]])
    with pytest.raises(InputError, match="more than max_length 4"):
        PackedCollator(4)([[sample([1, 2, 3]), sample([4, 5])]])
    with pytest.raises(InputError, match="1 pixel_values for 2 images"):
        PackedCollator(8)([[sample([1] * 4, offsets=[0, 2], pixels=np.zeros((1, 3, 2, 2)))]])
    with pytest.raises(InputError, match="attention"):
        PackedCollator(8, attention="sdpa")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 9), min_size=0, max_size=4), min_size=1, max_size=4), st.integers(0, 3))
def test_random_packs_keep_segments_apart(pack_lens, seed):
    L = 40
    rng = np.random.default_rng(seed)
    packs = [[sample(rng.integers(5, 50, n), np.where(rng.random(n) < 0.5, IGNORE, 1)) for n in lens]
             for lens in pack_lens]
    out = PackedCollator(L)(packs)
    for b, lens in enumerate(pack_lens):
        starts = np.cumsum([0] + lens[:-1]).astype(int)
        for s0, n, smp in zip(starts, lens, packs[b]):
            assert out["labels"][b, s0] == IGNORE
            assert out["position_ids"][b, s0:s0 + n].tolist() == list(range(n))
            assert out["input_ids"][b, s0:s0 + n].tolist() == list(smp["input_ids"])
            assert (out["labels"][b, s0 + 1:s0 + n] == np.asarray(smp["labels"])[1:]).all()
        assert (out["labels"][b, sum(lens):] == IGNORE).all() and (out["input_ids"][b, sum(lens):] == 0).all()
    assert out["n_target_tokens"] == sum(int((np.asarray(s["labels"])[1:] != IGNORE).sum()) for p in packs for s in p)


def test_demo_conversations_tokenized_packed_and_collated(tmp_path):
    """The whole text path on the demo data: template -> tokenize_dataset -> kernels.pack -> PackedCollator."""
    pytest.importorskip("paddlenlp")
    pytest.importorskip("sentencepiece")
    import datacopilot
    from datacopilot.demo_data import make_demo_data
    from datacopilot.kernels import pack
    from datacopilot.models.chat_template import ChatTemplate
    from datacopilot.models.tokenizer import load_tokenizer, train_tokenizer
    from datacopilot.train.tokenize import tokenize_dataset

    data = make_demo_data(str(tmp_path / "demo"), n=60, seed=1)
    ds = datacopilot.load(data["path"], schema="MM", invalid="quarantine")
    texts = [t["value"] for r in ds for t in r["conversations"]]
    tok = load_tokenizer(train_tokenizer(texts, str(tmp_path / "tok"), vocab_size=600))
    tpl = ChatTemplate(tok, image_token_count=8)
    L = 160
    t = tokenize_dataset(ds, tpl, L).to_arrow()
    rows = [{"input_ids": i, "labels": lab, "image_offsets": o} for i, lab, o in
            zip(t["input_ids"].to_pylist(), t["labels"].to_pylist(), t["image_offsets"].to_pylist())]
    plan = pack(t["length"].to_numpy(), L)
    packs = [[rows[i] for i in ids] for ids in plan.packs()]
    out = PackedCollator(L, attention="dense", pad_id=tok.pad_token_id, image_token_count=8)(packs)
    assert out["input_ids"].shape == (plan.n_packs, L)
    assert out["fill"] == pytest.approx(plan.fill_rate)
    np.testing.assert_array_equal(out["attention_mask"], block_causal_mask(out["seq_lens"], L))
    # every answer token is a target exactly once; nothing else is (the samples here all start with <s>)
    answers = sum(int((np.asarray(r["labels"][:L]) != IGNORE).sum()) for r in rows)
    assert out["n_target_tokens"] == answers
    targets = out["input_ids"][out["labels"] != IGNORE]
    assert tpl.image_token_id not in targets and tok.convert_tokens_to_ids("<|user|>") not in targets
    # every image's tokens sit at its pack and offset
    ids = out["input_ids"]
    for p, o in zip(out["image_pack"], out["image_offset"]):
        assert (ids[p, o:o + 8] == tpl.image_token_id).all()
    assert int((ids == tpl.image_token_id).sum()) == 8 * len(out["image_offset"])
