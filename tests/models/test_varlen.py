"""Attention per segment (``attention: varlen``) equals the dense block-diagonal path: loss, logits, gradients.

Tiny models with random weights are built, saved and loaded through the user-facing path (``build_tiny_lm`` /
``load_causal_lm``, ``build_tiny_vlm`` / ``load_vlm``), so the varlen attention is the one ``load_causal_lm`` wires
in. Packs come from ``PackedCollator`` twice, ``attention="dense"`` and ``"varlen"``; the model runs each, and
logits (every position, padding included), the loss and every parameter's gradient must agree within 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")
pytest.importorskip("paddlenlp")

from datacopilot.errors import InputError, ModelError  # noqa: E402
from datacopilot.models.attention import Segments, VarlenLlamaAttention, attend, check_segments  # noqa: E402
from datacopilot.models.lm import build_tiny_lm, causal_lm_loss, lm_logits, load_causal_lm  # noqa: E402
from datacopilot.models.vlm import build_tiny_vlm, load_vlm  # noqa: E402
from datacopilot.train.collate import PackedCollator  # noqa: E402

VOCAB, IMAGE_TOKEN, IMAGE_TOKENS, TOL = 500, 5, 8, 1e-5
TENSOR_KEYS = ("input_ids", "labels", "position_ids", "attention_mask", "pixel_values", "image_pack", "image_offset",
               "varlen_gather", "varlen_scatter", "varlen_buckets")


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    path = build_tiny_lm(str(tmp_path_factory.mktemp("lm")), vocab_size=VOCAB, hidden=64, layers=2, heads=4,
                         max_position=256, seed=5, init_std=0.15)
    return load_causal_lm(path)


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    path = build_tiny_vlm(str(tmp_path_factory.mktemp("vlm")), vocab_size=VOCAB, image_token_count=IMAGE_TOKENS,
                          image_size=16, hidden=64, layers=2, heads=4, vision_hidden=32, max_position=256,
                          image_token_id=IMAGE_TOKEN, seed=6, init_std=0.15)
    return load_vlm(path)


def text(rng, n):
    ids = rng.integers(10, VOCAB, n)
    labels = ids.copy()
    labels[: max(1, n // 4)] = -100
    return {"input_ids": ids, "labels": labels, "image_offsets": []}


def with_images(rng, prefix, n_img, tail):
    """``prefix`` text tokens, ``n_img`` images back to back, ``tail`` text tokens (0: the sample ends on an image)."""
    ids = list(rng.integers(10, VOCAB, prefix))
    offsets = []
    for _ in range(n_img):
        offsets.append(len(ids))
        ids += [IMAGE_TOKEN] * IMAGE_TOKENS
    ids = np.asarray(ids + list(rng.integers(10, VOCAB, tail)), np.int64)
    labels = ids.copy()
    labels[: offsets[-1] + IMAGE_TOKENS if tail else 1] = -100
    if not tail:                                   # labels on the prefix, so the sample still has targets
        labels[1:prefix] = ids[1:prefix]
    return {"input_ids": ids, "labels": labels, "image_offsets": offsets,
            "pixel_values": rng.standard_normal((n_img, 3, 16, 16)).astype(np.float32)}


def collate(packs, length, attention):
    out = PackedCollator(length, attention=attention, image_token_count=IMAGE_TOKENS)(packs)
    return {k: paddle.to_tensor(v) for k, v in out.items() if k in TENSOR_KEYS}, out


def run(model, batch, attention):
    mask = batch["attention_mask"] if attention == "dense" else Segments.from_batch(batch, attention)
    model.clear_gradients()
    if hasattr(model, "vision"):
        loss, logits = model(batch["input_ids"], batch["position_ids"], mask, batch["labels"],
                             batch.get("pixel_values"), batch.get("image_pack"), batch.get("image_offset"))
    else:
        logits = lm_logits(model, batch["input_ids"], batch["position_ids"], mask)
        loss = causal_lm_loss(logits, batch["labels"])
    loss.backward()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss), logits.numpy(), grads


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def assert_same(model, packs, length):
    dense, raw_dense = collate(packs, length, "dense")
    varlen, raw = collate(packs, length, "varlen")
    assert "attention_mask" not in raw and raw["seq_lens"] == raw_dense["seq_lens"]
    loss_d, logits_d, grads_d = run(model, dense, "dense")
    loss_v, logits_v, grads_v = run(model, varlen, "varlen")
    assert rel(loss_v, loss_d) < TOL, (loss_v, loss_d)
    np.testing.assert_allclose(logits_v, logits_d, rtol=TOL, atol=TOL * np.abs(logits_d).max())
    assert set(grads_v) == set(grads_d) and len(grads_d) == len(list(model.parameters()))
    scale = max(np.linalg.norm(g) for g in grads_d.values())
    for name, g in grads_d.items():
        if name.endswith("k_proj.bias"):   # the vision encoder's: zero in exact arithmetic, rounding noise here
            assert max(np.linalg.norm(g), np.linalg.norm(grads_v[name])) < 1e-5 * scale, name
            continue
        assert np.linalg.norm(g) > 1e-5 * scale, f"{name}: no gradient reaches this parameter"
        assert rel(grads_v[name], g) < TOL, (name, rel(grads_v[name], g))
    return raw


# ---------------------------------------------------------------- LM
def test_lm_packs_with_padding_and_one_token_segments(lm):
    rng = np.random.default_rng(0)
    packs = [[text(rng, n) for n in (17, 40, 1, 9)], [text(rng, n) for n in (3, 60)], [text(rng, 2)]]
    raw = assert_same(lm, packs, 96)
    assert raw["seq_lens"] == [[17, 40, 1, 9], [3, 60], [2]]


def test_lm_segment_of_exactly_max_length_and_a_truncated_sample(lm):
    rng = np.random.default_rng(1)
    packs = [[text(rng, 64)], [text(rng, 90)], [text(rng, 20), text(rng, 44)]]   # 90 is cut to max_length 64
    raw = assert_same(lm, packs, 64)
    assert raw["seq_lens"] == [[64], [64], [20, 44]] and raw["fill"] == 1.0
    assert [int(m) for m, _, _ in raw["varlen_buckets"]] == [20, 48, 64]        # no padding: no bucket of 1


def test_lm_long_segments_in_many_buckets(lm):
    rng = np.random.default_rng(2)
    lens = [[120, 33, 70, 19], [200, 11], [9, 10, 150, 80]]
    raw = assert_same(lm, [[text(rng, n) for n in row] for row in lens], 256)
    assert len(raw["varlen_buckets"]) >= 6


def test_fused_qkv_and_grouped_kv_heads(tmp_path):
    """A Llama with fused q/k/v and 2 key/value heads for 4 query heads (GQA), saved and loaded."""
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      fuse_attention_qkv=True, use_flash_attention=False, dtype="float32", initializer_range=0.15)
    paddle.seed(3)
    LlamaForCausalLM(cfg).save_pretrained(str(tmp_path))
    model = load_causal_lm(str(tmp_path))
    assert model.config.fuse_attention_qkv and model.config.num_key_value_heads == 2
    rng = np.random.default_rng(3)
    assert_same(model, [[text(rng, n) for n in (30, 25)], [text(rng, 50)]], 64)


def test_every_attention_layer_is_wired_and_keeps_its_names(lm, tmp_path):
    layers = [layer for _, layer in lm.named_sublayers() if isinstance(layer, VarlenLlamaAttention)]
    assert len(layers) == 2
    names = set(lm.state_dict())
    assert "llama.layers.0.self_attn.q_proj.weight" in names
    lm.save_pretrained(str(tmp_path))
    again = load_causal_lm(str(tmp_path))
    assert set(again.state_dict()) == names


def test_segments_are_checked(lm):
    seg = Segments.from_lens([[5, 3]], 10)
    ids = paddle.to_tensor(np.full((1, 12), 7))
    with pytest.raises(InputError, match=r"segments describe a batch \[1, 10\] but the model was given \[1, 12\]"):
        lm_logits(lm, ids, paddle.zeros([1, 12], "int64"), seg)
    with pytest.raises(InputError, match="needs `position_ids`"):
        lm_logits(lm, paddle.to_tensor(np.full((1, 10), 7)), None, seg)
    with pytest.raises(InputError, match="the batch has no 'varlen_gather'"):
        Segments.from_batch({"input_ids": np.zeros((1, 4))}, "varlen")
    with pytest.raises(ModelError, match="needs a PaddleNLP Llama model"):
        check_segments(paddle.nn.Linear(2, 2), "varlen")


# ---------------------------------------------------------------- VLM
def test_vlm_segments_ending_right_after_image_tokens(vlm):
    rng = np.random.default_rng(4)
    packs = [[with_images(rng, 4, 1, 0), text(rng, 12), with_images(rng, 3, 2, 0)],
             [with_images(rng, 2, 1, 9), with_images(rng, 5, 1, 0)]]
    raw = assert_same(vlm, packs, 64)
    ends = [np.cumsum(r).tolist() for r in raw["seq_lens"]]
    image_ends = {(int(p), int(o) + IMAGE_TOKENS) for p, o in zip(raw["image_pack"], raw["image_offset"])}
    assert sum((b, e) in image_ends for b, row in enumerate(ends) for e in row) == 3   # three segments end on one


def test_vlm_full_pack_and_images_in_a_truncated_sample(vlm):
    rng = np.random.default_rng(5)
    long = with_images(rng, 2, 2, 40)                  # 58 tokens, cut to 48: both images are kept whole
    raw = assert_same(vlm, [[long], [with_images(rng, 6, 1, 34)]], 48)
    assert raw["seq_lens"] == [[48], [48]] and len(raw["image_offset"]) == 3


# ---------------------------------------------------------------- the GPU kernels' arguments, checked on CPU
def reference(q, k, v, mask):
    """Masked softmax attention in float64: q, k, v [B, L, H, D], mask [B, 1, L, L] -> [B, L, H * D]."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    s = np.einsum("blhd,bmhd->bhlm", q, k) / np.sqrt(q.shape[-1])
    s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bhlm,bmhd->blhd", p, v)
    return out.reshape(out.shape[0], out.shape[1], -1)


