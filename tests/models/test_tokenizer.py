"""The offline tokenizer: trained on text, saved as a PaddleNLP directory, loaded back by AutoTokenizer."""

import os

import pytest

pytest.importorskip("paddlenlp")
pytest.importorskip("sentencepiece")

from datacopilot.errors import InputError, ModelError  # noqa: E402
from datacopilot.models.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer  # noqa: E402

TEXTS = ["<image>\nWhat shape is in the image?", "A red circle.", "What color is the background?", "White.",
         "Describe the image.", "A blue square on the left of a gray background."] * 20


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return train_tokenizer(TEXTS, str(tmp_path_factory.mktemp("tok")), vocab_size=500)


def test_autotokenizer_loads_the_directory_and_round_trips(tok_dir):
    from paddlenlp.transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert type(tok).__name__ == "LlamaTokenizer"
    for text in ["What shape is in the image?", "A purple cross, unseen: ünï 你好 42!"]:
        ids = tok.encode(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids  # byte fallback: nothing becomes <unk>
        assert tok.decode(ids) == text


def test_special_tokens_are_single_ids(tok_dir):
    tok = load_tokenizer(tok_dir)
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    assert tok.unk_token_id not in ids
    for t, i in zip(SPECIAL_TOKENS, ids):
        assert tok.encode(t, add_special_tokens=False)["input_ids"] == [i]
        assert tok.encode(f"hi {t} there", add_special_tokens=False)["input_ids"].count(i) == 1
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 3)


def test_vocab_size_is_an_upper_bound(tmp_path):
    tok = load_tokenizer(train_tokenizer(TEXTS, str(tmp_path), vocab_size=2000))
    assert 4 + 256 + len(SPECIAL_TOKENS) < len(tok) <= 2000


def test_named_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="no tokenizer_config.json"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(InputError, match="vocab_size"):
        train_tokenizer(TEXTS, str(tmp_path / "t"), vocab_size=10)
    with pytest.raises(InputError, match="no non-empty string"):
        train_tokenizer(["", "  "], str(tmp_path / "t"))
    assert not os.path.exists(tmp_path / "t" / "tokenizer_config.json")


def test_training_is_deterministic(tmp_path):
    """The same texts give the same model bytes, so a token cache keyed by the tokenizer survives a re-train."""
    a = train_tokenizer(TEXTS, str(tmp_path / "a"), vocab_size=500)
    b = train_tokenizer(TEXTS, str(tmp_path / "b"), vocab_size=500)
    for name in ("sentencepiece.bpe.model", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a != b
