"""0..k images per sample on the training path: template, tokenize_dataset's lengths, PackedData's pixels, and a
short VLM run through ``sft`` on LLaVA-OneVision-shaped rows (``"image": [...]``, int and str ids)."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("paddlenlp")
pytest.importorskip("sentencepiece")

from datacopilot import MMDataset  # noqa: E402
from datacopilot.errors import InputError, OperatorError  # noqa: E402
from datacopilot.kernels import pack  # noqa: E402
from datacopilot.models.chat_template import ChatTemplate, content_text  # noqa: E402
from datacopilot.models.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402
from datacopilot.train.tokenize import tokenize_dataset  # noqa: E402

N = 4  # tokens per image
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 255, 255), (0, 0, 0)]
QUESTIONS = ["What is in the first image?", "Compare the two images.", "Which image is the brightest?",
             "Describe the picture.", "What color is it?"]
ANSWERS = ["A red square.", "The left one is green and the right one is blue.", "The yellow one.",
           "A plain white field.", "It is black."]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = QUESTIONS + ANSWERS + ["hi", "yo", "look", "and", "then"]
    return load_tokenizer(train_tokenizer(texts * 20, str(tmp_path_factory.mktemp("tok")), vocab_size=400))


@pytest.fixture(scope="module")
def tpl(tok):
    return ChatTemplate(tok, image_token_count=N)


def mm(i, k, question="What is in the first image?", answer="A red square.", placeholders=None):
    """An MM row with ``k`` images (LLaVA-OneVision's image list; one image as a plain value, none as no key)."""
    imgs = [f"img/{(i + j) % len(COLORS)}.png" for j in range(k)]
    lead = "<image>\n" * (k if placeholders is None else placeholders)
    row = {"id": i, "conversations": [{"from": "human", "value": lead + question}, {"from": "gpt", "value": answer}]}
    if k:
        row["image"] = imgs if k > 1 else imgs[0]
    return row


# ---------------------------------------------------------------- the template
def test_k_images_expand_in_order_and_add_k_times_the_image_tokens(tpl):
    text = [{"role": "user", "content": "look"}, {"role": "assistant", "content": "yo"}]
    base = len(tpl.encode_messages(text)["input_ids"])
    for k in range(4):
        enc = tpl.encode_messages(text, n_images=k)        # no placeholder: one per image put first (LLaVA)
        ids = enc["input_ids"]
        assert len(ids) == base + k * N
        assert enc["image_offsets"] == [2 + j * N for j in range(k)]   # <s> <|user|> then the images, in order
        assert ids.count(tpl.image_token_id) == k * N and enc["n_images"] == k


def test_placeholders_between_turns_take_the_images_in_reading_order(tpl):
    msgs = [{"role": "user", "content": "<image> look"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "and <image> then <image>"}, {"role": "assistant", "content": "ok"}]
    enc = tpl.encode_messages(msgs, n_images=3)
    offs, ids, labels = enc["image_offsets"], enc["input_ids"], enc["labels"]
    assert len(offs) == 3 and offs == sorted(offs) and offs[1] - offs[0] > N + 2   # a turn lies between 0 and 1
    for o in offs:
        assert ids[o:o + N] == [tpl.image_token_id] * N and set(labels[o:o + N]) == {-100}


def test_content_parts_encode_like_their_text(tpl):
    parts = [{"type": "image"}, {"type": "text", "text": "Compare the two images."}, {"type": "image_url",
             "image_url": {"url": "b.png"}}]
    assert content_text(parts) == "<image>\nCompare the two images.\n<image>"
    as_text = [{"role": "user", "content": content_text(parts)}, {"role": "assistant", "content": "The left one."}]
    as_parts = [{"role": "user", "content": parts},
                {"role": "assistant", "content": [{"type": "text", "text": "The left one."}]}]
    assert tpl.encode_messages(as_parts, 2) == tpl.encode_messages(as_text, 2)
    assert content_text(None) == "" and content_text([]) == ""


def test_content_text_renders_parts_as_the_schema_converters_do():
    from datacopilot.schemas import part_text

    for parts in ([{"type": "image"}, {"type": "text", "text": "a"}], [{"type": "text", "text": "a"}] * 3,
                  [{"type": "image"}, {"type": "image"}, {"type": "text", "text": ""}], "plain <image> text"):
        assert content_text(parts) == part_text(parts)


def test_mismatched_images_and_placeholders_name_the_row(tpl):
    with pytest.raises(InputError, match=r"row 7: 1 '<image>' placeholder\(s\) but 3 image\(s\); give every image"):
        tpl.encode(mm(7, 3, placeholders=1), "MM")
    with pytest.raises(InputError, match=r"row 8: 3 '<image>' placeholder\(s\) but 2 image\(s\)"):
        tpl.encode(mm(8, 2, placeholders=3), "MM")
    with pytest.raises(InputError, match=r"row 'p': 2 '<image>' placeholder\(s\) but 1 image\(s\)"):
        tpl.encode({"id": "p", "images": ["a.png"], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "image"}]},
            {"role": "assistant", "content": "yo"}]}, "MESSAGES")
    with pytest.raises(InputError, match=r"row 'q': messages\[0\]\.content\[1\]: expected a part of type 'text'"):
        tpl.encode_messages([{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "audio"}]}],
                            row_id="q")
    # through tokenize_dataset: an OperatorError naming the row and its id, or a counted drop
    ds = MMDataset.from_rows([mm(0, 2), mm(1, 3, placeholders=2)], schema="MM")
    with pytest.raises(OperatorError, match=r"tokenize at row 1 \(id 1\).*2 '<image>' placeholder\(s\) but 3"):
        tokenize_dataset(ds, tpl, max_length=128, num_workers=1)
    out = tokenize_dataset(ds, tpl, max_length=128, on_error="skip")
    assert len(out) == 1 and out.history()[-1].dropped == {"cannot encode": 1}