def unpadded_reference(query, key, value, cu_seqlens_q, max_seqlen_q, scale, causal, **_):
    """What flash_attn_unpadded computes, by its definition: causal softmax attention within each cu range."""
    q, k, v = (np.asarray(x.astype("float32").numpy(), np.float64) for x in (query, key, value))
    cu = cu_seqlens_q.numpy()
    out = np.zeros_like(q)
    assert causal and np.diff(cu).max() <= max_seqlen_q
    for a, b in zip(cu[:-1], cu[1:]):
        s = np.einsum("lhd,mhd->hlm", q[a:b], k[a:b]) * scale
        s = np.where(np.tri(b - a, dtype=bool), s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        out[a:b] = np.einsum("hlm,mhd->lhd", p / p.sum(-1, keepdims=True), v[a:b])
    return out


def qkv(rng, b, length, heads=2, dim=8):
    return [paddle.to_tensor(rng.standard_normal((b, length, heads, dim)).astype(np.float32)) for _ in range(3)]


@pytest.mark.parametrize("rows", [[[5, 3, 1], [9]], [[12], [4, 4, 4]], [[2], [1, 1, 7]]])
def test_gpu_kernel_arguments_describe_the_block_mask(rows):
    from datacopilot.kernels import block_causal_mask, dense_from_flashmask
    from datacopilot.models.attention import flash_unpadded_args, flashmask_args, kernel_dtype

    length = 12
    q, k, v = qkv(np.random.default_rng(len(rows[0])), len(rows), length)
    dense = block_causal_mask(rows, length)
    want = reference(q.numpy(), k.numpy(), v.numpy(), dense)
    # varlen (the CPU path) against the dense reference, every position
    got = attend(q, k, v, Segments.from_lens(rows, length)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # cu_seqlens: the flattened batch, causal, scale 1/sqrt(D), half precision; equal on real tokens
    args = flash_unpadded_args(q, k, v, Segments.from_lens(rows, length, "cu_seqlens"))
    assert args["query"].shape == [len(rows) * length, 2, 8] and args["query"].dtype == kernel_dtype(q.dtype)
    assert args["query"].dtype in (paddle.float16, paddle.bfloat16) and args["causal"] and args["dropout"] == 0.0
    assert args["cu_seqlens_q"].dtype == paddle.int32 and args["scale"] == pytest.approx(8 ** -0.5)
    flat = unpadded_reference(**args).reshape(len(rows), length, -1)
    real = np.zeros((len(rows), length), bool)
    for b, r in enumerate(rows):
        real[b, :sum(r)] = True
    np.testing.assert_allclose(flat[real], want[real], atol=2e-2)               # half-precision inputs
    # flashmask: [B, 1, L, 1] int32 start rows whose dense mask is the block mask, padding included
    args = flashmask_args(q, k, v, Segments.from_lens(rows, length, "flashmask"))
    rows_idx = args["startend_row_indices"]
    assert rows_idx.dtype == paddle.int32 and rows_idx.shape == [len(rows), 1, length, 1] and args["causal"]
    np.testing.assert_array_equal(dense_from_flashmask(rows_idx.numpy()), dense)
    assert args["query"].shape == [len(rows), length, 2, 8]


@pytest.mark.parametrize("kind", ["cu_seqlens", "flashmask"])
def test_gpu_kernels_on_cpu_tensors_say_so(kind):
    if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        pytest.skip("a gpu is present")
    q, k, v = qkv(np.random.default_rng(0), 1, 6)
    with pytest.raises(ModelError, match=f"attention: '{kind}' runs paddle's flash attention kernels, which need "
                                         f"a gpu.*use attention: varlen"):
        attend(q, k, v, Segments.from_lens([[4, 2]], 6, kind))
