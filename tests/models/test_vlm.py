"""TinyVLM: image features land exactly on the image-token positions; save/load through the user path; errors."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")
pytest.importorskip("paddlenlp")

from datacopilot.errors import InputError, ModelError  # noqa: E402
from datacopilot.models.lm import build_tiny_lm, causal_lm_loss, load_causal_lm  # noqa: E402
from datacopilot.models.vlm import TinyVLM, VLMConfig, build_tiny_vlm, load_vlm  # noqa: E402

VOCAB, COUNT, HIDDEN, L = 400, 16, 64, 48


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return build_tiny_vlm(str(tmp_path_factory.mktemp("vlm")), vocab_size=VOCAB, image_token_count=COUNT,
                          image_size=32, hidden=HIDDEN, vision_hidden=32, max_position=128, image_token_id=3, seed=0)


def batch(rng, n_img=2):
    """Two packs of L tokens; images at (pack 0, 2), (pack 1, 20) as a collator would place them."""
    ids = rng.integers(10, VOCAB, (2, L))
    pack, off = np.array([0, 1][:n_img]), np.array([2, 20][:n_img])
    for p, o in zip(pack, off):
        ids[p, o:o + COUNT] = 3
    mask = np.broadcast_to(np.tril(np.ones((L, L), bool)), (2, 1, L, L)).copy()
    t = lambda a: paddle.to_tensor(a)  # noqa: E731
    return dict(input_ids=t(ids), position_ids=t(np.broadcast_to(np.arange(L), (2, L)).copy()),
                attention_mask=t(mask), pixel_values=t(rng.standard_normal((n_img, 3, 32, 32)).astype(np.float32)),
                image_pack=t(pack), image_offset=t(off))


def test_directory_layout_and_config(vlm_dir):
    for name in ("vlm_config.json", "vision.pdparams", "projector.pdparams", "lm/config.json"):
        assert os.path.isfile(os.path.join(vlm_dir, name)), name
    cfg = VLMConfig.from_json(os.path.join(vlm_dir, "vlm_config.json"))
    assert (cfg.lm_hidden, cfg.image_token_count, cfg.image_token_id, cfg.patch) == (HIDDEN, COUNT, 3, 8)
    model = load_vlm(vlm_dir)
    assert isinstance(model, TinyVLM) and model.training
    assert type(model.lm).__name__ == "LlamaForCausalLM"


def test_features_replace_exactly_the_image_token_embeddings(vlm_dir):
    model = load_vlm(vlm_dir)
    b = batch(np.random.default_rng(0))
    plain = model.lm.get_input_embeddings()(b["input_ids"]).numpy()
    mixed = model.embed(b["input_ids"], b["pixel_values"], b["image_pack"], b["image_offset"]).numpy()
    feats = model.image_features(b["pixel_values"]).numpy()
    assert feats.shape == (2, COUNT, HIDDEN)
    is_image = np.zeros((2, L), bool)
    for i, (p, o) in enumerate([(0, 2), (1, 20)]):
        np.testing.assert_array_equal(mixed[p, o:o + COUNT], feats[i])
        is_image[p, o:o + COUNT] = True
    np.testing.assert_array_equal(mixed[~is_image], plain[~is_image])


def test_images_change_only_later_logits(vlm_dir):
    model = load_vlm(vlm_dir)
    rng = np.random.default_rng(1)
    b = batch(rng)
    _, before = model(**b)
    b["pixel_values"] = paddle.to_tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    _, after = model(**b)
    before, after = before.numpy(), after.numpy()
    np.testing.assert_array_equal(before[0, :2], after[0, :2])        # before pack 0's image: causal, untouched
    np.testing.assert_array_equal(before[1, :20], after[1, :20])
    assert np.abs(before[0, 2:] - after[0, 2:]).max() > 1e-4
    assert np.abs(before[1, 20:] - after[1, 20:]).max() > 1e-4


def test_loss_is_causal_lm_loss_and_optional(vlm_dir):
    model = load_vlm(vlm_dir)
    b = batch(np.random.default_rng(2))
    labels = b["input_ids"].numpy().copy()
    labels[:, :COUNT + 4] = -100
    loss, logits = model(**b, labels=paddle.to_tensor(labels))
    assert abs(float(loss) - float(causal_lm_loss(logits, paddle.to_tensor(labels)))) < 1e-6
    none, _ = model(**b)
    assert none is None
    loss.backward()
    assert model.vision.patchify.weight.grad is not None and float(model.vision.patchify.weight.grad.abs().sum()) > 0


def test_text_only_batch(vlm_dir):
    model = load_vlm(vlm_dir)
    b = batch(np.random.default_rng(3))
    _, with_none = model(b["input_ids"], b["position_ids"], b["attention_mask"])
    _, with_empty = model(b["input_ids"], b["position_ids"], b["attention_mask"],
                          pixel_values=paddle.zeros([0, 3, 32, 32]), image_pack=paddle.zeros([0], "int64"),
                          image_offset=paddle.zeros([0], "int64"))
    assert with_none.shape == [2, L, VOCAB]
    np.testing.assert_array_equal(with_none.numpy(), with_empty.numpy())


def test_save_load_round_trip_same_outputs(tmp_path, vlm_dir):
    model = load_vlm(vlm_dir)
    with paddle.no_grad():
        for p in model.parameters():
            p.set_value(p + 0.02 * paddle.randn(p.shape))
    out = model.save_pretrained(str(tmp_path / "saved"))
    loaded = load_vlm(out)
    b = batch(np.random.default_rng(4))
    np.testing.assert_array_equal(model(**b)[1].numpy(), loaded(**b)[1].numpy())
    assert np.abs(load_vlm(vlm_dir)(**b)[1].numpy() - loaded(**b)[1].numpy()).max() > 1e-4


def test_non_square_token_count(tmp_path):
    lm = load_causal_lm(build_tiny_lm(str(tmp_path / "lm"), vocab_size=50, hidden=32, heads=2, max_position=64))
    model = TinyVLM(VLMConfig(lm_hidden=32, image_size=24, image_token_count=6, vision_hidden=16, vision_heads=2), lm)
    assert model.image_features(paddle.randn([3, 3, 24, 24])).shape == [3, 6, 32]


def test_bad_inputs_are_named(vlm_dir):
    model = load_vlm(vlm_dir)
    b = batch(np.random.default_rng(5))
    with pytest.raises(InputError, match=r"`pixel_values` must have shape \[n_images, 3, 32, 32\], got \[2, 3, 16, 16\]"):
        model(**{**b, "pixel_values": paddle.randn([2, 3, 16, 16])})
    with pytest.raises(InputError, match="2 images but 1 image_pack and 2 image_offset entries"):
        model(**{**b, "image_pack": paddle.to_tensor([0])})
    with pytest.raises(InputError, match=r"image positions out of range: packs \[0, 1\], offsets \[2, 40\]"):
        model(**{**b, "image_offset": paddle.to_tensor([2, 40])})
    with pytest.raises(InputError, match=r"images overlap: packs \[0, 0\], offsets \[2, 10\] with 16 tokens"):
        model(**{**b, "image_pack": paddle.to_tensor([0, 0]), "image_offset": paddle.to_tensor([2, 10])})
    with pytest.raises(InputError, match="without `image_pack`"):
        model(b["input_ids"], b["position_ids"], b["attention_mask"], pixel_values=b["pixel_values"])
    lm = load_causal_lm(os.path.join(vlm_dir, "lm"))
    with pytest.raises(ModelError, match="lm_hidden 32 does not match the lm's hidden_size 64"):
        TinyVLM(VLMConfig(lm_hidden=32), lm)
    with pytest.raises(InputError, match="VLMConfig.image_token_count: expected a positive integer, got 0"):
        VLMConfig(lm_hidden=32, image_token_count=0)


def test_load_errors_name_what_is_missing(tmp_path, vlm_dir):
    with pytest.raises(ModelError, match="does not exist"):
        load_vlm(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a vlm directory"):
        load_vlm(str(tmp_path / "empty"))
    broken = tmp_path / "broken"
    shutil.copytree(vlm_dir, broken)
    os.remove(broken / "projector.pdparams")
    with pytest.raises(ModelError, match="missing projector.pdparams"):
        load_vlm(str(broken))
    shutil.rmtree(broken / "lm")
    with pytest.raises(ModelError, match="lm: model directory does not exist"):
        load_vlm(str(broken))


def test_several_images_in_one_pack_each_land_on_their_own_positions(vlm_dir):
    """Pack 0 holds three images (two samples), pack 1 none: each image's features replace exactly its tokens."""
    model = load_vlm(vlm_dir)
    rng = np.random.default_rng(6)
    ids = rng.integers(10, VOCAB, (2, L))
    pack, off = np.array([0, 0, 0]), np.array([0, 16, 32])   # back to back: no token between
    for o in off:
        ids[0, o:o + COUNT] = 3
    pixels = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    t = paddle.to_tensor
    mixed = model.embed(t(ids), t(pixels), t(pack), t(off)).numpy()
    plain = model.lm.get_input_embeddings()(t(ids)).numpy()
    feats = model.image_features(t(pixels)).numpy()
    is_image = np.zeros((2, L), bool)
    for i, o in enumerate(off):
        np.testing.assert_array_equal(mixed[0, o:o + COUNT], feats[i])
        is_image[0, o:o + COUNT] = True
    np.testing.assert_array_equal(mixed[~is_image], plain[~is_image])   # text and the text-only pack untouched
    assert np.abs(feats[0] - feats[2]).max() > 1e-4                      # distinct images, distinct features