# ---------------------------------------------------------------- tokenized columns and pack lengths
def test_tokenized_lengths_count_image_tokens_per_image(tpl):
    rows = [mm(i, k) for i, k in enumerate([0, 1, 2, 3, 0, 3])]
    t = tokenize_dataset(MMDataset.from_rows(rows, schema="MM"), tpl, max_length=128, num_workers=1).to_arrow()
    one = len(tpl.encode(mm(0, 1), "MM")["input_ids"])
    newline = len(tpl.encode_text("\n"))  # "<image>\n<image>\nQ": each image after the first adds N tokens + "\n"
    for i, k in enumerate([0, 1, 2, 3, 0, 3]):
        offs = t["image_offsets"][i].as_py()
        assert len(offs) == k
        if k:
            assert t["length"][i].as_py() == one + (k - 1) * (N + newline)
        assert t["length"][i].as_py() == len(t["input_ids"][i])
        ids = t["input_ids"][i].as_py()
        assert sum(x == tpl.image_token_id for x in ids) == k * N
    # the packer packs exactly these lengths: a pack's tokens are its samples' lengths, image tokens included
    lengths = t["length"].to_numpy()
    plan = pack(lengths, 128)
    assert sorted(plan.lengths.tolist()) == sorted(lengths.tolist())
    assert int(plan.pack_lengths().sum()) == int(lengths.sum()) and (plan.pack_lengths() <= 128).all()


def test_a_later_image_cut_by_max_length_drops_the_row(tpl):
    long_q = "Describe the picture. " * 6
    rows = [mm(0, 3), {"id": 1, "image": ["a.png", "b.png"], "conversations": [
        {"from": "human", "value": "<image>" + long_q + "<image>"}, {"from": "gpt", "value": "yo"}]}]
    first = tpl.encode(rows[1], "MM")["image_offsets"]
    out = tokenize_dataset(MMDataset.from_rows(rows, schema="MM"), tpl, max_length=first[1] + N - 1)
    assert out.history()[-1].dropped == {"image tokens cut by max_length": 1}
    assert out.to_arrow()["id"].to_pylist() == [0]


