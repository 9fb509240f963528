"""Cleaning mappers over conversation text: unicode repair, whitespace normalization, PII-like masking.

Each rewrites the text of every turn (``conversations[*].value`` or ``messages[*].content``), vectorized with
pyarrow compute where it can be (Python only for the few strings that need it), and keeps rows and order.
Image-placeholder and role repair live in :mod:`.repair`.

>>> from datacopilot.operators import create
>>> ds.apply([create("clean_unicode"), create("clean_whitespace"), create("mask_pii")])  # doctest: +SKIP
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._conv import ConversationOp, replace_texts
from .base import Mapper, check_choice, check_int
from .registry import register

# zero-width and invisible formatting characters, and C0/C1 controls except tab and newline
_INVISIBLE = r"[\x{200B}-\x{200D}\x{2060}\x{FEFF}\x{00AD}]"
_CONTROLS = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]"
# anything but tab, line breaks and printable ASCII: the values clean_unicode may change (ASCII text is its own
# NFC and NFKC form, and holds no invisible, C1 control or mojibake character)
_UNICODE_NEED = r"[^\t\n\r\x20-\x7E]"
_MOJIBAKE = re.compile(r"[ÃÂÅ][\u0080-\u00bf]|â€|Ã.")


def rewrite_where(texts: pa.Array, need, fn) -> pa.Array:
    """``fn(texts)``, computed only on the values that need it: ``need`` is a regex (RE2) that matches every
    value ``fn`` would change (it may match more), or a boolean mask. The values it does not match are returned
    as they are (``fn`` must leave those unchanged); the others are taken out, rewritten and put back in place.
    """
    if isinstance(need, str):
        need = pc.match_substring_regex(texts, need)
    if isinstance(need, np.ndarray):
        n = int(need.sum())
        need = pa.array(need, pa.bool_()) if 0 < n < len(texts) else need
    else:
        need = pc.fill_null(need, False)
        n = pc.sum(need).as_py() or 0
    if n == 0:
        return texts
    sub = texts if n == len(texts) else pc.filter(texts, need)
    out = fn(sub).cast(texts.type)
    if pc.all(pc.fill_null(pc.equal(sub, out), True)).as_py():  # matched, but nothing to change after all
        return texts
    return out if n == len(texts) else pc.replace_with_mask(texts, need, out)


def byte_scan(texts: pa.Array, scan) -> np.ndarray:
    """``scan(offsets, data)`` (a byte scan of :mod:`datacopilot.kernels.text`) over the values of ``texts``; False
    where a value is null."""
    from datacopilot.kernels.text import string_buffers

    hit = scan(*string_buffers(texts))
    if texts.null_count:
        hit &= texts.is_valid().to_numpy(zero_copy_only=False)
    return hit


def _python_strings(texts: pa.Array, needs: pa.Array, fn) -> pa.Array:
    """``texts`` with ``fn`` applied to the strings where ``needs`` is true (the rest untouched)."""
    return rewrite_where(texts, needs, lambda sub: pa.array([fn(v) for v in sub.to_pylist()], type=texts.type))


# runs of the characters UTF-8 bytes turn into when read as cp1252 / latin-1
_CP1252_RUN = re.compile("[\u0080-\u00ff\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
                         "\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]{2,}")


def _fix_run(m: re.Match) -> str:
    run = m.group(0)
    for enc in ("cp1252", "latin-1"):
        try:
            fixed = run.encode(enc).decode("utf-8")
        except UnicodeError:
            continue
        if len(_MOJIBAKE.findall(fixed)) < len(_MOJIBAKE.findall(run)):
            return fixed
    return run


def fix_mojibake(s: str) -> str:
    """Undo UTF-8 text that was decoded as cp1252 / latin-1 (``"cafÃ©"`` -> ``"café"``) where that is
    unambiguous: each run of such characters is re-decoded only if the round trip succeeds and leaves fewer
    mojibake markers; anything else is left as it is."""
    return _CP1252_RUN.sub(_fix_run, s)


@register
class CleanUnicode(ConversationOp, Mapper):
    """Unicode repair: normalize (NFC by default), remove control and zero-width characters, fix mojibake.

    Parameters: ``form`` (``"NFC"``, ``"NFKC"`` or None to skip), ``fix_mojibake`` (undo UTF-8 read as
    cp1252/latin-1 where the round trip is unambiguous).

    >>> CleanUnicode().clean("cafe\\u0301\\u200b Ã©t\\x07")
    'café ét'
    """

    name = "clean_unicode"
    writes = ("conversations|messages",)

    def __init__(self, form: str | None = "NFC", fix_mojibake: bool = True):
        super().__init__(form=check_choice(self, "form", form, ("NFC", "NFKC", None)),
                         fix_mojibake=check_choice(self, "fix_mojibake", fix_mojibake, (True, False)))

    def _texts(self, texts: pa.Array) -> pa.Array:
        from datacopilot.kernels.text import has_unprintable

        return rewrite_where(texts, byte_scan(texts, has_unprintable), self._rewrite)  # _UNICODE_NEED

    def _rewrite(self, texts: pa.Array) -> pa.Array:
        texts = pc.replace_substring_regex(texts, _INVISIBLE, "")
        texts = pc.replace_substring_regex(texts, _CONTROLS, "")
        if self.p["fix_mojibake"]:
            texts = _python_strings(texts, pc.match_substring_regex(texts, r"[ÃÂÅ][\x{80}-\x{BF}]|â€|Ã."),
                                    fix_mojibake)
        if self.p["form"]:
            texts = pc.utf8_normalize(texts, self.p["form"])
        return texts

    def clean(self, text: str) -> str:
        """The cleaned form of one string (what the operator does to every turn)."""
        return self._texts(pa.array([text]))[0].as_py()

    def map_batch(self, batch: pa.RecordBatch) -> pa.Table:
        return replace_texts(self, batch, self._texts)


@register
class CleanWhitespace(ConversationOp, Mapper):
    """Whitespace normalization: runs of spaces/tabs become one space, spaces around line breaks go, more than
    ``max_newlines`` consecutive line breaks are cut to that many, and each turn is stripped. As regular
    expressions, in order: ``\\r\\n?`` -> ``\\n``, ``[ \\t\\f\\v\\xa0\\u3000]+`` -> one space, `` ?\\n ?`` -> ``\\n``,
    ``\\n{n+1,}`` -> ``n`` line breaks (a space for 0), then Arrow's ``utf8_trim_whitespace``; one compiled pass
    finds the turns that need it and another rewrites them (:mod:`datacopilot.kernels.whitespace`).

    >>> CleanWhitespace().clean("  a \\t b \\n\\n\\n\\n c  ")
    'a b\\n\\nc'
    """

    name = "clean_whitespace"
    writes = ("conversations|messages",)

    def __init__(self, max_newlines: int = 2):
        super().__init__(max_newlines=check_int(self, "max_newlines", max_newlines, minimum=0))

    def _texts(self, texts: pa.Array) -> pa.Array:
        """The values that need a change (found exactly) rewritten, the others copied; ``texts`` itself when
        none does."""
        from datacopilot.kernels.whitespace import needs_change

        need = byte_scan(texts, lambda o, d: needs_change(o, d, self.p["max_newlines"]))
        return self._rewrite(texts, need) if need.any() else texts

    def _rewrite(self, texts: pa.Array, need: np.ndarray | None = None) -> pa.Array:
        """The values where ``need`` holds (default: every value) rewritten in one compiled pass
        (:func:`datacopilot.kernels.whitespace.rewrite`), nulls kept."""
        from datacopilot.kernels.text import string_buffers
        from datacopilot.kernels.whitespace import rewrite

        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        need = np.ones(len(texts), bool) if need is None else need
        offsets, data = rewrite(*string_buffers(texts), need, self.p["max_newlines"])
        large = pa.types.is_large_string(texts.type)
        validity = texts.buffers()[0] if texts.null_count else None
        if validity is not None and texts.offset:  # the bitmap of a slice starts at its offset: realign it
            validity = texts.is_valid().buffers()[1]
        return pa.Array.from_buffers(pa.large_string() if large else pa.string(), len(texts),
                                     [validity, pa.py_buffer(offsets if large else offsets.astype(np.int32)),
                                      pa.py_buffer(data)], null_count=texts.null_count)

    def clean(self, text: str) -> str:
        return self._texts(pa.array([text]))[0].as_py()

    def map_batch(self, batch: pa.RecordBatch) -> pa.Table:
        return replace_texts(self, batch, self._texts)


_EMAIL = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
# a phone-like number: optional +country code, groups of digits separated by spaces, hyphens or parentheses
_PHONE_NEED = r"\d{2}[ \-)]?\(?\d{2}"  # matches every value _PHONE may change
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d{1,4}\)?(?:[ \-]?\(?\d{2,4}\)?){1,5}(?![\w])")


@register
class MaskPII(ConversationOp, Mapper):
    """PII-like pattern masking: e-mail addresses become ``email_token`` and phone-like numbers (at least
    ``min_phone_digits`` digits in groups separated by spaces, hyphens or parentheses, optional ``+`` country
    code) become ``phone_token``. Dotted numbers (versions, IP addresses, decimals) are not phones.

    >>> MaskPII().clean("mail bob@example.com or call +1 (555) 123-4567")
    'mail <EMAIL> or call <PHONE>'
    """

    name = "mask_pii"
    writes = ("conversations|messages",)

    def __init__(self, emails: bool = True, phones: bool = True, email_token: str = "<EMAIL>",
                 phone_token: str = "<PHONE>", min_phone_digits: int = 9):
        for k, v in (("email_token", email_token), ("phone_token", phone_token)):
            if not isinstance(v, str):
                raise self.error(f"`{k}` must be a string, got {v!r}")
        super().__init__(emails=check_choice(self, "emails", emails, (True, False)),
                         phones=check_choice(self, "phones", phones, (True, False)),
                         email_token=email_token, phone_token=phone_token,
                         min_phone_digits=check_int(self, "min_phone_digits", min_phone_digits, 5, 20))

    def _phone(self, m: re.Match) -> str:
        digits = sum(c.isdigit() for c in m.group(0))
        return self.p["phone_token"] if self.p["min_phone_digits"] <= digits <= 15 else m.group(0)

    def _texts(self, texts: pa.Array) -> pa.Array:
        from datacopilot.kernels.text import has_byte, has_digit_pair

        if self.p["emails"]:
            token = self.p["email_token"].replace("\\", "\\\\")
            texts = rewrite_where(texts, byte_scan(texts, lambda o, d: has_byte(o, d, ord("@"))),
                                  lambda sub: pc.replace_substring_regex(sub, _EMAIL, token))
        if self.p["phones"]:  # a phone has two digits in a row: the pattern runs only where they are
            need = byte_scan(texts, has_digit_pair)
            if need.any():
                idx = np.flatnonzero(need)
                need[idx] = pc.match_substring_regex(texts.take(idx), _PHONE_NEED).to_numpy(zero_copy_only=False)
            texts = _python_strings(texts, need, lambda s: _PHONE.sub(self._phone, s))
        return texts

    def clean(self, text: str) -> str:
        return self._texts(pa.array([text]))[0].as_py()

    def map_batch(self, batch: pa.RecordBatch) -> pa.Table:
        return replace_texts(self, batch, self._texts)

