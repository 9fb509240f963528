"""The chat template: a conversation in any built-in schema -> token ids, assistant-only labels, image offsets.

The format, shown as text (each marker is one token id, no newlines are added between parts)::

    <s><|system|>{system}<|end|><|user|>{question}<|end|><|assistant|>{answer}<|end|><|user|>...

- ``<s>`` (the tokenizer's BOS) starts every sample when the tokenizer has one.
- A system turn appears when the conversation has one, or when the template has a ``system`` text and the
  conversation none.
- Every message content is encoded on its own (``add_special_tokens=False``) and the marker ids are put between,
  so turn boundaries never depend on how the tokenizer merges text across them.
- Labels: ``labels[t] = input_ids[t]`` on assistant content and the ``<|end|>`` closing an assistant turn (the
  model learns to stop); ``-100`` everywhere else: BOS, markers that open turns, system and user turns, and all
  image tokens. Labels are aligned with ``input_ids``; the loss shifts by one (see ``datacopilot.train.collate``).
- Images: each ``<image>`` placeholder in a message expands to ``image_token_count`` copies of
  :attr:`ChatTemplate.image_token_id`; placeholders take the conversation's images in reading order, and
  ``image_offsets[i]`` is the position of image ``i``'s first token. A
  conversation with images but no placeholder at all gets one placeholder per image put at the start of its first
  user message (LLaVA's convention, ``"<image>" * k``); any other mismatch (more placeholders than images, or some
  placeholders but fewer than images) is an :class:`InputError` naming the row, since which image goes where
  would be a guess.
- Content: a message's ``content`` is text with ``<image>`` placeholders or a list of parts
  (``{"type": "text", "text"}``, ``{"type": "image"}`` / ``"image_url"`` / ``"input_image"``); each image part
  stands for the next image. :func:`content_text` renders parts to text (parts joined by newlines, image parts as
  ``<image>``, as the schemas' converters render them), so a conversation encodes to the same ids in either form.

Truncation is not done here: the packer's overlong policy (or ``tokenize_dataset``'s ``max_length`` check) is
where a sample's length is dealt with.
"""

from __future__ import annotations

import hashlib
import json

from datacopilot.errors import InputError, ModelError
from datacopilot.schemas import Schema, get_schema

from .tokenizer import ASSISTANT, END, IMAGE_TOKEN, SYSTEM, USER

IGNORE = -100
TOOL = "<|tool|>"  # not a special token: encoded as text, as any marker the tokenizer lacks
# a tool call (ShareGPT's function_call) is an assistant turn and is learned; a tool's answer is not
_ROLE_MARKERS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT, "tool_call": ASSISTANT, "tool": TOOL}
_LEARNED = ("assistant", "tool_call")
IMAGE_PARTS = ("image", "image_url", "input_image")