def test_conv_encoder_round_trip_and_image_dependence(tmp_path):
    out = build_tiny_vlm(str(tmp_path / "conv"), vocab_size=VOCAB, image_token_count=8, image_size=64, hidden=HIDDEN,
                         vision_hidden=32, max_position=128, seed=0, encoder="conv")
    cfg = VLMConfig.from_json(os.path.join(out, "vlm_config.json"))
    assert (cfg.encoder, cfg.image_size, cfg.image_token_count) == ("conv", 64, 8)
    model = load_vlm(out)
    assert type(model.vision).__name__ == "ConvEncoder"
    rng = np.random.default_rng(7)
    px = paddle.to_tensor(rng.standard_normal((2, 3, 64, 64)).astype(np.float32))
    feats = model.image_features(px).numpy()
    assert feats.shape == (2, 8, HIDDEN)
    moved = px.numpy().copy()
    moved[1] = np.roll(moved[1], 20, axis=2)                     # the same pixels, somewhere else
    assert np.abs(model.image_features(paddle.to_tensor(moved)).numpy()[1] - feats[1]).max() > 1e-4
    with paddle.no_grad():
        for p in model.parameters():
            p.set_value(p + 0.02 * paddle.randn(p.shape))
    loaded = load_vlm(model.save_pretrained(str(tmp_path / "saved")))
    np.testing.assert_array_equal(model.image_features(px).numpy(), loaded.image_features(px).numpy())


def test_configs_without_an_encoder_load_as_patch_and_bad_ones_are_named(tmp_path, vlm_dir):
    import json

    old = tmp_path / "old"
    shutil.copytree(vlm_dir, old)
    cfg = json.loads((old / "vlm_config.json").read_text())
    cfg.pop("encoder", None)                                     # as written before the key existed
    (old / "vlm_config.json").write_text(json.dumps(cfg))
    assert type(load_vlm(str(old)).vision).__name__ == "VisionEncoder"
    (old / "vlm_config.json").write_text(json.dumps({**cfg, "encoder": "vit"}))
    with pytest.raises(ModelError, match=r"vlm_config.json: not a vlm config: VLMConfig.encoder: expected one of "
                                         r"'patch', 'conv', got 'vit'"):
        load_vlm(str(old))
    (old / "vlm_config.json").write_text(json.dumps({**cfg, "encoder": "conv"}))   # conv weights missing
    with pytest.raises(ModelError, match=r"vision.pdparams: missing weights"):
        load_vlm(str(old))
    with pytest.raises(InputError, match="encoder 'conv' needs image_size 4 times a power of two"):
        VLMConfig(lm_hidden=32, image_size=48, encoder="conv")
