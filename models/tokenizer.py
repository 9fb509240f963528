"""Tokenizers for training: a small sentencepiece vocabulary trained offline on a dataset's own text, saved as a
PaddleNLP ``LlamaTokenizer`` directory, and loading any PaddleNLP tokenizer directory.

The saved directory holds ``sentencepiece.bpe.model`` (the sentencepiece model, under the file name PaddleNLP's
``LlamaTokenizer`` looks for), ``tokenizer_config.json`` and
``special_tokens_map.json``, so ``paddlenlp.transformers.AutoTokenizer.from_pretrained(out_dir)`` loads it like a
downloaded Llama tokenizer. The chat template's markers (:data:`SPECIAL_TOKENS`: ``<image>``, ``<|system|>``,
``<|user|>``, ``<|assistant|>``, ``<|end|>``) are sentencepiece *user-defined* pieces, so they are single ids both
inside raw text and when looked up by name; a newline is one piece too. Ids 0-3 are ``<unk>``, ``<s>``, ``</s>``, ``<pad>``. Byte fallback is
on: any character, seen in training or not, encodes (as UTF-8 byte pieces) and decodes back, never to ``<unk>``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable

from datacopilot.errors import InputError, MissingDependencyError, ModelError

IMAGE_TOKEN = "<image>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = (IMAGE_TOKEN, SYSTEM, USER, ASSISTANT, END)
SP_MODEL_FILE = "sentencepiece.bpe.model"  # LlamaTokenizer.resource_files_names["vocab_file"] in paddlenlp 2.8
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "vocab.txt", "tokenizer.json", "sentencepiece.bpe.model")


def _spm():
    try:
        import sentencepiece as spm
    except ImportError as e:
        raise MissingDependencyError("sentencepiece", "paddle") from e
    return spm


def train_tokenizer(texts: Iterable[str], out_dir: str, vocab_size: int = 2000, model_type: str = "bpe") -> str:
    """Train a sentencepiece vocabulary on ``texts`` and save it as a PaddleNLP LlamaTokenizer directory.

    ``vocab_size`` is an upper bound: a small corpus yields fewer pieces (sentencepiece's soft limit) and the
    vocabulary always holds the 4 control tokens, :data:`SPECIAL_TOKENS` and 256 byte pieces. ``model_type`` is
    ``"bpe"`` or ``"unigram"``. Returns ``out_dir``.

    Example:
        >>> d = train_tokenizer(["a red circle", "a blue square"] * 50, "/tmp/tok")  # doctest: +SKIP
        >>> load_tokenizer(d).convert_tokens_to_ids("<image>")  # doctest: +SKIP
        4
    """
    spm = _spm()
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 300:
        raise InputError(f"`vocab_size` must be an integer >= 300 (256 byte pieces + specials), got {vocab_size!r}")
    if model_type not in ("bpe", "unigram"):
        raise InputError(f"`model_type` must be 'bpe' or 'unigram', got {model_type!r}")
    lines = [t.replace("\r", " ") for t in texts if isinstance(t, str) and t.strip()]
    if not lines:
        raise InputError("train_tokenizer: `texts` holds no non-empty string to learn a vocabulary from")
    # sentencepiece reads one sentence per line: a text's own newlines split it into sentences
    sentences = [s for t in lines for s in t.split("\n") if s.strip()]
    os.makedirs(out_dir, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        hard_vocab_limit=False, character_coverage=1.0, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, user_defined_symbols=[*SPECIAL_TOKENS, "\n"],
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        pad_piece="<pad>", num_threads=1, minloglevel=2, input_sentence_size=2_000_000, shuffle_input_sentence=True,
    )
    with open(os.path.join(out_dir, SP_MODEL_FILE), "wb") as f:
        f.write(model.getvalue())
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
               "additional_special_tokens": list(SPECIAL_TOKENS)}
    config = {"tokenizer_class": "LlamaTokenizer", "model_max_length": 1_000_000, "add_bos_token": False,
              "add_eos_token": False, "padding_side": "right", **special}
    for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
    return out_dir


def load_tokenizer(path: str):
    """A PaddleNLP tokenizer from a local directory (``AutoTokenizer.from_pretrained``), never from a hub.

    Raises :class:`ModelError` naming the directory when it is missing or holds no tokenizer.

    Example:
        >>> tok = load_tokenizer("/tmp/tok")  # doctest: +SKIP
        >>> tok.decode(tok.encode("a red circle", add_special_tokens=False)["input_ids"])  # doctest: +SKIP
        'a red circle'
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ModelError(f"tokenizer directory {path!r} does not exist")
    if not os.path.exists(os.path.join(path, "tokenizer_config.json")):
        raise ModelError(f"{path}: no tokenizer_config.json; expected a PaddleNLP tokenizer directory "
                         f"(see datacopilot.models.tokenizer.train_tokenizer), got {sorted(os.listdir(path))}")
    try:
        from paddlenlp.transformers import AutoTokenizer
    except ImportError as e:
        raise MissingDependencyError("paddlenlp", "paddle") from e
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # paddlenlp raises many kinds
        raise ModelError(f"{path}: cannot load the tokenizer: {type(e).__name__}: {e}") from e


def tokenizer_files_digest(path: str) -> str:
    """sha256 over the tokenizer files of a directory (names and bytes): what a tokenization cache depends on."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full) and (name in TOKENIZER_FILES or name.endswith((".model", ".json", ".txt"))):
            h.update(name.encode() + b"\0")
            with open(full, "rb") as f:
                h.update(f.read())
    return h.hexdigest()
