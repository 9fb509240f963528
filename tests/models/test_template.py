"""The chat template: assistant-only labels, image token expansion, every schema to the same ids."""

import pytest

pytest.importorskip("paddlenlp")
pytest.importorskip("sentencepiece")

from datacopilot.errors import InputError  # noqa: E402
from datacopilot.models.chat_template import IGNORE, ChatTemplate  # noqa: E402
from datacopilot.models.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402

Q1, A1, Q2, A2 = "<image>\nWhat shape is in the image?", "A red circle.", "What color is it?", "It is red."
TEXTS = [Q1, A1, Q2, A2, "Describe the image.", "A blue square on the left of a gray background."] * 20
N_IMG = 5


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(train_tokenizer(TEXTS, str(tmp_path_factory.mktemp("tok")), vocab_size=500))


@pytest.fixture(scope="module")
def tpl(tok):
    return ChatTemplate(tok, image_token_count=N_IMG)


def _runs(labels):
    """Maximal runs of labelled positions as (start, stop)."""
    runs, start = [], None
    for i, v in enumerate(list(labels) + [IGNORE]):
        if v != IGNORE and start is None:
            start = i
        elif v == IGNORE and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_labels_exactly_on_assistant_turns(tok, tpl):
    row = {"id": "1", "image": "a.png", "conversations": [
        {"from": "human", "value": Q1}, {"from": "gpt", "value": A1},
        {"from": "human", "value": Q2}, {"from": "gpt", "value": A2}]}
    enc = tpl.encode(row, "MM")
    ids, labels = enc["input_ids"], enc["labels"]
    assert len(ids) == len(labels)
    runs = _runs(labels)
    assert [tok.decode(ids[a:b]).strip() for a, b in runs] == [A1 + "<|end|>", A2 + "<|end|>"]
    for a, b in runs:
        assert labels[a:b] == ids[a:b]
        assert tok.convert_ids_to_tokens(ids[a - 1]) == "<|assistant|>"  # the opener itself is not learnt
    # everything outside the runs decodes to the prompt side of the conversation
    outside = [i for i, v in zip(ids, labels) if v == IGNORE]
    text = tok.decode([i for i in outside if i != tpl.image_token_id])
    assert "What shape" in text and "What color" in text and "circle" not in text and "It is red" not in text
    assert ids[0] == tok.bos_token_id and labels[0] == IGNORE


def test_image_placeholder_expands_at_its_offset(tpl):
    msgs = [{"role": "user", "content": "look <image> and <image> now"}, {"role": "assistant", "content": "ok"}]
    enc = tpl.encode_messages(msgs, n_images=2)
    ids = enc["input_ids"]
    assert enc["n_images"] == 2 and ids.count(tpl.image_token_id) == 2 * N_IMG
    for off in enc["image_offsets"]:
        assert ids[off:off + N_IMG] == [tpl.image_token_id] * N_IMG
        assert ids[off - 1] != tpl.image_token_id and ids[off + N_IMG] != tpl.image_token_id
        assert all(v == IGNORE for v in enc["labels"][off:off + N_IMG])
    assert enc["image_offsets"][0] < enc["image_offsets"][1]


def test_missing_placeholders_go_first_and_extra_ones_fail(tpl):
    enc = tpl.encode_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], 1)
    assert enc["image_offsets"] == [2]  # <s> <|user|> then the image
    with pytest.raises(InputError, match="row 'x': 2 '<image>' placeholder.*but 1 image"):
        tpl.encode_messages([{"role": "user", "content": "<image><image>"}, {"role": "assistant", "content": "a"}],
                            1, row_id="x")


def test_every_schema_gives_the_same_ids(tpl):
    img = "img/a.png"
    rows = {
        "MM": {"id": "1", "image": img, "conversations": [
            {"from": "human", "value": Q1}, {"from": "gpt", "value": A1},
            {"from": "human", "value": Q2}, {"from": "gpt", "value": A2}]},
        "MIX": {"id": "1", "images": [{"id": None, "url": img}], "conversations": [
            {"from": "user", "value": Q1}, {"from": "assistant", "value": A1},
            {"from": "user", "value": Q2}, {"from": "assistant", "value": A2}]},
        "PAIRS": {"id": "1", "image": img, "conversations": [[Q1, A1], [Q2, A2]]},
        "MESSAGES": {"id": "1", "images": [img], "messages": [
            {"role": "user", "content": Q1}, {"role": "assistant", "content": A1},
            {"role": "user", "content": Q2}, {"role": "assistant", "content": A2}]},
    }
    encs = {name: tpl.encode(row, name) for name, row in rows.items()}
    first = encs["MM"]
    for name, enc in encs.items():
        assert enc == first, name
    # CAPTION is a one-turn conversation with a bare <image> prompt
    cap = tpl.encode({"id": "1", "image": img, "caption": A1}, "CAPTION")
    mm = tpl.encode({"id": "1", "image": img, "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": A1}]}, "MM")
    assert cap == mm and cap["n_images"] == 1


def test_system_text_is_prompt_side(tok):
    tpl = ChatTemplate(tok, image_token_count=2, system="Be brief.")
    enc = tpl.encode_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "A red circle."}])
    assert tok.convert_ids_to_tokens(enc["input_ids"][1]) == "<|system|>"
    assert [tok.decode(enc["input_ids"][a:b]).strip() for a, b in _runs(enc["labels"])] == ["A red circle.<|end|>"]
    assert tpl.fingerprint() != ChatTemplate(tok, image_token_count=2).fingerprint()


def test_bad_settings(tok):
    with pytest.raises(InputError, match="image_token_count"):
        ChatTemplate(tok, image_token_count=0)
    with pytest.raises(InputError, match="role"):
        ChatTemplate(tok).encode_messages([{"role": "bot", "content": "x"}])


def test_sharegpt_tool_calls_are_learned_and_observations_are_not(tok, tpl):
    row = {"system": "you may call tools", "tools": '[{"name": "area"}]', "conversations": [
        {"from": "human", "value": "area of a 2x3 box?"},
        {"from": "function_call", "value": '{"name": "area", "arguments": {"w": 2, "h": 3}}'},
        {"from": "observation", "value": "six"},
        {"from": "gpt", "value": "It is six."}]}
    enc = tpl.encode(row, "SHAREGPT")
    learned = [tok.decode(enc["input_ids"][a:b]).strip() for a, b in _runs(enc["labels"])]
    assert len(learned) == 2
    assert '"area"' in learned[0] and learned[1] == "It is six.<|end|>"
    prompt = tok.decode([i for i, v in zip(enc["input_ids"], enc["labels"]) if v == IGNORE])
    assert "six" in prompt and "you may call tools" in prompt