# ---------------------------------------------------------------- from files to packed pixels and a run
def write_dataset(root, n_rows=48):
    """PNGs of solid colours and an MM jsonl whose rows hold 0, 1, 2 or 3 images (int and str ids)."""
    from PIL import Image

    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    for c, rgb in enumerate(COLORS):
        Image.new("RGB", (20, 20), rgb).save(os.path.join(root, "img", f"{c}.png"))
    rows = []
    for i in range(n_rows):
        k = i % 4
        row = mm(i, k, question=QUESTIONS[i % len(QUESTIONS)], answer=ANSWERS[i % len(ANSWERS)])
        if i % 3 == 0:
            row["id"] = f"s{i}"
        rows.append(row)
    path = os.path.join(root, "multi.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path, rows


def test_packed_data_gives_each_sample_its_images_in_order(tpl, tmp_path):
    import datacopilot
    from datacopilot.train.collate import PackedCollator
    from datacopilot.train.data import ImageLoader, PackedData

    path, rows = write_dataset(str(tmp_path), n_rows=16)
    ds = datacopilot.load(path, schema="MM", invalid="raise", root=str(tmp_path))
    tok = tokenize_dataset(ds, tpl, max_length=96, num_workers=1)
    data = PackedData(tok.to_arrow(), 96, batch_size=2, seed=0, images=ImageLoader(tok, 8, N))
    seen = mixed = 0
    for key in [(0, p) for p in range(len(data.epoch(0)[0]))]:
        samples = data.pack(key)
        ks = [len(s["image_offsets"]) for s in samples]
        mixed += 0 in ks and max(ks) >= 2
        for s, k in zip(samples, ks):
            if not k:
                assert "pixel_values" not in s
                continue
            assert s["pixel_values"].shape == (k, 3, 8, 8)
            seen += k
        out = PackedCollator(96, image_token_count=N)([samples])
        assert len(out["image_offset"]) == sum(ks) and out["image_segment"].tolist() == [
            j for j, k in enumerate(ks) for _ in range(k)]
    assert seen == sum(i % 4 for i in range(16)) and mixed   # every image once; some pack mixes 0 and 2+ images
    # image j of a row is the row's j-th image: its colour comes through in order
    i = next(r for r, row in enumerate(rows) if isinstance(row.get("image"), list) and len(row["image"]) == 3)
    pix = data.sample(i, int(data.lengths[i]))["pixel_values"]
    want = [COLORS[(i + j) % len(COLORS)] for j in range(3)]
    got = [tuple(int(round((v + 1) * 127.5)) for v in p[:, 0, 0]) for p in pix]
    assert got == want


def test_sft_trains_a_tiny_vlm_on_multi_image_rows(tmp_path):
    import paddle

    from datacopilot.models.lm import load_causal_lm  # noqa: F401  (paddlenlp present)
    from datacopilot.models.vlm import build_tiny_vlm, load_vlm
    from datacopilot.train import SFTConfig, sft
    from datacopilot.train.loop import prepare

    path, _ = write_dataset(str(tmp_path), n_rows=48)
    texts = QUESTIONS + ANSWERS
    tok_dir = train_tokenizer(["<image>\n" + t for t in texts] * 20, str(tmp_path / "tok"), vocab_size=400)
    vocab = len(load_tokenizer(tok_dir))
    vlm_dir = build_tiny_vlm(str(tmp_path / "vlm"), vocab, image_token_count=N, image_size=16, hidden=64,
                             layers=1, heads=4, vision_hidden=32, max_position=256)
    cfg = SFTConfig.from_dict({
        "data": path, "schema": "MM", "model": vlm_dir, "model_type": "vlm", "tokenizer": tok_dir,
        "output_dir": str(tmp_path / "run"), "max_length": 128, "batch_size": 2, "lr": 3e-3, "warmup_steps": 1,
        "max_steps": 10, "seed": 0, "progress": False, "num_workers": 1, "image_token_count": N, "image_size": 16,
        "cache_dir": str(tmp_path / "cache")})
    # the run's own packs hold text-only and multi-image samples side by side
    _, tokenized, data = prepare(cfg)
    assert len(tokenized) == 48
    packs = [data.pack((0, p)) for p in range(len(data.epoch(0)[0]))]
    assert any({0, 3} <= {len(s["image_offsets"]) for s in p} for p in packs)
    res = sft(cfg, echo=lambda s: None)
    losses = [h["loss"] for h in res["history"]]
    assert len(losses) == 10 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    paddle.set_device("cpu")
    before, after = load_vlm(vlm_dir), load_vlm(res["model_dir"])
    w0, w1 = before.vision.patchify.weight.numpy(), after.vision.patchify.weight.numpy()
    assert np.abs(w1 - w0).max() > 1e-5   # the images reached the vision encoder


def test_mix_image_references_encode_as_placeholders_in_the_order_the_text_names_them(tpl):
    """SCHEMA.MIX refers to image N as ``<image>N</image>``: its row encodes as the MM row whose image list is in
    the text's order, with no ``</image>`` or digits of the reference left in the tokens."""
    mix = {"id": 1, "images": [{"id": 0, "url": "a.png"}, {"id": 1, "url": "b.png"}],
           "conversations": [{"from": "user", "value": "<image>1</image>\nlook and<image>0</image>"},
                             {"from": "assistant", "value": "yo"}]}
    same = {"id": 1, "image": ["b.png", "a.png"], "conversations": [
        {"from": "human", "value": "<image>\nlook and<image>"}, {"from": "gpt", "value": "yo"}]}
    enc = tpl.encode(mix, "MIX")
    assert enc == tpl.encode(same, "MM")
    assert enc["n_images"] == 2 and len(enc["image_offsets"]) == 2
