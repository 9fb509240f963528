"""The heart of MixToken done right: a packed batch gives the loss and gradients of its samples run one at a time.

For the tiny LM and the tiny VLM (float32, CPU): samples of different lengths, with -100 labels where a chat
template puts them (prompt and image tokens), are run one at a time (batch 1, no padding) and packed by
``datacopilot.kernels.pack`` into packs with the block-diagonal causal mask and per-segment position ids. Both sides
compute sum of token losses / total target tokens; the losses must agree within 1e-5 relative and every parameter's
gradient within 1e-5 relative (norm-based). The same pack with the block mask replaced by a plain causal mask, or
by MixToken's padding mask with running positions, must give a clearly different loss (> 1e-3 relative).
"""

from __future__ import annotations

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")
pytest.importorskip("paddlenlp")

from datacopilot.kernels import block_causal_mask, pack, position_ids  # noqa: E402
from datacopilot.models.lm import build_tiny_lm, causal_lm_loss, lm_logits, load_causal_lm  # noqa: E402
from datacopilot.models.vlm import build_tiny_vlm, load_vlm  # noqa: E402

VOCAB = 600
IMAGE_TOKEN = 5
IMAGE_TOKENS = 16
TOL = 1e-5
TEETH = 1e-3


# ---------------------------------------------------------------- samples
def make_text_samples(rng, lengths):
    """Random token ids; labels -100 on a 'prompt' prefix and on a middle 'user turn', as a template makes them."""
    samples = []
    for n in lengths:
        ids = rng.integers(10, VOCAB, n)
        labels = ids.copy()
        prompt = int(rng.integers(1, max(2, n // 3)))
        labels[:prompt] = -100
        if n > 12:                                   # a second user turn in the middle
            a = int(rng.integers(prompt + 1, n - 4))
            labels[a:a + 3] = -100
        samples.append({"input_ids": ids, "labels": labels, "image_offsets": []})
    return samples


def make_vlm_samples(rng, specs):
    """``specs``: (text length, number of images); images sit after a short prefix, their tokens labelled -100."""
    samples = []
    for n_text, n_img in specs:
        ids = list(rng.integers(10, VOCAB, 2))
        offsets = []
        for _ in range(n_img):
            offsets.append(len(ids))
            ids += [IMAGE_TOKEN] * IMAGE_TOKENS
            ids += list(rng.integers(10, VOCAB, 2))
        prompt = len(ids) + 2
        ids += list(rng.integers(10, VOCAB, n_text))
        ids = np.asarray(ids, np.int64)
        labels = ids.copy()
        labels[:prompt] = -100
        pixels = rng.standard_normal((n_img, 3, 32, 32)).astype(np.float32)
        samples.append({"input_ids": ids, "labels": labels, "image_offsets": offsets, "pixel_values": pixels})
    return samples


def separate_batches(samples):
    """Each sample alone: batch 1, no padding, plain causal mask, positions 0..n-1."""
    out = []
    for s in samples:
        n = len(s["input_ids"])
        batch = {"input_ids": s["input_ids"][None], "labels": s["labels"][None],
                 "position_ids": np.arange(n, dtype=np.int64)[None],
                 "attention_mask": np.tril(np.ones((n, n), bool))[None, None]}
        add_images(batch, [(0, off, s) for off in s["image_offsets"]])
        out.append(batch)
    return out


def packed_batch(samples, max_length, mask="block"):
    """Pack with the kernels' best-fit decreasing; ``mask``: 'block' (correct), 'causal', or 'mixtoken'."""
    plan = pack([len(s["input_ids"]) for s in samples], max_length)
    assert len(plan.truncated) == 0 and len(plan.dropped) == 0
    b, L = plan.n_packs, max_length
    ids = np.zeros((b, L), np.int64)
    labels = np.full((b, L), -100, np.int64)
    images = []
    for p, members in enumerate(plan.packs()):
        at = 0
        for i in members:
            s = samples[i]
            n = len(s["input_ids"])
            ids[p, at:at + n] = s["input_ids"]
            labels[p, at:at + n] = s["labels"]
            labels[p, at] = -100                       # nothing predicts a segment's first token
            images += [(p, at + off, s) for off in s["image_offsets"]]
            at += n
    seq_lens = [plan.seq_lens(p) for p in range(b)]
    if mask == "block":
        pos = np.stack([position_ids(lens, L) for lens in seq_lens])
        attn = block_causal_mask(seq_lens, L)
    elif mask == "causal":                             # block mask left out, positions still per segment
        pos = np.stack([position_ids(lens, L) for lens in seq_lens])
        attn = np.broadcast_to(np.tril(np.ones((L, L), bool)), (b, 1, L, L)).copy()
    elif mask == "mixtoken":                           # MixToken's collator: padding mask, positions run on
        pos = np.broadcast_to(np.arange(L, dtype=np.int64), (b, L)).copy()
        real = np.arange(L)[None, :] < np.asarray([sum(x) for x in seq_lens])[:, None]
        attn = (np.tril(np.ones((L, L), bool))[None] & (real[:, None, :] | np.eye(L, dtype=bool)[None]))[:, None]
    else:
        raise ValueError(mask)
    batch = {"input_ids": ids, "labels": labels, "position_ids": pos, "attention_mask": attn}
    add_images(batch, images)
    return batch


def add_images(batch, images):
    if images:
        batch["image_pack"] = np.asarray([p for p, _, _ in images], np.int64)
        batch["image_offset"] = np.asarray([o for _, o, _ in images], np.int64)
        per_sample = {}
        pixels = []
        for _, _, s in images:                          # the k-th image of a sample, in offset order
            k = per_sample.get(id(s), 0)
            per_sample[id(s)] = k + 1
            pixels.append(s["pixel_values"][k])
        batch["pixel_values"] = np.stack(pixels)


# ---------------------------------------------------------------- running
def logits_of(model, batch):
    t = {k: paddle.to_tensor(v) for k, v in batch.items()}
    if hasattr(model, "vision"):
        return model(t["input_ids"], t["position_ids"], t["attention_mask"], pixel_values=t.get("pixel_values"),
                     image_pack=t.get("image_pack"), image_offset=t.get("image_offset"))[1]
    return lm_logits(model, t["input_ids"], t["position_ids"], t["attention_mask"])


def grads(model):
    return {name: (np.zeros(p.shape, np.float32) if p.grad is None else p.grad.numpy().copy())
            for name, p in model.named_parameters()}


def run_separate(model, samples):
    """Sum of token losses / total target tokens over one-at-a-time runs; gradients accumulated the same way."""
    model.clear_gradients()
    batches = separate_batches(samples)
    total_targets = sum(int((b["labels"][0, 1:] != -100).sum()) for b in batches)
    loss = 0.0
    for batch in batches:
        token_sum, _ = causal_lm_loss(logits_of(model, batch), paddle.to_tensor(batch["labels"]), return_sum=True)
        part = token_sum / total_targets
        part.backward()
        loss += float(part)
    return loss, grads(model)


def run_packed(model, batch):
    model.clear_gradients()
    loss = causal_lm_loss(logits_of(model, batch), paddle.to_tensor(batch["labels"]))
    loss.backward()
    return float(loss), grads(model)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def assert_equivalent(model, samples, max_length):
    sep_loss, sep_grads = run_separate(model, samples)
    batch = packed_batch(samples, max_length)
    assert batch["input_ids"].shape[0] >= 1 and (batch["position_ids"] == 0).sum() > batch["input_ids"].shape[0]
    pk_loss, pk_grads = run_packed(model, batch)
    assert rel(pk_loss, sep_loss) < TOL, (pk_loss, sep_loss)
    assert set(pk_grads) == set(sep_grads)
    scale = max(np.linalg.norm(g) for g in sep_grads.values())
    for name, g in sep_grads.items():
        if name.endswith("k_proj.bias"):
            # zero in exact arithmetic (softmax ignores a shift shared by all keys): rounding noise on both sides
            assert max(np.linalg.norm(g), np.linalg.norm(pk_grads[name])) < 1e-5 * scale, name
            continue
        assert np.linalg.norm(g) > 1e-5 * scale, f"{name}: no gradient reaches this parameter"
        assert rel(pk_grads[name], g) < TOL, (name, rel(pk_grads[name], g))
    return sep_loss, sep_grads


def assert_contaminated(model, samples, max_length, sep_loss, sep_grads, mask):
    batch = packed_batch(samples, max_length, mask=mask)
    loss, g = run_packed(model, batch)
    assert rel(loss, sep_loss) > TEETH, (mask, loss, sep_loss)
    worst = max(rel(g[n], sep_grads[n]) for n in sep_grads if not n.endswith("k_proj.bias"))
    assert worst > TEETH, (mask, worst)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def lm_path(tmp_path_factory):
    return build_tiny_lm(str(tmp_path_factory.mktemp("lm")), vocab_size=VOCAB, hidden=64, layers=2, heads=4,
                         max_position=256, seed=3, init_std=0.15)


@pytest.fixture(scope="module")
def lm(lm_path):
    return load_causal_lm(lm_path)


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    path = build_tiny_vlm(str(tmp_path_factory.mktemp("vlm")), vocab_size=VOCAB, image_token_count=IMAGE_TOKENS,
                          image_size=32, hidden=64, layers=2, heads=4, vision_hidden=32, max_position=256,
                          image_token_id=IMAGE_TOKEN, seed=4, init_std=0.15)
    return load_vlm(path)


LM_LENGTHS = [7, 23, 5, 31, 12, 18, 9]


# ---------------------------------------------------------------- tests
def test_lm_packed_equals_one_at_a_time(lm):
    samples = make_text_samples(np.random.default_rng(0), LM_LENGTHS)
    plan = pack(LM_LENGTHS, 48)
    assert plan.n_packs >= 2 and any(len(m) >= 3 for m in plan.packs())   # real packing, padding in some pack
    assert_equivalent(lm, samples, 48)


def test_lm_flash_attention_flag_keeps_the_block_mask(lm_path):
    """With use_flash_attention PaddleNLP drops a mask it finds plainly causal; a block mask must survive."""
    model = load_causal_lm(lm_path, use_flash_attention=True)
    assert model.config.use_flash_attention
    samples = make_text_samples(np.random.default_rng(2), LM_LENGTHS)
    sep_loss, sep_grads = assert_equivalent(model, samples, 48)
    assert_contaminated(model, samples, 48, sep_loss, sep_grads, "causal")


def test_lm_single_pack_segment_logits_equal_alone(lm):
    """Each segment's logits inside the pack are the logits of that sample alone: the mask is used as given."""
    samples = make_text_samples(np.random.default_rng(1), [6, 11, 9])
    batch = packed_batch(samples, 30)
    assert batch["input_ids"].shape[0] == 1
    packed = logits_of(lm, batch).numpy()[0]
    alone = separate_batches(samples)
    order = pack([len(s["input_ids"]) for s in samples], 30).packs()[0]
    assert sorted(order.tolist()) == [0, 1, 2]
    at = 0
    for i in order:
        n = len(samples[i]["input_ids"])
        one = logits_of(lm, alone[i]).numpy()[0]
        np.testing.assert_allclose(packed[at:at + n], one, rtol=1e-4, atol=1e-5)
        at += n


@pytest.mark.parametrize("mask", ["causal", "mixtoken"])
def test_lm_without_block_mask_differs(lm, mask):
    samples = make_text_samples(np.random.default_rng(0), LM_LENGTHS)
    sep_loss, sep_grads = run_separate(lm, samples)
    assert_contaminated(lm, samples, 48, sep_loss, sep_grads, mask)


VLM_SPECS = [(6, 1), (10, 0), (4, 2), (12, 1), (3, 1)]


def test_vlm_packed_equals_one_at_a_time(vlm):
    samples = make_vlm_samples(np.random.default_rng(5), VLM_SPECS)
    lengths = [len(s["input_ids"]) for s in samples]
    plan = pack(lengths, 64)
    assert plan.n_packs >= 2 and any(len(m) >= 2 for m in plan.packs())
    batch = packed_batch(samples, 64)
    assert len(batch["image_pack"]) == sum(n for _, n in VLM_SPECS)
    _, sep_grads = assert_equivalent(vlm, samples, 64)
    vision = [n for n in sep_grads if n.startswith("vision.")]
    assert vision and all(np.linalg.norm(sep_grads[n]) > 0 for n in vision if "k_proj" not in n)   # images flow in


@pytest.mark.parametrize("mask", ["causal", "mixtoken"])
def test_vlm_without_block_mask_differs(vlm, mask):
    samples = make_vlm_samples(np.random.default_rng(5), VLM_SPECS)
    sep_loss, sep_grads = run_separate(vlm, samples)
    assert_contaminated(vlm, samples, 64, sep_loss, sep_grads, mask)


def test_vlm_images_misplaced_differ(vlm):
    """Features go where image_offset says: shifting every image by one position changes the loss."""
    samples = make_vlm_samples(np.random.default_rng(6), VLM_SPECS[:3])
    batch = packed_batch(samples, 64)
    good, _ = run_packed(vlm, batch)
    batch["image_offset"] = batch["image_offset"] + 1
    bad, _ = run_packed(vlm, batch)
    assert rel(bad, good) > TEETH


def test_collator_batches_are_equivalent(vlm):
    """The training path end to end: kernels.pack -> PackedCollator -> TinyVLM equals one-at-a-time runs."""
    from datacopilot.train.collate import PackedCollator

    samples = make_vlm_samples(np.random.default_rng(7), VLM_SPECS)
    plan = pack([len(s["input_ids"]) for s in samples], 64)
    out = PackedCollator(64, attention="dense", image_token_count=IMAGE_TOKENS)([[samples[i] for i in m] for m in plan.packs()])
    sep_loss, sep_grads = run_separate(vlm, samples)
    total_targets = sum(int((s["labels"][1:] != -100).sum()) for s in samples)
    assert out["n_target_tokens"] == total_targets
    keys = ("input_ids", "labels", "position_ids", "attention_mask", "pixel_values", "image_pack", "image_offset")
    loss, g = run_packed(vlm, {k: out[k] for k in keys})
    assert rel(loss, sep_loss) < TOL
    assert max(rel(g[n], sep_grads[n]) for n in sep_grads if not n.endswith("k_proj.bias")) < TOL


# ---------------------------------------------------------------- 0..k images per sample
MIXED_SPECS = [(5, 0), (4, 1), (3, 3)]   # a text-only, a one-image and a three-image sample: one pack of 96


def test_vlm_pack_of_0_1_and_3_image_samples_equals_one_at_a_time(vlm):
    samples = make_vlm_samples(np.random.default_rng(8), MIXED_SPECS)
    plan = pack([len(s["input_ids"]) for s in samples], 96)
    assert plan.n_packs == 1 and sorted(plan.packs()[0].tolist()) == [0, 1, 2]   # all three share one pack
    batch = packed_batch(samples, 96)
    assert batch["image_pack"].tolist() == [0, 0, 0, 0]
    _, sep_grads = assert_equivalent(vlm, samples, 96)
    assert np.linalg.norm(sep_grads["vision.patchify.weight"]) > 0


def test_vlm_mixed_pack_through_the_collator_equals_one_at_a_time(vlm):
    from datacopilot.train.collate import PackedCollator

    samples = make_vlm_samples(np.random.default_rng(9), MIXED_SPECS)
    order = pack([len(s["input_ids"]) for s in samples], 96).packs()[0]
    out = PackedCollator(96, attention="dense", image_token_count=IMAGE_TOKENS)([[samples[i] for i in order]])
    # each image knows its segment: the segment of the 1-image sample once, of the 3-image sample three times
    seg_of = {int(i): k for k, i in enumerate(order)}
    assert sorted(out["image_segment"].tolist()) == sorted([seg_of[1]] + [seg_of[2]] * 3)
    assert out["pixel_values"].shape == (4, 3, 32, 32)
    for p, o in zip(out["image_pack"], out["image_offset"]):
        assert (out["input_ids"][p, o:o + IMAGE_TOKENS] == IMAGE_TOKEN).all()
    sep_loss, sep_grads = run_separate(vlm, samples)
    keys = ("input_ids", "labels", "position_ids", "attention_mask", "pixel_values", "image_pack", "image_offset")
    loss, g = run_packed(vlm, {k: out[k] for k in keys})
    assert rel(loss, sep_loss) < TOL
    assert max(rel(g[n], sep_grads[n]) for n in sep_grads if not n.endswith("k_proj.bias")) < TOL
    # each image goes to its own positions: the 3-image sample's first and last images swapped is another loss
    swapped = {k: out[k].copy() for k in keys}
    first = [j for j, s in enumerate(out["image_segment"]) if s == seg_of[2]]
    swapped["pixel_values"][[first[0], first[-1]]] = swapped["pixel_values"][[first[-1], first[0]]]
    bad, _ = run_packed(vlm, swapped)
    assert rel(bad, loss) > TEETH