def content_text(content) -> str:
    """A message's content as text with ``<image>`` placeholders: a string as it is (None as ``""``), a list of
    parts joined by newlines with each image part as ``<image>``. An unknown part is an :class:`InputError`
    naming its index.

    >>> content_text([{"type": "image"}, {"type": "text", "text": "What is it?"}])
    '<image>\\nWhat is it?'
    >>> content_text("<image> hi")
    '<image> hi'
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, (list, tuple)):
        raise InputError(f"content: expected text or a list of parts, got {type(content).__name__}")
    out = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if text is not None and not isinstance(text, str):
                raise InputError(f"content[{j}].text: expected a string, got {type(text).__name__}")
            out.append(text or "")
        elif kind in IMAGE_PARTS:
            out.append(IMAGE_TOKEN)
        else:
            got = repr(kind) if isinstance(part, dict) else f"a {type(part).__name__}"
            raise InputError(f"content[{j}]: expected a part of type 'text' or one of {list(IMAGE_PARTS)}, "
                             f"got {got}")
    return "\n".join(out)


class ChatTemplate:
    """Encode conversations for SFT with labels on assistant turns only.

    Parameters
    ----------
    tokenizer: a PaddleNLP tokenizer (see :func:`datacopilot.models.tokenizer.load_tokenizer`) that knows
        ``<image>`` as one token; role markers that are not single tokens are encoded as plain text.
    image_token_count: how many tokens one image becomes (the vision encoder's output length).
    system: a system text used when a conversation has no system message.

    Example
    -------
    >>> tpl = ChatTemplate(load_tokenizer("/tmp/tok"), image_token_count=4)  # doctest: +SKIP
    >>> enc = tpl.encode({"image": "a.png", "caption": "a red circle"}, "CAPTION")  # doctest: +SKIP
    >>> enc["n_images"], enc["image_offsets"]  # doctest: +SKIP
    (1, [2])
    """

    def __init__(self, tokenizer, image_token_count: int = 16, system: str | None = None):
        if isinstance(image_token_count, bool) or not isinstance(image_token_count, int) or image_token_count < 1:
            raise InputError(f"`image_token_count` must be a positive integer, got {image_token_count!r}")
        if system is not None and not isinstance(system, str):
            raise InputError(f"`system` must be a string or None, got {system!r}")
        self.tokenizer = tokenizer
        self.image_token_count = image_token_count
        self.system = system
        self.image_token_id = self._single_id(IMAGE_TOKEN)
        if self.image_token_id is None:
            raise ModelError(f"the tokenizer has no single token for {IMAGE_TOKEN!r}; train one with "
                             "datacopilot.models.tokenizer.train_tokenizer or add it as a special token")
        self._fast = _fast_encoder(tokenizer)
        self.markers = {name: self._marker(tok) for name, tok in {**_ROLE_MARKERS, "end": END}.items()}
        bos = getattr(tokenizer, "bos_token_id", None)
        self.bos_ids = [int(bos)] if bos is not None and bos >= 0 else []

    # -- tokens ---------------------------------------------------------------------------------------
    def _single_id(self, token: str) -> int | None:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if tid is None or (isinstance(tid, list)) or tid < 0 or (unk is not None and tid == unk):
            return None
        return int(tid)

    def _marker(self, token: str) -> list[int]:
        tid = self._single_id(token)
        return [tid] if tid is not None else self.encode_text(token)

    def encode_text(self, text: str) -> list[int]:
        """Token ids of plain text (no BOS/EOS added)."""
        if not text:
            return []
        if self._fast is not None:
            return self._fast(text)
        return list(self.tokenizer.encode(text, add_special_tokens=False)["input_ids"])

    # -- conversations ----------------------------------------------------------------------------------
    def encode(self, row: dict, schema: Schema | str) -> dict:
        """Encode one row of a built-in conversation schema (MM, MIX, PAIRS, MESSAGES, CAPTION).

        Returns ``{"input_ids", "labels", "image_offsets", "n_images"}`` (lists of ints and an int).
        """
        s = get_schema(schema)
        if s.to_canonical is None:
            raise InputError(f"schema {s.name} has no conversation form; use one of MM, MIX, PAIRS, MESSAGES, CAPTION")
        canon = s.to_canonical(s.normalize_row(row))
        return self.encode_messages(canon["messages"], len(canon.get("images") or []), row_id=canon.get("id"))

    def encode_messages(self, messages: list[dict], n_images: int = 0, row_id=None) -> dict:
        """Encode canonical messages (``{"role", "content"}`` dicts, content text or parts) holding ``n_images``
        images, in placeholder order."""
        where = f"row {row_id!r}: " if row_id is not None else ""
        messages = [self._text_message(m, i, where) for i, m in enumerate(messages)]
        if self.system is not None and not (messages and messages[0]["role"] == "system"):
            messages.insert(0, {"role": "system", "content": self.system})
        n_placeholders = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
        if n_placeholders > n_images:
            raise InputError(f"{where}{n_placeholders} {IMAGE_TOKEN!r} placeholder(s) but {n_images} image(s)")
        if 0 < n_placeholders < n_images:
            raise InputError(f"{where}{n_placeholders} {IMAGE_TOKEN!r} placeholder(s) but {n_images} image(s); "
                             f"give every image its placeholder (only a conversation without any gets one per "
                             f"image put first)")
        if n_placeholders < n_images:
            first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
            if first_user is None:
                raise InputError(f"{where}{n_images} image(s) but no user message to put them in")
            m = messages[first_user]
            m["content"] = IMAGE_TOKEN * n_images + m["content"]
        ids, labels, offsets = list(self.bos_ids), [IGNORE] * len(self.bos_ids), []
        for i, m in enumerate(messages):
            role = m["role"]
            if role not in _ROLE_MARKERS:
                raise InputError(f"{where}messages[{i}].role: expected one of {sorted(_ROLE_MARKERS)}, got {role!r}")
            learn = role in _LEARNED
            opener = self.markers[role]
            ids += opener
            labels += [IGNORE] * len(opener)
            for j, part in enumerate(m["content"].split(IMAGE_TOKEN)):
                if j:
                    offsets.append(len(ids))
                    ids += [self.image_token_id] * self.image_token_count
                    labels += [IGNORE] * self.image_token_count
                part_ids = self.encode_text(part)
                ids += part_ids
                labels += part_ids if learn else [IGNORE] * len(part_ids)
            end = self.markers["end"]
            ids += end
            labels += end if learn else [IGNORE] * len(end)
        return {"input_ids": ids, "labels": labels, "image_offsets": offsets, "n_images": len(offsets)}

    @staticmethod
    def _text_message(m: dict, i: int, where: str) -> dict:
        try:
            return {**m, "content": content_text(m.get("content"))}
        except InputError as e:
            raise InputError(f"{where}messages[{i}].{e}") from e

    # -- identity -------------------------------------------------------------------------------------
    def settings(self) -> dict:
        """What the encoding depends on besides the tokenizer's vocabulary (JSON-able)."""
        # v2: content parts; some-but-too-few placeholders are an error (v1 put the missing ones first)
        return {"template": "datacopilot-chat-v2", "image_token_count": self.image_token_count,
                "system": self.system, "image_token_id": self.image_token_id, "markers": self.markers,
                "bos": self.bos_ids}

    def fingerprint(self) -> str:
        """sha256 over the tokenizer (its class, vocabulary, special tokens, sentencepiece model) and settings."""
        tok = self.tokenizer
        h = hashlib.sha256()
        h.update(type(tok).__name__.encode())
        h.update(json.dumps(self.settings(), sort_keys=True).encode())
        h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
        h.update(json.dumps(list(getattr(tok, "all_special_tokens", []))).encode())
        sp = getattr(tok, "sp_model", None)
        if sp is not None:
            h.update(sp.serialized_model_proto())
        return h.hexdigest()


def _fast_encoder(tokenizer):
    """A direct sentencepiece encoder for PaddleNLP's LlamaTokenizer, giving the same ids as
    ``tokenizer.encode(text, add_special_tokens=False)`` about 8x faster, used for text holding no special token
    (text that does goes the tokenizer's own way). None for other tokenizers."""
    sp = getattr(tokenizer, "sp_model", None)
    if type(tokenizer).__name__ != "LlamaTokenizer" or sp is None:
        return None
    import re

    specials = {t for t in getattr(tokenizer, "all_special_tokens", []) if t}
    specials |= {t for t in getattr(tokenizer, "added_tokens_encoder", {}) if t}
    has_special = re.compile("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True))).search \
        if specials else (lambda text: None)

    def encode(text: str) -> list[int]:
        if has_special(text):
            return list(tokenizer.encode(text, add_special_tokens=False)["input_ids"])
        return sp.encode(text)

    return encode
